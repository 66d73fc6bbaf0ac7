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


class Unopened:
    """The handle of a device that failed at discovery: it samples as lost, so its
    health verdict holds until a fresh discovery finds it well."""

    def __init__(self, why: str):
        self.why = why


def sample_each(handles: dict, devices, sample_one) -> dict[str, dict]:
    """key -> sample_one(device, handle) for the devices the backend has a handle for;
    a device that is gone samples as {"lost": why}."""
    out = {}
    for dev in devices:
        h = handles.get(dev.key)
        if h is None:
            continue
        if isinstance(h, Unopened):
            out[dev.key] = {"lost": h.why}
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


def numa_of_cpus(root: str, cpus: list[int]) -> int | None:
    """The NUMA node all of `cpus` belong to (/sys/devices/system/node/node<N>/cpulist),
    or None where they span nodes or the tree is not there."""
    base = os.path.join(root, "sys/devices/system/node")
    try:
        names = [n for n in os.listdir(base) if n.startswith("node") and n[4:].isdigit()]
    except OSError:
        return None
    want = set(cpus)
    for name in names:
        text = read_text(os.path.join(base, name, "cpulist"))
        if text and want <= set(parse_cpus(text)):
            return int(name[4:])
    return None
