"""A job's node-local setup: its private TMPDIR, and the node prolog and epilog that
the administrator configures in cluster.toml."""
from __future__ import annotations

import json
import os
import signal

from conftest import LAB_TENANTS, NORMAL_QOS, Cluster, cluster_toml, wait_for

NODE_KEYS = 'state_dir = "state"'


def configure(c, **keys) -> None:
    """Add [node_daemon] keys to cluster.toml and have rmsd reload it (SIGHUP), as an
    administrator would."""
    log = rmsd_log(c)
    before = open(log).read().count("configuration reloaded")
    lines = "".join(f"\n{k} = {json.dumps(v)}" for k, v in keys.items())
    c.tweak(NODE_KEYS, NODE_KEYS + lines)
    os.kill(c.pid("rmsd"), signal.SIGHUP)
    wait_for(lambda: open(log).read().count("configuration reloaded") > before, 10,
             "rmsd to reload its configuration")


def rmsd_log(c) -> str:
    return os.path.join(c.dir, "log", f"rmsd-{c.node}.log")


def program(c, name: str, body: str) -> str:
    path = os.path.join(c.dir, name)
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n" + body)
    os.chmod(path, 0o755)
    return path


def drain_reason(c) -> str:
    result = c.run("rinfo", "-R")
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_drained(c, words: str) -> str:
    return wait_for(lambda: words in drain_reason(c) and drain_reason(c), 15,
                    f"the node drained with {words!r}")


# -- TMPDIR ---------------------------------------------------------------------

TMPDIR_PROBE = """#!/bin/bash
#SBATCH --job-name=scratch   # uses node-local scratch
echo "$TMPDIR"
stat -c '%U %a' "$TMPDIR"
echo data > "$TMPDIR/part.bin" && echo written
{rest}
"""


def submit_probe(c, user: str, rest: str = "") -> int:
    script = os.path.join(c.work, f"scratch-{len(os.listdir(c.work))}.sh")
    with open(script, "w") as fh:
        fh.write(TMPDIR_PROBE.format(rest=rest))
    os.chmod(script, 0o644)
    return c.submit(script, user=user)


def test_tmpdir_is_the_users_own_and_gone_after_the_job(new_cluster, users):
    alice, bob = users
    c = new_cluster(gpus=0)
    job_id = submit_probe(c, alice.pw_name)
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    path, owner, written = c.output(job_id).splitlines()
    assert owner == f"{alice.pw_name} 700" and written == "written"
    assert path.startswith("/tmp/") and str(job_id) in os.path.basename(path)
    assert not os.path.exists(path)
    # another user's job gets another directory, and cannot see into the first one's
    watcher = submit_probe(c, bob.pw_name, rest='ls "$(dirname "$TMPDIR")" 2>&1; sleep 30')
    wait_for(lambda: os.path.exists(os.path.join(c.work, f"rms-{watcher}.out"))
             and len(c.output(watcher).splitlines()) >= 4, 10, "the job's first lines")
    theirs = c.output(watcher).splitlines()
    assert theirs[0] != path and theirs[1] == f"{bob.pw_name} 700"
    assert "Permission denied" in theirs[3]
    c.run("rcancel", str(watcher), check=True)
    assert c.wait_ended(watcher)["state"] == "CANCELLED"
    assert not os.path.exists(theirs[0])            # also when the job was cancelled


def test_tmpdir_goes_when_the_supervisor_dies_and_at_rmsd_start(new_cluster, users):
    alice, _ = users
    c = new_cluster(gpus=0)
    job_id = submit_probe(c, alice.pw_name, rest="sleep 60")
    out = os.path.join(c.work, f"rms-{job_id}.out")
    wait_for(lambda: os.path.exists(out) and "written" in c.output(job_id), 10, "the job")
    path = c.output(job_id).splitlines()[0]
    parent = os.path.dirname(path)
    jobdir = os.path.join(c.dir, "state", c.node, "jobs", f"{job_id}.0")
    with open(os.path.join(jobdir, "pid")) as fh:
        os.kill(json.load(fh)["supervisor_pid"], signal.SIGKILL)
    job = c.wait_ended(job_id)
    assert job["state"] == "FAILED" and "supervisor died" in c.run(
        "rcontrol", "show", "job", str(job_id)).stdout
    assert not os.path.exists(path)
    # one left by a node that crashed is swept when rmsd starts again
    stale = os.path.join(parent, "job-999.0")
    os.mkdir(stale, 0o700)
    open(os.path.join(stale, "left-over"), "w").close()
    c.kill9("rmsd")
    c.up()
    wait_for(lambda: not os.path.exists(stale), 10, "the stale TMPDIR to go")


def test_missing_tmp_base_drains_the_node_and_requeues(new_cluster):
    c = new_cluster(gpus=0)
    configure(c, tmp_base="/nonexistent/scratch")
    job_id = c.submit("--wrap", "echo ran")
    reasons = wait_drained(c, "tmp_base /nonexistent/scratch does not exist")
    assert c.node in reasons
    assert c.wait_state(job_id, "PENDING")["state"] == "PENDING"
    assert not os.path.exists(os.path.join(c.work, f"rms-{job_id}.out"))


# -- prolog and epilog ------------------------------------------------------------------

def test_prolog_and_epilog_run_as_root_with_the_jobs_variables(new_cluster, users):
    alice, _ = users
    c = new_cluster(gpus=0)
    record = os.path.join(c.dir, "hooks.log")
    for kind in ("prolog", "epilog"):
        program(c, f"{kind}.sh",
                f'echo "$SLURM_SCRIPT_CONTEXT $SLURM_JOB_ID $SLURM_JOB_USER $RMS_JOB_UID '
                f'$SLURM_JOB_NODELIST $SLURM_JOB_PARTITION $(id -u)" >> {record}\n'
                f'test -d "$RMS_JOB_TMPDIR" && echo "{kind} sees TMPDIR" >> {record}\n'
                f'echo "{kind} says hello"\n')
    configure(c, prolog="prolog.sh", epilog=os.path.join(c.dir, "epilog.sh"))
    job_id = c.submit("--wrap", "echo job output", user=alice.pw_name)
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    with open(record) as fh:
        lines = fh.read().splitlines()
    who = f"{job_id} {alice.pw_name} {alice.pw_uid} {c.node} main 0"
    assert lines == [f"prolog_slurmd {who}", "prolog sees TMPDIR",
                     f"epilog_slurmd {who}", "epilog sees TMPDIR"]
    # their output goes to the node daemon's log, not into the job's output
    assert c.output(job_id) == "job output\n"
    log = open(rmsd_log(c)).read()
    assert f"job {job_id}: prolog: prolog says hello" in log
    assert f"job {job_id}: epilog: epilog says hello" in log


def test_a_failing_prolog_requeues_the_job_and_drains_the_node(new_cluster):
    c = new_cluster(gpus=0)
    program(c, "prolog.sh", "echo 'scratch disk missing' >&2\nexit 3\n")
    configure(c, prolog="prolog.sh")
    job_id = c.submit("--wrap", "echo ran")
    assert "prolog failed: exit 3" in wait_drained(c, "prolog failed: exit 3")
    job = c.wait_state(job_id, "PENDING")
    assert job["restart_count"] >= 1 or "prolog" in c.run("rcontrol", "show", "job",
                                                          str(job_id)).stdout
    assert not os.path.exists(os.path.join(c.work, f"rms-{job_id}.out"))
    assert f"job {job_id}: prolog: scratch disk missing" in open(rmsd_log(c)).read()
    # the administrator mends the node and resumes it: the job runs
    program(c, "prolog.sh", "exit 0\n")
    c.run("rcontrol", "resume", c.node, check=True)
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    assert c.output(job_id) == "ran\n"


def test_a_hanging_prolog_is_killed_at_its_timeout(new_cluster):
    c = new_cluster(gpus=0)
    pid_file = os.path.join(c.dir, "prolog.pid")
    program(c, "prolog.sh", f"echo $$ > {pid_file}\nexec sleep 600\n")
    configure(c, prolog="prolog.sh", prolog_timeout=1)
    job_id = c.submit("--wrap", "echo ran")
    assert "prolog timed out after 1 s" in wait_drained(c, "prolog timed out after 1 s")
    with open(pid_file) as fh:
        pid = int(fh.read())
    wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
             open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
             5, "the prolog to be killed")
    assert c.wait_state(job_id, "PENDING")["state"] == "PENDING"


def test_a_failing_epilog_drains_the_node_and_leaves_the_job_completed(new_cluster):
    c = new_cluster(gpus=0)
    program(c, "epilog.sh", "exit 4\n")
    configure(c, epilog="epilog.sh")
    job_id = c.submit("--wrap", "echo done")
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    assert "epilog failed: exit 4" in wait_drained(c, "epilog failed: exit 4")
    assert c.output(job_id) == "done\n"
    acct = c.run("rsacct", "-j", str(job_id), "-n", "-P", "-o", "State")
    assert acct.stdout.strip() == "COMPLETED"


def test_bad_prolog_settings_are_refused_with_a_clear_message(tmp_path):
    nodes = '[[nodes]]\nnames = "n1"\ncpus = 2\nmemory = "1G"\n'
    (tmp_path / "cluster.toml").write_text(cluster_toml("t", nodes, prolog_timeout="soon"))
    (tmp_path / "tenants.toml").write_text(LAB_TENANTS)
    (tmp_path / "qos.toml").write_text(NORMAL_QOS)
    result = Cluster(str(tmp_path)).run("rmsd", "--conf-dir", str(tmp_path), "-N", "n1")
    assert result.returncode != 0
    assert "prolog_timeout" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_job_cancelled_while_its_prolog_runs_does_not_run(new_cluster):
    c = new_cluster(gpus=0)
    started = os.path.join(c.dir, "prolog.started")
    program(c, "prolog.sh", f"touch {started}\nsleep 5\n")
    configure(c, prolog="prolog.sh")
    job_id = c.submit("--wrap", "sleep 1; echo ran")
    wait_for(lambda: os.path.exists(started), 10, "the prolog to start")
    c.run("rcancel", str(job_id), check=True)
    # the supervisor answers rmsd's cancel while the prolog still runs: rmsd is not
    # kept waiting on it
    wait_for(lambda: f"job {job_id}.0: cancelling" in open(rmsd_log(c)).read(), 3,
             "the supervisor to take the cancel")
    assert c.wait_ended(job_id, timeout=15)["state"] == "CANCELLED"
    out = os.path.join(c.work, f"rms-{job_id}.out")
    assert not os.path.exists(out) or "ran" not in c.output(job_id)
    assert c.node not in drain_reason(c)


def test_site_options_reach_the_prolog_by_name():
    from types import SimpleNamespace
    from rmsbatch.node.prolog import hook_environment
    job = {"job_id": 5, "name": "train", "nodelist": "gpu001", "nodes": 1,
           "submit_dir": "/home/u", "submit_host": "login1", "account": "lab",
           "partition": "gpu", "qos": "normal", "user": "u", "uid": 1000, "gid": 100,
           "cluster": "c", "restart_count": 0, "ntasks": 1, "cpus_per_task": 1,
           "export": "ALL", "time_limit": 60, "start_time": 1_700_000_000,
           "alloc": {"cpus": 4, "mem_mb": 4096, "gpus": [2, 3]},
           "spec": {"site_options": {"image": "docker:pytorch/pytorch",
                                     "container-mounts": "/data:/data"}}}
    env = hook_environment(SimpleNamespace(node="gpu001"), job, "/tmp/x/job-5.0")
    assert env["RMS_SITE_OPTION_IMAGE"] == "docker:pytorch/pytorch"
    assert env["RMS_SITE_OPTION_CONTAINER_MOUNTS"] == "/data:/data"
    assert env["SLURM_JOB_GPUS"] == env["RMS_JOB_GPUS"] == "2,3"
    assert env["SLURM_JOB_GID"] == "100" and env["SLURMD_NODENAME"] == "gpu001"
    assert env["RMS_JOB_TMPDIR"] == "/tmp/x/job-5.0"
    assert not any(k.startswith("SLURM_MEM") or k == "TMPDIR" for k in env)
