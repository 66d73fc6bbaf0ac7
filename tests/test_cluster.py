"""A real single-host cluster driven through the commands a user types."""
from __future__ import annotations

import os
import time

import pytest


def read(path: str, timeout: float = 5) -> str:
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    with open(path) as fh:
        return fh.read()


def test_wrap_job_runs_and_is_accounted(cluster):
    job_id = cluster.submit("--wrap", "echo hello from $RMS_JOB_ID on $RMS_JOB_NODELIST")
    job = cluster.wait_ended(job_id)
    assert job["state"] == "COMPLETED"
    assert job["exit_code"] == 0
    out = read(os.path.join(cluster.work, f"rms-{job_id}.out"))
    assert out.strip() == f"hello from {job_id} on {job['nodelist']}"
    acct = cluster.run("rsacct", "-j", str(job_id), "-P", "-o", "JobID,JobName,State,ExitCode")
    assert acct.returncode == 0, acct.stderr
    assert acct.stdout.splitlines() == ["JobID|JobName|State|ExitCode",
                                        f"{job_id}|wrap|COMPLETED|0:0"]


def test_script_file_with_sbatch_directives(cluster):
    script = os.path.join(cluster.work, "train.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH --job-name=trainer\n#SBATCH -o logs/%x-%j.log\n"
                 "#SBATCH --gres=gpu:2\n# a comment\n"
                 "echo \"gpus=$CUDA_VISIBLE_DEVICES name=$SLURM_JOB_NAME args=$*\"\n")
    result = cluster.run("rsub", script, "one", "two")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Submitted batch job ")
    job_id = int(result.stdout.split()[-1])
    # editing the file after submission changes nothing
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\necho edited\n")
    job = cluster.wait_ended(job_id)
    assert job["state"] == "COMPLETED" and job["name"] == "trainer"
    out = read(os.path.join(cluster.work, "logs", f"trainer-{job_id}.log"))
    gpus = out.split()[0].split("=")[1].split(",")
    assert len(gpus) == 2 and out.strip().endswith("name=trainer args=one two")
    assert job["alloc_gpus"] == 2


def test_script_on_stdin(cluster):
    result = cluster.run("rsub", "--parsable", input="#!/bin/sh\necho from stdin\n")
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout)
    assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    assert read(os.path.join(cluster.work, f"rms-{job_id}.out")) == "from stdin\n"


@pytest.mark.parametrize("command,state,code", [
    ("exit 3", "FAILED", "3:0"),
    ("kill -KILL $$", "FAILED", "0:9"),
    ("true", "COMPLETED", "0:0"),
])
def test_exit_codes_and_signals(cluster, command, state, code):
    result = cluster.run("rsub", "--wait", "--wrap", command)
    job_id = int(result.stdout.split()[-1])
    job = cluster.job(job_id)
    assert job["state"] == state
    assert f"{job['exit_code']}:{job['exit_signal']}" == code
    # rsub --wait returns the job's exit code (128+signal when killed)
    expected = {"3:0": 3, "0:9": 128 + 9, "0:0": 0}[code]
    assert result.returncode == expected


def test_time_limit_gives_timeout(cluster):
    job_id = cluster.submit("--time=0:02", "--wrap", "sleep 60")
    job = cluster.wait_ended(job_id, timeout=20)
    assert job["state"] == "TIMEOUT"
    assert job["end_time"] - job["start_time"] < 2 + 5 + 3   # limit + grace + slack


def test_cancel_pending_and_running(cluster):
    running = cluster.submit("--wrap", "sleep 60")
    cluster.wait_state(running, "RUNNING")
    held = cluster.submit("-H", "--wrap", "true")
    assert cluster.job(held)["reason"] == "JobHeldUser"
    result = cluster.run("rcancel", str(running), str(held))
    assert result.returncode == 0, result.stderr
    assert cluster.wait_ended(held)["state"] == "CANCELLED"
    job = cluster.wait_ended(running, timeout=15)
    assert job["state"] == "CANCELLED"


def test_pending_reason_and_rq(cluster):
    blocker = cluster.submit("-c", "1", "--exclusive", "--wrap", "sleep 30")
    cluster.wait_state(blocker, "RUNNING")
    waiting = cluster.submit("-J", "waiter", "--wrap", "true")
    job = cluster.wait_state(waiting, "PENDING")
    deadline = time.time() + 5
    while job["reason"] == "None" and time.time() < deadline:
        time.sleep(0.05)
        job = cluster.job(waiting)
    assert job["reason"] == "Resources"
    rq = cluster.run("rq")
    assert rq.returncode == 0, rq.stderr
    header, *lines = rq.stdout.splitlines()
    assert header.split() == ["JOBID", "PARTITION", "NAME", "USER", "ACCOUNT", "ST", "TIME",
                              "GPUS", "NODELIST(REASON)"]
    mine = [l for l in lines if l.split()[0] == str(waiting)]
    assert mine and mine[0].split()[5] == "PD" and mine[0].endswith("(Resources)")
    fmt = cluster.run("rq", "-h", "-o", "%i %t", "-j", str(blocker))
    assert fmt.stdout.split() == [str(blocker), "R"]
    cluster.run("rcancel", str(blocker), str(waiting), check=True)
    cluster.wait_ended(waiting)


def test_request_that_can_never_run_is_rejected(cluster):
    result = cluster.run("rsub", "-G", "9", "--wrap", "true")
    assert result.returncode != 0
    assert "requested 9 GPUs per node" in result.stderr and "has 4" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_drain_and_resume(cluster):
    node = cluster.node
    assert cluster.run("rcontrol", "drain", node, "reason=disk check").returncode == 0
    info = cluster.run("rcontrol", "show", "node", node)
    assert "DRAIN" in info.stdout and "disk check" in info.stdout
    job_id = cluster.submit("--wrap", "true")
    time.sleep(0.3)
    assert cluster.job(job_id)["state"] == "PENDING"
    assert cluster.run("rcontrol", "resume", node).returncode == 0
    assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    assert "idle" in cluster.run("rinfo").stdout


def test_environment_is_exported(cluster):
    # no -n: no task count, as Slurm sets none
    job_id = cluster.submit("--wrap", "echo $MY_SETTING $RMS_JOB_ACCOUNT ${RMS_NTASKS:-unset}",
                            env={"MY_SETTING": "kept"})
    cluster.wait_ended(job_id)
    assert read(os.path.join(cluster.work, f"rms-{job_id}.out")).split() == ["kept", "default", "unset"]
    job_id = cluster.submit("--export=NONE", "--wrap", "echo [$MY_SETTING]",
                            env={"MY_SETTING": "dropped"})
    cluster.wait_ended(job_id)
    assert read(os.path.join(cluster.work, f"rms-{job_id}.out")).strip() == "[]"


def test_default_output_goes_to_the_submit_dir(cluster, tmp_path):
    elsewhere = tmp_path / "run-here"
    elsewhere.mkdir()
    job_id = cluster.submit("-D", str(elsewhere), "--wrap", "pwd")
    job = cluster.wait_ended(job_id)
    assert job["state"] == "COMPLETED" and job["workdir"] == str(elsewhere)
    assert read(os.path.join(cluster.work, f"rms-{job_id}.out")).strip() == str(elsewhere)
    assert job["stdout"] == os.path.join(cluster.work, "rms-%j.out")


def test_a_cluster_in_a_deep_directory_works(tmp_path):
    """Socket paths longer than a socket address holds (108 bytes): the controller's,
    rmsd's and each supervisor's sockets are reached through their directories."""
    import shutil
    import tempfile
    from conftest import Cluster, _kill_leftovers
    top = tempfile.mkdtemp(prefix="rms-deep-", dir="/tmp")
    os.chmod(top, 0o755)
    directory = os.path.join(top, "a" * 60, "b" * 40)
    c = Cluster(directory, gpus=0)
    try:
        assert len(os.path.join(directory, "run", "rmsctld.sock")) > 108
        c.up()
        job_id = c.submit("--wrap", "trap 'echo got USR1; exit 0' USR1; sleep 30 & wait")
        c.wait_state(job_id, "RUNNING")
        time.sleep(0.5)       # let the shell install its trap
        c.run("rcancel", "-b", "-s", "USR1", str(job_id), check=True)
        assert c.wait_ended(job_id)["state"] == "COMPLETED"
        assert c.output(job_id) == "got USR1\n"
    finally:
        c.down()
        _kill_leftovers(directory)
        shutil.rmtree(top, ignore_errors=True)


def test_rq_and_rsub_end_cleanly_however_their_output_is_read(cluster):
    """rq and rsub skip the interpreter's teardown at exit: their output must still
    arrive whole, a reader that leaves early is no error, and a full disk is one."""
    import subprocess
    from conftest import command_path
    array = cluster.submit("-H", "--array=0-1999", "--wrap", "true")
    rq = command_path("rq")
    env = dict(cluster.env)
    env.pop("PYTHONUNBUFFERED")                 # buffered, as for a user
    whole = subprocess.run([rq, "-r", "-h", "-j", str(array)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert whole.returncode == 0 and whole.stderr == ""
    assert len(whole.stdout.splitlines()) == 2000       # 160 kB: more than a pipe holds
    assert whole.stdout.splitlines()[-1].split()[0] == f"{array}_1999"
    small = subprocess.run([rq, "-h", "-o", "%i", "-j", str(array)], env=env,
                           capture_output=True, text=True, timeout=60)
    assert small.stdout.split() == [f"{array}_[0-1999]"], small    # a few bytes, buffered
    early = subprocess.run(f"{rq} -r -j {array} | head -n 1; exit ${{PIPESTATUS[0]}}",
                           shell=True, executable="/bin/bash", env=env,
                           capture_output=True, text=True, timeout=60)
    assert early.returncode == 0 and early.stderr == "", early
    assert early.stdout.split()[0] == "JOBID"
    full = subprocess.run(f"{rq} -r -j {array} > /dev/full", shell=True, env=env,
                          capture_output=True, text=True, timeout=60)
    assert full.returncode == 1
    assert full.stderr.splitlines() == ["rq: error: No space left on device"]
    bad = cluster.run("rsub", "--mem=12Q", "--wrap", "true", env=env)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1, bad.stderr
    cluster.run("rcancel", str(array), check=True)
