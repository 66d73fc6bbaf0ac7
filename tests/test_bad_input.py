"""Bad input: one clear line on stderr, a non-zero exit, and nothing created."""
from __future__ import annotations

import os
import signal
import time

import pytest
from conftest import wait_for


def job_count(cluster) -> int:
    return len(cluster.api("jobs", states=["PENDING", "RUNNING", "COMPLETING", "COMPLETED",
                                           "FAILED", "CANCELLED", "TIMEOUT"])["jobs"])


@pytest.fixture
def script_dir(cluster, tmp_path):
    return tmp_path


@pytest.mark.parametrize("args,expected", [
    (["--frobnicate", "--wrap", "true"], "--frobnicate"),
    (["--mem=12Q", "--wrap", "true"], "--mem=12Q: unknown unit 'Q' (use K, M, G or T)"),
    (["--time=abc", "--wrap", "true"], "--time=abc"),
    (["-n", "-2", "--wrap", "true"], "-2"),
    (["--gpus=-1", "--wrap", "true"], "--gpus=-1"),
    (["-c", "0", "--wrap", "true"], "0"),
    (["-A", "nosuchaccount", "--wrap", "true"], "invalid account 'nosuchaccount'"),
    (["-p", "nosuchpartition", "--wrap", "true"], "invalid partition 'nosuchpartition'"),
    (["-q", "nosuchqos", "--wrap", "true"], "invalid QoS 'nosuchqos'"),
    (["--mem=100T", "--wrap", "true"], "MB per node"),
    (["-c", "4096", "--wrap", "true"], "CPUs per node"),
])
def test_bad_options(cluster, args, expected):
    before = job_count(cluster)
    result = cluster.run("rsub", *args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("rsub: error:"), result.stderr
    assert expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert job_count(cluster) == before


def test_huge_script(cluster, script_dir):
    path = script_dir / "huge.sh"
    with open(path, "w") as fh:
        fh.write("#!/bin/sh\n")
        fh.truncate(100 * 1024 * 1024)
    before = job_count(cluster)
    result = cluster.run("rsub", str(path))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "the limit is 4 MiB" in result.stderr and "huge.sh" in result.stderr
    assert job_count(cluster) == before


def test_binary_script(cluster, script_dir):
    path = script_dir / "prog"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    before = job_count(cluster)
    result = cluster.run("rsub", str(path))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("rsub: error:") and "prog" in result.stderr
    assert job_count(cluster) == before


def test_binary_on_stdin(cluster):
    result = cluster.run("rsub", input=b"#!/bin/sh\n\x00\x01\x02")
    assert result.returncode != 0 and result.stderr.startswith(b"rsub: error:")


def test_missing_script_and_bad_directive(cluster, script_dir):
    result = cluster.run("rsub", str(script_dir / "nope.sh"))
    assert result.returncode != 0 and "nope.sh" in result.stderr
    path = script_dir / "bad.sh"
    path.write_text("#!/bin/bash\n#SBATCH --nodes=NUM_NODES\necho hi\n")
    result = cluster.run("rsub", str(path))
    assert result.returncode != 0
    assert "line 2" in result.stderr and "NUM_NODES" in result.stderr


def test_other_commands_reject_bad_input(cluster):
    for argv in (["rq", "-t", "SLEEPING"], ["rq", "-j", "abc"], ["rcancel"],
                 ["rsacct", "-S", "yesterday-ish"], ["rcontrol", "show", "job", "99999"],
                 ["rcontrol", "drain", "nosuchnode", "reason=x"], ["rinfo", "--bogus"]):
        result = cluster.run(*argv)
        assert result.returncode != 0, argv
        assert result.stderr.startswith(f"{argv[0]}: error:"), (argv, result.stderr)
        assert "Traceback" not in result.stderr


HUGE_ID = "99999999999999999999999"


@pytest.mark.parametrize("argv, option", [
    (["rq", "-j", HUGE_ID], "-j/--jobs"),
    (["rcancel", HUGE_ID], "JOBID"),
    (["rcancel", "42", f"43,{HUGE_ID}"], "JOBID"),
    (["rsacct", "-j", HUGE_ID], "-j/--jobs"),
    (["rcontrol", "hold", HUGE_ID], "JOBID"),
])
def test_job_id_beyond_the_spool_is_a_usage_error(cluster, argv, option):
    # The spool stores job ids as SQLite INTEGERs: a larger id is refused before any request.
    result = cluster.run(*argv)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"{argv[0]}: error: argument {option}: job id {HUGE_ID} is out of "
                             "range (job ids go up to 9223372036854775807)\n")


def test_largest_job_id_is_a_job_id(cluster):
    result = cluster.run("rq", "-h", "-j", str(2 ** 63 - 1))
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_no_controller_is_a_clear_error(tmp_path):
    from conftest import command_path
    import subprocess
    env = dict(os.environ, RMS_CONF_DIR=str(tmp_path))
    result = subprocess.run([command_path("rq")], env=env, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith("rq: error: no cluster configuration")


def test_signal_the_batch_shell_with_batch(cluster):
    job_id = cluster.submit("--wrap", "trap 'echo got USR1; exit 0' USR1; sleep 30 & wait")
    cluster.wait_state(job_id, "RUNNING")
    time.sleep(0.5)   # let the shell install its trap
    cluster.run("rcancel", "--batch", "--signal=USR1", str(job_id), check=True)
    job = cluster.wait_ended(job_id, timeout=15)
    assert job["state"] == "COMPLETED"
    assert "got USR1" in open(os.path.join(cluster.work, f"rms-{job_id}.out")).read()


CHECKPOINTER = ("import signal, sys, time\n"
                "signal.signal(signal.SIGUSR1, lambda *a: (print('checkpoint', flush=True), "
                "sys.exit(0)))\n"
                "print('ready', flush=True)\n"
                "time.sleep(30)\n")


def test_signal_reaches_the_job_but_not_its_batch_shell(cluster):
    """rcancel -s USR1 (as scancel without -b/-f): the program gets it, the shell
    (which would die of an untrapped USR1) does not, and the job goes on."""
    script = os.path.join(cluster.work, "ckpt.py")
    with open(script, "w") as fh:
        fh.write(CHECKPOINTER)
    job_id = cluster.submit("--wrap", f"python3 {script}; echo shell still here")
    out = os.path.join(cluster.work, f"rms-{job_id}.out")
    wait_for(lambda: os.path.exists(out) and "ready" in open(out).read(), 15, "the program")
    result = cluster.run("rcancel", "-s", "USR1", str(job_id))
    assert result.returncode == 0, result.stderr
    job = cluster.wait_ended(job_id, timeout=15)
    assert job["state"] == "COMPLETED", job
    assert open(out).read().split() == ["ready", "checkpoint", "shell", "still", "here"]


def test_batch_or_full_needs_a_signal(cluster):
    result = cluster.run("rcancel", "-b", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "rcancel: error: -b/--batch says who gets a signal: give the signal with -s/--signal")


def test_cancel_by_filters(cluster):
    a = cluster.submit("-H", "-J", "sweep-a", "--wrap", "true")
    b = cluster.submit("-H", "-J", "sweep-b", "--wrap", "true")
    keep = cluster.submit("-H", "-J", "other", "--wrap", "true")
    cluster.run("rcancel", "--name", "sweep-a,sweep-b", check=True)
    assert cluster.job(a)["state"] == cluster.job(b)["state"] == "CANCELLED"
    assert cluster.job(keep)["state"] == "PENDING"
    cluster.run("rcancel", "-t", "PENDING", "-p", "main", check=True)
    assert cluster.job(keep)["state"] == "CANCELLED"


def test_check_config_and_reconfigure(new_cluster):
    c = new_cluster(gpus=0)
    ok = c.run("rmsctld", "--conf-dir", c.dir, "--check-config")
    assert ok.returncode == 0 and "valid" in ok.stdout
    c.tweak('name = "main"', 'name = "batch"')
    assert c.run("rcontrol", "reconfigure").returncode == 0
    assert "batch" in c.run("rinfo").stdout
    c.tweak("[[partitions]]", "[[partitions]]\nbogus_key = 1")
    bad = c.run("rmsctld", "--conf-dir", c.dir, "--check-config")
    assert bad.returncode == 1
    assert "cluster.toml" in bad.stderr and "partitions.0.bogus_key" in bad.stderr
    refused = c.run("rcontrol", "reconfigure")
    assert refused.returncode == 1 and "bogus_key" in refused.stderr
    assert "batch" in c.run("rinfo").stdout   # the running config is kept
    c.tweak("[[partitions]]\nbogus_key = 1", "[[partitions]]")
    c.tweak('name = "batch"', 'name = "gpu"')
    os.kill(c.pid("rmsctld"), signal.SIGHUP)
    deadline = time.time() + 5
    while "gpu" not in c.run("rinfo").stdout and time.time() < deadline:
        time.sleep(0.1)
    assert "gpu" in c.run("rinfo").stdout
