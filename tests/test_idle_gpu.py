"""Idle GPUs (cluster.toml [accounting] idle_gpu_*): a job whose GPUs sit under the
threshold long enough is flagged in rq (IdleGPU), then cancelled or requeued where the
cluster says so; rsacct accounts the idle time (GPUIdle, IdleGPUHours).

Three layers: the node's per-job streak (GpuUsage, fed samples directly); the
controller's decisions on a hand-moved clock (heartbeats in, job records out); and real
daemons on a fake NVML whose utilization the test sets per GPU.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import pytest

from rmsbatch.cli import jobfields, rsacct
from rmsbatch.cli.layout import timestamp
from rmsbatch.core.jobspec import JobSpec
from rmsbatch.node.devices.usage import GpuUsage
from tests.conftest import (LAB_TENANTS, NORMAL_QOS, Clock, Cluster, _kill_leftovers,
                            cluster_toml, controller_on_spool, fake_conn, wait_for)
from tests.fakegpu import machines
from tests.fakegpu.nvml import write_machine


# -- the node: one job's idle streak ---------------------------------------------------------
def _sample(*utils) -> dict:
    return {str(i): {"util_pct": u, "procs": []} for i, u in enumerate(utils)}


def test_an_idle_streak_counts_time_between_idle_samples_and_survives_a_restart(tmp_path):
    u = GpuUsage(str(tmp_path), [0, 1], idle_util=10)
    u.add(_sample(50, 0), 100, "7.0", None)          # mean 25%: busy
    assert u.idle(100) == (None, 0.0)
    u.add(_sample(5, 10), 105, "7.0", None)          # mean 7.5%: the streak starts
    assert u.idle(105) == (105, 0.0)
    u.add(_sample(0, 0), 110, "7.0", None)
    assert u.idle(110) == (105, 5.0)
    again = GpuUsage.load(str(tmp_path), [0, 1], idle_util=10)     # rmsd restarted
    assert again.idle(112) == (105, 5.0)
    again.add(_sample(0, 0), 115, "7.0", None)
    assert again.idle(115) == (105, 10.0)
    again.add(_sample(None, None), 118, "7.0", None)   # no reading: neither idle nor busy
    assert again.idle(118) == (105, 10.0)
    again.add(_sample(10, 10), 120, "7.0", None)       # at the threshold is busy
    assert again.idle(120) == (None, 10.0)
    again.add(_sample(0, 0), 125, "7.0", None)         # a new streak adds from its 2nd sample
    assert again.idle(125) == (125, 10.0)
    assert again.summary()["gpu_idle_s"] == 10.0
    # the supervisor, reporting the outcome itself while rmsd is away, reads the file alone
    assert GpuUsage.load(str(tmp_path), [0, 1]).summary()["gpu_idle_s"] == 10.0


def test_silence_ends_a_streak_and_is_not_counted_as_idle(tmp_path):
    u = GpuUsage(str(tmp_path), [0], idle_util=10, gap_s=60)
    u.add(_sample(0), 0, "7.0", None)
    u.add(_sample(0), 10, "7.0", None)
    assert u.idle(30) == (0, 10.0)
    assert u.idle(200) == (None, 10.0)       # no sample for 190 s: no evidence of idleness
    u.add(_sample(0), 300, "7.0", None)
    assert u.idle(300) == (300, 10.0)        # the gap added nothing, and the streak restarts


def test_without_a_threshold_nothing_is_tracked_or_reported(tmp_path):
    u = GpuUsage(str(tmp_path), [0])
    for t in (0, 5, 10):
        u.add(_sample(0), t, "7.0", None)
    assert u.idle(10) is None
    assert "gpu_idle_s" not in u.summary()
    assert "idle_s" not in json.load(open(tmp_path / "gpu_usage.json"))
    u.set_idle_util(10)                      # turned on by a reload
    u.add(_sample(0), 15, "7.0", None)
    assert u.idle(15) == (15, 0.0)
    u.set_idle_util(0)                       # and off again
    assert u.idle(15) is None


# -- the controller: flag, unflag, cancel, requeue ------------------------------------------
CLUSTER = """
name = "t"
[controller]
socket = "run/s.sock"
spool_dir = "spool"
[[nodes]]
names = "g[1-2]"
cpus = 8
memory = "64G"
[[nodes.gpus]]
type = "a100"
count = 4
[[partitions]]
name = "gpu"
default = true
[accounting]
idle_gpu_util = 10
idle_gpu_after = "10:00"
idle_gpu_grace = "5:00"
"""
TENANTS = 'admins = ["root"]\n[[accounts]]\nname = "lab"\nusers = ["*"]\n'
QOS = '[[qos]]\nname = "normal"\n'
ROOT = fake_conn(0)


def _controller(tmp_path, action: str):
    text = CLUSTER + f'idle_gpu_action = "{action}"\n'
    return controller_on_spool(tmp_path, text, TENANTS, QOS, clock=Clock())


@pytest.fixture
def ctl(tmp_path):
    c = _controller(tmp_path, "cancel")
    yield c
    c.spool.close()


def _register(ctl, node: str):
    conn = fake_conn(0)
    assert ctl.handle(conn, {"op": "node_hello", "node": node, "inventory": {}})["ok"]
    return conn


def _start(ctl, **kw) -> int:
    spec = JobSpec(script="#!/bin/sh\ntrue\n", workdir="/tmp", submit_dir="/tmp")
    for k, v in kw.items():
        setattr(spec, k, v)
    reply = ctl.handle(ROOT, {"op": "submit", "spec": spec.to_dict()})
    assert reply["ok"], reply
    ctl.schedule()
    ctl.flush()
    assert ctl.spool.job(reply["job_id"])["state"] == "RUNNING"
    return reply["job_id"]


def _beat(ctl, conn, node: str, *reports, running=None, check: bool = True) -> None:
    """A heartbeat, with [job id, run, idle since or None, seconds idle] per run; then
    the controller's periodic check (`check`)."""
    if running is None:
        running = [[r[0], r[1]] for r in reports]
    reply = ctl.handle(conn, {"op": "heartbeat", "node": node, "running": running,
                              "idle": [list(r) for r in reports]})
    assert reply["ok"], reply
    if check:
        ctl.check_nodes()
        ctl.flush()


def _rq(ctl, job_id: int, fields: str = "nodelist_reason") -> str:
    job = ctl.handle(ROOT, {"op": "jobs", "ids": [job_id]})["jobs"][0]
    return jobfields.job_layout(fields).render([job], ctl.clock(), header=False).strip()


def _rsacct(ctl, job_id: int, fields: str) -> str:
    job = ctl.handle(ROOT, {"op": "jobs", "ids": [job_id]})["jobs"][0]
    return rsacct.render([job], rsacct.parse_args(["-n", "-P", "-o", fields]), now=ctl.clock())


def test_idle_long_enough_is_flagged_busy_again_is_not_then_idle_past_grace_is_cancelled(ctl):
    g1 = _register(ctl, "g1")
    job = _start(ctl, gpus=1)
    t0 = ctl.clock.now
    _beat(ctl, g1, "g1", (job, 0, t0, 0.0))
    ctl.clock.now += 599
    _beat(ctl, g1, "g1", (job, 0, t0, 599.0))
    assert _rq(ctl, job) == "g1"                        # 9:59 idle: not yet
    ctl.clock.now += 1
    _beat(ctl, g1, "g1", (job, 0, t0, 600.0))
    assert _rq(ctl, job) == "g1 (IdleGPU)"
    assert _rq(ctl, job, "idle_since") == timestamp(t0)
    assert _rsacct(ctl, job, "State,Reason,GPUIdle") == "RUNNING|IdleGPU|00:10:00"
    ctl.clock.now += 10
    _beat(ctl, g1, "g1", (job, 0, None, 605.0))         # busy again
    assert _rq(ctl, job) == "g1" and _rq(ctl, job, "idle_since") == ""
    t1 = ctl.clock.now
    ctl.clock.now += 600
    _beat(ctl, g1, "g1", (job, 0, t1, 1205.0))
    assert _rq(ctl, job) == "g1 (IdleGPU)"
    g1.meta["sent"] = []
    ctl.clock.now += 299
    _beat(ctl, g1, "g1", (job, 0, t1, 1504.0))
    assert ctl.spool.job(job)["state"] == "RUNNING"     # within its grace
    ctl.clock.now += 1
    _beat(ctl, g1, "g1", (job, 0, t1, 1505.0))
    assert ctl.spool.job(job)["state"] == "COMPLETING"
    # stopped as rcancel stops a job: SIGTERM and the kill grace, not at once
    assert {"op": "cancel", "job_id": job, "run": 0} in g1.meta["sent"]
    outcome = {"job_id": job, "run": 0, "state": "CANCELLED", "exit_code": 0, "signal": 15,
               "gpu_idle_s": 1507.5}
    assert ctl.handle(g1, {"op": "job_ended", "node": "g1", "outcome": outcome})["ok"]
    assert _rsacct(ctl, job, "State,Reason,GPUIdle,IdleGPUHours") == (
        "CANCELLED|idle GPUs: under 10% utilization for 15:00 (cluster.toml [accounting] "
        "idle_gpu_action)|00:25:07|0.42")


def test_a_controller_that_first_sees_a_job_overdue_still_gives_its_owner_the_grace(ctl):
    g1 = _register(ctl, "g1")
    job = _start(ctl, gpus=1)
    t0 = ctl.clock.now
    ctl.clock.now += 3600            # idle an hour as the controller (re)starts hearing of it
    _beat(ctl, g1, "g1", (job, 0, t0, 3600.0))
    assert _rq(ctl, job) == "g1 (IdleGPU)"
    ctl.clock.now += 299
    _beat(ctl, g1, "g1", (job, 0, t0, 3899.0))
    assert ctl.spool.job(job)["state"] == "RUNNING"
    ctl.clock.now += 1
    _beat(ctl, g1, "g1", (job, 0, t0, 3900.0))
    assert ctl.spool.job(job)["state"] == "COMPLETING"


def test_requeue_puts_an_idle_job_back_in_the_queue_and_its_old_run_counts_no_more(tmp_path):
    ctl = _controller(tmp_path, "requeue")
    g1 = _register(ctl, "g1")
    job = _start(ctl, gpus=2)
    t0 = ctl.clock.now
    ctl.clock.now += 900
    _beat(ctl, g1, "g1", (job, 0, t0, 900.0))
    assert _rq(ctl, job) == "g1 (IdleGPU)"
    ctl.clock.now += 300
    _beat(ctl, g1, "g1", (job, 0, t0, 1200.0))
    row = ctl.spool.job(job)
    assert row["state"] == "PENDING" and row["restart_count"] == 1
    assert row["idle_since"] is None
    assert "requeued: idle GPUs: under 10% utilization for 20:00" in _rq(ctl, job)
    assert {"op": "cancel", "job_id": job, "run": 0, "now": True} in g1.meta["sent"]
    ctl.schedule()
    ctl.flush()
    assert ctl.spool.job(job)["state"] == "RUNNING"
    # the old run's report is not the new run's: nothing is flagged on it
    ctl.clock.now += 10
    _beat(ctl, g1, "g1", (job, 0, t0, 1210.0), (job, 1, None, 0.0))
    assert _rq(ctl, job) == "g1"
    ctl.spool.close()


def test_an_earlier_runs_streak_never_flags_the_next_run(ctl):
    g1 = _register(ctl, "g1")
    job = _start(ctl, gpus=1)
    t0 = ctl.clock.now
    ctl.clock.now += 500
    _beat(ctl, g1, "g1", (job, 0, t0, 500.0))
    assert ctl.handle(ROOT, {"op": "requeue", "ids": [job]})["requeued"] == [job]
    ctl.schedule()
    ctl.flush()
    ctl.clock.now += 200             # run 1 has not reported yet; run 0's streak is 700 s old
    _beat(ctl, g1, "g1", running=[[job, 1]])
    assert ctl.spool.job(job)["restart_count"] == 1 and _rq(ctl, job) == "g1"


def test_a_multi_node_job_is_idle_when_every_nodes_gpus_are(ctl):
    g1, g2 = _register(ctl, "g1"), _register(ctl, "g2")
    job = _start(ctl, nodes=2, gpus=8)
    t0 = ctl.clock.now
    ctl.clock.now += 700
    _beat(ctl, g1, "g1", (job, 0, t0, 700.0), check=False)
    _beat(ctl, g2, "g2", (job, 0, None, 100.0))       # g2's GPUs work
    assert _rq(ctl, job, "nodelist_reason") == "g[1-2]"
    # idle GPU-seconds weighted by each node's GPUs: (700 x 4 + 100 x 4) / 8 = 400 s
    assert _rsacct(ctl, job, "GPUIdle,IdleGPUHours") == "00:06:40|0.89"
    t2 = ctl.clock.now
    ctl.clock.now += 599
    _beat(ctl, g2, "g2", (job, 0, t2, 699.0), check=False)
    _beat(ctl, g1, "g1", (job, 0, t0, 1299.0))
    assert _rq(ctl, job) == "g[1-2]"                  # g2 idle only 9:59
    ctl.clock.now += 1
    _beat(ctl, g1, "g1", (job, 0, t0, 1300.0), check=False)
    _beat(ctl, g2, "g2", (job, 0, t2, 700.0))
    assert _rq(ctl, job) == "g[1-2] (IdleGPU)" and _rq(ctl, job, "idle_since") == timestamp(t2)


# -- real daemons, fake NVML -----------------------------------------------------------------
SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakegpu", "shim")
NODES = """
[[nodes]]
names = "inode"
cpus = 4
memory = "8G"
gpu_detect = "auto"

"""


class IdleCluster(Cluster):
    """One node with 4 fake H100s; GPUs count as idle under 10% for 2 s, and the action
    follows 2 s later."""

    def __init__(self, directory: str, action: str):
        super().__init__(directory, gpus=0)
        root = os.path.join(directory, "devroot")
        machines.device_tree(root, range(4), range(24, 28))
        self.machine = machines.dgx_h100()
        del self.machine["gpus"][4:]
        self.machine_path = os.path.join(directory, "h100.json")
        write_machine(self.machine_path, self.machine)
        config = cluster_toml("idle", NODES, gpu_sample_interval=1, device_root=root)
        config += (f'\n[accounting]\nidle_gpu_util = 10\nidle_gpu_after = 2\n'
                   f'idle_gpu_grace = 2\nidle_gpu_action = "{action}"\n')
        for name, text in (("cluster.toml", config), ("tenants.toml", LAB_TENANTS),
                           ("qos.toml", NORMAL_QOS)):
            with open(os.path.join(directory, name), "w") as fh:
                fh.write(text)

    def start(self) -> None:
        env = {"PYTHONPATH": os.pathsep.join([SHIM, *sys.path[1:]]),
               "RMS_FAKE_NVML": self.machine_path}
        self.run("rms-local", "up", "--dir", self.dir, "--node", "inode", check=True, env=env)
        wait_for(lambda: self.api("nodes")["nodes"][0]["gpus"] == 4, 30, "4 GPUs detected")

    def utilization(self, percent: int, gpus=range(4)) -> None:
        for i in gpus:
            self.machine["gpus"][i]["util"] = percent
        write_machine(self.machine_path, self.machine)

    def rq(self, *job_ids: int) -> dict[int, str]:
        """NODELIST(REASON) of these jobs, by id."""
        out = self.run("rq", "-h", "-t", "all", "-o", "jobid,nodelist_reason", "-j",
                       ",".join(map(str, job_ids)), check=True).stdout
        return {int(line.split(None, 1)[0]): line.split(None, 1)[1].strip()
                for line in out.splitlines() if line.strip()}

    def acct(self, job_id: int, fields: str) -> str:
        return self.run("rsacct", "-j", str(job_id), "-X", "-n", "-P", "-o", fields,
                        check=True).stdout.strip()


def _idle_cluster(action: str):
    directory = tempfile.mkdtemp(prefix="rms-idle-", dir="/tmp")
    os.chmod(directory, 0o755)
    c = IdleCluster(directory, action)
    c.start()
    return c


def _stop(c: IdleCluster) -> None:
    c.down()
    _kill_leftovers(c.dir)
    shutil.rmtree(c.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cancelling():
    c = _idle_cluster("cancel")
    yield c
    _stop(c)


def test_an_idle_job_is_flagged_then_cancelled_and_a_busy_one_never(cancelling):
    c = cancelling
    c.utilization(90)
    busy = c.submit("--gpus=1", "--wrap", "sleep 300")
    c.wait_state(busy, "RUNNING")
    busy_gpu = c.job(busy)["gpu_indices"][0]
    c.utilization(0, [i for i in range(4) if i != busy_gpu])
    idle = c.submit("--gpus=1", "--wrap", "sleep 300")
    c.wait_state(idle, "RUNNING")
    seen = []

    def flagged():
        lines = c.rq(busy, idle)
        seen.append(lines[busy])
        return lines[idle] == "inode (IdleGPU)"
    wait_for(flagged, 30, "the idle job flagged in rq")
    assert "IdleGPU" not in c.run("rq", "-h", "-j", str(busy), check=True).stdout
    job = c.wait_state(idle, "CANCELLED", timeout=30)
    assert job["end_reason"].startswith("idle GPUs: under 10% utilization for ")
    state, reason, gpu_idle = c.acct(idle, "State,Reason,GPUIdle").split("|")
    assert state == "CANCELLED"
    assert reason.startswith("idle GPUs: under 10% utilization for ")
    assert reason.endswith("(cluster.toml [accounting] idle_gpu_action)")
    assert "00:00:02" <= gpu_idle <= "00:01:00", gpu_idle
    # the busy job ran all along, never flagged
    assert c.job(busy)["state"] == "RUNNING" and c.rq(busy)[busy] == "inode"
    assert seen and set(seen) == {"inode"}, seen
    c.run("rcancel", str(busy), check=True)
    c.wait_ended(busy)
    assert c.acct(busy, "State,GPUUtil,GPUIdle,IdleGPUHours") == "CANCELLED|90%|00:00:00|0.00"
    record = json.loads(c.run("rsacct", "-j", str(idle), "-X", "--json", check=True).stdout)
    seconds = record["jobs"][0]["gpu_idle_s"]
    assert c.acct(idle, "IdleGPUHours") == f"{seconds / 3600:.2f}"


def test_an_idle_job_is_requeued_where_the_cluster_says_so():
    c = _idle_cluster("requeue")
    try:
        c.utilization(0)
        job = c.submit("--gpus=2", "--wrap", "sleep 300")
        c.wait_state(job, "RUNNING")
        wait_for(lambda: c.rq(job)[job] == "inode (IdleGPU)", 30, "the job flagged in rq")
        # keep the requeued job waiting, so that its state can be seen
        c.run("rcontrol", "drain", "inode", "reason=idle GPU test", check=True)
        wait_for(lambda: c.job(job)["restart_count"] >= 1, 30, "the idle job requeued")
        record = c.wait_state(job, "PENDING")
        assert record["idle_since"] is None
        assert "requeued: idle GPUs: under 10% utilization" in c.rq(job)[job]
    finally:
        _stop(c)
