"""Accelerators as cluster.toml declares them ([[nodes.gpus]] tables).

The static backend is how an admin describes what no library can see (an NPU with device
files and a visibility variable), how `rms-local --gpus N` describes stand-in devices,
and what an auto-detected node is checked against (`gpu_detect = "check"`).
"""
from __future__ import annotations

from rmsbatch.node.cgroup import parse_cpus
from rmsbatch.node.devices.record import Accelerator


def from_config(gpus, vendors: set[str] | None = None) -> list[Accelerator]:
    """Records for the config's GpuDefs (all, or only those of `vendors`), in order;
    `index` is left for discovery to assign."""
    out = []
    for g in gpus:
        if vendors is not None and g.vendor not in vendors:
            continue
        out.append(Accelerator(
            vendor=g.vendor, type=g.type, model=g.type, mem_mb=g.mem_mb or 0,
            device_files=[g.file] if g.file else [],
            cpus=parse_cpus(g.cpus) if g.cpus else [],
            env=g.env, env_id=str(g.index), backend="static", vendor_index=g.index))
    return out
