"""Job steps: `rrun` inside a job, with two node daemons on this host as two nodes.

Job scripts are written as people write them (#SBATCH lines, srun-style options);
tasks rendezvous as torch.distributed does, through MASTER_ADDR and MASTER_PORT."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import sys
import time

import pytest
from conftest import BIN, ROOT, Cluster, _kill_leftovers, _new_cluster_dir, wait_for

from rmsbatch.sched.tasklayout import LayoutError, StepRequest, layout

PY = sys.executable

RENDEZVOUS = f'''#!/bin/bash
#SBATCH --job-name=ddp       # two nodes, two tasks on each
#SBATCH --nodes 2
#SBATCH --ntasks=4
#SBATCH --time=5
cat > rdv.py <<'EOF'
import os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
print(f"rank={{rank}} local={{os.environ['LOCAL_RANK']}}/{{os.environ['LOCAL_WORLD_SIZE']}} "
      f"node={{os.environ['SLURM_NODEID']}} host={{os.environ['SLURMD_NODENAME']}} "
      f"procid={{os.environ['SLURM_PROCID']}} step={{os.environ['SLURM_STEP_ID']}}", flush=True)
if rank == 0:
    srv = socket.create_server((addr, port))
    total = 0
    for _ in range(world - 1):
        conn, _ = srv.accept()
        total += int(conn.recv(16))
        conn.close()
    print(f"sum={{total}}", flush=True)
else:
    for _ in range(200):
        try:
            s = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.05)
    s.sendall(str(rank).encode())
    s.close()
EOF
rrun {PY} rdv.py
echo "rrun exit $?"
'''


@pytest.fixture(scope="module")
def two():
    """Nodes n1 and n2 on this host, each with its own rmsd and four (declared) GPUs."""
    c = Cluster(_new_cluster_dir(), gpus=4)
    c.up()
    c.down()
    c.set_nodes("n[1-2]")
    c.up()
    c.start_rmsd("n2")
    # job scripts find rrun on their PATH, as on a cluster
    c.env["PATH"] = BIN + os.pathsep + c.env.get("PATH", "/usr/bin:/bin")
    yield c
    c.down()
    _kill_leftovers(c.dir)
    shutil.rmtree(c.dir, ignore_errors=True)


def script(c, name: str, text: str) -> str:
    path = os.path.join(c.work, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_tasks_on_two_nodes_rendezvous_through_master_addr_and_port(two):
    job_id = two.submit(script(two, "ddp.sh", RENDEZVOUS))
    job = two.wait_ended(job_id)
    out = two.output(job_id)
    assert job["state"] == "COMPLETED", out
    assert job["nodelist"] == "n[1-2]"
    lines = out.splitlines()
    assert "sum=6" in lines and "rrun exit 0" in lines, out
    ranks = sorted(line for line in lines if line.startswith("rank="))
    assert ranks == ["rank=0 local=0/2 node=0 host=n1 procid=0 step=0",
                     "rank=1 local=1/2 node=0 host=n1 procid=1 step=0",
                     "rank=2 local=0/2 node=1 host=n2 procid=2 step=0",
                     "rank=3 local=1/2 node=1 host=n2 procid=3 step=0"], out


def test_label_ntasks_per_node_and_nodelist(two):
    job_id = two.submit("-N2", "-n4", "--wrap",
                        "rrun -l -n 2 -w n2 sh -c 'echo on $SLURMD_NODENAME; echo bye'; "
                        "rrun --label --ntasks-per-node=1 printf 'x\\ny'")
    assert two.wait_ended(job_id)["state"] == "COMPLETED"
    lines = two.output(job_id).splitlines()
    assert sorted(lines[:4]) == ["0: bye", "0: on n2", "1: bye", "1: on n2"]
    assert sorted(lines[4:]) == ["0: x", "0: y", "1: x", "1: y"]


def test_failing_task_sets_the_exit_status_and_kill_on_bad_exit_stops_the_rest(two):
    body = ("rrun -n2 sh -c '[ $SLURM_PROCID = 1 ] && exit 3; sleep 0.3; echo survivor'; "
            "echo \"plain $?\"; start=$(date +%s); "
            "rrun -K -n2 sh -c '[ $SLURM_PROCID = 1 ] && exit 5; sleep 60; echo never'; "
            "echo \"killed $? after $(( $(date +%s) - start ))\"; "
            "rrun -n1 sh -c 'kill -9 $$'; echo \"signal $?\"")
    job_id = two.submit("-N2", "-n2", "--wrap", body)
    job = two.wait_ended(job_id, timeout=60)
    lines = two.output(job_id).splitlines()
    assert job["state"] == "COMPLETED", lines
    assert lines[:2] == ["survivor", "plain 3"]
    assert lines[2].startswith("killed 5 after ") and int(lines[2].split()[-1]) < 10, lines
    assert "never" not in lines and lines[3] == "signal 137"


def test_each_task_sees_its_own_gpus(two):
    show = "sh -c 'echo $SLURM_PROCID $SLURMD_NODENAME [$CUDA_VISIBLE_DEVICES]'"
    job_id = two.submit("-N2", "-n4", "--gpus-per-node=2", "--wrap",
                        f"rrun --ntasks-per-node=2 --gpus-per-task=1 {show}; "
                        f"rrun -N1 -n2 --gpu-bind=map_gpu:1 {show}; "
                        f"rrun -N1 -n1 {show}")
    assert two.wait_ended(job_id)["state"] == "COMPLETED", two.output(job_id)
    lines = two.output(job_id).splitlines()
    job_gpus = lines[-1].split()[-1]            # the job's two GPUs on n1, as it sees them
    assert len(job_gpus.strip("[]").split(",")) == 2, lines
    first, second = job_gpus.strip("[]").split(",")
    assert sorted(lines[:4]) == [f"0 n1 [{first}]", f"1 n1 [{second}]",
                                 f"2 n2 [{first}]", f"3 n2 [{second}]"], lines
    assert sorted(lines[4:6]) == [f"0 n1 [{second}]", f"1 n1 [{second}]"], lines


def test_two_steps_at_once_and_their_accounting(two):
    body = ("rrun -n1 -J first sh -c 'sleep 1; echo a' & "
            "rrun -n1 -J second sh -c 'sleep 1; echo b' & wait; "
            "rrun -N2 false; true")
    started = time.monotonic()
    job_id = two.submit("-N2", "-n2", "--wrap", body)
    job = two.wait_ended(job_id, timeout=60)
    assert job["state"] == "COMPLETED"
    assert sorted(two.output(job_id).split()) == ["a", "b"]
    assert time.monotonic() - started < 30
    acct = two.run("rsacct", "-j", str(job_id), "-P", "-n", "-o", "JobID,JobName,State,ExitCode,NodeList")
    assert acct.returncode == 0, acct.stderr
    rows = acct.stdout.splitlines()
    assert rows[0] == f"{job_id}|wrap|COMPLETED|0:0|n[1-2]"
    assert rows[1] == f"{job_id}.batch|batch|COMPLETED|0:0|n1"
    # the two concurrent steps got ids 0 and 1 in whichever order they asked
    assert sorted(r.split("|")[0] for r in rows[2:4]) == [f"{job_id}.0", f"{job_id}.1"]
    assert sorted(r.split("|", 1)[1] for r in rows[2:4]) == ["first|COMPLETED|0:0|n1",
                                                             "second|COMPLETED|0:0|n1"]
    assert rows[4] == f"{job_id}.2|false|FAILED|1:0|n[1-2]"
    assert len(rows) == 5
    only = two.run("rsacct", "-X", "-j", str(job_id), "-P", "-n", "-o", "JobID")
    assert only.stdout.split() == [str(job_id)]


def task_pids(marks: str, count: int) -> list[int]:
    """The pids tasks 0..count-1 wrote into `marks` (one file per task), once all did."""
    def written():
        paths = [os.path.join(marks, str(i)) for i in range(count)]
        if all(os.path.exists(p) and os.path.getsize(p) for p in paths):
            return [int(open(p).read()) for p in paths]
        return None
    return wait_for(written, 20, "the tasks to start")


def test_cancelling_the_job_kills_its_steps_on_every_node(two):
    marks = os.path.join(two.work, "marks")
    os.makedirs(marks, exist_ok=True)
    job_id = two.submit("-N2", "-n2", "--wrap",
                        f"rrun sh -c 'echo $$ > {marks}/$SLURM_PROCID; exec sleep 300'")
    pids = task_pids(marks, 2)
    assert all(os.path.exists(f"/proc/{p}") for p in pids)
    if ROOT and "memory(" in two.node_record("n2").get("protections", ""):
        # the task on n2 runs inside the job's cgroup there
        procs = [os.path.join(d, "cgroup.procs") for d in
                 glob.glob(f"/sys/fs/cgroup/*/rmsbatch/*_n2_*/job_{job_id}.0")]
        assert any(str(pids[1]) in open(p).read().split() for p in procs), procs
    two.run("rcancel", str(job_id), check=True)
    assert two.wait_ended(job_id)["state"] == "CANCELLED"
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10,
             "the tasks on both nodes to die")
    acct = two.run("rsacct", "-j", str(job_id), "-P", "-n", "-o", "JobID,State")
    assert f"{job_id}.0|CANCELLED" in acct.stdout.split(), acct.stdout


def test_a_requeue_kills_the_runs_steps_and_closes_them(two):
    marks = os.path.join(two.work, "requeue-marks")
    os.makedirs(marks, exist_ok=True)
    job_id = two.submit("-N2", "-n2", "--wrap",
                        f'[ "$SLURM_RESTART_COUNT" = 0 ] || exit 0; '
                        f"rrun sh -c 'echo $$ > {marks}/$SLURM_PROCID; exec sleep 300'")
    pids = task_pids(marks, 2)
    two.run("rcontrol", "requeue", str(job_id), check=True)
    job = two.wait_ended(job_id)
    assert (job["state"], job["restart_count"]) == ("COMPLETED", 1)
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids), 10,
             "the first run's tasks to die")
    acct = two.run("rsacct", "-j", str(job_id), "-P", "-n", "-o", "JobID,State")
    assert f"{job_id}.0|CANCELLED" in acct.stdout.split(), acct.stdout
    step = two.api("steps", job_ids=[job_id])["steps"][0]
    assert step["end_time"] <= job["start_time"]      # closed by the requeue, not later


def test_tasks_run_as_the_jobs_user_and_only_the_owner_runs_steps(two, users):
    alice, bob = users
    job_id = two.submit("-N2", "-n2", "--wrap",
                        "rrun sh -c 'echo $(id -un) on $SLURMD_NODENAME'; "
                        "for h in $(rcontrol show hostnames); do echo host $h; done; "
                        "sleep 30", user=alice.pw_name)
    wait_for(lambda: "host n2" in (read(two, job_id) or ""), 20, "the job's steps to run")
    assert sorted(read(two, job_id).splitlines()) == [
        "host n1", "host n2", f"{alice.pw_name} on n1", f"{alice.pw_name} on n2"]
    theirs = two.run("rrun", "true", user=bob.pw_name, env={"RMS_JOB_ID": str(job_id)})
    assert theirs.returncode == 1
    assert f"job {job_id} belongs to {alice.pw_name}" in theirs.stderr
    two.run("rcancel", str(job_id), check=True)
    two.wait_ended(job_id)


def read(c, job_id: int) -> str | None:
    try:
        return c.output(job_id)
    except OSError:
        return None


def test_when_rrun_dies_its_tasks_die_on_every_node(two):
    marks = os.path.join(two.work, "orphans")
    os.makedirs(marks, exist_ok=True)
    job_id = two.submit("-N2", "-n2", "--wrap",
                        f"rrun sh -c 'echo $$ > {marks}/$SLURM_PROCID; exec sleep 300' & "
                        f"echo $! > {marks}/rrun; wait; echo \"rrun gone\"; sleep 300")
    wait_for(lambda: len(os.listdir(marks)) == 3 and all(
        os.path.getsize(os.path.join(marks, f)) for f in os.listdir(marks)), 20, "the step")
    pids = {f: int(open(os.path.join(marks, f)).read()) for f in os.listdir(marks)}
    os.kill(pids.pop("rrun"), signal.SIGKILL)
    wait_for(lambda: not any(os.path.exists(f"/proc/{p}") for p in pids.values()), 10,
             "the tasks on both nodes to die")
    wait_for(lambda: "rrun gone" in two.output(job_id), 5, "the script to go on")
    assert two.job(job_id)["state"] == "RUNNING"
    two.run("rcancel", str(job_id), check=True)
    two.wait_ended(job_id)


def test_a_signal_to_the_job_reaches_the_tasks_and_the_step_goes_on(two):
    marks = os.path.join(two.work, "usr1")
    os.makedirs(marks, exist_ok=True)
    job_id = two.submit("-N2", "-n2", "--wrap",
                        "rrun sh -c 'trap \"echo $SLURM_PROCID got USR1; exit 0\" USR1; "
                        f"touch {marks}/$SLURM_PROCID; while :; do sleep 0.1; done'; "
                        "echo \"rrun exit $?\"")
    wait_for(lambda: len(os.listdir(marks)) == 2, 20, "both tasks to set their trap")
    two.run("rcancel", "--signal=USR1", str(job_id), check=True)
    assert two.wait_ended(job_id)["state"] == "COMPLETED"
    lines = two.output(job_id).splitlines()    # (and the shells' word on their sleeps)
    assert sorted(line for line in lines if "got" in line) == ["0 got USR1", "1 got USR1"]
    assert lines[-1] == "rrun exit 0", lines


def test_rrun_outside_a_job_says_so_in_one_line(two):
    env = {k: "" for k in ("RMS_JOB_ID", "SLURM_JOB_ID", "SLURM_JOBID")}
    result = two.run("rrun", "hostname", env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(
        "rrun: error: not inside a job"), result.stderr


def test_steps_that_do_not_fit_are_refused_clearly(two):
    job_id = two.submit("-N2", "-n2", "--wrap",
                        "rrun -n 9 true; echo \"exit $?\"; rrun -w n7 true; echo \"exit $?\"")
    two.wait_ended(job_id)
    lines = two.output(job_id).splitlines()
    assert lines[0].startswith("rrun: error: cannot create a step in job") and "9 tasks" in lines[0]
    assert lines[1] == "exit 1"
    assert "n7 not in the job's allocation" in lines[2] and lines[3] == "exit 1"


# -- the layout of tasks (pure) ------------------------------------------------------

ALLOC = [("n1", 4, [0, 1]), ("n2", 4, [2, 3])]


def placed(req: StepRequest, alloc=ALLOC):
    return [(p.node, p.tasks, p.gpus) for p in layout(alloc, req)]


def test_layout_as_srun():
    assert placed(StepRequest()) == [("n1", [0], [None]), ("n2", [1], [None])]
    assert placed(StepRequest(ntasks=3)) == [("n1", [0, 1, 2], [None] * 3)]
    assert placed(StepRequest(ntasks=4, cpus_per_task=2)) == [
        ("n1", [0, 1], [None] * 2), ("n2", [2, 3], [None] * 2)]
    assert placed(StepRequest(ntasks=3, nodes=2)) == [("n1", [0, 1], [None] * 2),
                                                      ("n2", [2], [None])]
    assert placed(StepRequest(ntasks_per_node=2, gpus_per_task=1)) == [
        ("n1", [0, 1], [[0], [1]]), ("n2", [2, 3], [[2], [3]])]
    assert placed(StepRequest(ntasks=4, nodes=1, gpu_bind="single:2")) == [
        ("n1", [0, 1, 2, 3], [[0], [0], [1], [1]])]
    assert placed(StepRequest(nodelist=("n2",), ntasks=2, gpu_bind="map_gpu:1,0")) == [
        ("n2", [0, 1], [[3], [2]])]
    for bad, words in ((StepRequest(ntasks=9), "do not fit"),
                       (StepRequest(nodes=3), "only 2 node"),
                       (StepRequest(ntasks=3, nodes=1, gpus_per_task=1), "need 3 GPU"),
                       (StepRequest(gpu_bind="sideways"), "--gpu-bind=sideways")):
        with pytest.raises(LayoutError, match=words):
            layout(ALLOC, bad)


# -- rrun's command line (pure) --------------------------------------------------------

def test_rrun_options_stop_at_the_command():
    from rmsbatch.cli import rrun
    args, command = rrun.parse(["-n", "2", "-l", "--kill-on-bad-exit", "--mpi=pmix", "python",
                                "-c", "print(1)", "-n", "3"], {})
    assert (args.ntasks, args.label, args.kill_on_bad_exit) == (2, True, 1)
    assert command == ["python", "-c", "print(1)", "-n", "3"]
    assert rrun.parse(["-K0", "--", "-weird"], {})[1] == ["-weird"]
    job_env = {"SLURM_NTASKS": "4", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "3"}
    args, _ = rrun.parse(["hostname"], job_env)
    assert (args.ntasks, args.ntasks_per_node, args.cpus_per_task) == (4, 2, 3)
    args, _ = rrun.parse(["-N1", "hostname"], job_env)      # -N shapes the step: one task
    assert (args.ntasks, args.ntasks_per_node) == (None, None)
    env = {"PATH": "/bin", "SLURM_JOB_ID": "7", "FOO": "1"}
    assert rrun.task_environment(None, env) == env
    assert rrun.task_environment("NONE", env) == {"SLURM_JOB_ID": "7"}
    assert rrun.task_environment("FOO,BAR=2", env) == {"SLURM_JOB_ID": "7", "FOO": "1", "BAR": "2"}
    assert rrun.task_environment("ALL,BAR=2", env) == {**env, "BAR": "2"}


def test_rcontrol_show_hostnames_reads_the_jobs_nodelist(monkeypatch):
    from rmsbatch.cli import rcontrol
    from rmsbatch.cli.common import UsageError
    for var in ("SLURM_JOB_NODELIST", "RMS_JOB_NODELIST"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(UsageError, match="SLURM_JOB_NODELIST, which is not set"):
        rcontrol.parse_args(["show", "hostnames"])
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[08-10],cpu1")
    assert rcontrol.show(rcontrol.parse_args(["show", "hostnames"])).split() == [
        "gpu08", "gpu09", "gpu10", "cpu1"]
