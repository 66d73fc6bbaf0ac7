"""Which backends find a node's accelerators, and whether they agree with cluster.toml.

    inv = discover(node_def, backends=("nvml", "amdsmi", "sysfs"), root="/")
    inv.devices     every device, indexed 0..n-1 for this node in the libraries' order;
                    one that would not answer at discovery is listed with its `fault`
                    (drained, not the node) so that the others keep their indices
    inv.problems    what makes the node unfit (a mismatch with the declared devices, a
                    backend that failed): the node is drained
    inv.notes       what an admin should know but that does not drain (GPUs outside
                    this container, a MIG mode change pending...)

gpu_detect = "static": the [[nodes.gpus]] tables, nothing else.
gpu_detect = "auto":   NVIDIA devices from NVML (else from /proc), AMD devices from AMD
                       SMI (else from the KFD topology), then the tables of vendor
                       "other" (accelerators no library knows).
gpu_detect = "check":  as auto, and the tables of vendors nvidia and amd must describe
                       what was found (types, counts, device files), as Slurm checks
                       gres.conf against AutoDetect.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from rmsbatch.node.devices import static
from rmsbatch.node.devices.backend import BackendUnavailable
from rmsbatch.node.devices.record import Accelerator

log = logging.getLogger("rmsbatch.devices.discovery")

DEFAULT_BACKENDS = ("nvml", "amdsmi", "sysfs")


@dataclass
class Inventory:
    devices: list[Accelerator] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    backends: dict[str, str] = field(default_factory=dict)   # backend -> "used" or why not
    opened: list = field(default_factory=list)               # backends left open (sampling)

    def to_dict(self) -> dict:
        return {"devices": [d.to_dict() for d in self.devices], "problems": self.problems,
                "notes": self.notes, "backends": self.backends}

    @classmethod
    def from_dict(cls, data: dict) -> "Inventory":
        return cls([Accelerator.from_dict(d) for d in data.get("devices") or []],
                   list(data.get("problems") or []), list(data.get("notes") or []),
                   dict(data.get("backends") or {}))

    def close(self) -> None:
        for backend in self.opened:
            backend.close()
        self.opened = []


def make_backend(name: str, root: str = "/", modules: dict | None = None):
    modules = modules or {}
    if name == "nvml":
        from rmsbatch.node.devices.nvml import NvmlBackend
        return NvmlBackend(modules.get("pynvml"), root)
    if name == "amdsmi":
        from rmsbatch.node.devices.amd import AmdSmiBackend
        return AmdSmiBackend(modules.get("amdsmi"), root)
    if name == "sysfs":
        from rmsbatch.node.devices.sysfs import SysfsBackend
        return SysfsBackend(root)
    raise ValueError(f"unknown accelerator backend {name!r} (use nvml, amdsmi or sysfs)")


def static_inventory(gpus) -> Inventory:
    inv = Inventory(static.from_config(gpus))
    number(inv.devices)
    inv.backends["static"] = "used"
    return inv


def discover(gpus, mode: str = "auto", backends=DEFAULT_BACKENDS, root: str = "/",
             modules: dict | None = None, keep_open: bool = False) -> Inventory:
    """The node's devices. `gpus`: the node's GpuDefs from cluster.toml; `modules`:
    library modules to use instead of importing them (tests)."""
    if mode == "static":
        return static_inventory(gpus)
    inv = Inventory()
    covered: set[str] = set()
    for name in backends:
        backend = make_backend(name, root, modules)
        if name == "sysfs":
            backend.skip = set(covered)
        try:
            backend.open()
        except BackendUnavailable as exc:
            inv.backends[name] = str(exc)
            continue
        try:
            found = backend.discover()
        except BackendUnavailable as exc:
            inv.backends[name] = str(exc)
            backend.close()
            continue
        # sysfs only fills in a vendor no library covered
        found = [d for d in found if d.vendor not in covered] if name == "sysfs" else found
        inv.problems.extend(backend.problems)
        inv.notes.extend(backend.notes)
        inv.devices.extend(found)
        # a library that counts GPUs it may not open still answers for their vendor
        covered.update(d.vendor for d in found)
        covered.update(getattr(backend, "covers", ()))
        inv.backends[name] = f"used ({len(found)} devices)"
        if keep_open and found:
            inv.opened.append(backend)
        else:
            backend.close()
    if mode == "check":
        inv.problems.extend(mismatches(gpus, inv.devices, root))
    others = static.from_config(gpus, vendors={"other"})
    inv.devices.extend(others)
    if others:
        inv.backends["static"] = f"used ({len(others)} devices of vendor other)"
    number(inv.devices)
    return inv


def number(devices: list[Accelerator]) -> None:
    """Node-local indices in discovery order; static devices get their variable's
    position as their unfenced value (a second accelerator kind counts from 0)."""
    per_env: dict[str, int] = {}
    for i, dev in enumerate(devices):
        dev.index = i
        if dev.backend == "static":
            dev.env_id = str(per_env.get(dev.env, 0))
        per_env[dev.env] = per_env.get(dev.env, 0) + 1


def mismatches(gpus, found: list[Accelerator], root: str = "/") -> list[str]:
    """How the declared nvidia/amd devices differ from the ones found, in words."""
    declared = [g for g in gpus if g.vendor in ("nvidia", "amd")]
    problems = []
    # A failed GPU the driver could not name either may be any declared one: it excuses
    # one missing device (it is drained on its own), never a surplus.
    unnamed = sum(1 for d in found if d.fault and not d.uuid and not d.device_files)
    found = [d for d in found if not (d.fault and not d.uuid and not d.device_files)]
    want: dict[str, int] = {}
    for g in declared:
        want[g.type] = want.get(g.type, 0) + 1
    have: dict[str, int] = {}
    for d in found:
        have[d.type] = have.get(d.type, 0) + 1
    short = sum(max(0, want.get(k, 0) - have.get(k, 0)) for k in want)
    for kind in sorted(set(want) | set(have)):
        w, h = want.get(kind, 0), have.get(kind, 0)
        if w != h and not (h < w and short <= unnamed):
            problems.append(f"GPU inventory mismatch: cluster.toml declares {w} {kind}, "
                            f"found {h}")
    found_files = {f for d in found for f in d.device_files}
    missing = [g for g in declared
               if g.file and os.path.join(root, g.file.lstrip("/")) not in found_files]
    if len(missing) > unnamed:
        for g in missing:
            problems.append(f"GPU inventory mismatch: {g.file} ({g.type}) declared but not found")
    return problems
