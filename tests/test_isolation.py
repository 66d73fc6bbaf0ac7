"""Isolation at launch with real cgroups and real daemons (root only): a job
gets what it was allocated and nothing else, and cannot hurt its neighbours."""
from __future__ import annotations

import os
import re
import time

import pytest

from rmsbatch.node import cgroup

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")

ROOT = "/sys/fs/cgroup"


def job_cgroups(under: str = "") -> list[str]:
    """Job cgroup directories rmsbatch has left on the host (under one cluster's
    parent, `rmsbatch/<cluster>_<node>_<hash>`, when given)."""
    found = []
    layout = cgroup.detect()
    roots = list(layout.v1.values()) + ([layout.v2] if layout.v2 else [])
    for root in roots:
        base = os.path.join(root, under or cgroup.DEFAULT_PARENT)
        for parent, dirs, _ in os.walk(base):
            found += [os.path.join(parent, d) for d in dirs if d.startswith("job_")]
    return found


def cluster_parent(cluster) -> str:
    from rmsbatch.node.isolation import cgroup_parent
    return cgroup_parent("local", cluster.node, os.path.join(cluster.dir, "state", cluster.node))


def out(cluster, job_id) -> str:
    with open(os.path.join(cluster.work, f"rms-{job_id}.out")) as fh:
        return fh.read()


def test_node_reports_its_protections(cluster):
    node = cluster.api("nodes")["nodes"][0]
    assert "memory(" in node["protections"] and "devices(" in node["protections"]
    assert "Protections=" in cluster.run("rcontrol", "show", "node", node["name"]).stdout


def test_out_of_memory_is_its_own_state(cluster):
    hog = cluster.submit("--mem=64M", "--wrap",
                         "python3 -c 'b = bytearray(400 * 1024 * 1024)'; echo survived")
    neighbour = cluster.submit("--mem=64M", "--wrap", "sleep 1; echo fine")
    job = cluster.wait_ended(hog, timeout=30)
    assert job["state"] == "OUT_OF_MEMORY"
    assert "more memory" in job["end_reason"]
    assert 60 * 1024 <= job["max_rss_kb"] <= 66 * 1024
    assert cluster.wait_ended(neighbour)["state"] == "COMPLETED"
    assert out(cluster, neighbour) == "fine\n"
    acct = cluster.run("rsacct", "-j", str(hog), "-n", "-P", "-o", "State")
    assert acct.stdout.strip() == "OUT_OF_MEMORY"


def test_job_sees_only_its_own_gpus(cluster):
    probe = ("echo CVD=$CUDA_VISIBLE_DEVICES GPUS=$RMS_JOB_GPUS; "
             "for i in 10 11 12 13; do "
             "if (exec 3<>/dev/tty$i) 2>/dev/null; then echo tty$i=open; "
             "else echo tty$i=denied; fi; done; sleep 2")
    first = cluster.submit("-G", "1", "--wrap", probe)
    second = cluster.submit("-G", "2", "--wrap", probe)
    for job_id in (first, second):
        assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    lines = {job_id: dict(w.split("=") for w in out(cluster, job_id).split())
             for job_id in (first, second)}
    opened = {job_id: {k for k, v in lines[job_id].items() if v == "open"}
              for job_id in lines}
    assert len(opened[first]) == 1 and len(opened[second]) == 2
    assert not opened[first] & opened[second]          # disjoint devices
    assert lines[first]["CVD"] == "0" and lines[second]["CVD"] == "0,1"   # renumbered
    # RMS_JOB_GPUS keeps the node's own numbering, and names the devices it could open
    for job_id in (first, second):
        gpus = lines[job_id]["GPUS"].split(",")
        assert {f"tty{10 + int(g)}" for g in gpus} == opened[job_id]


def test_fork_bomb_hits_the_process_limit(new_cluster):
    c = new_cluster(gpus=0, before_start=lambda c: c.tweak(
        '[node_daemon]', '[node_daemon]\npids_max = 64'))
    bomb = c.submit("--wrap", "python3 -c '\n"
                    "import os, time\n"
                    "n = 0\n"
                    "try:\n"
                    "    while True:\n"
                    "        if os.fork() == 0:\n"
                    "            time.sleep(20); os._exit(0)\n"
                    "        n += 1\n"
                    "except OSError as e:\n"
                    "    print(n, e.errno)\n'")
    job = c.wait_ended(bomb, timeout=30)
    count, errno_ = out(c, bomb).split()
    assert int(count) < 64 and int(errno_) == 11      # EAGAIN from the pids controller
    assert job["state"] == "COMPLETED"
    assert c.run("rq").returncode == 0                  # the node still answers
    assert c.wait_ended(c.submit("--wrap", "true"))["state"] == "COMPLETED"


def test_daemon_started_by_a_job_dies_with_it(cluster):
    marker = os.path.join(cluster.work, "daemon.pid")
    job_id = cluster.submit("--wrap",
                            f"setsid sh -c 'sleep 300 & echo $! > {marker}; wait' "
                            "</dev/null >/dev/null 2>&1 & sleep 0.5; exit 0")
    assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    pid = int(open(marker).read())
    deadline = time.time() + 5
    while os.path.exists(f"/proc/{pid}") and time.time() < deadline:
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    alive = os.path.exists(f"/proc/{pid}")
    if alive:
        with open(f"/proc/{pid}/stat") as fh:
            alive = fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    assert not alive, "the job's daemon outlived the job"


def test_cancelled_job_with_many_children_leaves_nothing(cluster):
    pids = os.path.join(cluster.work, "children.pids")
    job_id = cluster.submit("--wrap", f"for i in $(seq 50); do sleep 300 & echo $! >> {pids}; done; wait")
    cluster.wait_state(job_id, "RUNNING")
    deadline = time.time() + 10
    while (not os.path.exists(pids) or len(open(pids).read().split()) < 50) \
            and time.time() < deadline:
        time.sleep(0.05)
    started = time.time()
    cluster.run("rcancel", str(job_id), check=True)
    job = cluster.wait_ended(job_id, timeout=15)
    assert job["state"] == "CANCELLED"
    assert time.time() - started < 5 + 3          # within the grace period (5 s here)
    alive = [p for p in open(pids).read().split() if os.path.exists(f"/proc/{p}")
             and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    assert not alive
    assert not job_cgroups(cluster_parent(cluster))


def test_job_cannot_escape_or_raise_its_limits(cluster, users):
    alice, _ = users
    script = ("cg=$(awk -F: '$2 == \"memory\" {print $3}' /proc/self/cgroup); "
              "echo $cg; "
              "echo $$ > /sys/fs/cgroup/memory/cgroup.procs 2>/dev/null && echo escaped; "
              "echo 1099511627776 > /sys/fs/cgroup/memory$cg/memory.limit_in_bytes "
              "2>/dev/null && echo raised; "
              "mkdir /sys/fs/cgroup/memory$cg/mine 2>/dev/null && echo nested; "
              "grep memory /proc/self/cgroup")
    result = cluster.run("rsub", "--parsable", "--mem=100M", "--wrap", script,
                         user=alice.pw_name)
    job_id = int(result.stdout)
    assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    text = out(cluster, job_id)
    assert "escaped" not in text and "raised" not in text and "nested" not in text
    first, *_, last = text.split()
    # under this cluster's and node's own parent, never a bare rmsbatch/job_N
    assert re.search(r"/rmsbatch/local_[^/]+_[0-9a-f]{8}/job_\d+\.0$", first), first
    assert first.split(":")[-1] in last


def test_job_record_says_what_was_applied(cluster):
    job_id = cluster.submit("-G", "1", "--mem=100M", "--wrap", "true")
    job = cluster.wait_ended(job_id)
    for need in ("memory(", "pids(", "devices(", "kill("):
        assert need in job["protections"], job["protections"]
    shown = cluster.run("rcontrol", "show", "job", str(job_id)).stdout
    assert "Protections=memory(" in shown
