"""NVIDIA and AMD GPUs from /proc and /sys, when no vendor library loads.

NVIDIA: /proc/driver/nvidia/gpus/<bdf>/information (model, UUID, device minor), as
Slurm's `AutoDetect=nvidia` reads it. It says nothing of memory, MIG or NVLink.

AMD: the KFD topology, /sys/class/kfd/kfd/topology/nodes/<n>/properties, where GPU
nodes have simd_count > 0. Each node is one logical GPU in ROCr's order (so its position
is its ROCR_VISIBLE_DEVICES index); partitions of one physical GPU (CPX, DPX, ...) share
its location_id and have render minors of their own. XGMI links are io_links of type 11.

Everything is read under `root`, so tests point the backend at a recorded tree.
"""
from __future__ import annotations

import glob
import os

from rmsbatch.node.devices.backend import BackendUnavailable, pci_locality, read_text
from rmsbatch.node.devices.record import (AMD_ENV, NVIDIA_ENV, Accelerator, bdf_from_location,
                                     normalize_bdf, short_type)
from rmsbatch.node.devices.amd import DEVICE_MODEL

KFD = "sys/class/kfd/kfd/topology/nodes"
IOLINK_XGMI = 11


def _properties(path: str) -> dict[str, int]:
    out = {}
    for line in (read_text(path) or "").splitlines():
        key, _, value = line.strip().partition(" ")
        try:
            out[key] = int(value.strip())
        except ValueError:
            continue
    return out


def kfd_nodes(root: str) -> list[dict]:
    """The GPU nodes of the KFD topology, in node order, with their XGMI links."""
    nodes = []
    base = os.path.join(root, KFD)
    try:
        names = sorted((n for n in os.listdir(base) if n.isdigit()), key=int)
    except OSError:
        return nodes
    for n in names:
        props = _properties(os.path.join(base, n, "properties"))
        if not props.get("simd_count") or not props.get("gpu_id", _int(read_text(os.path.join(base, n, "gpu_id")))):
            continue
        links = []
        for link in sorted(glob.glob(os.path.join(base, n, "io_links", "*", "properties"))):
            lp = _properties(link)
            links.append((lp.get("node_to"), lp.get("type"), lp.get("weight")))
        mem = sum(_properties(p).get("size_in_bytes", 0)
                  for p in glob.glob(os.path.join(base, n, "mem_banks", "*", "properties")))
        nodes.append({**props, "node": int(n), "links": links, "mem_bytes": mem,
                      "bdf": bdf_from_location(props.get("domain", 0), props.get("location_id", 0))})
    return nodes


def _int(text: str | None) -> int:
    try:
        return int((text or "").strip())
    except ValueError:
        return 0


class SysfsBackend:
    name = "sysfs"

    def __init__(self, root: str = "/"):
        self.root = root
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.handles: dict = {}
        self.skip: set[str] = set()      # vendors a library already answered for

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def open(self) -> None:
        if not (os.path.isdir(self.path("proc/driver/nvidia/gpus")) or kfd_nodes(self.root)):
            raise BackendUnavailable("no /proc/driver/nvidia/gpus and no KFD GPU nodes")

    def close(self) -> None:
        pass

    def discover(self) -> list[Accelerator]:
        return ((self._nvidia() if "nvidia" not in self.skip else [])
                + (self._amd() if "amd" not in self.skip else []))

    def _nvidia(self) -> list[Accelerator]:
        out = []
        infos = sorted(glob.glob(self.path("proc/driver/nvidia/gpus", "*", "information")))
        for order, info in enumerate(infos):
            fields = {}
            for line in (read_text(info) or "").splitlines():
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
            minor = fields.get("Device Minor", "")
            if not minor.isdigit():
                self.problems.append(f"{info}: no Device Minor")
                continue
            bdf = normalize_bdf(fields.get("Bus Location") or os.path.basename(os.path.dirname(info)))
            numa, cpus = pci_locality(self.root, bdf)
            model = fields.get("Model", "NVIDIA GPU")
            out.append(Accelerator(
                vendor="nvidia", type=short_type(model), model=model,
                uuid=fields.get("GPU UUID") or None, bdf=bdf,
                device_files=[self.path(f"dev/nvidia{minor}")], numa_node=numa, cpus=cpus,
                env=NVIDIA_ENV, env_id=str(order), vendor_index=order, backend=self.name))
        if out:
            self.notes.append("NVIDIA GPUs read from /proc/driver/nvidia: no memory, MIG or "
                              "NVLink information (install nvidia-ml-py for those)")
        return out

    def _amd(self) -> list[Accelerator]:
        nodes = kfd_nodes(self.root)
        per_bdf: dict[str, int] = {}
        for n in nodes:
            per_bdf[n["bdf"]] = per_bdf.get(n["bdf"], 0) + 1
        out, by_node = [], {}
        seen: dict[str, int] = {}
        for order, n in enumerate(nodes):
            bdf = n["bdf"]
            part = seen.get(bdf, 0)
            seen[bdf] = part + 1
            partitioned = per_bdf[bdf] > 1
            numa, cpus = pci_locality(self.root, bdf)
            model = _amd_model(self.root, bdf, n.get("device_id"))
            compute = (read_text(self.path("sys/bus/pci/devices", bdf, "current_compute_partition"))
                       or "").strip() or None
            render = n.get("drm_render_minor")
            files = [self.path(f"dev/dri/renderD{render}")] if render else []
            rec = Accelerator(
                vendor="amd", type=short_type(model), model=model, bdf=bdf,
                mem_mb=n["mem_bytes"] // (1024 * 1024), device_files=files,
                numa_node=numa, cpus=cpus, parent=bdf if partitioned else None,
                profile=compute if partitioned else None, env=AMD_ENV, env_id=str(order),
                vendor_index=order, sub_index=part if partitioned else None, backend=self.name)
            out.append(rec)
            by_node[n["node"]] = rec
        for n in nodes:
            rec = by_node[n["node"]]
            for to, kind, weight in n["links"]:
                peer = by_node.get(to)
                if peer is not None and kind == IOLINK_XGMI:
                    rec.links[peer.key] = max(1, 32 - (weight or 15) // 4)
            for peer in out:
                if peer is not rec and peer.bdf == rec.bdf:
                    rec.links[peer.key] = 64
        return out

    def sample(self, devices) -> dict:
        return {}           # inventory only: no telemetry without a library

    def watch_events(self, stop, emit, devices) -> None:
        return None


def _amd_model(root: str, bdf: str, device_id: int | None) -> str:
    name = (read_text(os.path.join(root, "sys/bus/pci/devices", bdf, "product_name")) or "").strip()
    if name:
        return name
    if device_id in DEVICE_MODEL:
        return f"AMD Instinct {DEVICE_MODEL[device_id]}"
    return f"AMD GPU {device_id:#06x}" if device_id else "AMD GPU"
