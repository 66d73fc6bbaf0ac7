"""Faulty and inaccessible GPUs, with real daemons and a fake NVML (tests/fakegpu, on the
real pynvml's classes): a GPU that fails drains that GPU, never its node, and keeps its
number; GPUs outside a container are a note; `rcontrol resume` says what stays drained.

One cluster, two nodes on this host, both an 8 x H100 host as the fake NVML and the
driver's /proc list (in the device root) describe it:
    xnode  GPU 2 answers GPU_IS_LOST from the start; nvmlDeviceGetNumaNodeId is
           NotSupported (as on x86), nvmlDeviceGetMemoryAffinity puts GPUs 0-3 on NUMA
           node 0 and 4-7 on node 1
    knode  a container whose device cgroup denies GPUs 0-5: NVML counts them, and answers
           NO_PERMISSION for the handle (0-3) or for a call that names the GPU (4, 5)
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile

import pytest

from tests.conftest import (LAB_TENANTS, NORMAL_QOS, Cluster, _kill_leftovers,
                            cluster_toml, wait_for)
from tests.fakegpu import machines
from tests.fakegpu.nvml import write_machine

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakegpu", "shim")
TTYS = range(50, 58)           # stand-in character devices for /dev/nvidia0-7

NODES = """
[[nodes]]
names = "xnode"
cpus = 4
memory = "8G"
gpu_detect = "auto"

[[nodes]]
names = "knode"
cpus = 4
memory = "8G"
gpu_detect = "auto"
features = ["container"]

"""


class FaultCluster(Cluster):
    def __init__(self, directory: str):
        super().__init__(directory, gpus=0)
        self.root = os.path.join(directory, "devroot")
        host = machines.dgx_h100()
        machines.proc_tree(self.root, host)
        machines.device_tree(self.root, range(8), TTYS)
        self.x = machines.dgx_h100()
        self.x["gpus"][2]["lost"] = True
        for g in self.x["gpus"]:
            g["unsupported"] = ["numa"]
        self.k = machines.dgx_h100()
        for g in self.k["gpus"][:4]:
            g["no_permission"] = True
        self.k["gpus"][4]["no_permission"] = ["uuid"]
        self.k["gpus"][5]["no_permission"] = ["pci"]
        self.paths = {"xnode": os.path.join(directory, "x.json"),
                      "knode": os.path.join(directory, "k.json")}
        write_machine(self.paths["xnode"], self.x)
        write_machine(self.paths["knode"], self.k)
        config = cluster_toml("gpufaults", NODES, gpu_sample_interval=1, device_root=self.root)
        for name, text in (("cluster.toml", config), ("tenants.toml", LAB_TENANTS),
                           ("qos.toml", NORMAL_QOS)):
            with open(os.path.join(directory, name), "w") as fh:
                fh.write(text)

    def start(self) -> None:
        for node, path in self.paths.items():
            env = {"PYTHONPATH": os.pathsep.join([SHIM, *sys.path[1:]]), "RMS_FAKE_NVML": path}
            self.run("rms-local", "up", "--dir", self.dir, "--node", node, check=True, env=env)

    def change_x(self, fn) -> None:
        fn(self.x)
        write_machine(self.paths["xnode"], self.x)

    def node(self, name: str, devices: bool = False) -> dict:
        return self.api("nodes", names=name, devices=devices)["nodes"][0]


@pytest.fixture(scope="module")
def fc():
    directory = tempfile.mkdtemp(prefix="rms-gpufault-", dir="/tmp")
    os.chmod(directory, 0o755)
    c = FaultCluster(directory)
    c.start()
    wait_for(lambda: all(c.node(n)["connected"] for n in ("xnode", "knode")), 30,
             "both nodes registered")
    yield c
    c.down()
    _kill_leftovers(directory)
    shutil.rmtree(directory, ignore_errors=True)


def test_a_gpu_lost_at_start_drains_only_itself_and_keeps_its_number(fc):
    x = fc.node("xnode", devices=True)
    assert x["state"] == "IDLE" and x["reason"] == ""           # the node is in service
    assert x["gpus"] == 8 and x["gpus_drained"] == 1
    assert x["gpu_drain"] == {"2": "GPU is lost (NVML: GPU is lost)"}
    # every index is the same physical GPU as NVML's (and nvidia-smi's): nothing renumbered
    assert [d["uuid"] for d in x["devices"]] == [g["uuid"] for g in fc.x["gpus"]]
    assert [d["state"] for d in x["devices"]] == ["idle"] * 2 + ["drained"] + ["idle"] * 5
    reasons = fc.run("rinfo", "-R", check=True).stdout
    assert any("GPU 2: GPU is lost" in line and "xnode" in line for line in reasons.splitlines())
    rows = [line.split() for line in fc.run("rinfo", "--gpus", "-n", "xnode", check=True).stdout.splitlines()]
    assert rows[3][:5] == ["xnode", "2", "h100", "-", "drained"]       # its memory: unknown
    # jobs land on the seven others; a 4-GPU job on one NUMA node (memory affinity),
    # though the NUMA-id call is NotSupported and GPU 2 breaks up node 0
    four = fc.submit("--gpus=h100:4", "--wrap", "echo $RMS_JOB_GPUS; sleep 30")
    assert fc.wait_state(four, "RUNNING")["gpu_indices"] == [4, 5, 6, 7]
    three = fc.submit("--gpus=h100:3", "--wrap", "echo $RMS_JOB_GPUS; sleep 30")
    assert fc.wait_state(three, "RUNNING")["gpu_indices"] == [0, 1, 3]
    fc.run("rcancel", str(four), str(three), check=True)
    fc.wait_ended(four)
    fc.wait_ended(three)


def test_resume_says_what_stays_drained_and_a_repaired_gpu_comes_back(fc):
    out = fc.run("rcontrol", "resume", "xnode", check=True).stdout
    assert out == ("xnode: GPU 2 stays drained until its monitor has judged it again (drained "
                   "for: GPU is lost (NVML: GPU is lost)); see: rcontrol show node xnode\n")
    # the monitor looks for it again and finds it still lost: the outcome is shown
    wait_for(lambda: "still so" in fc.node("xnode")["gpu_drain"]["2"], 15, "the judgement")
    shown = fc.run("rcontrol", "show", "node", "xnode", check=True).stdout
    assert "GPU2=DRAIN Reason=GPU is lost (NVML: GPU is lost) [still so after resume]" in shown
    assert "GPU 2: GPU is lost (NVML: GPU is lost) [still so after resume]" in \
        fc.run("rinfo", "-R", check=True).stdout
    # repaired: the next resume finds it at its index, by its name, and it takes jobs
    fc.change_x(lambda m: m["gpus"][2].pop("lost"))
    assert "GPU 2 stays drained" in fc.run("rcontrol", "resume", "xnode", check=True).stdout
    wait_for(lambda: fc.node("xnode")["gpus_drained"] == 0, 15, "GPU 2 back in service")
    dev = fc.node("xnode", devices=True)["devices"][2]
    assert dev["uuid"] == fc.x["gpus"][2]["uuid"] and dev["health"] == "ok"
    assert dev["numa_node"] == 0
    job = fc.submit("--gpus=h100:8", "--wrap", "echo $RMS_JOB_GPUS")
    assert fc.wait_ended(job)["state"] == "COMPLETED"
    assert fc.output(job).strip() == "0,1,2,3,4,5,6,7"


def test_gpus_outside_the_container_are_a_note_not_a_drain(fc):
    k = fc.node("knode", devices=True)
    assert k["state"] == "IDLE" and k["reason"] == ""
    assert k["gpus"] == 2 and k["gpus_drained"] == 0 and k["gpu_drain"] == {}
    assert [d["uuid"] for d in k["devices"]] == [g["uuid"] for g in fc.k["gpus"][6:]]
    note = ("NVML GPUs 0-5 outside this container's devices (NVML: Insufficient "
            "Permissions): not used")
    assert f"GPUNote={note}" in fc.run("rcontrol", "show", "node", "knode", check=True).stdout
    assert any(note in line and "knode" in line and " note " in line
               for line in fc.run("rinfo", "-R", check=True).stdout.splitlines())
    # what it has is allocatable; what it cannot open is not
    job = fc.submit("-C", "container", "--gpus=2", "--wrap", "echo $RMS_JOB_GPUS")
    assert fc.wait_ended(job)["state"] == "COMPLETED" and fc.output(job).strip() == "0,1"
    assert fc.job(job)["nodelist"] == "knode"
    three = fc.run("rsub", "-C", "container", "--gpus=3", "--wrap", "true")
    assert three.returncode == 1 and "node knode has 2" in three.stderr, three.stderr
