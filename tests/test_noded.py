"""The node daemon's launch decisions, without processes: the limits and the environment
it gives a job from its allocation and the node's accelerator records."""
from __future__ import annotations

import os

import pytest

from rmsbatch import config
from rmsbatch.node import jobenv, launch
from rmsbatch.node.daemon import NodeDaemon

CLUSTER = """
[controller]
socket = "run/ctl.sock"
spool_dir = "spool"
[node_daemon]
state_dir = "state"
gpu_monitor = false
[[nodes]]
names = "n1"
cpus = 2
memory = "4G"
[[nodes.gpus]]
type = "a100"
count = 1
files = "/dev/tty30"
cpus = "1"
memory = "80G"
[[nodes.gpus]]
type = "l4"
count = 1
files = "/dev/tty31"
cpus = "0"
[[nodes.gpus]]
type = "rngd"
vendor = "other"
count = 2
files = "/dev/tty[32-33]"
env = "NPU_VISIBLE_DEVICES"
[[partitions]]
name = "p"
"""


@pytest.fixture
def daemon(tmp_path):
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    (tmp_path / "tenants.toml").write_text('[[accounts]]\nname = "a"\nusers = ["*"]\n')
    (tmp_path / "qos.toml").write_text('[[qos]]\nname = "normal"\n')
    d = NodeDaemon(config.load(str(tmp_path)), "n1")
    d.host_cpus = [0, 1]          # as on a 2-CPU host, whatever this one has
    return d


def job(gpus, cpus=1):
    return {"job_id": 7, "name": "j", "nodelist": "n1", "nodes": 1, "submit_dir": "/tmp",
            "submit_host": "h", "account": "a", "partition": "p", "qos": "normal",
            "user": "root", "uid": 0, "gid": 0, "ntasks": 1, "cpus_per_task": cpus, "cluster": "c",
            "restart_count": 0, "environment": {"CUDA_VISIBLE_DEVICES": "5"}, "export": "ALL",
            "alloc": {"cpus": cpus, "mem_mb": 100, "gpus": gpus}}


def test_cpuset_comes_from_the_gpus_numa_node(daemon):
    # GPU 0 is local to CPU 1, GPU 1 to CPU 0: a one-CPU job gets the CPU of its GPU
    assert launch.isolation(daemon, job([0]), "7.0")["cpus"] == [1]
    assert launch.isolation(daemon, job([1]), "8.0")["cpus"] == [0]
    assert launch.isolation(daemon, job([0]), "9.0")["why_no_cpuset"].startswith("0 of the host's 2")


def test_fence_lists_every_accelerator_file_and_allows_the_job_s(daemon):
    spec = launch.isolation(daemon, job([1, 3]), "7.0")
    assert spec["devices"] == ["/dev/tty30", "/dev/tty31", "/dev/tty32", "/dev/tty33"]
    assert spec["allowed"] == ["/dev/tty31", "/dev/tty33"]


@pytest.mark.parametrize("fenced, cuda, npu", [(True, "0", "0"), (False, "1", "1")])
def test_visibility_per_variable(daemon, fenced, cuda, npu, monkeypatch):
    monkeypatch.setattr(NodeDaemon, "fenced", property(lambda self: fenced))
    import pwd
    env = jobenv.environment(daemon, job([1, 3]), pwd.getpwuid(os.getuid()))
    # the submit environment's CUDA_VISIBLE_DEVICES is never inherited
    assert env["CUDA_VISIBLE_DEVICES"] == cuda and env["NPU_VISIBLE_DEVICES"] == npu
    assert env["RMS_JOB_GPUS"] == "1,3" and env["RMS_GPUS_ON_NODE"] == "2"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    none = jobenv.environment(daemon, job([]), pwd.getpwuid(os.getuid()))
    assert none["CUDA_VISIBLE_DEVICES"] == "" and none["NPU_VISIBLE_DEVICES"] == ""


def test_a_stuck_monitor_is_killed_and_said(daemon):
    import subprocess
    import time
    stuck = subprocess.Popen(["sleep", "60"])        # a monitor blocked in the driver
    daemon.monitor = stuck
    daemon.monitor_heard = time.time() - 30
    daemon.check_monitor(time.time())
    assert stuck.poll() is None                      # not yet: 60 s of silence allowed
    daemon.check_monitor(time.time() + 60)
    assert stuck.wait(timeout=5) == -9
    assert "accelerator monitor silent for 90 s: restarted" in daemon.gpu_problems[0]
