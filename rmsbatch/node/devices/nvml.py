"""NVIDIA GPUs through NVML (package nvidia-ml-py, module `pynvml`).

    backend = NvmlBackend(pynvml)        # or NvmlBackend() to import it here
    backend.open()                       # BackendUnavailable without driver or library
    devices = backend.discover()         # whole GPUs and MIG instances
    samples = backend.sample(devices)    # key -> metrics, every metric optional
    backend.watch_events(stop, emit)     # XID / ECC events, in a thread of its own

The module is a parameter so tests hand in a fake built on the real exception classes.
NotSupported, NoPermission and FunctionNotFound are routine (consumer GPUs, MIG, older
drivers): the metric is None and nothing else changes. GpuIsLost means the device is gone.
"""
from __future__ import annotations

import logging
import math
import os

from rmsbatch.node.devices.backend import (BackendUnavailable, DeviceLost, Unopened,
                                           numa_of_cpus, pci_locality, read_text, sample_each)
from rmsbatch.node.devices.record import (NVIDIA_ENV, Accelerator, cpus_from_mask, mig_profile,
                                     normalize_bdf, short_type)

log = logging.getLogger("rmsbatch.devices.nvml")

MiB = 1024 * 1024
LOST = "GPU is lost (NVML: GPU is lost)"
NODE_WORDS = 4                 # NUMA node masks of 4 x 64 bits: hosts of up to 256 nodes
THERMAL = 0x20 | 0x40          # SwThermalSlowdown | HwThermalSlowdown
NOT_MIG = 0xFFFFFFFF           # gpuInstanceId of an event that names no MIG instance


class NvmlBackend:
    name = "nvml"

    def __init__(self, nvml=None, root: str = "/", ncpus: int | None = None):
        self._nv = nvml
        self.root = root
        self.ncpus = ncpus or os.cpu_count() or 1
        self.handles: dict[str, object] = {}     # device key -> NVML handle
        self.parent: dict[str, object] = {}      # MIG key -> the physical GPU's handle
        self.physical: dict[str, object] = {}    # GPU UUID -> handle (for events)
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.covers: set[str] = set()           # vendors this backend answers for

    @property
    def nv(self):
        if self._nv is None:
            try:
                import pynvml
            except Exception as exc:  # noqa: BLE001 - any import failure means "no NVML"
                raise BackendUnavailable(f"cannot import pynvml ({exc}); install "
                                         "nvidia-ml-py") from None
            self._nv = pynvml
        return self._nv

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    # -- life cycle -------------------------------------------------------------------
    def open(self) -> None:
        nv = self.nv
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise BackendUnavailable(f"{describe(nv, exc)}") from None
        except OSError as exc:
            raise BackendUnavailable(f"{exc}") from None

    def close(self) -> None:
        try:
            self.nv.nvmlShutdown()
        except Exception:  # noqa: BLE001 - shutting down a library that failed is fine
            pass

    def driver_version(self) -> str | None:
        return self._opt(self.nv.nvmlSystemGetDriverVersion)

    # -- discovery --------------------------------------------------------------------
    def discover(self) -> list[Accelerator]:
        """Every GPU NVML counts, in NVML's order: a GPU that fails (lost, no power...)
        stays listed with its `fault`, so the GPUs after it keep their indices and an
        admin reads the right number; a GPU outside this container (NoPermission, which
        nvmlDeviceGetCount still counts) is left out and noted."""
        nv = self.nv
        try:
            count = nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            raise BackendUnavailable(f"cannot count GPUs: {describe(nv, exc)}") from None
        self.covers = {"nvidia"}
        ncpus = self.ncpus
        minors = _mig_minors(self.path("proc/driver/nvidia-caps/mig-minors"))
        records: list[Accelerator] = []
        faulty: list[Accelerator] = []
        outside: list[int] = []
        gpus: list[tuple[str, str, object]] = []           # (uuid, bdf, handle)
        for i in range(count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                uuid = nv.nvmlDeviceGetUUID(h)
                name = nv.nvmlDeviceGetName(h)
                bdf = normalize_bdf(nv.nvmlDeviceGetPciInfo(h).busId)
                minor = nv.nvmlDeviceGetMinorNumber(h)
            except nv.NVMLError_NoPermission:
                outside.append(i)
                continue
            except nv.NVMLError as exc:
                dev = Accelerator(vendor="nvidia", type="gpu", env=NVIDIA_ENV, env_id=str(i),
                                  vendor_index=i, backend=self.name, fault=_fault(nv, exc))
                records.append(dev)
                faulty.append(dev)
                continue
            gpu_file = self.path(f"dev/nvidia{minor}")
            try:
                mem = self._opt(nv.nvmlDeviceGetMemoryInfo, h)
                numa, cpus = self._affinity(h, bdf, ncpus)
                base = dict(vendor="nvidia", bdf=bdf, numa_node=numa, cpus=cpus, env=NVIDIA_ENV,
                            vendor_index=i, backend=self.name)
                if self._mig_enabled(h, i):
                    records.extend(self._mig_devices(h, i, uuid, minor, gpu_file, minors, base))
                    self.physical[uuid] = h
                    gpus.append((uuid, bdf, h))
                    continue
            except DeviceLost as exc:        # lost between the calls that name it and these
                dev = Accelerator(vendor="nvidia", type=short_type(name), model=name, uuid=uuid,
                                  bdf=bdf, device_files=[gpu_file], env=NVIDIA_ENV,
                                  env_id=str(i), vendor_index=i, backend=self.name,
                                  fault=str(exc))
                self.handles[uuid] = Unopened(dev.fault)
                records.append(dev)
                continue
            self.handles[uuid] = h
            self.physical[uuid] = h
            gpus.append((uuid, bdf, h))
            records.append(Accelerator(type=short_type(name), model=name, uuid=uuid,
                                       mem_mb=0 if mem is None else mem.total // MiB,
                                       device_files=[gpu_file], env_id=str(i), **base))
        if faulty:
            self._identify(faulty, records, count)
        if outside:
            self.notes.append(f"NVML GPU{'s' if len(outside) > 1 else ''} {_ranges(outside)} "
                              "outside this container's devices (NVML: Insufficient "
                              "Permissions): not used")
            # CUDA numbers only the GPUs it can open, so NVML's index would name another
            # GPU in an unfenced job: name them by UUID, which CUDA also takes.
            for rec in records:
                if rec.uuid and not rec.is_partition:
                    rec.env_id = rec.uuid
        links = self._nvlinks(gpus)
        pcie = self._pcie(gpus)
        for rec in records:
            if not rec.is_partition:
                rec.links = links.get(rec.uuid, {})
                rec.pcie = pcie.get(rec.uuid, {})
        return records

    def _identify(self, faulty: list[Accelerator], records: list[Accelerator], count: int) -> None:
        """Say which GPU a failed one is from the driver's own list
        (/proc/driver/nvidia/gpus, in PCI order as NVML's indices are), when that list has
        one entry per NVML index and agrees with every GPU NVML named; register each as
        sampling lost."""
        from rmsbatch.node.devices.sysfs import SysfsBackend
        driver = SysfsBackend(self.root)._nvidia()
        trusted = len(driver) == count and all(
            driver[r.vendor_index].bdf == r.bdf for r in records if r.fault is None)
        for dev in faulty:
            if trusted:
                known = driver[dev.vendor_index]
                dev.type, dev.model, dev.uuid, dev.bdf = known.type, known.model, known.uuid, known.bdf
                dev.device_files, dev.numa_node, dev.cpus = known.device_files, known.numa_node, known.cpus
            self.handles[dev.key] = Unopened(dev.fault)

    def _pcie(self, gpus: list[tuple[str, str, object]]) -> dict[str, dict[str, int]]:
        """How far apart two GPUs are on PCIe, as `nvidia-smi topo -m` shows it:
        NVML_TOPOLOGY_SINGLE (10, one switch) ... NODE (40, one NUMA node), SYSTEM (50)."""
        nv = self.nv
        out: dict[str, dict[str, int]] = {}
        for a, _, ha in gpus:
            for b, _, hb in gpus:
                if a < b:
                    level = self._opt(nv.nvmlDeviceGetTopologyCommonAncestor, ha, hb)
                    if isinstance(level, int):
                        out.setdefault(a, {})[b] = level
                        out.setdefault(b, {})[a] = level
        return out

    def _mig_enabled(self, h, i: int) -> bool:
        nv = self.nv
        try:
            current, pending = nv.nvmlDeviceGetMigMode(h)
        except nv.NVMLError_GpuIsLost:
            raise DeviceLost(LOST) from None
        except nv.NVMLError:
            return False      # NotSupported: not a MIG-capable GPU
        if current != pending:
            self.notes.append(f"GPU {i}: MIG mode change pending until the GPU is reset")
        return current == nv.NVML_DEVICE_MIG_ENABLE

    def _mig_devices(self, h, i, uuid, minor, gpu_file, minors, base) -> list[Accelerator]:
        nv = self.nv
        out = []
        try:
            slots = nv.nvmlDeviceGetMaxMigDeviceCount(h)
        except nv.NVMLError_GpuIsLost:
            raise DeviceLost(LOST) from None
        except nv.NVMLError as exc:
            self.problems.append(f"GPU {i}: MIG instances not listed: {describe(nv, exc)}")
            return out
        for j in range(slots):
            try:
                m = nv.nvmlDeviceGetMigDeviceHandleByIndex(h, j)
            except nv.NVMLError_NotFound:
                continue      # an empty slot: instances need not be contiguous
            except nv.NVMLError_GpuIsLost:
                raise DeviceLost(LOST) from None
            except nv.NVMLError as exc:
                self.problems.append(f"GPU {i} MIG device {j}: {describe(nv, exc)}")
                continue
            try:
                muuid = nv.nvmlDeviceGetUUID(m)
                mname = nv.nvmlDeviceGetName(m)
                mem = nv.nvmlDeviceGetMemoryInfo(m).total
                gi = nv.nvmlDeviceGetGpuInstanceId(m)
                ci = nv.nvmlDeviceGetComputeInstanceId(m)
            except nv.NVMLError_GpuIsLost:
                raise DeviceLost(LOST) from None
            except nv.NVMLError as exc:
                self.problems.append(f"GPU {i} MIG device {j}: {describe(nv, exc)}")
                continue
            profile = mig_profile(mname) or f"mig-{mem // MiB}m"
            files = [gpu_file]
            for cap in (f"gpu{minor}/gi{gi}/access", f"gpu{minor}/gi{gi}/ci{ci}/access"):
                if cap in minors:
                    files.append(self.path(f"dev/nvidia-caps/nvidia-cap{minors[cap]}"))
                else:
                    self.notes.append(f"GPU {i} MIG {profile} (gi {gi}, ci {ci}): no {cap} in "
                                      "/proc/driver/nvidia-caps/mig-minors: not fenced")
            self.handles[muuid] = m
            self.parent[muuid] = h
            out.append(Accelerator(type=profile, model=mname, uuid=muuid, mem_mb=mem // MiB,
                                   device_files=files, parent=uuid, profile=profile,
                                   env_id=muuid, env_by_uuid=True, sub_index=j, **base))
        return out

    def _affinity(self, h, bdf: str, ncpus: int) -> tuple[int | None, list[int]]:
        """(NUMA node, local CPUs). nvmlDeviceGetNumaNodeId answers only for GPUs whose
        memory is a NUMA node of its own (Grace Hopper); elsewhere, as on x86 hosts, it is
        NotSupported and the node is the one nvmlDeviceGetMemoryAffinity names, else
        sysfs's, else the node whose CPUs are the GPU's."""
        nv = self.nv
        numa = self._opt(getattr(nv, "nvmlDeviceGetNumaNodeId", None), h)
        words = self._opt(nv.nvmlDeviceGetCpuAffinity, h, math.ceil(ncpus / 64))
        cpus = cpus_from_mask(list(words), ncpus) if words is not None else []
        if numa is None or numa < 0:
            nodes = self._opt(getattr(nv, "nvmlDeviceGetMemoryAffinity", None), h, NODE_WORDS,
                              getattr(nv, "NVML_AFFINITY_SCOPE_NODE", 0))
            near = cpus_from_mask(list(nodes), 64 * NODE_WORDS) if nodes is not None else []
            numa = near[0] if len(near) == 1 else None
        if numa is None or numa < 0 or not cpus:       # older drivers: what sysfs says
            sys_numa, sys_cpus = pci_locality(self.root, bdf)
            numa = sys_numa if numa is None or numa < 0 else numa
            cpus = cpus or sys_cpus
        if numa is None and cpus:
            numa = numa_of_cpus(self.root, cpus)
        return (numa if numa is not None and numa >= 0 else None), cpus

    def _nvlinks(self, gpus: list[tuple[str, str, object]]) -> dict[str, dict[str, int]]:
        """NVLink lanes between GPUs (Slurm's counting: InvalidArgument skips a link,
        NotSupported ends the list). Lanes that end at an NVSwitch join the GPU to the
        switch fabric: every pair on it counts as linked, by the smaller lane count."""
        nv = self.nv
        by_bdf = {bdf: uuid for uuid, bdf, _ in gpus}
        lanes: dict[str, dict[str, int]] = {}
        switch: dict[str, int] = {}
        max_links = getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)
        for uuid, _, h in gpus:
            mine = lanes.setdefault(uuid, {})
            for link in range(max_links):
                try:
                    if not nv.nvmlDeviceGetNvLinkState(h, link):
                        continue
                    remote = normalize_bdf(nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId)
                except nv.NVMLError_InvalidArgument:
                    continue
                except nv.NVMLError:
                    break
                kind = self._opt(getattr(nv, "nvmlDeviceGetNvLinkRemoteDeviceType", None), h, link)
                if kind == getattr(nv, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2) or remote not in by_bdf:
                    switch[uuid] = switch.get(uuid, 0) + 1
                elif by_bdf[remote] != uuid:
                    mine[by_bdf[remote]] = mine.get(by_bdf[remote], 0) + 1
        fabric = list(switch)
        for a in fabric:
            for b in fabric:
                if a != b:
                    lanes[a][b] = lanes[a].get(b, 0) + min(switch[a], switch[b])
        return lanes

    # -- sampling ---------------------------------------------------------------------
    def sample(self, devices: list[Accelerator]) -> dict[str, dict]:
        return sample_each(self.handles, devices, self._sample_one)

    def _sample_one(self, dev: Accelerator, h) -> dict:
        nv = self.nv
        board = self.parent.get(dev.key, h)      # power, heat and ECC are the board's
        util = self._opt(nv.nvmlDeviceGetUtilizationRates, h)
        mem = self._opt(nv.nvmlDeviceGetMemoryInfo, h)
        power = self._opt(nv.nvmlDeviceGetPowerUsage, board)
        energy = None if dev.is_partition else self._opt(nv.nvmlDeviceGetTotalEnergyConsumption, h)
        reasons = self._opt(getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None)
                            or nv.nvmlDeviceGetCurrentClocksThrottleReasons, board)
        remap = self._opt(nv.nvmlDeviceGetRemappedRows, board)
        s = {
            "util_pct": None if util is None else int(util.gpu),
            "mem_used_mb": None if mem is None else int(mem.used) // MiB,
            "power_w": None if power is None else round(power / 1000.0, 1),
            "energy_j": None if energy is None else energy / 1000.0,
            "temp_c": self._opt(nv.nvmlDeviceGetTemperature, board, nv.NVML_TEMPERATURE_GPU),
            "sm_clock_mhz": self._opt(nv.nvmlDeviceGetClockInfo, board, nv.NVML_CLOCK_SM),
            "throttle": reasons,
            "thermal": None if reasons is None else bool(reasons & THERMAL),
            "ecc_uncorrected": self._opt(nv.nvmlDeviceGetTotalEccErrors, board,
                                         nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                         nv.NVML_VOLATILE_ECC),
            "remap_pending": None if remap is None else bool(remap[2]),
            "remap_failed": None if remap is None else bool(remap[3]),
            "retired_pending": None,
            "procs": self._processes(h),
        }
        if remap is None:   # before Ampere: page retirement instead of row remapping
            pending = self._opt(nv.nvmlDeviceGetRetiredPagesPendingStatus, board)
            s["retired_pending"] = None if pending is None else bool(pending)
        return s

    def _processes(self, h) -> list[list[int]] | None:
        nv = self.nv
        procs = None
        for fn in (nv.nvmlDeviceGetComputeRunningProcesses,
                   getattr(nv, "nvmlDeviceGetComputeRunningProcesses_v2", None)):
            if fn is None:
                continue
            try:
                procs = fn(h)
                break
            except (nv.NVMLError_FunctionNotFound, getattr(nv, "NVMLLibraryMismatchError",
                                                           nv.NVMLError_FunctionNotFound)):
                continue   # binding and driver disagree on the struct: try the older call
            except nv.NVMLError_GpuIsLost:
                raise DeviceLost(LOST) from None
            except nv.NVMLError:
                return None
        if procs is None:
            return None
        out = []
        for p in procs:
            used = p.usedGpuMemory
            out.append([int(p.pid), None if used is None else int(used) // MiB])
        return out

    def _opt(self, fn, *args):
        """The value, or None when the call is not there or not supported; DeviceLost
        when the GPU is gone."""
        if fn is None:
            return None
        nv = self.nv
        try:
            return fn(*args)
        except nv.NVMLError_GpuIsLost:
            raise DeviceLost(LOST) from None
        except nv.NVMLError:
            return None

    # -- events -------------------------------------------------------------------------
    def watch_events(self, stop, emit, devices: list[Accelerator], timeout_ms: int = 1000) -> None:
        """Run until `stop` is set: emit(("xid", [keys], code)) for XID critical errors,
        emit(("ecc", [keys], None)) for double-bit ECC errors, emit(("error", [], text))
        when the event stream breaks. Meant for a thread: NVML calls release the GIL."""
        nv = self.nv
        wanted = nv.nvmlEventTypeXidCriticalError | nv.nvmlEventTypeDoubleBitEccError
        try:
            es = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            emit(("error", [], f"NVML events unavailable: {describe(nv, exc)}"))
            return
        for uuid, h in self.physical.items():
            try:
                mask = nv.nvmlDeviceGetSupportedEventTypes(h) & wanted
                if mask:
                    nv.nvmlDeviceRegisterEvents(h, mask, es)
            except nv.NVMLError as exc:
                log.info("GPU %s: no health events: %s", uuid, describe(nv, exc))
        try:
            while not stop.is_set():
                try:
                    data = nv.nvmlEventSetWait(es, timeout_ms)
                except nv.NVMLError_Timeout:
                    continue
                except nv.NVMLError as exc:
                    emit(("error", [], f"NVML event wait failed: {describe(nv, exc)}"))
                    stop.wait(5)
                    continue
                keys = self._event_keys(data, devices)
                if data.eventType & nv.nvmlEventTypeXidCriticalError:
                    emit(("xid", keys, int(data.eventData)))
                elif data.eventType & nv.nvmlEventTypeDoubleBitEccError:
                    emit(("ecc", keys, None))
        finally:
            try:
                nv.nvmlEventSetFree(es)
            except nv.NVMLError:
                pass

    def _event_keys(self, data, devices: list[Accelerator]) -> list[str]:
        nv = self.nv
        try:
            gpu = nv.nvmlDeviceGetUUID(data.device)
        except nv.NVMLError:
            return []
        on_gpu = [d for d in devices if d.uuid == gpu or d.parent == gpu]
        gi = getattr(data, "gpuInstanceId", NOT_MIG)
        if gi is not None and gi != NOT_MIG:
            ci = getattr(data, "computeInstanceId", NOT_MIG)
            exact = []
            for d in on_gpu:
                h = self.handles.get(d.key)
                if d.is_partition and h is not None:
                    if self._opt(nv.nvmlDeviceGetGpuInstanceId, h) == gi and (
                            ci == NOT_MIG or self._opt(nv.nvmlDeviceGetComputeInstanceId, h) == ci):
                        exact.append(d)
            if exact:
                on_gpu = exact
        return [d.key for d in on_gpu]


def describe(nv, exc) -> str:
    """"GPU is lost" rather than "NVMLError_GpuIsLost(15)"."""
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - str() of an NVMLError calls into the library
        text = ""
    return text or f"NVML error {getattr(exc, 'value', '?')}"


def _fault(nv, exc) -> str:
    """Why a GPU NVML counts cannot be used, for its drain reason."""
    if isinstance(exc, nv.NVMLError_GpuIsLost):
        return LOST
    return f"GPU not usable (NVML: {describe(nv, exc)})"


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    out, start = [], None
    for k, n in enumerate(numbers):
        if start is None:
            start = n
        if k + 1 == len(numbers) or numbers[k + 1] != n + 1:
            out.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ",".join(out)


def _mig_minors(path: str) -> dict[str, int]:
    """/proc/driver/nvidia-caps/mig-minors: "gpu0/gi1/ci0/access 52" per line."""
    out = {}
    text = read_text(path) or ""
    for line in text.splitlines():
        name, _, minor = line.strip().rpartition(" ")
        if name and minor.isdigit():
            out[name] = int(minor)
    return out
