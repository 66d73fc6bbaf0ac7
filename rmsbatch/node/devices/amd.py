"""AMD GPUs through AMD SMI (module `amdsmi`, which needs ROCm's libamd_smi.so).

Same shape as the NVML backend. One AMD SMI handle per logical GPU, so an MI300X in CPX
mode is eight devices, each with its own render node; they share the physical GPU's PCI
address, so devices are keyed by (address, partition id), never by address alone, and
never by AMD SMI's UUID (its format changed between ROCm releases).

Importing `amdsmi` on a host without the library raises KeyError, not ImportError, so
the import is guarded with `except Exception`. Many getters answer "N/A" for values the
device does not report; those become None.
"""
from __future__ import annotations

import logging
import os

from rmsbatch.node.devices.backend import (BackendUnavailable, DeviceLost, Unopened,
                                           pci_locality, sample_each)
from rmsbatch.node.devices.record import AMD_ENV, Accelerator, normalize_bdf, short_type

log = logging.getLogger("rmsbatch.devices.amd")

LOST_CODES = {31}        # AMDSMI_STATUS_NOT_FOUND: the device went away
NO_PERMISSION = 10       # AMDSMI_STATUS_NO_PERM
# Device ids of AMD Instinct parts, for when the market name says only "AMD Instinct".
DEVICE_MODEL = {0x74a1: "MI300X", 0x74a5: "MI325X", 0x74a0: "MI300A", 0x740f: "MI210",
                0x740c: "MI250X", 0x7408: "MI250X", 0x738c: "MI100", 0x75a0: "MI350X"}


def describe(exc) -> str:
    """One line: "AMDSMI_STATUS_NOT_SUPPORTED" rather than the multi-line str()."""
    info = getattr(exc, "get_error_info", None)
    try:
        return info(False) if info else str(exc)
    except Exception:  # noqa: BLE001
        return str(exc).replace("\n", " ").replace("\t", "")


def _na(value):
    return None if value in ("N/A", None) else value


class AmdSmiBackend:
    name = "amdsmi"

    def __init__(self, amdsmi=None, root: str = "/"):
        self._amd = amdsmi
        self.root = root
        self.handles: dict[str, object] = {}
        self.problems: list[str] = []
        self.notes: list[str] = []

    @property
    def amd(self):
        if self._amd is None:
            try:
                import amdsmi
            except Exception as exc:  # noqa: BLE001 - KeyError without libamd_smi.so
                raise BackendUnavailable(f"cannot load amdsmi ({type(exc).__name__}: "
                                         f"{exc}); install ROCm's amd-smi-lib") from None
            self._amd = amdsmi
        return self._amd

    def open(self) -> None:
        amd = self.amd
        try:
            amd.amdsmi_init(amd.AmdSmiInitFlags.INIT_AMD_GPUS)
        except amd.AmdSmiException as exc:
            raise BackendUnavailable(describe(exc)) from None

    def close(self) -> None:
        try:
            self.amd.amdsmi_shut_down()
        except Exception:  # noqa: BLE001
            pass

    # -- discovery --------------------------------------------------------------------
    def discover(self) -> list[Accelerator]:
        amd = self.amd
        try:
            handles = amd.amdsmi_get_processor_handles()
        except amd.AmdSmiException as exc:
            raise BackendUnavailable(f"cannot list GPUs: {describe(exc)}") from None
        records: list[Accelerator] = []
        keyed: list[tuple[Accelerator, object]] = []
        outside: list[int] = []
        for order, h in enumerate(handles):
            # As with NVML: a GPU that fails stays listed in its place, drained by its
            # fault; one this process may not open (outside the container) is a note.
            try:
                bdf = normalize_bdf(amd.amdsmi_get_gpu_device_bdf(h))
                asic = amd.amdsmi_get_gpu_asic_info(h)
                vram = amd.amdsmi_get_gpu_vram_usage(h)
            except amd.AmdSmiException as exc:
                code = getattr(exc, "get_error_code", lambda: None)()
                if code == NO_PERMISSION:
                    outside.append(order)
                    continue
                lost = "GPU is lost" if code in LOST_CODES else "GPU not usable"
                rec = Accelerator(vendor="amd", type="gpu", env=AMD_ENV, env_id=str(order),
                                  vendor_index=order, backend=self.name,
                                  fault=f"{lost} (AMD SMI: {describe(exc)})")
                self.handles[rec.key] = Unopened(rec.fault)
                records.append(rec)
                continue
            try:
                rec = self._record(order, h, bdf, asic, vram)
            except DeviceLost as exc:       # gone between the calls that name it and these
                # (no address: partitions share it, and this one's id is not known)
                rec = Accelerator(vendor="amd", type=short_type(self._model(asic)),
                                  model=self._model(asic), env=AMD_ENV, env_id=str(order),
                                  vendor_index=order, backend=self.name, fault=str(exc))
                self.handles[rec.key] = Unopened(rec.fault)
                records.append(rec)
                continue
            self.handles[rec.key] = h
            records.append(rec)
            keyed.append((rec, h))
        if outside:
            self.notes.append(f"AMD GPU{'s' if len(outside) > 1 else ''} "
                              f"{','.join(map(str, outside))} outside this container's devices "
                              "(AMD SMI: AMDSMI_STATUS_NO_PERM): not used")
        self._links(keyed)
        return records

    def _record(self, order: int, h, bdf: str, asic: dict, vram: dict) -> Accelerator:
        """The record of a GPU AMD SMI has named; DeviceLost if it goes meanwhile."""
        amd = self.amd
        enum = self._opt(getattr(amd, "amdsmi_get_gpu_enumeration_info", None), h) or {}
        kfd = self._opt(getattr(amd, "amdsmi_get_gpu_kfd_info", None), h) or {}
        partition_id = _na(kfd.get("current_partition_id"))
        compute = _na(self._opt(getattr(amd, "amdsmi_get_gpu_compute_partition", None), h))
        render = _na(enum.get("drm_render"))
        card = _na(enum.get("drm_card"))
        if render is None:
            render = self._render_from_kfd(bdf, partition_id or 0)
        partitioned = compute not in (None, "SPX") or bool(partition_id)
        # Compute goes through the render node (and the shared /dev/kfd, which stays
        # open to all); the card node only for a whole GPU, as ROCm's device plugin.
        files = []
        if render is not None:
            files.append(os.path.join(self.root, f"dev/dri/renderD{render}"))
        if card is not None and not partitioned:
            files.append(os.path.join(self.root, f"dev/dri/card{card}"))
        if not files:
            self.notes.append(f"AMD GPU {bdf}: no render node known: not fenced")
        model = self._model(asic)
        numa = _na(self._opt(amd.amdsmi_topo_get_numa_node_number, h))
        sys_numa, cpus = pci_locality(self.root, bdf)
        if not isinstance(numa, int) or numa < 0:
            numa = sys_numa
        hip_id = _na(enum.get("hip_id"))
        return Accelerator(
            # AMD SMI's UUIDs changed format across ROCm releases: key on the address
            vendor="amd", type=short_type(model), model=model, uuid=None, bdf=bdf,
            mem_mb=int(_na(vram.get("vram_total")) or 0), device_files=files,
            numa_node=numa, cpus=cpus,
            parent=bdf if partitioned else None, profile=compute,
            env=AMD_ENV, env_id=str(hip_id if hip_id is not None else order),
            vendor_index=order, sub_index=partition_id if partitioned else None,
            backend=self.name)

    def _model(self, asic: dict) -> str:
        name = _na(asic.get("market_name")) or ""
        if name.lower().strip() in ("", "amd instinct", "amd radeon graphics"):
            try:
                dev = int(str(asic.get("device_id")), 16) if isinstance(asic.get("device_id"), str) \
                    else int(asic.get("device_id") or 0)
            except ValueError:
                dev = 0
            if dev in DEVICE_MODEL:
                return f"AMD Instinct {DEVICE_MODEL[dev]}"
            return name or _na(asic.get("target_graphics_version")) or "AMD GPU"
        return name

    def _render_from_kfd(self, bdf: str, partition: int) -> int | None:
        from rmsbatch.node.devices.sysfs import kfd_nodes
        same = [n for n in kfd_nodes(self.root) if n.get("bdf") == bdf]
        if partition < len(same):
            return same[partition].get("drm_render_minor")
        return None

    def _links(self, keyed: list[tuple[Accelerator, object]]) -> None:
        """XGMI weights between GPUs, and partitions of one GPU linked most closely."""
        amd = self.amd
        xgmi = getattr(getattr(amd, "AmdSmiLinkType", None), "AMDSMI_LINK_TYPE_XGMI", 2)
        for a, ha in keyed:
            for b, hb in keyed:
                if a is b:
                    continue
                if a.bdf == b.bdf:
                    a.links[b.key] = 64           # same physical GPU
                    continue
                link = self._opt(amd.amdsmi_topo_get_link_type, ha, hb)
                if link and int(link.get("type", 0)) == int(xgmi):
                    weight = self._opt(amd.amdsmi_topo_get_link_weight, ha, hb)
                    # lower AMD SMI weight is closer; keep "higher is better" here
                    a.links[b.key] = max(1, 32 - int(weight or 15) // 4) if weight else 8

    # -- sampling ---------------------------------------------------------------------
    def sample(self, devices: list[Accelerator]) -> dict[str, dict]:
        return sample_each(self.handles, devices, self._sample_one)

    def _sample_one(self, dev: Accelerator, h) -> dict:
        amd = self.amd
        activity = self._opt(amd.amdsmi_get_gpu_activity, h) or {}
        vram = self._opt(amd.amdsmi_get_gpu_vram_usage, h)
        power = self._opt(amd.amdsmi_get_power_info, h) or {}
        energy = None if dev.is_partition else self._opt(amd.amdsmi_get_energy_count, h)
        temp_type = getattr(amd, "AmdSmiTemperatureType", None)
        temp_metric = getattr(amd, "AmdSmiTemperatureMetric", None)
        temp = None
        if temp_type is not None and temp_metric is not None:
            temp = self._opt(amd.amdsmi_get_temp_metric, h, temp_type.HOTSPOT, temp_metric.CURRENT)
        clk_type = getattr(amd, "AmdSmiClkType", None)
        clock = self._opt(amd.amdsmi_get_clock_info, h, clk_type.GFX) if clk_type else None
        ecc = self._opt(amd.amdsmi_get_gpu_total_ecc_count, h) or {}
        violation = self._opt(getattr(amd, "amdsmi_get_violation_status", None), h) or {}
        thermal = None
        if violation:
            thermal = bool(_na(violation.get("active_socket_thrm")) or _na(violation.get("active_hbm_thrm"))
                           or _na(violation.get("active_prochot_thrm")))
        watts = _na(power.get("current_socket_power")) or _na(power.get("average_socket_power")) \
            or _na(power.get("socket_power"))
        joules = None
        if energy:
            acc, res = _na(energy.get("energy_accumulator")), _na(energy.get("counter_resolution"))
            if acc is not None and res is not None:
                joules = acc * res / 1e6          # the counter counts in resolution x 1 uJ
        return {
            "util_pct": _na(activity.get("gfx_activity")),
            "mem_used_mb": None if vram is None else _na(vram.get("vram_used")),
            "power_w": None if watts is None else float(watts),
            "energy_j": joules,
            "temp_c": _na(temp),
            "sm_clock_mhz": None if not clock else _na(clock.get("clk")),
            "throttle": None,
            "thermal": thermal,
            "ecc_uncorrected": _na(ecc.get("uncorrectable_count")),
            "remap_pending": None, "remap_failed": None, "retired_pending": None,
            "procs": self._processes(h),
        }

    def _processes(self, h) -> list[list[int]] | None:
        amd = self.amd
        procs = self._opt(amd.amdsmi_get_gpu_process_list, h)
        if procs is None:
            return None
        out = []
        for p in procs:
            pid = p.get("pid") if isinstance(p, dict) else None
            if not isinstance(pid, int):
                continue
            mem = (p.get("memory_usage") or {}).get("vram_mem")
            out.append([pid, None if _na(mem) is None else int(mem) // (1024 * 1024)])
        return out

    def _opt(self, fn, *args):
        if fn is None:
            return None
        amd = self.amd
        try:
            return fn(*args)
        except amd.AmdSmiLibraryException as exc:
            if exc.get_error_code() in LOST_CODES and fn is not getattr(amd, "amdsmi_get_gpu_process_list", None):
                raise DeviceLost(f"GPU is lost (AMD SMI: {exc.get_error_info(False)})") from None
            return None
        except amd.AmdSmiException:
            return None

    def watch_events(self, stop, emit, devices) -> None:
        """AMD SMI's event reader is not used yet: health comes from sampling."""
        return None
