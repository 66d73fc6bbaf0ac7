"""Job cgroups belong to one cluster and one run, and as root a job whose protections
cannot be applied does not run unprotected (real cgroups, real daemons)."""
from __future__ import annotations

import os

import pytest
from conftest import wait_for

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="job cgroups need root")]

HOG = ("python3 -c 'import time; b = bytearray({mb} * 1024 * 1024); "
       "time.sleep({secs}); print(\"kept\", len(b) // 1048576, \"MiB\")'")


def job_cgroup(c, job_id: int, run: int = 0):
    from rmsbatch.node import cgroup
    from rmsbatch.node.isolation import cgroup_parent
    parent = cgroup_parent("local", c.node, os.path.join(c.dir, "state", c.node))
    return cgroup.JobCgroup(job_id, cgroup.detect(), parent, name=f"job_{job_id}.{run}")


def test_two_clusters_on_one_host_never_share_a_job_cgroup(new_cluster):
    """Both clusters are named "local", run on the same node name, and number their
    jobs from 1: job 1 of each still gets its own cgroup and its own memory limit."""
    a, b = new_cluster(gpus=0), new_cluster(gpus=0)
    big = a.submit("--mem=300M", "--wrap", HOG.format(mb=150, secs=4))
    small = b.submit("--mem=60M", "--wrap", "sleep 1; cat /proc/self/cgroup")
    assert big == small == 1
    assert b.wait_ended(small)["state"] == "COMPLETED"
    job = a.wait_ended(big)
    assert job["state"] == "COMPLETED", job     # not killed by the other cluster's 60M
    assert a.output(1).strip() == "kept 150 MiB"
    paths = {line.split(":")[-1] for line in b.output(1).split()}
    assert job_cgroup(a, 1).dirs["memory"].split("/memory")[-1] not in paths


def test_a_cgroup_that_exists_is_never_adopted_and_the_job_fails_closed(new_cluster):
    """As root with isolation = "auto": the job's cgroup is already there (someone
    else's): the launch fails, the node is drained with the reason, the job is
    requeued (it never ran), and after `rcontrol resume` it runs in a cgroup of its own."""
    c = new_cluster(gpus=0)
    squatter = job_cgroup(c, 1).create()
    try:
        job_id = c.submit("--wrap", "echo ran")
        assert job_id == 1
        node = wait_for(lambda: (lambda n: n if n["state"] in ("DRAIN", "DRAINING") else None)(
            c.node_record(c.node)), 15, "the node to be drained")
        assert "launch failed" in node["reason"] and "already exists" in node["reason"], node
        job = c.wait_state(job_id, "PENDING", timeout=10)
        assert job["restart_count"] == 1 and "already exists" in job["end_reason"], job
        assert not os.path.exists(os.path.join(c.work, "rms-1.out")), "the job ran"
        rq = c.run("rq", "-j", str(job_id), "-h", "-o", "%R")
        assert "requeued: launch failed" in rq.stdout, rq.stdout
        c.run("rcontrol", "resume", c.node, check=True)
        job = c.wait_ended(job_id)
        assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
        assert c.output(1) == "ran\n"
    finally:
        squatter.remove()


def test_best_effort_runs_the_job_and_says_what_was_missing(new_cluster):
    c = new_cluster(gpus=0, before_start=lambda c: c.tweak(
        '[node_daemon]\n', '[node_daemon]\nisolation = "best-effort"\n'))
    squatter = job_cgroup(c, 1).create()
    try:
        job = c.wait_ended(c.submit("--mem=100M", "--wrap", "echo ran"))
        assert job["state"] == "COMPLETED", job
        assert "missing:" in job["protections"] and "already exists" in job["protections"]
        assert c.node_record(c.node)["state"] == "IDLE"
        assert "[best-effort]" in c.node_record(c.node)["protections"]
    finally:
        squatter.remove()


def test_a_gpu_without_its_device_file_is_said_on_the_node(new_cluster):
    """Declared GPUs whose device files do not exist cannot be fenced: the node says so
    instead of claiming devices(v1) silently."""
    def no_files(c):
        import re
        path = os.path.join(c.dir, "cluster.toml")
        text = re.sub(r'files = "[^"]*"', 'files = "/dev/rms-no-such-gpu[0-1]"',
                      open(path).read())
        open(path, "w").write(text)
    c = new_cluster(gpus=2, before_start=no_files)
    show = c.run("rcontrol", "show", "node", c.node)
    assert "device file(s) missing, so not fenced: /dev/rms-no-such-gpu0" in show.stdout, show.stdout
