"""The supervisor spawner and its workers (rmsbatch.node.spawner), with real daemons.

A worker supervises one run after another in the same process: what the tests check is
what a user or an admin would notice if that went wrong (one job's environment or
descriptors showing up in the next, processes left behind when rmsd dies, jobs that
stop starting when the spawner dies).
"""
from __future__ import annotations

import json
import os
import signal
import time

import psutil
import pytest

from rmsbatch.node.spawner import RETRY_AFTER_S
from tests.conftest import ensure_user, wait_for

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a second user)")


def spawner_of(rmsd_pid: int) -> psutil.Process | None:
    for child in psutil.Process(rmsd_pid).children():
        if "rmsbatch.node.spawner" in " ".join(child.cmdline()):
            return child
    return None


def parent_of_job(c, job_id: int) -> int:
    """The pid of the process that supervised the job (the job printed $PPID)."""
    for line in c.output(job_id).splitlines():
        if line.startswith("ppid="):
            return int(line[len("ppid="):])
    raise AssertionError(f"job {job_id} printed no ppid: {c.output(job_id)!r}")


def run_one(c, *args: str, body: str = "echo ppid=$PPID", **kw) -> int:
    job_id = c.submit(*args, "--wrap", body, **kw)
    job = c.wait_ended(job_id)
    assert job["state"] == "COMPLETED", job
    return job_id


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def descriptors(pid: int) -> list[str]:
    return sorted(os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd"))


def test_one_worker_supervises_jobs_one_after_another_and_keeps_nothing(new_cluster):
    c = new_cluster()
    first = run_one(c, "--export=ALL,RMS_TEST_SECRET=first-job-only")
    worker = parent_of_job(c, first)
    spawner = spawner_of(c.pid("rmsd"))
    assert spawner is not None, "rmsd started no spawner"
    assert psutil.Process(worker).ppid() == spawner.pid     # not a fork of rmsd
    wait_for(lambda: len(descriptors(worker)) == 4, 5, "the worker to drop the run's lock")
    held = descriptors(worker)
    # The next job lands on the same worker, and sees none of the first one's
    # environment; the worker holds just what it held before.
    second = run_one(c, body="echo ppid=$PPID; echo secret=${RMS_TEST_SECRET-unset}")
    assert parent_of_job(c, second) == worker
    assert "secret=unset" in c.output(second)
    wait_for(lambda: descriptors(worker) == held, 5, "the worker to hold what it held")
    # The job's own supervisor pid, as recorded for the node, is the worker's.
    third = c.submit("--wrap", "echo ppid=$PPID; sleep 30")
    c.wait_state(third, "RUNNING")
    pid_file = os.path.join(c.dir, "state", c.node, "jobs", f"{third}.0", "pid")
    wait_for(lambda: os.path.exists(pid_file), 5, "the run's pid file")
    with open(pid_file) as fh:
        assert json.load(fh)["supervisor_pid"] == worker
    c.run("rcancel", str(third), check=True)
    assert c.wait_ended(third)["state"] == "CANCELLED"


@needs_root
def test_jobs_of_two_users_on_one_worker_run_as_each_user(new_cluster):
    alice = ensure_user("rmsspawna")
    bob = ensure_user("rmsspawnb")
    c = new_cluster()
    body = "echo ppid=$PPID; echo uid=$(id -u) home=$HOME"
    first = run_one(c, body=body, user=alice.pw_name)
    second = run_one(c, body=body, user=bob.pw_name)
    assert parent_of_job(c, first) == parent_of_job(c, second)
    assert f"uid={alice.pw_uid} home={alice.pw_dir}" in c.output(first)
    assert f"uid={bob.pw_uid} home={bob.pw_dir}" in c.output(second)


def test_rmsd_killed_spawner_and_idle_workers_go_running_job_finishes(new_cluster):
    c = new_cluster()
    idle_worker = parent_of_job(c, run_one(c))
    running = c.submit("--wrap", "echo ppid=$PPID; sleep 3; echo done")
    c.wait_launched(running)
    spawner = spawner_of(c.pid("rmsd"))
    c.kill9("rmsd")
    # Nothing of rmsd's is left idle on the host...
    wait_for(lambda: gone(spawner.pid), 10, "the spawner to exit")
    wait_for(lambda: gone(idle_worker), 10, "the idle worker to exit")
    # ...while the running job carries on under its supervisor and is reported when
    # rmsd is back.
    c.up()
    job = c.wait_ended(running, timeout=30)
    assert job["state"] == "COMPLETED", job
    assert c.output(running).splitlines()[-1] == "done"


def test_spawner_killed_rmsd_starts_jobs_itself(new_cluster):
    c = new_cluster()
    rmsd = c.pid("rmsd")
    spawner = spawner_of(rmsd)
    spawner.kill()
    wait_for(lambda: gone(spawner.pid), 5, "the spawner to die")
    job_id = c.submit("--wrap", "echo ppid=$PPID; sleep 30")
    c.wait_state(job_id, "RUNNING")
    wait_for(lambda: os.path.exists(os.path.join(c.work, f"rms-{job_id}.out"))
             and "ppid=" in c.output(job_id), 10, "the job's first line")
    assert psutil.Process(parent_of_job(c, job_id)).ppid() == rmsd    # rmsd forked it
    with open(os.path.join(c.dir, "log", f"rmsd-{c.node}.log")) as fh:
        assert "supervisor spawner unusable" in fh.read()
    c.run("rcancel", str(job_id), check=True)
    assert c.wait_ended(job_id)["state"] == "CANCELLED"
    # A job starting RETRY_AFTER_S later brings a new spawner, and runs under it.
    time.sleep(RETRY_AFTER_S + 0.5)
    later = run_one(c)
    respawned = spawner_of(rmsd)
    assert respawned is not None and respawned.pid != spawner.pid
    worker = parent_of_job(c, later)
    assert psutil.Process(worker).ppid() == respawned.pid


def test_stopping_rmsd_stops_its_spawner(new_cluster):
    c = new_cluster()
    run_one(c)
    rmsd = c.pid("rmsd")
    spawner = spawner_of(rmsd)
    os.kill(rmsd, signal.SIGTERM)
    wait_for(lambda: gone(spawner.pid), 10, "the spawner to exit with rmsd")
