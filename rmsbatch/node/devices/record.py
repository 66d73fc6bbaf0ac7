"""The Accelerator record, and what a job's environment says about its devices.

One record per allocatable device. Backends fill them; after discovery each gets its
node-local `index` (what RMS_JOB_GPUS lists and what allocations name). Records cross
process boundaries as plain dicts (`to_dict` / `from_dict`): rmsd reports them to rmsctld
in its inventory, and the launcher reads them back.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields

NVIDIA_ENV = "CUDA_VISIBLE_DEVICES"
AMD_ENV = "ROCR_VISIBLE_DEVICES"
VENDOR_ENV = {"nvidia": NVIDIA_ENV, "amd": AMD_ENV}


@dataclass
class Accelerator:
    vendor: str                      # "nvidia", "amd" or "other"
    type: str                        # what jobs ask for: "h100", "1g.10gb", "mi300x", "rngd"
    model: str = ""                  # the vendor's name: "NVIDIA H100 80GB HBM3"
    uuid: str | None = None          # GPU-..., MIG-..., or the AMD unique id
    bdf: str | None = None           # PCI address, dddd:bb:dd.f
    mem_mb: int = 0                  # device memory; 0 = unknown
    device_files: list[str] = field(default_factory=list)
    numa_node: int | None = None
    cpus: list[int] = field(default_factory=list)      # CPUs local to the device
    links: dict[str, int] = field(default_factory=dict)  # peer key -> weight (NVLink lanes, XGMI)
    pcie: dict[str, int] = field(default_factory=dict)   # peer key -> PCIe distance (NVML level)
    parent: str | None = None        # key of the physical device (MIG instance, partition)
    profile: str | None = None       # MIG profile ("1g.10gb") or AMD compute partition ("CPX")
    env: str = NVIDIA_ENV            # the visibility variable
    env_id: str = ""                 # its value for this device when devices are not fenced
    env_by_uuid: bool = False        # MIG instances are always named by UUID
    vendor_index: int | None = None  # the library's index (NVML index, AMD SMI handle order)
    sub_index: int | None = None     # MIG device index / AMD partition id within the parent
    backend: str = "static"          # "nvml", "amdsmi", "sysfs" or "static"
    index: int = -1                  # node-local, assigned after discovery
    # Why the device could not be opened at discovery (lost, no power...). It stays
    # listed, so that the devices after it keep their indices, and is drained until a
    # fresh discovery after `rcontrol resume` finds it well.
    fault: str | None = None

    @property
    def key(self) -> str:
        """Identity that survives re-enumeration: UUID, else PCI address (+ partition),
        else the first device file."""
        if self.uuid:
            return self.uuid
        if self.bdf:
            return self.bdf if self.sub_index is None else f"{self.bdf}/{self.sub_index}"
        if self.device_files:
            return self.device_files[0]
        if self.vendor_index is not None:        # a device that would not say who it is
            return f"{self.backend}#{self.vendor_index}"
        return f"{self.type}#{self.index}"

    @property
    def is_partition(self) -> bool:
        return self.parent is not None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Accelerator":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        mem = f" {self.mem_mb // 1024}G" if self.mem_mb else ""
        return f"{self.type}{mem} ({self.model or self.vendor})"


# -- names --------------------------------------------------------------------------
_DROP = {"nvidia", "tesla", "geforce", "quadro", "amd", "instinct", "radeon", "intel",
         "data", "center", "gpu", "(tm)"}


def short_type(model: str) -> str:
    """The type users write in --gpus=TYPE:N, from the vendor's model name:
    "NVIDIA H100 80GB HBM3" -> "h100", "NVIDIA A100-SXM4-80GB" -> "a100",
    "AMD Instinct MI300X" -> "mi300x", "NVIDIA GeForce RTX 4090" -> "rtx4090",
    "NVIDIA RTX A6000" -> "a6000", "NVIDIA L40S" -> "l40s"."""
    words = [w for w in re.split(r"[\s_]+", model.strip().lower()) if w and w not in _DROP]
    if not words:
        return "gpu"
    first = words[0].split("-")[0]
    if first in ("rtx", "gtx", "titan") and len(words) > 1:
        nxt = words[1].split("-")[0]
        return nxt if nxt[:1].isalpha() else first + nxt
    return re.sub(r"[^a-z0-9_.-]", "", first) or "gpu"


MIG_PROFILE = re.compile(r"\b(\d+g\.\d+gb(?:\+[a-z]+)?)\b", re.IGNORECASE)


def mig_profile(name: str) -> str | None:
    """"NVIDIA A100-SXM4-80GB MIG 1g.10gb" -> "1g.10gb"."""
    m = MIG_PROFILE.search(name)
    return m.group(1).lower() if m else None


def normalize_bdf(bus_id: str) -> str:
    """NVML's "00000000:3B:00.0" and friends -> sysfs's "0000:3b:00.0"."""
    text = bus_id.strip().lower()
    domain, _, rest = text.rpartition(":")
    domain, _, bus = domain.rpartition(":") if domain.count(":") else ("", "", domain)
    if not domain:
        domain = "0"
    return f"{int(domain, 16) & 0xffff:04x}:{int(bus, 16):02x}:{rest}"


def bdf_from_location(domain: int, location_id: int) -> str:
    """KFD's location_id packs bus << 8 | device << 3 | function."""
    return (f"{domain:04x}:{(location_id >> 8) & 0xff:02x}:{(location_id >> 3) & 0x1f:02x}."
            f"{location_id & 0x7:x}")


def cpus_from_mask(words, ncpus: int) -> list[int]:
    """NVML's affinity mask: 64-bit words, bit b of word w is CPU 64*w + b."""
    out = []
    for w, word in enumerate(words):
        word = int(word)
        for b in range(64):
            if word >> b & 1 and 64 * w + b < ncpus:
                out.append(64 * w + b)
    return out


# -- the job's environment ---------------------------------------------------------
def visibility(devices: list[Accelerator], allocated: list[int], fenced: bool) -> dict[str, str]:
    """The visibility variables of a job given `allocated` (node-local indices).

    Fenced, a job's runtime enumerates only the devices it may open, so whole GPUs are
    numbered 0..k-1 per variable; unfenced, it sees every device and gets the vendor's
    own indices. MIG instances are always named by UUID (CUDA has no index for them).
    Every variable any device of the node uses is set, empty when the job got none of
    its devices, so a job never inherits another allocation's devices.
    """
    by_index = {d.index: d for d in devices}
    out: dict[str, list[str]] = {d.env: [] for d in devices}
    # Fenced, the runtime numbers the physical devices it can open, in order; a GPU
    # whose MIG instance the job has is one of them.
    seen: dict[str, list[str]] = {d.env: [] for d in devices}
    for index in sorted(allocated):
        dev = by_index.get(index)
        if dev is None:
            continue
        values, physical = out[dev.env], seen[dev.env]
        if dev.env_by_uuid and dev.uuid:
            values.append(dev.uuid)
            if dev.parent and dev.parent not in physical:
                physical.append(dev.parent)
        elif fenced:
            values.append(str(len(physical)))
            physical.append(dev.key)
        else:
            values.append(dev.env_id or str(dev.index))
    env = {var: ",".join(ids) for var, ids in out.items()}
    if any(d.vendor == "nvidia" or d.env == NVIDIA_ENV for d in devices):
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return env


def device_files(devices: list[Accelerator], allocated: list[int]) -> tuple[list[str], list[str]]:
    """(every accelerator device file of the node, the files the job may open)."""
    every: list[str] = []
    allowed: list[str] = []
    wanted = set(allocated)
    for dev in devices:
        for path in dev.device_files:
            if path not in every:
                every.append(path)
            if dev.index in wanted and path not in allowed:
                allowed.append(path)
    return every, allowed


def local_cpus(devices: list[Accelerator], allocated: list[int]) -> list[int]:
    """CPUs local to the allocated devices (their NUMA node), in order."""
    wanted = set(allocated)
    cpus: list[int] = []
    for dev in devices:
        if dev.index in wanted:
            cpus.extend(c for c in dev.cpus if c not in cpus)
    return sorted(cpus)


def char_device(path: str) -> tuple[int, int] | None:
    """(major, minor) of a character device, or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    import stat
    if not stat.S_ISCHR(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)
