"""The system's promises at the edges, with real daemons: a job runs at most once at any
moment; a node daemon that restarts, stops or dies costs no job; only a real failure
(nothing renews a job's lease) ends one, and then never while the old run could still
be going."""
from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import wait_for

pytestmark = pytest.mark.slow

LEDGER_LOOP = ("for i in $(seq {n}); do echo run=$RMS_RESTART_COUNT node=$RMS_NODENAME "
               ">> {ledger}; sleep {pause}; done")


def two_nodes(new_cluster, **timings):
    """Nodes rmsna and rmsnb on this host; rmsna is first, so it gets jobs first."""
    def prepare(c):
        c.set_nodes("rmsna,rmsnb")
        c.fast(**timings)
    c = new_cluster(gpus=0, before_start=prepare)
    c.start_rmsd("rmsnb")
    return c


def ledger_of(c) -> str:
    path = os.path.join(c.work, "ledger")
    open(path, "w").close()
    os.chmod(path, 0o666)
    return path


def lines(path: str) -> list[str]:
    with open(path) as fh:
        return fh.read().split("\n")[:-1]


def run_files(c, node: str, job_id: int, run: int = 0) -> dict:
    with open(os.path.join(c.dir, "state", node, "jobs", f"{job_id}.{run}", "pid")) as fh:
        return json.load(fh)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def test_killed_node_daemon_costs_the_job_nothing_and_it_runs_once(new_cluster):
    """The issue's reproduction: `kill -9` the rmsd of a --requeue job's node. The job
    keeps running where it is (its supervisor renews its lease), finishes once, and is
    never started on the other node."""
    c = two_nodes(new_cluster)
    ledger = ledger_of(c)
    job_id = c.submit("--requeue", "--wrap", LEDGER_LOOP.format(n=16, ledger=ledger, pause=0.5))
    assert c.wait_launched(job_id)["nodelist"] == "rmsna"
    c.kill9("rmsd")
    # rmsna stops responding, then is declared DOWN; the job is not touched
    wait_for(lambda: c.node_record("rmsna")["state"] == "DOWN", 15, "rmsna to be DOWN")
    job = c.job(job_id)
    assert job["state"] == "RUNNING" and job["restart_count"] == 0, job
    job = c.wait_ended(job_id, timeout=30)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 0, job
    assert lines(ledger) == ["run=0 node=rmsna"] * 16
    acct = c.run("rsacct", "-a", "-j", str(job_id), "-o", "JobID,State", "-n", "-P")
    assert acct.stdout.split() == [f"{job_id}|COMPLETED"]
    c.up()                                      # rmsna's daemon comes back and tidies up
    wait_for(lambda: not os.listdir(os.path.join(c.dir, "state", "rmsna", "jobs")), 15,
             "the finished run's directory to go")


def test_a_frozen_node_loses_its_job_to_another_node_and_never_runs_it_twice(new_cluster):
    """A hung host (its rmsd, the supervisor and the job all stopped): nothing renews
    the lease, so the job is requeued on the other node once the lease and its margin
    are over. When the host wakes up, its supervisor kills the old run before it can
    write another line: the two runs never overlap."""
    c = two_nodes(new_cluster)
    ledger = ledger_of(c)
    job_id = c.submit("--requeue", "--wrap", LEDGER_LOOP.format(n=24, ledger=ledger, pause=0.25))
    c.wait_state(job_id, "RUNNING")
    wait_for(lambda: len(lines(ledger)) >= 2, 10, "the first run to write")
    info = run_files(c, "rmsna", job_id)
    job_pid, supervisor = info["pid"], info["supervisor_pid"]
    rmsd = c.rmsd_pid("rmsna")
    os.killpg(job_pid, signal.SIGSTOP)
    os.kill(supervisor, signal.SIGSTOP)
    os.kill(rmsd, signal.SIGSTOP)
    try:
        frozen_at = len(lines(ledger))
        wait_for(lambda: c.job(job_id)["restart_count"] == 1
                 and c.job(job_id)["state"] == "RUNNING", 20, "the job to run again on rmsnb")
        job = c.job(job_id)
        assert job["nodelist"] == "rmsnb", job
        wait_for(lambda: "run=1 node=rmsnb" in lines(ledger), 10, "the second run to write")
    finally:
        os.kill(supervisor, signal.SIGCONT)     # wakes first: its lease is over
    wait_for(lambda: not alive(job_pid), 10, "the old run to be killed by its supervisor")
    os.kill(rmsd, signal.SIGCONT)
    job = c.wait_ended(job_id, timeout=30)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
    written = lines(ledger)
    first_rerun = written.index("run=1 node=rmsnb")
    assert all(line == "run=0 node=rmsna" for line in written[:first_rerun])
    assert "run=0 node=rmsna" not in written[first_rerun:], "the old run went on"
    assert written[first_rerun:] == ["run=1 node=rmsnb"] * 24
    assert written[:first_rerun].count("run=0 node=rmsna") == frozen_at
    # rmsna is back, and its stale run is gone
    wait_for(lambda: c.node_record("rmsna").get("connected"), 15, "rmsna to register again")
    wait_for(lambda: not os.listdir(os.path.join(c.dir, "state", "rmsna", "jobs")), 15,
             "rmsna to drop the stale run")


def until_told(go: str) -> str:
    """A job body that ends when the test creates `go` (at most a minute), not after a
    sleep that a slow host can outlast before the test has looked at it."""
    return f"for i in $(seq 600); do [ -e {go} ] && break; sleep 0.1; done; echo done"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_node_daemon_away_past_every_timeout_costs_no_job(new_cluster, how):
    """rmsd silent (SIGSTOP) or dead (kill -9) for longer than node_timeout and
    node_fail_timeout: the node shows not responding, then DOWN, but its jobs keep
    running, plain and --requeue alike, and finish normally when it is back."""
    c = new_cluster(gpus=0, before_start=lambda c: c.fast())
    go = os.path.join(c.dir, "go")
    plain = c.submit("--wrap", until_told(go))
    again = c.submit("--requeue", "--wrap", until_told(go))
    for job_id in (plain, again):
        c.wait_launched(job_id)
    pid = c.pid("rmsd")
    if how == "stop":
        os.kill(pid, signal.SIGSTOP)
    else:
        c.kill9("rmsd")
    try:
        wait_for(lambda: not c.node_record(c.node)["responding"], 10, "not responding")
        rinfo = c.run("rinfo", "-N", "-h")
        assert rinfo.stdout.split()[3] in ("mix*", "alloc*"), rinfo.stdout
        reasons = c.run("rinfo", "-R", "-h")
        assert reasons.stdout.split()[:2] == ["Not", "responding"], reasons.stdout
        wait_for(lambda: c.node_record(c.node)["state"] == "DOWN", 10, "DOWN")
        for job_id in (plain, again):
            job = c.job(job_id)
            assert job["state"] == "RUNNING" and job["restart_count"] == 0, job
    finally:
        if how == "stop":
            os.kill(pid, signal.SIGCONT)
        else:
            c.up()
    open(go, "w").close()
    for job_id in (plain, again):
        job = c.wait_ended(job_id, timeout=20)
        assert job["state"] == "COMPLETED" and job["restart_count"] == 0, job
        assert c.output(job_id) == "done\n"
    wait_for(lambda: c.node_record(c.node)["state"] == "IDLE", 15, "the node back in service")


def test_a_dead_supervisor_does_not_free_a_job_that_still_runs(new_cluster):
    """kill -9 of a job's supervisor: the job's processes are killed through its cgroup
    before its end is reported, so its GPUs are not given out while they live."""
    c = new_cluster(gpus=2)
    pids = os.path.join(c.work, "children")
    job_id = c.submit("--gpus", "2", "--wrap",
                      f"sleep 300 & echo $! >> {pids}; sleep 300 & echo $! >> {pids}; wait")
    c.wait_state(job_id, "RUNNING")
    wait_for(lambda: os.path.exists(pids) and len(open(pids).read().split()) == 2, 10,
             "the job's children")
    children = [int(p) for p in open(pids).read().split()]
    waiting = c.submit("--gpus", "2", "--wrap", "true")
    info = run_files(c, c.node, job_id)
    os.kill(info["supervisor_pid"], signal.SIGKILL)
    job = c.wait_ended(job_id, timeout=15)
    assert job["state"] == "FAILED" and "supervisor died" in job["end_reason"], job
    assert not any(alive(p) for p in children + [info["pid"]]), "job processes outlived it"
    assert c.wait_ended(waiting, timeout=15)["state"] == "COMPLETED"


def test_signals_never_go_to_a_pid_read_from_a_file(new_cluster):
    """A job's pid file pointing at someone else's process (a reused pid): signals and
    cancels still reach the job, through its supervisor, and never that process."""
    c = new_cluster(gpus=0)
    script = os.path.join(c.work, "ckpt.py")
    with open(script, "w") as fh:
        fh.write("import signal, time\n"
                 "signal.signal(signal.SIGUSR1, lambda *a: print('checkpoint', flush=True))\n"
                 "print('ready', flush=True)\n"
                 "time.sleep(60)\n")
    job_id = c.submit("--wrap", f"exec python3 {script}")
    out = os.path.join(c.work, f"rms-{job_id}.out")
    wait_for(lambda: os.path.exists(out) and "ready" in open(out).read(), 15, "the job")
    import subprocess
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        path = os.path.join(c.dir, "state", c.node, "jobs", f"{job_id}.0", "pid")
        info = json.load(open(path))
        info["pid"] = bystander.pid
        with open(path, "w") as fh:
            json.dump(info, fh)
        c.run("rcancel", "--full", "-s", "USR1", str(job_id), check=True)
        wait_for(lambda: "checkpoint" in open(out).read(), 10, "the job to get USR1")
        c.run("rcancel", str(job_id), check=True)
        assert c.wait_ended(job_id, timeout=15)["state"] == "CANCELLED"
        assert bystander.poll() is None, "the bystander was signalled"
    finally:
        bystander.kill()


def test_node_daemon_start_removes_stale_job_cgroups(new_cluster):
    from rmsbatch.node import cgroup
    from rmsbatch.node.isolation import cgroup_parent
    c = new_cluster(gpus=0)
    parent = cgroup_parent("local", c.node, os.path.join(c.dir, "state", c.node))
    layout = cgroup.detect()
    stale = cgroup.JobCgroup(999, layout, parent, name="job_999.0").create()
    assert stale.exists()
    c.kill9("rmsd")
    c.up()
    wait_for(lambda: not stale.exists(), 10, "the stale cgroup to go")
    assert c.wait_ended(c.submit("--wrap", "true"))["state"] == "COMPLETED"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_a_controller_away_past_every_lease_costs_no_job(new_cluster, how):
    """rmsctld stopped (SIGSTOP: a stall) or dead (kill -9) for longer than a lease and
    its margin: nothing could start the job elsewhere meanwhile, so its supervisor keeps
    it, and the controller forgives the time it did not run instead of giving the job
    up when it is back."""
    c = new_cluster(gpus=0, before_start=lambda c: c.fast())
    go = os.path.join(c.dir, "go")
    job_id = c.submit("--requeue", "--wrap", until_told(go))
    c.wait_state(job_id, "RUNNING")
    pid = c.pid("rmsctld")
    if how == "stop":
        os.kill(pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(pid, signal.SIGCONT)
    else:
        c.kill9("rmsctld")
        time.sleep(5)
        c.up()
    job = c.job(job_id)
    assert job["state"] == "RUNNING" and job["restart_count"] == 0, job
    open(go, "w").close()
    job = c.wait_ended(job_id, timeout=20)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 0, job
    assert c.output(job_id) == "done\n"


def test_a_node_daemon_that_dies_mid_launch_starts_the_job_once_after(new_cluster):
    """rmsd dies (injected) after writing a job's directory, before its supervisor
    exists: the job never ran. When rmsd is back it says so, and the job is launched
    again (once) without the node being blamed."""
    c = new_cluster(gpus=0, before_start=lambda c: c.fast())
    c.down()
    c.run("rms-local", "up", "--dir", c.dir, env={"RMS_FAILPOINTS": "rmsd.launch.before_spawn"},
          check=True)
    ledger = ledger_of(c)
    job_id = c.submit("--wrap", f"echo run=$RMS_RESTART_COUNT >> {ledger}")
    wait_for(lambda: c.pid("rmsd") is None or not alive(c.pid("rmsd")), 15, "rmsd to die")
    assert os.path.isdir(os.path.join(c.dir, "state", c.node, "jobs", f"{job_id}.0"))
    c.up()                                  # without the failpoint
    job = c.wait_ended(job_id, timeout=30)
    assert job["state"] == "COMPLETED", job
    assert lines(ledger) == [f"run={job['restart_count']}"]
    assert c.node_record(c.node)["state"] == "IDLE"       # not drained
