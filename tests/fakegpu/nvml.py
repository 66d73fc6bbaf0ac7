"""A fake NVML at the narrowest boundary: the `pynvml` module's own API.

FakeNvml(machine) answers the pynvml calls rmsbatch makes, with the same names and
parameters, from a machine description (tests/fakegpu/machines.py). Everything else
comes from the real nvidia-ml-py: the NVMLError classes (so `except
pynvml.NVMLError_GpuIsLost` is exercised for real), the constants, and the ctypes
structures it returns. A machine can come from a JSON file that is re-read when it
changes, so a test can make a GPU fail while the daemons run.

Per GPU of a machine (all optional but name/uuid/bus_id/minor/mem_mb):
    name, uuid, bus_id ("00000000:18:00.0"), minor, mem_mb, numa, cpus ("0-55"),
    nvlinks [{"remote": bus id | "switch", "count": N}],
    mig {"current": 1, "pending": 1, "slots": 7,
         "devices": [{"slot", "profile", "mem_mb", "gi", "ci", "uuid"}]},
    lost, no_permission, fault, unsupported [metric names], util, mem_used_mb, power_mw,
    energy_mj, temp, sm_clock, throttle, ecc_uncorrected, remap [corr, unc, pending, failed],
    retired_pending, processes [[pid, MiB or None]]
`numa` is where the GPU is; `pcie_switch` (a number) puts GPUs behind one PCIe switch,
otherwise the NUMA node decides how far apart they are. `unsupported` names what answers
NOT_SUPPORTED: util power energy temp clock throttle ecc remap retired processes numa (the
NUMA-id call only, as on x86 hosts) memory_affinity affinity mig nvlink nvlink_type events
topology. `lost`: every call answers GPU_IS_LOST, nvmlDeviceGetHandleByIndex included, as
for a GPU that fell off the bus. `no_permission`: true when nvmlDeviceGetHandleByIndex
answers NO_PERMISSION (a GPU outside the container's device cgroup: nvmlDeviceGetCount
still counts it), or a list of the identifying calls that do (uuid name pci minor).
`fault`: another error nvmlDeviceGetHandleByIndex documents (INSUFFICIENT_POWER,
IRQ_ISSUE, UNKNOWN).
Machine: {"library": true, "driver": "...", "gpus": [...], "events": [{"gpu", "xid"}]}
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
import time
from types import SimpleNamespace


def real_pynvml():
    """The installed nvidia-ml-py module, even when a fake `pynvml` shadows it."""
    if "_real_pynvml" in sys.modules:
        return sys.modules["_real_pynvml"]
    mod = sys.modules.get("pynvml")
    if mod is None and not any("fakegpu" in (p or "") for p in sys.path):
        import pynvml as mod
    if mod is not None and not getattr(mod, "IS_FAKE", False):
        return mod
    for entry in sys.path:
        path = os.path.join(entry or ".", "pynvml.py")
        if os.path.exists(path) and "fakegpu" not in path:
            spec = importlib.util.spec_from_file_location("_real_pynvml", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules["_real_pynvml"] = module     # it looks itself up while loading
            spec.loader.exec_module(module)
            return module
    raise ImportError("nvidia-ml-py is not installed (pip install nvidia-ml-py)")


class _Handle:
    __slots__ = ("gpu", "slot")

    def __init__(self, gpu: int, slot: int | None = None):
        self.gpu, self.slot = gpu, slot

    def __repr__(self):
        return f"<fake nvmlDevice gpu {self.gpu}" + (f" mig {self.slot}>" if self.slot is not None else ">")


class FakeNvml:
    IS_FAKE = True

    def __init__(self, machine: dict | str):
        real = real_pynvml()
        for name in dir(real):
            if name.startswith(("NVML", "nvmlEventType", "nvmlClocks", "c_nvml", "nvmlPciInfo")):
                setattr(self, name, getattr(real, name))
        self._real = real
        self._path = machine if isinstance(machine, str) else None
        self._machine = None if self._path else machine
        self._mtime = None
        self._inits = 0
        self._delivered = 0
        self._lock = threading.Lock()
        self.calls: list[str] = []

    # -- the machine ----------------------------------------------------------------
    @property
    def machine(self) -> dict:
        if self._path:
            mtime = os.stat(self._path).st_mtime_ns
            if mtime != self._mtime:
                with open(self._path) as fh:
                    self._machine = json.load(fh)
                self._mtime = mtime
        return self._machine

    def _fail(self, code):
        raise self.NVMLError(code)

    def _need_init(self):
        if self._inits <= 0:
            self._fail(self.NVML_ERROR_UNINITIALIZED)

    def _gpu(self, handle, metric: str | None = None) -> dict:
        self._need_init()
        if not isinstance(handle, _Handle):
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        gpus = self.machine["gpus"]
        if handle.gpu >= len(gpus):
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        g = gpus[handle.gpu]
        if g.get("lost"):
            self._fail(self.NVML_ERROR_GPU_IS_LOST)
        if metric and metric in g.get("unsupported", []):
            self._fail(self.NVML_ERROR_NOT_SUPPORTED)
        if metric and isinstance(g.get("no_permission"), list) and metric in g["no_permission"]:
            self._fail(self.NVML_ERROR_NO_PERMISSION)
        return g

    def _mig(self, handle) -> dict | None:
        if handle.slot is None:
            return None
        g = self._gpu(handle)
        for m in (g.get("mig") or {}).get("devices", []):
            if m["slot"] == handle.slot:
                return m
        self._fail(self.NVML_ERROR_INVALID_ARGUMENT)

    def __getattribute__(self, name):
        if name.startswith("nvml") and not name.startswith(("nvmlEventType", "nvmlClocks", "nvmlPci")):
            object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)

    # -- init -------------------------------------------------------------------------
    def nvmlInit(self):
        if not self.machine.get("library", True):
            self._fail(self.NVML_ERROR_LIBRARY_NOT_FOUND)
        if not self.machine.get("driver_loaded", True):
            self._fail(self.NVML_ERROR_DRIVER_NOT_LOADED)
        self._inits += 1

    def nvmlShutdown(self):
        self._need_init()
        self._inits -= 1

    def nvmlSystemGetDriverVersion(self):
        self._need_init()
        return self.machine.get("driver", "550.54.15")

    # -- discovery --------------------------------------------------------------------
    def nvmlDeviceGetCount(self):
        self._need_init()
        return len(self.machine["gpus"])

    def nvmlDeviceGetHandleByIndex(self, index):
        self._need_init()
        gpus = self.machine["gpus"]
        if not 0 <= index < len(gpus):
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        if gpus[index].get("no_permission") is True:
            self._fail(self.NVML_ERROR_NO_PERMISSION)
        if gpus[index].get("lost"):
            self._fail(self.NVML_ERROR_GPU_IS_LOST)
        if gpus[index].get("fault"):
            self._fail(getattr(self, "NVML_ERROR_" + gpus[index]["fault"]))
        return _Handle(index)

    def nvmlDeviceGetUUID(self, handle):
        g = self._gpu(handle, "uuid")
        m = self._mig(handle)
        return m["uuid"] if m else g["uuid"]

    def nvmlDeviceGetName(self, handle):
        g = self._gpu(handle, "name")
        m = self._mig(handle)
        return f"{g['name']} MIG {m['profile']}" if m else g["name"]

    def nvmlDeviceGetPciInfo(self, handle):
        g = self._gpu(handle, "pci")
        info = self.nvmlPciInfo_t()
        info.busId = g["bus_id"].encode()
        info.busIdLegacy = g["bus_id"][4:].encode()
        return info

    def nvmlDeviceGetMinorNumber(self, handle):
        return self._gpu(handle, "minor")["minor"]

    def nvmlDeviceGetIndex(self, handle):
        self._gpu(handle)
        return handle.slot if handle.slot is not None else handle.gpu

    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        g = self._gpu(handle)
        m = self._mig(handle)
        total = (m or g)["mem_mb"] * 1024 * 1024
        used = (m or g).get("mem_used_mb", 0) * 1024 * 1024
        return self.c_nvmlMemory_t(total=total, free=total - used, used=used)

    def nvmlDeviceGetNumaNodeId(self, handle):
        g = self._gpu(handle, "numa")
        if "numa" not in g:
            self._fail(self.NVML_ERROR_NOT_SUPPORTED)
        return g["numa"]

    def nvmlDeviceGetMemoryAffinity(self, handle, nodeSetSize, scope):
        """The NUMA nodes whose memory is closest, as a bit mask in 64-bit words: the
        GPU's node (NVML_AFFINITY_SCOPE_NODE), or every node of its socket (SOCKET;
        `socket` in the machine, else the node alone)."""
        g = self._gpu(handle, "memory_affinity")
        if scope == self.NVML_AFFINITY_SCOPE_SOCKET and "socket" in g:
            nodes = {o.get("numa", 0) for o in self.machine["gpus"] if o.get("socket") == g["socket"]}
        else:
            nodes = {g.get("numa", 0)}
        words = (self._real.c_ulonglong * nodeSetSize)()
        for node in nodes:
            if node // 64 < nodeSetSize:
                words[node // 64] |= 1 << (node % 64)
        return words

    def nvmlDeviceGetCpuAffinity(self, handle, cpuSetSize):
        g = self._gpu(handle, "affinity")
        words = (self._real.c_ulonglong * cpuSetSize)()
        for part in (g.get("cpus") or "").split(","):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            for cpu in range(int(lo), int(hi or lo) + 1):
                if cpu // 64 < cpuSetSize:
                    words[cpu // 64] |= 1 << (cpu % 64)
        return words

    # -- MIG ------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, device):
        g = self._gpu(device, "mig")
        mig = g.get("mig")
        if mig is None:
            self._fail(self.NVML_ERROR_NOT_SUPPORTED)
        return [mig.get("current", 1), mig.get("pending", mig.get("current", 1))]

    def nvmlDeviceGetMaxMigDeviceCount(self, device):
        g = self._gpu(device)
        return (g.get("mig") or {}).get("slots", 7)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device, index):
        g = self._gpu(device)
        for m in (g.get("mig") or {}).get("devices", []):
            if m["slot"] == index:
                return _Handle(device.gpu, index)
        self._fail(self.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetGpuInstanceId(self, device):
        self._gpu(device)
        m = self._mig(device)
        if m is None:
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        return m["gi"]

    def nvmlDeviceGetComputeInstanceId(self, device):
        self._gpu(device)
        m = self._mig(device)
        if m is None:
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        return m["ci"]

    # -- NVLink -----------------------------------------------------------------------
    def _links(self, g) -> list[str]:
        lanes = []
        for link in g.get("nvlinks", []):
            lanes.extend([link["remote"]] * link.get("count", 1))
        return lanes

    def nvmlDeviceGetNvLinkState(self, device, link):
        g = self._gpu(device, "nvlink")
        lanes = self._links(g)
        if link >= len(lanes):
            if link >= 18:
                self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
            return self.NVML_FEATURE_DISABLED
        return self.NVML_FEATURE_ENABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, device, link):
        g = self._gpu(device)
        lanes = self._links(g)
        if link >= len(lanes):
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        info = self.nvmlPciInfo_t()
        remote = lanes[link]
        info.busId = (b"00000000:F0:00.0" if remote == "switch" else remote.encode())
        return info

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle, link):
        g = self._gpu(handle, "nvlink_type")
        lanes = self._links(g)
        if link >= len(lanes):
            self._fail(self.NVML_ERROR_INVALID_ARGUMENT)
        return self.NVML_NVLINK_DEVICE_TYPE_SWITCH if lanes[link] == "switch" \
            else self.NVML_NVLINK_DEVICE_TYPE_GPU

    def nvmlDeviceGetTopologyCommonAncestor(self, device1, device2):
        a, b = self._gpu(device1, "topology"), self._gpu(device2, "topology")
        if a.get("pcie_switch") is not None and a.get("pcie_switch") == b.get("pcie_switch"):
            return self.NVML_TOPOLOGY_SINGLE
        if a.get("numa", 0) == b.get("numa", 0):
            return self.NVML_TOPOLOGY_NODE
        return self.NVML_TOPOLOGY_SYSTEM

    # -- telemetry -------------------------------------------------------------------
    def _value(self, handle, metric, key, default):
        g = self._gpu(handle, metric)
        m = self._mig(handle)
        if m is not None and metric in ("util",):
            self._fail(self.NVML_ERROR_NOT_SUPPORTED)     # as on real MIG devices
        return (m or g).get(key, g.get(key, default))

    def nvmlDeviceGetUtilizationRates(self, handle):
        util = self._value(handle, "util", "util", 0)
        return self.c_nvmlUtilization_t(gpu=util, memory=util // 2)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._value(handle, "power", "power_mw", 70_000)

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._value(handle, "energy", "energy_mj", 1_000_000)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return self._value(handle, "temp", "temp", 35)

    def nvmlDeviceGetClockInfo(self, handle, type):
        return self._value(handle, "clock", "sm_clock", 1410)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle):
        return self._value(handle, "throttle", "throttle", 0)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle):
        return self._value(handle, "throttle", "throttle", 0)

    def nvmlDeviceGetTotalEccErrors(self, handle, errorType, counterType):
        return self._value(handle, "ecc", "ecc_uncorrected", 0)

    def nvmlDeviceGetRemappedRows(self, device):
        return tuple(self._value(device, "remap", "remap", [0, 0, 0, 0]))

    def nvmlDeviceGetRetiredPagesPendingStatus(self, device):
        return int(bool(self._value(device, "retired", "retired_pending", 0)))

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        procs = self._value(handle, "processes", "processes", [])
        m = self._mig(handle)
        out = []
        for pid, mib in procs:
            out.append(SimpleNamespace(pid=pid, usedGpuMemory=None if mib is None else mib << 20,
                                       gpuInstanceId=m["gi"] if m else 0xFFFFFFFF,
                                       computeInstanceId=m["ci"] if m else 0xFFFFFFFF))
        return out

    # -- events -----------------------------------------------------------------------
    def nvmlEventSetCreate(self):
        self._need_init()
        # as the driver: only events that happen from now on
        self._delivered = len(self.machine.get("events", []))
        return SimpleNamespace(registered={})

    def nvmlDeviceGetSupportedEventTypes(self, handle):
        self._gpu(handle, "events")
        return self.nvmlEventTypeXidCriticalError | self.nvmlEventTypeDoubleBitEccError | \
            self.nvmlEventTypeSingleBitEccError

    def nvmlDeviceRegisterEvents(self, handle, eventTypes, eventSet):
        self._gpu(handle)
        eventSet.registered[handle.gpu] = eventTypes

    def nvmlEventSetWait(self, eventSet, timeoutms):
        deadline = time.monotonic() + timeoutms / 1000.0
        while True:
            with self._lock:
                events = self.machine.get("events", [])
                while self._delivered < len(events):
                    ev = events[self._delivered]
                    self._delivered += 1
                    mask = eventSet.registered.get(ev["gpu"], 0)
                    kind = self.nvmlEventTypeXidCriticalError if "xid" in ev \
                        else self.nvmlEventTypeDoubleBitEccError
                    if mask & kind:
                        return SimpleNamespace(device=_Handle(ev["gpu"]), eventType=kind,
                                               eventData=ev.get("xid", 0),
                                               gpuInstanceId=ev.get("gi", 0xFFFFFFFF),
                                               computeInstanceId=ev.get("ci", 0xFFFFFFFF))
            if time.monotonic() >= deadline:
                self._fail(self.NVML_ERROR_TIMEOUT)
            time.sleep(0.02)

    def nvmlEventSetFree(self, eventSet):
        eventSet.registered.clear()


def write_machine(path: str, machine: dict) -> None:
    """Write (or rewrite) a machine file atomically, bumping its mtime."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(machine, fh)
    os.replace(tmp, path)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
