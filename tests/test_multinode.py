"""Multi-node jobs: every node of the allocation sets it up and holds it (job
directory, cgroup, lease) while the batch script runs on the first; the job's end
releases it everywhere. Two node daemons on this host act as two nodes."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal

import pytest
from conftest import ROOT, Cluster, _kill_leftovers, _new_cluster_dir, wait_for


@pytest.fixture(scope="module")
def two():
    """Nodes n1 and n2 on this host with short heartbeats and leases, shared by the
    tests that leave both nodes up."""
    c = Cluster(_new_cluster_dir(), gpus=0)
    c.up()
    c.down()
    c.set_nodes("n[1-2]")
    c.fast()
    c.up()
    c.start_rmsd("n2")
    yield c
    c.down()
    _kill_leftovers(c.dir)
    shutil.rmtree(c.dir, ignore_errors=True)


def two_nodes(new_cluster, **env):
    def prepare(c):
        c.set_nodes("n[1-2]")
        c.fast()
    c = new_cluster(gpus=0, before_start=prepare)
    c.env.update(env)           # for n2's daemon only: n1's was started already
    c.start_rmsd("n2")
    return c


def run_dir(c, node: str, job_id: int) -> str:
    return os.path.join(c.dir, "state", node, "jobs", f"{job_id}.0")


def holder_pid(c, job_id: int) -> int | None:
    try:
        with open(os.path.join(run_dir(c, "n2", job_id), "pid")) as fh:
            return json.load(fh)["pid"]
    except (OSError, ValueError):
        return None


def test_the_second_node_holds_the_allocation_until_the_job_ends(two):
    c = two
    go = os.path.join(c.work, "go")
    script = os.path.join(c.work, "two.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH --nodes=2   # both nodes\n#SBATCH -t 2\n"
                 f"while [ ! -e {go} ]; do sleep 0.1; done\necho batch on $SLURMD_NODENAME\n")
    job_id = c.submit(script)
    job = c.wait_state(job_id, "RUNNING")
    assert job["nodelist"] == "n[1-2]"
    pid = wait_for(lambda: holder_pid(c, job_id), 10, "n2 to hold the allocation")
    cgroups = glob.glob(f"/sys/fs/cgroup/*/rmsbatch/*_n2_*/job_{job_id}.0")
    if ROOT and "memory(" in c.node_record("n2").get("protections", ""):
        # its own cgroup on n2, as on n1: limits, devices, and the kill at the end
        assert cgroups
        wait_for(lambda: any(str(pid) in open(os.path.join(d, "cgroup.procs")).read().split()
                             for d in cgroups), 5, "the holder to be in the job's cgroup")
    open(go, "w").close()
    job = c.wait_ended(job_id)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 0, job
    assert c.output(job_id) == "batch on n1\n"
    wait_for(lambda: not os.path.exists(run_dir(c, "n2", job_id)), 10,
             "n2 to release the allocation")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), 5, "the holder to end")
    assert not [d for d in cgroups if os.path.exists(d)]
    assert c.node_record("n2")["state"] == "IDLE", c.node_record("n2")


def test_a_node_that_cannot_set_up_its_part_is_drained_and_the_job_requeued(new_cluster):
    c = two_nodes(new_cluster, RMS_FAILPOINTS="rmsd.launch.setup=1")
    job_id = c.submit("-N2", "--wrap", "sleep 30")
    wait_for(lambda: c.node_record("n2").get("state", "").upper().startswith("DRAIN"), 15,
             "n2 to be drained")
    assert "launch failed on n2" in c.node_record("n2")["reason"]
    job = c.wait_state(job_id, "PENDING")
    assert job["restart_count"] == 1 and "launch failed on n2" in job["end_reason"], job
    # the batch script that had started on n1 was stopped with the failed launch
    wait_for(lambda: not os.path.exists(run_dir(c, "n1", job_id)), 15,
             "n1 to drop the failed run")


def test_a_job_whose_second_node_goes_silent_is_lost_although_the_first_renews(two):
    """The first node's heartbeats must not cover for a frozen second node: the job's
    lease runs from the node heard from least recently."""
    c = two
    job_id = c.submit("-N2", "--wrap", "echo $$ > batch.pid; exec sleep 60")
    c.wait_state(job_id, "RUNNING")
    holder = wait_for(lambda: holder_pid(c, job_id), 10, "n2 to hold the allocation")
    with open(os.path.join(run_dir(c, "n2", job_id), "pid")) as fh:
        supervisor = json.load(fh)["supervisor_pid"]
    frozen = [c.rmsd_pid("n2"), supervisor, holder]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        job = c.wait_ended(job_id, timeout=20)
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    assert job["state"] == "NODE_FAIL" and "no word from node n2" in job["end_reason"], job
    batch = int(open(os.path.join(c.work, "batch.pid")).read())
    wait_for(lambda: not os.path.exists(f"/proc/{batch}"), 10, "the batch script on n1 to die")
    wait_for(lambda: not os.path.exists(f"/proc/{holder}"), 10, "the holder on n2 to die")
    wait_for(lambda: c.node_record("n2").get("state") == "IDLE", 15, "n2 to be back")


def test_a_range_of_nodes_takes_as_many_as_are_free(two):
    """`-N 1-2 --ntasks-per-node=2` on two free nodes: it gets both, and the job, its
    environment and rq say 2 nodes and 4 tasks, not the least it asked for."""
    c = two
    with open(os.path.join(c.work, "range.sh"), "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH --nodes 1-2            # as many as are free\n"
                 "#SBATCH --ntasks-per-node=2\n"
                 'echo "$SLURM_JOB_NUM_NODES $SLURM_NTASKS $SLURM_TASKS_PER_NODE"\n')
    job_id = c.submit("range.sh")
    job = c.wait_ended(job_id)
    assert job["state"] == "COMPLETED"
    assert (job["nodes"], job["ntasks"], job["nodelist"]) == (2, 4, "n[1-2]")
    assert c.output(job_id).split() == ["2", "4", "2(x2)"]


def test_wait_all_nodes_starts_the_script_once_every_node_holds_its_part(new_cluster):
    """A prolog that takes 2 s on n2 only: without --wait-all-nodes the script on n1
    starts before n2's part is ready; with --wait-all-nodes=1, after."""
    def prepare(c):
        prolog = os.path.join(c.dir, "prolog.sh")
        with open(prolog, "w") as fh:
            fh.write('#!/bin/sh\n[ "$SLURMD_NODENAME" = n2 ] || exit 0\nsleep 2\n'
                     f'date +%s.%N > {c.work}/ready-$SLURM_JOB_ID\n')
        os.chmod(prolog, 0o755)
        c.set_nodes("n[1-2]")
        c.fast()
        c.tweak("[node_daemon]\n", f'[node_daemon]\nprolog = "{prolog}"\n')
    c = new_cluster(gpus=0, before_start=prepare)
    c.start_rmsd("n2")
    starts = {}
    for wait in ("0", "1"):
        with open(os.path.join(c.work, "all.sh"), "w") as fh:
            fh.write(f"#!/bin/bash\n#SBATCH -N 2\n#SBATCH --wait-all-nodes={wait}\n"
                     "date +%s.%N > started-$SLURM_JOB_ID\nsleep 3\n")
        job_id = c.submit("all.sh")
        assert c.wait_ended(job_id)["state"] == "COMPLETED"
        with open(os.path.join(c.work, f"started-{job_id}")) as a, \
                open(os.path.join(c.work, f"ready-{job_id}")) as b:
            starts[wait] = float(a.read()) - float(b.read())
    assert starts["0"] < 0 < starts["1"], starts
