"""A fake AMD SMI at the narrowest boundary: the `amdsmi` module's own API.

The real `amdsmi` package cannot be imported without ROCm's libamd_smi.so (it raises
KeyError). Its exception classes and enums are still the real ones here: the status and
enum constants are read from the installed amdsmi_wrapper.py, the installed
amdsmi_exception.py runs against them unchanged, and the IntEnum classes rmsbatch uses
are taken from amdsmi_interface.py as written. FakeAmdSmi answers the calls rmsbatch
makes, with the real parameter names, from a machine (tests/fakegpu/machines.py).

Per processor: bdf, market_name, device_id, vram_mb, vram_used_mb, partition_id,
compute_partition, memory_partition, render, card, hip_id, numa, xgmi, activity, power_w,
temp, ecc_uncorrected, lost, unsupported [function names], no_permission [function names:
they answer AMDSMI_STATUS_NO_PERM], processes [[pid, MiB]].
"""
from __future__ import annotations

import ast
import enum
import importlib.util
import os
import sys
import types

_PKG = "_real_amdsmi_parts"
ENUMS = ("AmdSmiInitFlags", "AmdSmiLinkType", "AmdSmiTemperatureType",
         "AmdSmiTemperatureMetric", "AmdSmiClkType", "AmdSmiMemoryType")


def _package_dir() -> str:
    for entry in sys.path:
        d = os.path.join(entry or ".", "amdsmi")
        if os.path.exists(os.path.join(d, "amdsmi_exception.py")) and "fakegpu" not in d:
            return d
    spec = importlib.util.find_spec("amdsmi")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("amdsmi is not installed (pip install amdsmi)")
    return list(spec.submodule_search_locations)[0]


def real_parts() -> types.SimpleNamespace:
    """The real exception classes, status codes and enums, without the library."""
    if _PKG in sys.modules:
        return sys.modules[_PKG].parts
    d = _package_dir()
    consts: dict = {}
    with open(os.path.join(d, "amdsmi_wrapper.py")) as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper():
            try:
                consts[node.targets[0].id] = eval(ast.unparse(node.value), {"__builtins__": {}},
                                                  consts)
            except Exception:  # noqa: BLE001 - ctypes expressions: not constants
                continue
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = []
    wrapper = types.ModuleType(f"{_PKG}.amdsmi_wrapper")
    wrapper.__dict__.update(consts)
    sys.modules[_PKG] = pkg
    sys.modules[wrapper.__name__] = wrapper
    pkg.amdsmi_wrapper = wrapper
    exc = types.ModuleType(f"{_PKG}.amdsmi_exception")
    exc.__package__ = _PKG
    with open(os.path.join(d, "amdsmi_exception.py")) as fh:
        exec(compile(fh.read(), fh.name, "exec"), exc.__dict__)
    with open(os.path.join(d, "amdsmi_interface.py")) as fh:
        iface = ast.parse(fh.read())
    enums = {"IntEnum": enum.IntEnum, "amdsmi_wrapper": wrapper}
    for node in iface.body:
        if isinstance(node, ast.ClassDef) and node.name in ENUMS:
            exec(compile(ast.Module([node], []), "amdsmi_interface.py", "exec"), enums)
    pkg.parts = types.SimpleNamespace(
        wrapper=wrapper, exceptions=exc, enums={n: enums[n] for n in ENUMS if n in enums},
        interface=iface)
    return pkg.parts


class _Handle:
    __slots__ = ("i",)

    def __init__(self, i: int):
        self.i = i

    def __repr__(self):
        return f"<fake amdsmi_processor_handle {self.i}>"


class FakeAmdSmi:
    IS_FAKE = True

    def __init__(self, machine: dict):
        parts = real_parts()
        for name in ("AmdSmiException", "AmdSmiLibraryException", "AmdSmiRetryException",
                     "AmdSmiTimeoutException", "AmdSmiParameterException"):
            setattr(self, name, getattr(parts.exceptions, name))
        for name, cls in parts.enums.items():
            setattr(self, name, cls)
        self._w = parts.wrapper
        self.machine = machine
        self._init = False

    def _fail(self, status: str):
        raise self.AmdSmiLibraryException(getattr(self._w, status))

    def _proc(self, processor_handle, fn: str) -> dict:
        if not self._init:
            self._fail("AMDSMI_STATUS_NOT_INIT")
        if not isinstance(processor_handle, _Handle):
            raise self.AmdSmiParameterException(processor_handle, "amdsmi_processor_handle")
        p = self.machine["processors"][processor_handle.i]
        if p.get("lost"):
            self._fail("AMDSMI_STATUS_NOT_FOUND")
        if fn in p.get("unsupported", []):
            self._fail("AMDSMI_STATUS_NOT_SUPPORTED")
        if fn in p.get("no_permission", []):
            self._fail("AMDSMI_STATUS_NO_PERM")
        return p

    def amdsmi_init(self, flag=None):
        if not self.machine.get("library", True):
            self._fail("AMDSMI_STATUS_FAIL_LOAD_MODULE")
        self._init = True

    def amdsmi_shut_down(self):
        self._init = False

    def amdsmi_get_processor_handles(self):
        if not self._init:
            self._fail("AMDSMI_STATUS_NOT_INIT")
        return [_Handle(i) for i in range(len(self.machine["processors"]))]

    def amdsmi_get_gpu_device_bdf(self, processor_handle):
        return self._proc(processor_handle, "amdsmi_get_gpu_device_bdf")["bdf"]

    def amdsmi_get_gpu_asic_info(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_asic_info")
        return {"market_name": p["market_name"], "vendor_id": "0x1002", "vendor_name": "AMD",
                "subvendor_id": "0x1002", "device_id": f"0x{p['device_id']:04x}",
                "rev_id": "0x00", "asic_serial": "0x0000000000000000", "oam_id": 0,
                "num_compute_units": 38 if p.get("compute_partition") == "CPX" else 304,
                "target_graphics_version": "gfx942", "subsystem_id": "0x74a1"}

    def amdsmi_get_gpu_vram_usage(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_vram_usage")
        return {"vram_total": p["vram_mb"], "vram_used": p.get("vram_used_mb", 0)}

    def amdsmi_get_gpu_enumeration_info(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_enumeration_info")
        return {"drm_render": p["render"], "drm_card": "N/A" if p.get("card") is None else p["card"],
                "hsa_id": p["hip_id"] + 1, "hip_id": p["hip_id"],
                "hip_uuid": f"GPU-{processor_handle.i:016x}"}

    def amdsmi_get_gpu_kfd_info(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_kfd_info")
        return {"kfd_id": 1000 + processor_handle.i, "node_id": p["hip_id"] + 1,
                "current_partition_id": p.get("partition_id", 0)}

    def amdsmi_get_gpu_compute_partition(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_compute_partition")
        if not p.get("compute_partition"):
            self._fail("AMDSMI_STATUS_NOT_SUPPORTED")
        return p["compute_partition"]

    def amdsmi_get_gpu_memory_partition(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_memory_partition")
        return p.get("memory_partition", "NPS1")

    def amdsmi_topo_get_numa_node_number(self, processor_handle):
        return self._proc(processor_handle, "amdsmi_topo_get_numa_node_number").get("numa", 0)

    def amdsmi_topo_get_link_type(self, processor_handle_src, processor_handle_dst):
        a = self._proc(processor_handle_src, "amdsmi_topo_get_link_type")
        b = self._proc(processor_handle_dst, "amdsmi_topo_get_link_type")
        xgmi = a.get("xgmi") and b.get("xgmi")
        kind = self.AmdSmiLinkType.AMDSMI_LINK_TYPE_XGMI if xgmi else \
            self.AmdSmiLinkType.AMDSMI_LINK_TYPE_PCIE
        return {"hops": 1 if xgmi else 2, "type": int(kind)}

    def amdsmi_topo_get_link_weight(self, processor_handle_src, processor_handle_dst):
        self._proc(processor_handle_src, "amdsmi_topo_get_link_weight")
        self._proc(processor_handle_dst, "amdsmi_topo_get_link_weight")
        return 15

    def amdsmi_get_gpu_activity(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_activity")
        return {"gfx_activity": p.get("activity", 0), "umc_activity": 0, "mm_activity": "N/A"}

    def amdsmi_get_power_info(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_power_info")
        return {"socket_power": p.get("power_w", 300), "current_socket_power": p.get("power_w", 300),
                "average_socket_power": "N/A", "gfx_voltage": "N/A", "soc_voltage": "N/A",
                "mem_voltage": "N/A", "power_limit": 750}

    def amdsmi_get_energy_count(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_energy_count")
        return {"energy_accumulator": p.get("energy", 1_000_000), "counter_resolution": 15.3,
                "timestamp": 0}

    def amdsmi_get_temp_metric(self, processor_handle, sensor_type, metric):
        return self._proc(processor_handle, "amdsmi_get_temp_metric").get("temp", 40)

    def amdsmi_get_clock_info(self, processor_handle, clock_type):
        self._proc(processor_handle, "amdsmi_get_clock_info")
        return {"clk": 2100, "min_clk": 500, "max_clk": 2100, "clk_locked": False,
                "clk_deep_sleep": 0}

    def amdsmi_get_gpu_total_ecc_count(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_total_ecc_count")
        return {"correctable_count": 0, "uncorrectable_count": p.get("ecc_uncorrected", 0),
                "deferred_count": 0}

    def amdsmi_get_violation_status(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_violation_status")
        hot = bool(p.get("thermal"))
        return {"active_prochot_thrm": hot, "active_ppt_pwr": False, "active_socket_thrm": hot,
                "active_vr_thrm": False, "active_hbm_thrm": "N/A"}

    def amdsmi_get_gpu_process_list(self, processor_handle):
        p = self._proc(processor_handle, "amdsmi_get_gpu_process_list")
        return [{"name": "python3", "pid": pid, "mem": mib << 20,
                 "engine_usage": {"gfx": 0, "enc": 0},
                 "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": mib << 20},
                 "cu_occupancy": "N/A"} for pid, mib in p.get("processes", [])]
