"""Accelerator discovery, telemetry and health, against fake vendor libraries built on the
real packages' classes (tests/fakegpu) and /proc and /sys trees laid out as a DGX H100
and a 2 x MI300X CPX host show them (tests/data/sysfs)."""
from __future__ import annotations

import ast
import inspect
import os
import time

import pytest

from rmsbatch.node.cgroup import parse_cpus
from rmsbatch.config import GpuDef
from rmsbatch.node.devices import discovery, record
from rmsbatch.node.devices.amd import AmdSmiBackend
from rmsbatch.node.devices.backend import BackendUnavailable
from rmsbatch.node.devices.health import Health
from rmsbatch.node.devices.monitor import Monitor
from rmsbatch.node.devices.nvml import NvmlBackend
from rmsbatch.node.devices.sysfs import SysfsBackend
from rmsbatch.node.devices.usage import GpuUsage
from tests.fakegpu import machines
from tests.fakegpu.amd import FakeAmdSmi, real_parts
from tests.fakegpu.nvml import FakeNvml, real_pynvml

DATA = os.path.join(os.path.dirname(__file__), "data", "sysfs")


@pytest.fixture
def root(tmp_path):
    """A device root: /dev/nvidia0..7 as stand-in character devices, MIG minors."""
    machines.device_tree(str(tmp_path), range(8), range(20, 28), mig=True)
    return str(tmp_path)


def nvml(machine, root="/", ncpus=224):
    backend = NvmlBackend(FakeNvml(machine), root, ncpus=ncpus)
    backend.open()
    return backend


# -- the fakes are the real APIs ------------------------------------------------------------
def test_fake_nvml_has_the_real_signatures_and_errors():
    real = real_pynvml()
    fake = FakeNvml(machines.dgx_h100())
    methods = [n for n in dir(FakeNvml) if n.startswith("nvml")]
    assert len(methods) > 30
    for name in methods:
        want = list(inspect.signature(getattr(real, name)).parameters)
        have = list(inspect.signature(getattr(fake, name)).parameters)
        assert have == want, f"{name}{have} differs from pynvml's {want}"
    assert fake.NVMLError_GpuIsLost is real.NVMLError_GpuIsLost
    with pytest.raises(real.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_fake_amdsmi_has_the_real_signatures_and_errors():
    parts = real_parts()
    real_args = {n.name: [a.arg for a in n.args.args] for n in parts.interface.body
                 if isinstance(n, ast.FunctionDef)}
    fake = FakeAmdSmi(machines.mi300x_cpx())
    methods = [n for n in dir(FakeAmdSmi) if n.startswith("amdsmi_")]
    assert len(methods) > 15
    for name in methods:
        have = list(inspect.signature(getattr(fake, name)).parameters)
        assert name in real_args and have == real_args[name], name
    exc = fake.AmdSmiLibraryException(parts.wrapper.AMDSMI_STATUS_NOT_SUPPORTED)
    assert exc.get_error_code() == 2 and "NOT_SUPPORTED" in exc.get_error_info()
    assert int(fake.AmdSmiInitFlags.INIT_AMD_GPUS) == parts.wrapper.AMDSMI_INIT_AMD_GPUS


# -- NVML --------------------------------------------------------------------------------------
def test_nvml_dgx_h100(root):
    b = nvml(machines.dgx_h100(), root)
    devs = b.discover()
    assert [d.type for d in devs] == ["h100"] * 8
    first, last = devs[0], devs[7]
    assert first.model == "NVIDIA H100 80GB HBM3" and first.mem_mb == 81559
    assert first.bdf == "0000:1b:00.0" and last.bdf == "0000:df:00.0"
    assert first.device_files == [os.path.join(root, "dev/nvidia0")]
    assert (first.numa_node, last.numa_node) == (0, 1)
    assert first.cpus[:2] == [0, 1] and 112 in first.cpus and 56 in last.cpus
    # NVSwitch: every GPU linked to every other by the 18 lanes each has
    assert first.links == {d.uuid: 18 for d in devs[1:]}
    assert [d.env_id for d in devs] == [str(i) for i in range(8)]
    assert b.problems == [] and b.driver_version() == "550.54.15"


def test_nvml_mig_instances_are_devices(root):
    b = nvml(machines.a100_mig(), root)
    devs = b.discover()
    assert [d.type for d in devs] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb", "a100"]
    mig = devs[2]
    assert mig.is_partition and mig.parent == machines.a100_mig()["gpus"][0]["uuid"]
    assert mig.mem_mb == 9728 and mig.profile == "1g.10gb" and mig.env_by_uuid
    assert mig.sub_index == 3                   # slot 2 is empty and skipped
    # the parent's device file plus its GPU- and compute-instance capabilities
    # (gpu0/gi13/access is 3 + 13 * 9 = 120 in the driver's numbering)
    assert mig.device_files == [os.path.join(root, "dev/nvidia0"),
                                os.path.join(root, "dev/nvidia-caps/nvidia-cap120"),
                                os.path.join(root, "dev/nvidia-caps/nvidia-cap121")]
    assert not devs[4].is_partition and devs[4].env_id == "1"
    # fenced, CUDA still sees GPU 0 (the MIG instance's parent) before GPU 1
    env = record.visibility(_numbered(devs), [2, 4], fenced=True)
    assert env["CUDA_VISIBLE_DEVICES"] == f"{mig.uuid},1"
    assert record.visibility(devs, [4], fenced=True)["CUDA_VISIBLE_DEVICES"] == "0"


def test_nvml_mig_mode_pending_is_noted(root):
    m = machines.a100_mig()
    m["gpus"][1]["mig"] = {"current": 0, "pending": 1, "devices": []}
    b = nvml(m, root)
    b.discover()
    assert any("MIG mode change pending" in n for n in b.notes)


def test_nvml_mixed_node_links_and_types(root):
    devs = _numbered(nvml(machines.mixed(), root).discover())
    assert [d.type for d in devs] == ["a100", "l40s", "a100", "l40s"]
    assert devs[0].links == {devs[2].uuid: 12} and devs[1].links == {}
    assert devs[1].mem_mb == 46068
    # PCIe distance, as nvidia-smi topo -m: one switch (PIX), one NUMA node, across
    assert devs[0].pcie == {devs[1].uuid: 10, devs[2].uuid: 50, devs[3].uuid: 50}
    assert devs[2].pcie[devs[3].uuid] == 40


def test_nvml_error_paths(root):
    m = machines.dgx_h100()
    m["gpus"][3]["no_permission"] = True          # inside a cgroup that denies it
    m["gpus"][5]["lost"] = True
    m["gpus"][0]["unsupported"] = ["numa", "memory_affinity", "affinity", "power", "energy",
                                   "util", "ecc", "remap", "nvlink", "processes", "throttle"]
    b = nvml(m, root)
    devs = b.discover()
    # GPU 3 is not ours (a note); lost GPU 5 keeps its place, drained by its fault
    assert [d.vendor_index for d in devs] == [0, 1, 2, 4, 5, 6, 7] and b.problems == []
    assert b.notes == ["NVML GPU 3 outside this container's devices (NVML: Insufficient "
                       "Permissions): not used"]
    assert devs[4].fault == "GPU is lost (NVML: GPU is lost)" and devs[4].type == "gpu"
    assert [d.fault for d in devs if d is not devs[4]] == [None] * 6
    # NUMA and CPUs from sysfs when NVML will not say (none here: unknown)
    assert devs[0].numa_node is None and devs[0].cpus == [] and devs[0].links == {}
    s = b.sample(devs)[devs[0].key]
    assert s["power_w"] is None and s["util_pct"] is None and s["ecc_uncorrected"] is None
    assert s["procs"] is None and s["temp_c"] == 31 and s["mem_used_mb"] == 0


def test_a_gpu_lost_at_start_keeps_its_index_and_name(root):
    """NVML answers GPU_IS_LOST for GPU 2 from nvmlDeviceGetHandleByIndex on: it stays
    listed at NVML index 2, named from the driver's /proc list, and samples lost; GPU 3
    is still GPU 3. Other handle errors NVML documents are faults of the device too."""
    m = machines.dgx_h100()
    machines.proc_tree(root, m)
    m["gpus"][2]["lost"] = True
    m["gpus"][6]["fault"] = "INSUFFICIENT_POWER"
    inv = discovery.discover([], "auto", backends=("nvml", "sysfs"), root=root,
                             modules={"pynvml": FakeNvml(m)}, keep_open=True)
    devs = inv.devices
    assert inv.problems == [] and len(devs) == 8
    assert [d.uuid for d in devs] == [g["uuid"] for g in m["gpus"]]
    lost, weak = devs[2], devs[6]
    assert lost.fault == "GPU is lost (NVML: GPU is lost)" and lost.type == "h100"
    assert lost.bdf == "0000:52:00.0" and lost.device_files == [os.path.join(root, "dev/nvidia2")]
    assert weak.fault == "GPU not usable (NVML: Insufficient External Power)"
    assert lost.uuid not in devs[1].links and devs[3].links[devs[4].uuid] == 18
    samples = inv.opened[0].sample(devs)
    assert samples[lost.key] == {"lost": lost.fault} and samples[weak.key] == {"lost": weak.fault}
    assert samples[devs[3].key]["temp_c"] == 34
    inv.close()
    # without the driver's list (or when it disagrees) the GPU is unnamed, still in place
    os.rename(os.path.join(root, "proc/driver/nvidia/gpus"), os.path.join(root, "gpus.away"))
    devs = discovery.discover([], "auto", backends=("nvml",), root=root,
                              modules={"pynvml": FakeNvml(m)}).devices
    assert (devs[2].type, devs[2].uuid, devs[2].key, devs[2].index) == ("gpu", None, "nvml#2", 2)
    assert devs[3].uuid == m["gpus"][3]["uuid"] and devs[3].index == 3
    # check mode: an unnamed failed GPU may be any declared one: no mismatch for it
    declared = gpudefs(("h100", 8, "CUDA_VISIBLE_DEVICES", "nvidia",
                        [f"/dev/nvidia{i}" for i in range(8)]))
    assert discovery.discover(declared, "check", backends=("nvml",), root=root,
                              modules={"pynvml": FakeNvml(m)}).problems == []


def test_gpus_outside_the_container_are_a_note_not_a_drain(root):
    """In a container whose device cgroup denies GPUs 0-5, nvmlDeviceGetCount still counts
    them and nvmlDeviceGetHandleByIndex (or a call that names one) answers NO_PERMISSION."""
    m = machines.dgx_h100()
    machines.proc_tree(root, m)
    for g in m["gpus"][:4]:
        g["no_permission"] = True
    m["gpus"][4]["no_permission"] = ["uuid"]
    m["gpus"][5]["no_permission"] = ["pci"]
    inv = discovery.discover([], "auto", root=root,
                             modules={"pynvml": FakeNvml(m),
                                      "amdsmi": FakeAmdSmi({"library": False, "processors": []})})
    assert inv.problems == [] and [d.uuid for d in inv.devices] == [m["gpus"][6]["uuid"],
                                                                    m["gpus"][7]["uuid"]]
    assert inv.notes == ["NVML GPUs 0-5 outside this container's devices (NVML: Insufficient "
                         "Permissions): not used"]
    assert all(d.fault is None and d.backend == "nvml" for d in inv.devices)   # no /proc GPUs
    # CUDA numbers only what it can open: unfenced jobs get the GPU by UUID
    env = record.visibility(inv.devices, [1], fenced=False)
    assert env["CUDA_VISIBLE_DEVICES"] == m["gpus"][7]["uuid"]
    assert record.visibility(inv.devices, [1], fenced=True)["CUDA_VISIBLE_DEVICES"] == "0"


def test_numa_from_memory_affinity_keeps_a_job_on_one_node(root):
    """x86: nvmlDeviceGetNumaNodeId is NotSupported; memory affinity says NUMA 0 for GPUs
    0-3 and 1 for 4-7. With GPUs 1 and 2 busy, a 4-GPU job gets 4-7, not 0,3,4,5."""
    from rmsbatch.ctld.nodestate import gpus as placement_view
    from rmsbatch.sched.placement import NodeView, Request, allocate

    def four_gpus(machine, root=root):
        devs = nvml(machine, root).discover()
        discovery.number(devs)
        node = NodeView("n", 224, 2_000_000, placement_view(devs))
        node.free_gpus -= {1, 2}
        return devs, allocate(Request(gpus=4), [node])["n"].gpus

    m = machines.dgx_h100()
    for g in m["gpus"]:
        g["unsupported"] = ["numa"]
    devs, got = four_gpus(m)
    assert [d.numa_node for d in devs] == [0] * 4 + [1] * 4 and got == [4, 5, 6, 7]
    # no memory affinity either: the node whose CPUs are the GPU's (sysfs)
    for g in m["gpus"]:
        g["unsupported"] = ["numa", "memory_affinity"]
    machines.node_tree(root, m)
    devs, got = four_gpus(m)
    assert [d.numa_node for d in devs] == [0] * 4 + [1] * 4 and got == [4, 5, 6, 7]
    # nothing names the node: the PCIe distances (SYSTEM across the sockets) still do
    for g in m["gpus"]:
        g["unsupported"] = ["numa", "memory_affinity", "affinity"]
    devs, got = four_gpus(m, root="/nonexistent")
    assert [d.numa_node for d in devs] == [None] * 8 and got == [4, 5, 6, 7]


def test_nvml_library_missing_or_driver_not_loaded():
    with pytest.raises(BackendUnavailable, match="NVML Shared Library Not Found"):
        NvmlBackend(FakeNvml({"library": False, "gpus": []})).open()
    with pytest.raises(BackendUnavailable, match="Driver Not Loaded"):
        NvmlBackend(FakeNvml({"driver_loaded": False, "gpus": []})).open()


def test_nvml_real_library_is_absent_here():
    """The real nvidia-ml-py on a host without a driver: a clean BackendUnavailable."""
    if os.path.exists("/proc/driver/nvidia"):
        pytest.skip("this host has an NVIDIA driver")
    with pytest.raises(BackendUnavailable, match="NVML"):
        NvmlBackend().open()


def test_nvml_gpu_lost_while_sampling(root):
    m = machines.dgx_h100()
    b = nvml(m, root)
    devs = b.discover()
    m["gpus"][2]["lost"] = True
    samples = b.sample(devs)
    assert samples[devs[2].key] == {"lost": "GPU is lost (NVML: GPU is lost)"}
    assert "lost" not in samples[devs[1].key]


def test_nvml_processes_and_telemetry(root):
    m = machines.dgx_h100()
    m["gpus"][1].update(util=87, mem_used_mb=40960, processes=[[4242, 40000], [4243, None]],
                        throttle=0x40, ecc_uncorrected=2, remap=[0, 0, 1, 0])
    b = nvml(m, root)
    devs = b.discover()
    s = b.sample(devs)[devs[1].key]
    assert s["util_pct"] == 87 and s["mem_used_mb"] == 40960 and s["thermal"] is True
    assert s["procs"] == [[4242, 40000], [4243, None]]
    assert s["ecc_uncorrected"] == 2 and s["remap_pending"] is True
    assert s["energy_j"] == pytest.approx(5000.001) and s["power_w"] == 69.1


def test_nvml_xid_events(root):
    import threading
    m = machines.a100_mig()
    m["events"] = [{"gpu": 1, "xid": 31}]          # before the watch: never delivered
    b = nvml(m, root)
    devs = b.discover()
    got = []
    stop = threading.Event()

    def emit(event):
        got.append(event)
        if len(got) == 2:
            stop.set()
    watcher = threading.Thread(target=b.watch_events, args=(stop, emit, devs, 50))
    watcher.start()
    time.sleep(0.2)
    m["events"] += [{"gpu": 1, "xid": 79}, {"gpu": 0, "xid": 48, "gi": 13, "ci": 0}]
    watcher.join(timeout=5)
    assert not watcher.is_alive()
    assert got[0] == ("xid", [devs[4].key], 79)
    assert got[1] == ("xid", [devs[2].key], 48)     # the MIG instance of gi 13 only


# -- AMD SMI ------------------------------------------------------------------------------------
def test_amdsmi_mi300x_cpx(tmp_path):
    b = AmdSmiBackend(FakeAmdSmi(machines.mi300x_cpx()), str(tmp_path))
    b.open()
    devs = _numbered(b.discover())
    assert len(devs) == 16 and {d.type for d in devs} == {"mi300x"}
    p0, p9 = devs[0], devs[9]
    assert p0.key == "0000:0c:00.0/0" and p9.key == "0000:22:00.0/1"
    assert p0.profile == "CPX" and p0.parent == "0000:0c:00.0" and p0.mem_mb == 24576
    assert p0.device_files == [str(tmp_path / "dev/dri/renderD128")]   # no card node
    assert p9.device_files == [str(tmp_path / "dev/dri/renderD137")]
    assert p0.env == "ROCR_VISIBLE_DEVICES" and p9.env_id == "9" and p0.uuid is None
    assert p0.links[devs[1].key] == 64 and p0.links[p9.key] < 64     # same card closest
    env = record.visibility(devs, [8, 9], fenced=True)
    assert env == {"ROCR_VISIBLE_DEVICES": "0,1"}        # no HIP_ or CUDA_ variables
    assert record.visibility(devs, [8, 9], fenced=False) == {"ROCR_VISIBLE_DEVICES": "8,9"}
    s = b.sample(devs)
    assert s[p0.key]["power_w"] == 300 and s[p0.key]["energy_j"] is None   # partition
    assert s[p9.key]["util_pct"] == 10 and s[p9.key]["temp_c"] == 41


def test_amdsmi_errors(tmp_path):
    m = machines.mi300x_cpx(1)
    m["processors"][3]["unsupported"] = ["amdsmi_get_gpu_activity", "amdsmi_get_power_info"]
    fake = FakeAmdSmi(m)
    b = AmdSmiBackend(fake, str(tmp_path))
    b.open()
    devs = b.discover()
    m["processors"][5]["lost"] = True
    s = b.sample(devs)
    assert s[devs[3].key]["util_pct"] is None and s[devs[3].key]["power_w"] is None
    assert s[devs[5].key]["lost"].startswith("GPU is lost (AMD SMI: AMDSMI_STATUS_NOT_FOUND")
    with pytest.raises(BackendUnavailable, match="FAIL_LOAD_MODULE"):
        AmdSmiBackend(FakeAmdSmi({"library": False, "processors": []})).open()


def test_amdsmi_a_failed_partition_keeps_its_place(tmp_path):
    """A logical GPU AMD SMI answers NOT_FOUND for from the start stays listed, drained by
    its fault; one it answers NO_PERM for (outside the container) is a note."""
    m = machines.mi300x_cpx(1)
    m["processors"][2]["lost"] = True
    m["processors"][7]["no_permission"] = ["amdsmi_get_gpu_device_bdf"]
    b = AmdSmiBackend(FakeAmdSmi(m), str(tmp_path))
    b.open()
    devs = _numbered(b.discover())
    assert b.problems == [] and [d.vendor_index for d in devs] == list(range(7))
    assert devs[2].fault.startswith("GPU is lost (AMD SMI: AMDSMI_STATUS_NOT_FOUND")
    assert devs[3].device_files == [str(tmp_path / "dev/dri/renderD131")]   # still its own
    assert b.notes == ["AMD GPU 7 outside this container's devices (AMD SMI: "
                       "AMDSMI_STATUS_NO_PERM): not used"]
    assert b.sample(devs)[devs[2].key] == {"lost": devs[2].fault}


def test_amdsmi_import_failure_is_not_an_import_error():
    """The real amdsmi raises KeyError without libamd_smi.so: reported, not raised."""
    with pytest.raises(BackendUnavailable, match="KeyError"):
        AmdSmiBackend().open()


# -- sysfs -------------------------------------------------------------------------------------
def test_sysfs_nvidia_driver_only():
    b = SysfsBackend(os.path.join(DATA, "dgx-h100"))
    b.open()
    devs = b.discover()
    assert len(devs) == 8 and devs[0].type == "h100" and devs[0].mem_mb == 0
    assert devs[0].uuid.startswith("GPU-000000a0") and devs[5].bdf == "0000:c3:00.0"
    assert devs[5].device_files[0].endswith("dev/nvidia5") and devs[5].numa_node == 1
    assert devs[5].cpus[0] == 56 and any("no memory, MIG or NVLink" in n for n in b.notes)


def test_sysfs_amd_kfd_topology():
    b = SysfsBackend(os.path.join(DATA, "mi300x-cpx"))
    b.open()
    devs = _numbered(b.discover())
    assert len(devs) == 16                          # the CPU node is not a GPU
    assert [d.device_files[0].rsplit("renderD", 1)[1] for d in devs[:2]] == ["128", "129"]
    assert devs[8].bdf == "0000:22:00.0" and devs[8].numa_node == 1 and devs[8].cpus[0] == 48
    assert devs[0].model == "AMD Instinct MI300X" and devs[0].profile == "CPX"
    assert devs[0].mem_mb == 24576 and devs[0].env_id == "0" and devs[15].env_id == "15"
    assert devs[0].links[devs[1].key] == 64 and 0 < devs[0].links[devs[8].key] < 64


def test_sysfs_nothing_there(tmp_path):
    with pytest.raises(BackendUnavailable):
        SysfsBackend(str(tmp_path)).open()


# -- discovery ----------------------------------------------------------------------------------
def gpudefs(*groups) -> list[GpuDef]:
    out = []
    for kind, count, env, vendor, files in groups:
        for i in range(count):
            out.append(GpuDef(len(out), kind, files[i] if files else None, env, vendor))
    return out


def test_discover_auto_then_static_others(root):
    npu = gpudefs(("rngd", 2, "FURIOSA_DEVICES", "other", ["/dev/tty30", "/dev/tty31"]))
    inv = discovery.discover(npu, "auto", root=root,
                             modules={"pynvml": FakeNvml(machines.mixed()),
                                      "amdsmi": FakeAmdSmi({"library": False, "processors": []})})
    assert [(d.index, d.type) for d in inv.devices] == [
        (0, "a100"), (1, "l40s"), (2, "a100"), (3, "l40s"), (4, "rngd"), (5, "rngd")]
    assert inv.backends["nvml"] == "used (4 devices)" and "FAIL_LOAD" in inv.backends["amdsmi"]
    assert "sysfs" in inv.backends                  # tried, found nothing new
    # each variable numbers its own devices from 0
    assert [d.env_id for d in inv.devices[4:]] == ["0", "1"]
    env = record.visibility(inv.devices, [0, 5], fenced=False)
    assert env == {"CUDA_VISIBLE_DEVICES": "0", "FURIOSA_DEVICES": "1",
                   "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def test_discover_falls_back_to_sysfs_without_a_library():
    root = os.path.join(DATA, "dgx-h100")
    inv = discovery.discover([], "auto", root=root,
                             modules={"pynvml": FakeNvml({"library": False, "gpus": []}),
                                      "amdsmi": FakeAmdSmi({"library": False, "processors": []})})
    assert len(inv.devices) == 8 and inv.devices[0].backend == "sysfs"
    assert "Library Not Found" in inv.backends["nvml"]


def test_discover_check_reports_mismatches(root):
    declared = gpudefs(("h100", 8, "CUDA_VISIBLE_DEVICES", "nvidia",
                        [f"/dev/nvidia{i}" for i in range(8)]))
    m = machines.dgx_h100()
    inv = discovery.discover(declared, "check", backends=("nvml",), root=root,
                             modules={"pynvml": FakeNvml(m)})
    assert inv.problems == []
    del m["gpus"][6:]                                # two GPUs fell off the bus
    inv = discovery.discover(declared, "check", backends=("nvml",), root=root,
                             modules={"pynvml": FakeNvml(m)})
    assert "cluster.toml declares 8 h100, found 6" in inv.problems[0]
    assert any("/dev/nvidia7 (h100) declared but not found" in p for p in inv.problems)


def test_static_inventory_and_renumbering():
    defs = gpudefs(("a100", 2, "CUDA_VISIBLE_DEVICES", "nvidia", ["/dev/tty10", "/dev/tty11"]))
    inv = discovery.static_inventory(defs)
    assert [d.index for d in inv.devices] == [0, 1] and inv.devices[1].device_files == ["/dev/tty11"]
    assert record.visibility(inv.devices, [1], fenced=True)["CUDA_VISIBLE_DEVICES"] == "0"
    assert record.visibility(inv.devices, [1], fenced=False)["CUDA_VISIBLE_DEVICES"] == "1"
    assert record.visibility(inv.devices, [], fenced=True)["CUDA_VISIBLE_DEVICES"] == ""


# -- record helpers ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, short", [
    ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100 80GB PCIe", "a100"), ("AMD Instinct MI300X", "mi300x"),
    ("NVIDIA GeForce RTX 4090", "rtx4090"), ("NVIDIA RTX A6000", "a6000"),
    ("NVIDIA L40S", "l40s"), ("Tesla V100-SXM2-32GB", "v100"), ("NVIDIA GH200 480GB", "gh200"),
])
def test_short_type(name, short):
    assert record.short_type(name) == short


def test_bdf_cpu_mask_and_lists():
    assert record.normalize_bdf("00000000:3B:00.0") == "0000:3b:00.0"
    assert record.normalize_bdf("0000:3b:00.0") == "0000:3b:00.0"
    assert record.bdf_from_location(0, 0x0c00) == "0000:0c:00.0"
    assert record.cpus_from_mask([0b1011, 1], 80) == [0, 1, 3, 64]
    assert parse_cpus("0-2,8,10-11") == [0, 1, 2, 8, 10, 11]
    assert record.mig_profile("NVIDIA A100-SXM4-80GB MIG 1g.10gb") == "1g.10gb"


# -- health ------------------------------------------------------------------------------------
def test_health_policy():
    h = Health(thermal_after=60, ignore_xids={13, 31, 43})
    ok = {"ecc_uncorrected": 0, "thermal": False}
    h.sample("0", {"lost": "GPU is lost"}, 0)
    h.sample("1", {"ecc_uncorrected": 3}, 0)        # old errors at start: drain, keep jobs
    h.sample("2", {**ok, "remap_pending": True}, 0)
    h.sample("3", {**ok, "thermal": True}, 0)
    h.settle()
    v = h.unhealthy()
    assert v["0"].fatal and "lost" in v["0"].reason
    assert not v["1"].fatal and "3 uncorrectable" in v["1"].reason
    assert "row remapping pending" in v["2"].reason and "3" not in v
    h.sample("3", {**ok, "thermal": True}, 59)
    assert "3" not in h.unhealthy()
    h.sample("3", {**ok, "thermal": True}, 61)
    assert "thermal throttling for 61 s" in h.unhealthy()["3"].reason
    h.sample("4", ok, 0)
    h.sample("4", {**ok, "ecc_uncorrected": 1}, 5)  # a new error while watching: fatal
    assert h.unhealthy()["4"].fatal
    assert h.event("5", "xid", 13, 5) is False and "5" not in h.unhealthy()
    assert h.event("5", "xid", 79, 5) is True and h.unhealthy()["5"].fatal
    assert h.event("6", "xid", 92, 5) and not h.unhealthy()["6"].fatal
    h.reset()
    assert h.unhealthy() == {}
    h.sample("1", {"ecc_uncorrected": 3}, 10)       # known errors do not drain again
    h.sample("2", {**ok, "remap_pending": True}, 10)  # a fault that persists does
    assert set(h.unhealthy()) == {"2"}


# -- the monitor object --------------------------------------------------------------------------
def test_monitor_auto_ticks_and_reports_by_index(root):
    m = machines.dgx_h100()
    mon = Monitor([], "auto", backends=("nvml",), root=root, modules={"pynvml": FakeNvml(m)})
    inv = mon.discover()
    assert len(inv.devices) == 8 and sorted(mon.targets) == list(range(8))
    m["gpus"][6]["lost"] = True
    msg = mon.tick(100.0)
    assert msg["samples"]["0"]["temp_c"] == 31 and msg["samples"]["6"] == {"lost": "GPU is lost (NVML: GPU is lost)"}
    assert list(msg["unhealthy"]) == ["6"] and msg["unhealthy"]["6"]["fatal"]
    mon.events.put(("xid", [inv.devices[3].key], 79))
    assert mon.drain_events(101.0) is True
    assert set(mon.message(101.0)["unhealthy"]) == {"3", "6"}
    # a resume while GPU 6 is still lost: it is looked for again, and stays out, under
    # the name the monitor knew it by (no /proc list here to say it)
    assert mon.reset() is True and mon.inventory.devices[6].fault
    assert mon.inventory.devices[6].uuid == m["gpus"][6]["uuid"]
    assert set(mon.tick(102.0)["unhealthy"]) == {"6"}
    del m["gpus"][6]["lost"]           # repaired: the next resume finds it, by its index
    assert mon.reset() is True and mon.inventory.devices[6].fault is None
    assert mon.inventory.devices[6].uuid == m["gpus"][6]["uuid"]
    assert mon.tick(103.0)["unhealthy"] == {}
    assert mon.reset() is False         # nothing to look for: no new discovery
    mon.close()


def test_monitor_static_matches_declared_devices_by_device_number(root):
    # cluster.toml names /dev/tty21 (what root/dev/nvidia1 points at) and an unknown tty
    defs = gpudefs(("h100", 2, "CUDA_VISIBLE_DEVICES", "nvidia", ["/dev/tty21", "/dev/tty40"]))
    mon = Monitor(defs, "static", backends=("nvml",), root=root,
                  modules={"pynvml": FakeNvml(machines.dgx_h100())})
    inv = mon.discover()
    assert [d.device_files for d in inv.devices] == [["/dev/tty21"], ["/dev/tty40"]]
    assert sorted(mon.targets) == [0]
    assert mon.targets[0][1].uuid == machines.dgx_h100()["gpus"][1]["uuid"]
    assert mon.tick(1.0)["samples"]["0"]["temp_c"] == 32
    mon.close()


# -- per-job usage ----------------------------------------------------------------------------------
def test_gpu_usage_accumulates_and_survives_a_restart(tmp_path):
    u = GpuUsage(str(tmp_path), [0, 1])
    s = {"0": {"util_pct": 80, "energy_j": 1000.0, "procs": [[10, 3000, "7.0", 10]]},
         "1": {"util_pct": 40, "energy_j": 500.0, "procs": [[11, 1000, None, 10], [12, 99, "8.0", 12]]},
         "2": {"util_pct": 100, "procs": []}}
    u.add(s, 0, "7.0", 10)
    s["0"].update(util_pct=100, energy_j=1600.0)
    s["1"].update(util_pct=60, energy_j=900.0, procs=[[11, 5000, None, 10]])
    u.add(s, 5, "7.0", 10)
    again = GpuUsage.load(str(tmp_path), [0, 1])
    assert again.summary() == {"gpu_util": 70.0, "gpu_mem_peak_mb": 8000, "gpu_energy_j": 1000.0}
    # a device that cannot list processes counts its whole use
    v = GpuUsage(str(tmp_path / "x"), [0])
    (tmp_path / "x").mkdir()
    for t in (0, 5):
        v.add({"0": {"util_pct": None, "mem_used_mb": 1234, "procs": None}}, t, "9.0", None)
    assert v.summary() == {"gpu_util": None, "gpu_mem_peak_mb": 1234, "gpu_energy_j": None}


def test_a_job_with_one_sample_shows_blanks_not_zeros(tmp_path):
    """One sample is no interval: no mean, no growth of the energy counter, no peak. rsacct
    shows blanks and rcontrol (null), as for any unknown value, not 0% / 0 J."""
    from rmsbatch.cli import rsacct
    from rmsbatch.cli.details import job_detail
    u = GpuUsage(str(tmp_path), [0])
    u.add({"0": {"util_pct": 0, "mem_used_mb": 0, "energy_j": 5000.0, "procs": []}}, 0, "7.0", 7)
    figures = u.summary()
    assert figures == {"gpu_util": None, "gpu_mem_peak_mb": None, "gpu_energy_j": None}
    job = {"id": 7, "state": "COMPLETED", "req_gpus": 1, "gpu_indices": [0], "exit_code": 0,
           "exit_signal": 0, **figures}
    args = rsacct.parse_args(["-j", "7", "-n", "-P", "-o", "JobID,GPUUtil,MaxGPUMem,GPUEnergy"])
    assert rsacct.render([job], args) == "7|||"
    shown = "\n".join(job_detail(job))
    assert "GPUUtil=(null) MaxGPUMem=(null) GPUEnergy=(null)" in shown
    # a second sample makes them figures, zeros included
    u.add({"0": {"util_pct": 0, "mem_used_mb": 0, "energy_j": 5000.0, "procs": []}}, 5, "7.0", 7)
    assert u.summary() == {"gpu_util": 0.0, "gpu_mem_peak_mb": 0, "gpu_energy_j": 0.0}


def _numbered(devs):
    discovery.number(devs)
    return devs


def test_monitor_process_protocol_and_a_failing_backend(root):
    """serve() over a socket pair, as rmsd sees it: hello, inventory, samples; and a
    backend that blows up during discovery is reported, not a silent death."""
    import json
    import socket
    import threading
    from rmsbatch.node.devices import monitor as monitor_mod

    def lines(sock, count):
        buf, out = b"", []
        while len(out) < count:
            buf += sock.recv(65536)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                out.append(json.loads(line))
        return out

    def serve(nvml):
        ours, theirs = socket.socketpair()
        mon = Monitor([], "auto", backends=("nvml",), root=root, modules={"pynvml": nvml})
        t = threading.Thread(target=monitor_mod.serve, args=(mon, theirs, 1.0), daemon=True)
        t.start()
        return ours, t

    ours, t = serve(FakeNvml(machines.dgx_h100()))
    hello, inventory, sample = lines(ours, 3)
    assert hello["op"] == "monitor_hello" and inventory["op"] == "gpu_inventory"
    assert len(inventory["inventory"]["devices"]) == 8 and inventory["sampled"] == list(range(8))
    assert sample["op"] == "gpu_sample" and sample["samples"]["7"]["temp_c"] == 38
    ours.sendall(b'{"op": "health_reset", "seq": 3}\n')
    assert lines(ours, 1)[0]["seq"] == 3             # judged afresh at once, and says so
    ours.sendall(b'{"op": "stop"}\n')
    t.join(timeout=5)
    assert not t.is_alive()

    class Broken(FakeNvml):
        def nvmlDeviceGetCount(self):
            raise RuntimeError("driver bug")
    ours, t = serve(Broken(machines.dgx_h100()))
    _, inventory, idle = lines(ours, 3)
    assert inventory["inventory"]["problems"] == ["GPU discovery failed: RuntimeError: driver bug"]
    assert idle["op"] == "monitor_idle"
    t.join(timeout=5)
