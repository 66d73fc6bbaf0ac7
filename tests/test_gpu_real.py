"""The real NVML, the real driver, a real GPU: `pytest -m gpu` on a machine with one.

Skipped everywhere else. They check what the fakes cannot: that discovery agrees with
nvidia-smi, that telemetry moves when a GPU is used, and that a job sees exactly the
GPUs it was given (with nvidia-smi -L inside the job).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import time

import pytest

from rmsbatch.node.devices.backend import BackendUnavailable
from rmsbatch.node.devices.nvml import NvmlBackend
from rmsbatch.node.devices.record import normalize_bdf

pytestmark = pytest.mark.gpu


def _nvml() -> NvmlBackend | None:
    backend = NvmlBackend()
    try:
        backend.open()
    except BackendUnavailable:
        return None
    return backend


@pytest.fixture(scope="module")
def nvml():
    backend = _nvml()
    if backend is None or not shutil.which("nvidia-smi"):
        pytest.skip("no NVIDIA driver and GPU here")
    yield backend
    backend.close()


def smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}",
                          "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         check=True).stdout
    return [[f.strip() for f in line.split(",")] for line in out.strip().splitlines()]


def test_discovery_agrees_with_nvidia_smi(nvml):
    devices = nvml.discover()
    whole = [d for d in devices if not d.is_partition]
    rows = smi("index", "uuid", "pci.bus_id", "memory.total", "name")
    mig = [r for r in rows if any(d.parent == r[1] for d in devices)]
    assert len(whole) + len(mig) == len(rows), (devices, rows)
    by_uuid = {d.uuid: d for d in whole}
    for index, uuid, bus, mem, name in rows:
        if uuid not in by_uuid:
            continue                  # a GPU in MIG mode: its instances are the devices
        d = by_uuid[uuid]
        assert d.env_id == index and d.bdf == normalize_bdf(bus) and d.model == name
        assert abs(d.mem_mb - int(mem)) <= 1
        assert os.path.exists(d.device_files[0])
    print("\n".join(f"GPU {d.env_id}: {d.describe()} {d.uuid} {d.bdf} NUMA {d.numa_node} "
                    f"CPUs {len(d.cpus)} links {d.links}" for d in devices))


def _cuda_alloc(mib: int):
    """Hold `mib` MiB on GPU 0 through the driver API (no toolkit needed)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuInit(0) == 0
    dev, ctx, ptr = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
    assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev) == 0
    assert cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(mib << 20)) == 0
    return cuda, ctx, ptr


def test_telemetry_moves_under_load(nvml):
    devices = [d for d in nvml.discover() if not d.is_partition]
    first = devices[0]
    before = nvml.sample([first])[first.key]
    assert before["temp_c"] and before["sm_clock_mhz"] is not None
    assert before["power_w"] and before["power_w"] > 0
    cuda, ctx, ptr = _cuda_alloc(2048)
    try:
        time.sleep(1)
        during = nvml.sample([first])[first.key]
        assert during["mem_used_mb"] >= before["mem_used_mb"] + 1900
        mine = [p for p in during["procs"] or [] if p[0] == os.getpid()]
        assert mine and (mine[0][1] is None or mine[0][1] >= 2000), during["procs"]
        print(f"\nidle: {before}\nloaded: {during}")
    finally:
        cuda.cuMemFree_v2(ptr)
        cuda.cuCtxDestroy_v2(ctx)


@pytest.mark.skipif(os.geteuid() != 0, reason="device fencing needs root")
def test_a_job_sees_exactly_its_gpus(new_cluster, nvml):
    count = len([d for d in nvml.discover()])
    c = new_cluster(gpus=0, start=False)
    c.run("rms-local", "up", "--dir", c.dir, check=True)     # auto-detects the GPUs
    node = c.api("nodes", devices=True)["nodes"][0]
    assert node["gpus"] == count, node
    probe = "echo CVD=$CUDA_VISIBLE_DEVICES; nvidia-smi -L 2>&1; true"
    one = c.submit("--gpus=1", "--wrap", probe)
    none = c.submit("--wrap", probe)
    for job_id in (one, none):
        assert c.wait_ended(job_id, timeout=60)["state"] == "COMPLETED"
    text = {j: open(os.path.join(c.work, f"rms-{j}.out")).read() for j in (one, none)}
    listed = [line for line in text[one].splitlines() if line.startswith(("GPU ", "  MIG"))]
    assert len(listed) == 1 and "CVD=0" in text[one], text[one]
    # a job given no GPU can open none
    assert not [line for line in text[none].splitlines() if line.startswith("GPU ")], text[none]
    print(f"\njob with 1 GPU:\n{text[one]}\njob with none:\n{text[none]}")
