"""Realistic machines for the fake NVML and AMD SMI (what `nvidia-smi` / `amd-smi`
would report on them), and the device trees their drivers create.

    dgx_h100()     8 x H100 80GB HBM3 on NVSwitch (18 NVLink lanes each), 2 NUMA nodes
    a100_mig()     2 x A100-SXM4-80GB: GPU 0 in MIG mode (3g.40gb, 2g.20gb, 1g.10gb x2,
                   one empty slot), GPU 1 whole
    mixed()        2 x A100 80GB PCIe joined by an NVLink bridge + 2 x L40S (no NVLink);
                   GPUs 0 and 1 behind one PCIe switch
    mi300x_cpx()   AMD SMI view of 2 x MI300X in CPX mode: 16 logical GPUs
"""
from __future__ import annotations

import os

GIB = 1024


def _uuid(prefix: str, n: int) -> str:
    return f"{prefix}-{n:08x}-1f2e-3d4c-5b6a-{n * 7919:012x}"


def dgx_h100() -> dict:
    buses = ["1B", "43", "52", "61", "9D", "C3", "D1", "DF"]
    gpus = []
    for i, bus in enumerate(buses):
        gpus.append({
            "name": "NVIDIA H100 80GB HBM3", "uuid": _uuid("GPU", 0xA0 + i),
            "bus_id": f"00000000:{bus}:00.0", "minor": i, "mem_mb": 81559,
            "numa": 0 if i < 4 else 1, "cpus": "0-55,112-167" if i < 4 else "56-111,168-223",
            "nvlinks": [{"remote": "switch", "count": 18}],
            "power_mw": 69_000 + i * 100, "energy_mj": 5_000_000 + i, "temp": 31 + i,
            "sm_clock": 1980,
        })
    return {"driver": "550.54.15", "gpus": gpus, "events": []}


def a100_mig(first_minor: int = 0) -> dict:
    mig = {"current": 1, "pending": 1, "slots": 7, "devices": [
        {"slot": 0, "profile": "3g.40gb", "mem_mb": 40192, "gi": 1, "ci": 0, "uuid": _uuid("MIG", 1)},
        {"slot": 1, "profile": "2g.20gb", "mem_mb": 19968, "gi": 5, "ci": 0, "uuid": _uuid("MIG", 2)},
        # slot 2 is empty: instances need not be contiguous
        {"slot": 3, "profile": "1g.10gb", "mem_mb": 9728, "gi": 13, "ci": 0, "uuid": _uuid("MIG", 3)},
        {"slot": 4, "profile": "1g.10gb", "mem_mb": 9728, "gi": 14, "ci": 0, "uuid": _uuid("MIG", 4)},
    ]}
    return {"driver": "535.161.08", "events": [], "gpus": [
        {"name": "NVIDIA A100-SXM4-80GB", "uuid": _uuid("GPU", 0x10), "bus_id": "00000000:07:00.0",
         "minor": first_minor, "mem_mb": 81920, "numa": 0, "cpus": "0-31", "mig": mig,
         "nvlinks": [{"remote": "00000000:0F:00.0", "count": 12}]},
        {"name": "NVIDIA A100-SXM4-80GB", "uuid": _uuid("GPU", 0x11), "bus_id": "00000000:0F:00.0",
         "minor": first_minor + 1, "mem_mb": 81920, "numa": 0, "cpus": "0-31",
         "mig": {"current": 0, "pending": 0, "devices": []},
         "nvlinks": [{"remote": "00000000:07:00.0", "count": 12}]},
    ]}


def cap_minor(gpu_minor: int, gi: int, ci: int | None = None) -> int:
    """The driver's numbering of MIG capability minors: per GPU 15 GPU instances,
    each with an access minor and 8 compute-instance minors."""
    base = 3 + gpu_minor * 135 + gi * 9
    return base if ci is None else base + 1 + ci


def mig_minors(minors=range(2)) -> str:
    """/proc/driver/nvidia-caps/mig-minors as the driver writes it."""
    lines = ["config 1", "monitor 2"]
    for g in minors:
        for gi in range(15):
            lines.append(f"gpu{g}/gi{gi}/access {cap_minor(g, gi)}")
            lines.extend(f"gpu{g}/gi{gi}/ci{ci}/access {cap_minor(g, gi, ci)}" for ci in range(8))
    return "\n".join(lines) + "\n"


def mixed() -> dict:
    return {"driver": "550.90.07", "events": [], "gpus": [
        {"name": "NVIDIA A100 80GB PCIe", "uuid": _uuid("GPU", 0x20), "bus_id": "00000000:17:00.0",
         "minor": 0, "mem_mb": 81920, "numa": 0, "cpus": "0-15", "pcie_switch": 0,
         "nvlinks": [{"remote": "00000000:65:00.0", "count": 12}]},
        {"name": "NVIDIA L40S", "uuid": _uuid("GPU", 0x21), "bus_id": "00000000:31:00.0",
         "minor": 1, "mem_mb": 46068, "numa": 0, "cpus": "0-15", "pcie_switch": 0,
         "unsupported": ["nvlink"]},
        {"name": "NVIDIA A100 80GB PCIe", "uuid": _uuid("GPU", 0x22), "bus_id": "00000000:65:00.0",
         "minor": 2, "mem_mb": 81920, "numa": 1, "cpus": "16-31",
         "nvlinks": [{"remote": "00000000:17:00.0", "count": 12}]},
        {"name": "NVIDIA L40S", "uuid": _uuid("GPU", 0x23), "bus_id": "00000000:CA:00.0",
         "minor": 3, "mem_mb": 46068, "numa": 1, "cpus": "16-31", "unsupported": ["nvlink"]},
    ]}


def mi300x_cpx(physical: int = 2) -> dict:
    """amd-smi's view: one processor per CPX partition; partitions share the card's PCI
    address and have render minors in blocks of 8 per card (128.., 136..)."""
    procs = []
    buses = ["0c", "22", "38", "5c", "9f", "af", "bf", "df"][:physical]
    for card, bus in enumerate(buses):
        for part in range(8):
            procs.append({
                "bdf": f"0000:{bus}:00.0", "market_name": "AMD Instinct MI300X",
                "device_id": 0x74a1, "vram_mb": 24576, "partition_id": part,
                "compute_partition": "CPX", "memory_partition": "NPS1",
                "render": 128 + 8 * card + part, "card": card if part == 0 else None,
                "hip_id": card * 8 + part, "numa": card // 4, "xgmi": True,
                "activity": 10 * part, "power_w": 300 + card, "temp": 40 + part,
            })
    return {"processors": procs, "library": True}


def proc_tree(root: str, machine: dict) -> None:
    """root/proc/driver/nvidia/gpus/<bdf>/information for each GPU of an NVML machine,
    as the driver writes it (the layout of tests/data/sysfs/dgx-h100): the driver's own
    list, which names a GPU even when NVML cannot open it."""
    for g in machine["gpus"]:
        bus = g["bus_id"].lower()[4:]             # "00000000:1B:00.0" -> "0000:1b:00.0"
        path = os.path.join(root, "proc", "driver", "nvidia", "gpus", bus)
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "information"), "w") as fh:
            fh.write(f"Model: \t\t {g['name']}\nIRQ:   \t\t {500 + g['minor']}\n"
                     f"GPU UUID: \t {g['uuid']}\nVideo BIOS: \t 96.00.74.00.01\n"
                     "Bus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\n"
                     f"Bus Location: \t {bus}\nDevice Minor: \t {g['minor']}\n"
                     f"GPU Firmware: \t {machine.get('driver', '550.54.15')}\n"
                     "GPU Excluded:\t No\n")


def node_tree(root: str, machine: dict) -> None:
    """root/sys/devices/system/node/node<N>/cpulist from the GPUs' NUMA nodes and CPUs."""
    cpus: dict[int, str] = {}
    for g in machine["gpus"]:
        if "numa" in g and g.get("cpus"):
            cpus[g["numa"]] = g["cpus"]
    for node, text in cpus.items():
        path = os.path.join(root, "sys", "devices", "system", "node", f"node{node}")
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "cpulist"), "w") as fh:
            fh.write(text + "\n")


def device_tree(root: str, minors, ttys, mig: bool = False) -> None:
    """root/dev/nvidia<minor> -> /dev/tty<N> (stand-in character devices), root/proc's
    mig-minors, and root/dev/nvidia-caps/nvidia-cap<N> for MIG."""
    os.makedirs(os.path.join(root, "dev", "nvidia-caps"), exist_ok=True)
    ttys = list(ttys)
    for minor, tty in zip(minors, ttys):
        path = os.path.join(root, "dev", f"nvidia{minor}")
        if not os.path.lexists(path):
            os.symlink(f"/dev/tty{tty}", path)
    if mig:
        caps = os.path.join(root, "proc", "driver", "nvidia-caps")
        os.makedirs(caps, exist_ok=True)
        with open(os.path.join(caps, "mig-minors"), "w") as fh:
            fh.write(mig_minors(minors))


def mig_device_tree(root: str, machine: dict, ttys) -> dict[str, list[str]]:
    """For a machine with MIG instances: root/dev/nvidia<minor> and the capability files
    of every instance as stand-in ttys, and mig-minors; returns, per MIG UUID, the
    device files the instance is (the parent's and its two capabilities)."""
    ttys = list(ttys)
    minors = [g["minor"] for g in machine["gpus"]]
    device_tree(root, minors, ttys[:len(minors)], mig=True)
    ttys = iter(ttys[len(minors):])
    files = {}
    for g in machine["gpus"]:
        for m in (g.get("mig") or {}).get("devices", []):
            own = []
            for minor in (cap_minor(g["minor"], m["gi"]), cap_minor(g["minor"], m["gi"], m["ci"])):
                path = os.path.join(root, "dev", "nvidia-caps", f"nvidia-cap{minor}")
                os.symlink(f"/dev/tty{next(ttys)}", path)
                own.append(path)
            files[m["uuid"]] = [os.path.join(root, "dev", f"nvidia{g['minor']}"), *own]
    return files
