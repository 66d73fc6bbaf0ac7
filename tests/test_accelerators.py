"""Accelerators end to end, with real daemons: rmsd finds its GPUs through a fake NVML
(tests/fakegpu, on the real pynvml's classes), jobs land on the types they ask for and
see only their devices, and a GPU that fails is drained, its job ended or requeued, and
its use accounted.

One cluster, three nodes on this host:
    hnode  gpu_detect = "auto": 4 x H100 from the fake NVML; /dev/nvidia0-3 in the
           device root point at stand-in ttys 20-23, so fencing is real
    lnode  static: 2 x "l40s" stand-ins (ttys 32-33)
    cnode  gpu_detect = "check": declares 8 h100 where the fake NVML has 4 -> drained
    mnode  gpu_detect = "auto": 2 x A100, one in MIG mode (tests/fakegpu/machines.a100_mig);
           its /dev/nvidia4-5 and MIG capability files are stand-in ttys 40-49
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from tests.conftest import (LAB_TENANTS, NORMAL_QOS, Cluster, _kill_leftovers,
                            cluster_toml, wait_for)
from tests.fakegpu import machines
from tests.fakegpu.nvml import write_machine

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakegpu", "shim")
STAND_INS = os.geteuid() == 0 or all(os.access(f"/dev/tty{i}", os.R_OK) for i in range(20, 24))

NODES = """
[[nodes]]
names = "hnode"
cpus = 4
memory = "8G"
gpu_detect = "auto"

[[nodes]]
names = "lnode"
cpus = 4
memory = "8G"
[[nodes.gpus]]
type = "l40s"
count = 2
memory = "45G"
files = "/dev/tty[32-33]"

[[nodes]]
names = "cnode"
cpus = 4
memory = "8G"
gpu_detect = "check"
[[nodes.gpus]]
type = "h100"
count = 8

[[nodes]]
names = "mnode"
cpus = 4
memory = "8G"
gpu_detect = "auto"

"""


class GpuCluster(Cluster):
    def __init__(self, directory: str):
        super().__init__(directory, gpus=0)
        self.root = os.path.join(directory, "devroot")
        self.machine_path = os.path.join(directory, "h100.json")
        machine = machines.dgx_h100()
        del machine["gpus"][4:]
        self.machine = machine
        write_machine(self.machine_path, machine)
        machines.device_tree(self.root, range(4), range(20, 24))
        self.mig = machines.a100_mig(first_minor=4)
        self.mig_path = os.path.join(directory, "a100-mig.json")
        write_machine(self.mig_path, self.mig)
        self.mig_files = machines.mig_device_tree(self.root, self.mig, range(40, 50))
        config = cluster_toml("gpus", NODES, gpu_sample_interval=1, gpu_thermal_drain=3,
                              device_root=self.root)
        for name, text in (("cluster.toml", config), ("tenants.toml", LAB_TENANTS),
                           ("qos.toml", NORMAL_QOS)):
            with open(os.path.join(directory, name), "w") as fh:
                fh.write(text)
        self.fake_env = {"PYTHONPATH": os.pathsep.join([SHIM, *sys.path[1:]]),
                         "RMS_FAKE_NVML": self.machine_path}

    def start(self) -> None:
        for node in ("hnode", "lnode", "cnode", "mnode"):
            env = {"hnode": self.fake_env, "cnode": self.fake_env, "lnode": None,
                   "mnode": dict(self.fake_env, RMS_FAKE_NVML=self.mig_path)}[node]
            self.run("rms-local", "up", "--dir", self.dir, "--node", node, check=True, env=env)

    def change(self, fn) -> None:
        """Change the fake machine under the running daemons."""
        fn(self.machine)
        write_machine(self.machine_path, self.machine)

    def node(self, name: str, devices: bool = False) -> dict:
        return next(n for n in self.api("nodes", names=name, devices=devices)["nodes"])

    def until(self, predicate, timeout: float = 15, what: str = "condition"):
        return wait_for(predicate, timeout, what)


@pytest.fixture(scope="module")
def gc():
    directory = tempfile.mkdtemp(prefix="rms-gpu-", dir="/tmp")
    os.chmod(directory, 0o755)
    c = GpuCluster(directory)
    c.start()
    yield c
    c.down()
    _kill_leftovers(directory)
    shutil.rmtree(directory, ignore_errors=True)


def test_nodes_report_what_they_found(gc):
    h = gc.node("hnode", devices=True)
    assert h["gpus"] == 4 and h["gpu_type"] == "h100" and h["state"] == "IDLE"
    dev = h["devices"][0]
    assert dev["model"] == "NVIDIA H100 80GB HBM3" and dev["mem_mb"] == 81559
    assert dev["uuid"] == gc.machine["gpus"][0]["uuid"] and dev["numa_node"] == 0
    gc.until(lambda: gc.node("hnode", devices=True)["devices"][3].get("temp_c") == 34,
             what="telemetry reaches rmsctld")
    text = gc.run("rinfo", "--gpus", check=True).stdout
    lines = [line.split() for line in text.splitlines()]
    assert lines[0][:5] == ["NODE", "GPU", "TYPE", "MEMORY", "STATE"]
    rows = {(r[0], r[1]): r for r in lines[1:]}
    assert rows["hnode", "3"][2] == "h100" and "34C" in rows["hnode", "3"]
    assert rows["lnode", "1"][2:5] == ["l40s", "45G", "idle"]
    shown = gc.run("rcontrol", "show", "-d", "node", "hnode", check=True).stdout
    assert "GPUDetect=auto" in shown and "GPU2=h100 Model=NVIDIA H100 80GB HBM3" in shown
    assert "GPUBackends=nvml: used (4 devices)" in shown


def test_check_mode_mismatch_drains_the_node(gc):
    c = gc.node("cnode")
    assert c["state"] == "DRAIN"
    assert "GPU inventory mismatch: cluster.toml declares 8 h100, found 4" in c["reason"]
    reasons = gc.run("rinfo", "-R", check=True).stdout
    assert "GPU inventory mismatch" in reasons and "cnode" in reasons


def test_jobs_land_on_the_type_they_ask_for(gc):
    h100 = gc.submit("--gpus=h100:2", "--wrap", "echo $CUDA_VISIBLE_DEVICES $RMS_JOB_GPUS")
    l40s = gc.submit("--gres=gpu:l40s:1", "--wrap", "echo $CUDA_VISIBLE_DEVICES")
    big = gc.submit("--gpus=1", "--gpu-mem=80G", "--wrap", "echo $RMS_JOB_GPUS")
    for job_id in (h100, l40s, big):
        assert gc.wait_ended(job_id)["state"] == "COMPLETED"
    assert gc.job(h100)["nodelist"] == "hnode" and gc.job(l40s)["nodelist"] == "lnode"
    assert gc.job(big)["nodelist"] == "hnode"          # not the 45 GB L40S on lnode
    assert gc.output(h100).split() == ["0,1", "0,1"]    # fenced or not: GPUs 0 and 1
    for bad, why in ((["--gpus=v100:1"], "requested 1 v100 GPUs per node"),
                     (["--gpus=2", "--gpu-mem=100G"], "GPUs with 102400 MB per node")):
        result = gc.run("rsub", *bad, "--wrap", "true")
        assert result.returncode == 1 and why in result.stderr, result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="device fencing needs root")
def test_detected_devices_are_fenced(gc):
    probe = ("echo CVD=$CUDA_VISIBLE_DEVICES GPUS=$RMS_JOB_GPUS; for i in 0 1 2 3; do "
             f"if (exec 3<>{gc.root}/dev/nvidia$i) 2>/dev/null; then echo nv$i=open; "
             "else echo nv$i=denied; fi; done")
    job_id = gc.submit("--gpus=h100:1", "--wrap", probe)
    assert gc.wait_ended(job_id)["state"] == "COMPLETED"
    seen = dict(w.split("=") for w in gc.output(job_id).split())
    index = seen["GPUS"]
    assert seen["CVD"] == "0" and seen[f"nv{index}"] == "open"
    assert [k for k, v in seen.items() if v == "open"] == [f"nv{index}"]


def test_a_mig_instance_is_all_a_job_sees(gc):
    m = gc.node("mnode", devices=True)
    assert [d["type"] for d in m["devices"]] == ["3g.40gb", "2g.20gb", "1g.10gb", "1g.10gb", "a100"]
    shown = gc.run("rinfo", "-N", "-l", "-n", "mnode", check=True).stdout
    assert "gpu:1g.10gb:2,gpu:2g.20gb:1,gpu:3g.40gb:1,gpu:a100:1" in shown
    every = sorted({f for files in gc.mig_files.values() for f in files}
                   | {os.path.join(gc.root, "dev", "nvidia5")})
    probe = "echo CVD=$CUDA_VISIBLE_DEVICES; " + "; ".join(
        f"if (exec 3<>{f}) 2>/dev/null; then echo {f}=open; else echo {f}=denied; fi"
        for f in every)
    job_id = gc.submit("--gpus=1g.10gb:1", "--wrap", probe)
    assert gc.wait_ended(job_id)["state"] == "COMPLETED"
    assert gc.job(job_id)["nodelist"] == "mnode"
    seen = dict(line.split("=", 1) for line in gc.output(job_id).split())
    uuid = seen.pop("CVD")
    assert uuid in gc.mig_files and gc.mig_files[uuid][0].endswith("nvidia4")
    assert "1g.10gb" in [mig["profile"] for g in gc.mig["gpus"]
                         for mig in (g.get("mig") or {}).get("devices", []) if mig["uuid"] == uuid]
    if os.geteuid() == 0:          # fenced: its parent GPU and its own capabilities only
        assert sorted(f for f, v in seen.items() if v == "open") == sorted(gc.mig_files[uuid])
    # named with its GPU's type too, Slurm style
    named = gc.submit("--gpus=a100_3g.40gb:1", "--wrap", "echo $RMS_JOB_GPUS")
    assert gc.wait_ended(named)["state"] == "COMPLETED"
    assert gc.job(named)["nodelist"] == "mnode" and gc.output(named).strip() == "0"


def test_usage_is_accounted_per_job(gc):
    mark = os.path.join(gc.work, "usage.pid")
    done = os.path.join(gc.work, "usage.done")
    gc.change(lambda m: [g.update(util=75) for g in m["gpus"]])    # busy from the start
    job_id = gc.submit("--gpus=h100:1", "--wrap",
                       f"echo $$ > {mark}; while [ ! -e {done} ]; do sleep 0.1; done")
    gc.wait_state(job_id, "RUNNING")
    pid = int(gc.until(lambda: os.path.exists(mark) and open(mark).read().strip(),
                       what="the job's pid"))
    index = gc.job(job_id)["gpu_indices"][0]

    def busy(m):
        g = m["gpus"][index]
        g.update(mem_used_mb=30100, processes=[[pid, 30000]])
        g["energy_mj"] = g.get("energy_mj", 0)
    gc.change(busy)
    for step in range(4):                    # the board draws 250 J a second
        time.sleep(1)
        gc.change(lambda m: m["gpus"][index].update(
            energy_mj=m["gpus"][index]["energy_mj"] + 250_000))
    open(done, "w").close()
    job = gc.wait_ended(job_id)
    gc.change(lambda m: [g.update(util=0, mem_used_mb=0, processes=[]) for g in m["gpus"]])
    assert job["state"] == "COMPLETED"
    assert job["gpu_util"] == 75.0 and job["gpu_mem_peak_mb"] == 30000
    assert 250 <= job["gpu_energy_j"] <= 1000
    acct = gc.run("rsacct", "-j", str(job_id), "-n", "-P", "-o", "GPUUtil,MaxGPUMem,GPUEnergy",
                  check=True).stdout.strip()
    util, mem, energy = acct.split("|")
    assert (util, mem) == ("75%", "30000M") and energy.endswith(("0", "K")) and energy


def test_lost_gpu_drains_it_and_ends_its_job(gc):
    keep = gc.submit("--gpus=h100:1", "--requeue", "--wrap", "sleep 60")
    lose = gc.submit("--gpus=h100:1", "--wrap", "sleep 60")
    for job_id in (keep, lose):
        gc.wait_state(job_id, "RUNNING")
    lost = gc.job(lose)["gpu_indices"][0]
    other = gc.job(keep)["gpu_indices"][0]
    gc.change(lambda m: m["gpus"][lost].update(lost=True))
    job = gc.wait_ended(lose, timeout=20)
    assert job["state"] == "NODE_FAIL" and f"GPU {lost} on hnode failed: GPU is lost" in job["end_reason"]
    node = gc.node("hnode")
    assert node["gpus_drained"] == 1 and "GPU is lost" in node["gpu_drain"][str(lost)]
    assert gc.job(keep)["state"] == "RUNNING"           # a job on a healthy GPU carries on
    # no new job lands on the lost GPU: 3 are healthy, one is busy
    two = gc.submit("--gpus=h100:2", "--wrap", "echo $RMS_JOB_GPUS; sleep 30")
    gc.wait_state(two, "RUNNING")
    assert lost not in gc.job(two)["gpu_indices"]
    blocked = gc.submit("--gpus=h100:1", "--wrap", "true")
    assert gc.wait_state(blocked, "PENDING")["reason"] in ("Resources", "Priority")
    assert "GPU " in gc.run("rinfo", "-R", check=True).stdout
    assert "drained" in gc.run("rinfo", "--gpus", "-n", "hnode", check=True).stdout
    # a resume with the fault still there: the monitor judges it again first, so the
    # device never goes back to service and the waiting job does not land on it
    gc.run("rcontrol", "resume", "hnode", check=True)
    time.sleep(2.5)
    assert gc.node("hnode")["gpus_drained"] == 1
    assert gc.job(blocked)["state"] == "PENDING"
    # repaired: resumed for good, and the waiting job runs
    gc.change(lambda m: m["gpus"][lost].pop("lost"))
    gc.run("rcontrol", "resume", "hnode", check=True)
    gc.run("rcancel", str(two), str(keep), check=True)
    assert gc.wait_ended(blocked, timeout=20)["state"] == "COMPLETED"
    # looked for again (a fresh discovery), re-registered, judged: back in service
    gc.until(lambda: gc.node("hnode")["gpus_drained"] == 0, what="GPU back after resume")
    assert gc.job(keep)["state"] == "CANCELLED"
    assert other != lost


def test_fatal_fault_requeues_a_job_that_asked(gc):
    job_id = gc.submit("--gpus=h100:1", "--requeue", "--wrap", "sleep 60")
    gc.wait_state(job_id, "RUNNING")
    index = gc.job(job_id)["gpu_indices"][0]
    gc.change(lambda m: m["events"].append({"gpu": index, "xid": 79}))
    gc.until(lambda: gc.job(job_id)["restart_count"] == 1, what="requeued")
    job = gc.wait_state(job_id, "RUNNING")
    assert index not in job["gpu_indices"]                # started again elsewhere
    assert "XID 79" in gc.node("hnode")["gpu_drain"][str(index)]
    gc.run("rcancel", str(job_id), check=True)
    gc.wait_ended(job_id)
    # an application XID is not the GPU's fault: nothing is drained
    gc.change(lambda m: m["events"].append({"gpu": (index + 1) % 4, "xid": 13}))
    time.sleep(2)
    assert list(gc.node("hnode")["gpu_drain"]) == [str(index)]
    gc.run("rcontrol", "resume", "hnode", check=True)
    gc.until(lambda: gc.node("hnode")["gpus_drained"] == 0, what="resumed")


def test_sustained_thermal_throttling_drains_without_killing(gc):
    job_id = gc.submit("--gpus=h100:1", "--wrap", "sleep 30")
    gc.wait_state(job_id, "RUNNING")
    index = gc.job(job_id)["gpu_indices"][0]
    gc.change(lambda m: m["gpus"][index].update(throttle=0x40))     # HW thermal slowdown
    gc.until(lambda: str(index) in gc.node("hnode")["gpu_drain"], what="thermal drain")
    assert "thermal throttling" in gc.node("hnode")["gpu_drain"][str(index)]
    assert gc.job(job_id)["state"] == "RUNNING"
    gc.change(lambda m: m["gpus"][index].update(throttle=0))
    gc.run("rcancel", str(job_id), check=True)
    gc.wait_ended(job_id)
    gc.run("rcontrol", "resume", "hnode", check=True)
    gc.until(lambda: gc.node("hnode")["gpus_drained"] == 0, what="resumed")


def test_rmsd_restart_keeps_detected_devices_and_usage(gc):
    job_id = gc.submit("--gpus=h100:1", "--wrap", "sleep 3")
    gc.wait_state(job_id, "RUNNING")
    with open(os.path.join(gc.dir, "run", "rmsd-hnode.pid")) as fh:
        pid = int(fh.read())
    os.kill(pid, 9)
    gc.run("rms-local", "up", "--dir", gc.dir, "--node", "hnode", check=True, env=gc.fake_env)
    job = gc.wait_ended(job_id, timeout=20)
    assert job["state"] == "COMPLETED", job["end_reason"]
    assert gc.node("hnode")["gpus"] == 4
    monitors = subprocess.run(["pgrep", "-f", f"devices.monitor --conf-dir {gc.dir} --node hnode"],
                              capture_output=True, text=True).stdout.split()
    assert len(monitors) == 1, "the old monitor must end with its rmsd"
