"""What every accelerator backend shares: its errors, the sampling loop, and reading
small files under a filesystem root (sysfs, procfs)."""
from __future__ import annotations

import os

from rmsbatch.node.cgroup import parse_cpus


class BackendUnavailable(Exception):
    """The backend cannot run on this host (no library, no driver, no sysfs entries);
    the message says why, for the node's record."""


class DeviceLost(Exception):
    """A device stopped answering (NVML GPU_IS_LOST, AMD SMI NOT_FOUND)."""


def sample_each(handles: dict, devices, sample_one) -> dict[str, dict]:
    """key -> sample_one(device, handle) for the devices the backend has a handle for;
    a device that is gone samples as {"lost": why}."""
    out = {}
    for dev in devices:
        h = handles.get(dev.key)
        if h is None:
            continue
        try:
            out[dev.key] = sample_one(dev, h)
        except DeviceLost as exc:
            out[dev.key] = {"lost": str(exc)}
    return out


def read_text(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def read_int(path: str) -> int | None:
    text = read_text(path)
    try:
        return int(text.strip()) if text is not None else None
    except ValueError:
        return None


def pci_locality(root: str, bdf: str) -> tuple[int | None, list[int]]:
    """(NUMA node, local CPUs) of a PCI device from sysfs; (None, []) where unknown
    (numa_node reads -1 on machines with one node)."""
    pci = os.path.join(root, "sys/bus/pci/devices", bdf)
    numa = read_int(os.path.join(pci, "numa_node"))
    cpus = read_text(os.path.join(pci, "local_cpulist"))
    return (numa if numa is not None and numa >= 0 else None), (parse_cpus(cpus) if cpus else [])
