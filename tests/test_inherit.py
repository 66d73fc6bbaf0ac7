"""What a job inherits from the shell that submitted it, and what users may do to jobs
that are not theirs (real users, real daemons)."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")


def as_user(cluster, user: str, shell: str, *rsub_args) -> subprocess.CompletedProcess:
    """rsub run from a user's shell that first set its umask and limits."""
    from conftest import command_path
    line = f"{shell}; exec {command_path('rsub')} " + " ".join(rsub_args)
    return cluster.run("bash", "-c", line, user=user)


def test_job_inherits_umask_and_limits_of_the_submitting_shell(cluster, users):
    alice, _ = users
    result = as_user(cluster, alice.pw_name, "umask 077; ulimit -S -n 777; ulimit -S -c 0",
                     "--parsable", "--wait", "--wrap",
                     "\"umask; ulimit -S -n; ulimit -S -c; echo x > made-by-job\"")
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[0])
    out = os.path.join(cluster.work, f"rms-{job_id}.out")
    assert open(out).read().split() == ["0077", "777", "0"]
    # umask 077: the output file and the files the job makes are the user's alone
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.join(cluster.work, "made-by-job")).st_mode) == 0o600
    os.unlink(os.path.join(cluster.work, "made-by-job"))


def test_a_soft_limit_above_the_nodes_hard_limit_is_capped(cluster, users):
    alice, _ = users
    import resource
    _, node_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # unlimited soft limit in the submitting shell: the job gets the node's hard limit
    from rmsbatch.core.jobspec import JobSpec
    spec = JobSpec(script="#!/bin/sh\nulimit -S -n\n", workdir=cluster.work,
                   submit_dir=cluster.work, rlimits={"NOFILE": [-1, -1]},
                   environment={"PATH": "/usr/bin:/bin"})
    job_id = cluster.api("submit", spec=spec.to_dict())["job_id"]
    assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    shown = cluster.output(job_id).strip()
    assert shown == str(node_hard) or (shown == "unlimited" and node_hard == resource.RLIM_INFINITY)


def test_cancelling_another_users_jobs_by_user_filter_is_refused(cluster, users):
    alice, bob = users
    job_id = int(cluster.run("rsub", "--parsable", "-H", "--wrap", "true", user=alice.pw_name).stdout)
    result = cluster.run("rcancel", "-u", alice.pw_name, user=bob.pw_name)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"rcancel: error: cancel: permission denied for the jobs of {alice.pw_name} (you may "
        "cancel only your own jobs)")
    assert cluster.job(job_id)["state"] == "PENDING"
    assert cluster.run("rcancel", "-u", alice.pw_name, user=alice.pw_name).returncode == 0
    assert cluster.job(job_id)["state"] == "CANCELLED"


def test_a_job_that_fails_to_start_says_why_in_rq_and_rsacct(cluster, users):
    alice, _ = users
    locked = os.path.join(cluster.work, "locked-for-alice")
    os.makedirs(locked, mode=0o700, exist_ok=True)
    job_id = int(cluster.run("rsub", "--parsable", "-o", f"{locked}/out", "--wrap", "true",
                             user=alice.pw_name).stdout)
    job = cluster.wait_ended(job_id)
    assert job["state"] == "FAILED"
    why = f"cannot open output file {locked}/out: Permission denied"
    rq = cluster.run("rq", "-t", "all", "-j", str(job_id), "-h", "-o", "%T %R")
    assert rq.stdout.strip() == f"FAILED {cluster.node} ({why})", rq.stdout
    acct = cluster.run("rsacct", "-j", str(job_id), "-n", "-P", "-o", "State,Reason",
                       user=alice.pw_name)
    assert acct.stdout.strip() == f"FAILED|{why}", acct.stdout


def test_a_single_user_cluster_refuses_other_users_at_submit(users):
    """rms-local started by alice (no root): jobs can only run as alice, so bob's
    submission is refused when he makes it, not left to fail at start."""
    alice, bob = users
    from conftest import user_cluster
    with user_cluster(alice, "solo") as c:
        directory = c.dir
        assert c.run("rms-local", "up", "--dir", directory, user=alice.pw_name).returncode == 0
        refused = c.run("rsub", "--wrap", "true", user=bob.pw_name, cwd="/tmp")
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            f"rsub: error: partition main runs jobs only as {alice.pw_name} (its node daemons "
            f"run unprivileged, in single-user mode): submit as {alice.pw_name}, or ask an "
            "admin to run rmsd as root")
        assert c.api("jobs", all_users=True)["jobs"] == []
        ok = c.run("rsub", "--parsable", "--wait", "--wrap", "true", user=alice.pw_name,
                   cwd=directory)
        assert ok.returncode == 0, ok.stderr


def test_another_user_cannot_read_a_running_jobs_environment(cluster, users):
    """job.json holds the submitter's environment (tokens, keys): the job directory is
    reachable by path, so its files must be private."""
    alice, bob = users
    result = cluster.run("rsub", "--parsable", "--wrap", "sleep 5", user=alice.pw_name,
                         env={"MY_SECRET_TOKEN": "hunter2"})
    job_id = int(result.stdout)
    cluster.wait_state(job_id, "RUNNING")
    jobdir = os.path.join(cluster.dir, "state", cluster.node, "jobs", f"{job_id}.0")
    peek = cluster.run("cat", os.path.join(jobdir, "job.json"), user=bob.pw_name)
    assert peek.returncode != 0 and "hunter2" not in peek.stdout
    for name in os.listdir(jobdir):
        if name not in ("script", "supervisor.log"):
            mode = stat.S_IMODE(os.stat(os.path.join(jobdir, name)).st_mode)
            assert not mode & 0o044, (name, oct(mode))
    cluster.run("rcancel", str(job_id), check=True)
