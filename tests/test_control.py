"""Controlling jobs after submission, as a user does it: a signal before the time limit
(--signal), output files appended or truncated (--open-mode), rcontrol requeue,
requeuehold and update, and rq --watch."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from conftest import command_path, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")


def write_script(cluster, name: str, text: str) -> str:
    path = os.path.join(cluster.work, name)
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o755)
    return name


def read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except FileNotFoundError:
        return ""


def output_has(cluster, job_id: int, text: str):
    return lambda: text in read(os.path.join(cluster.work, f"rms-{job_id}.out"))


def one_error_line(result, prog: str = "rcontrol") -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


CHECKPOINT = """#!/bin/bash
#SBATCH --job-name=ckpt
#SBATCH --time=1                  # one minute
#SBATCH --signal=B:USR1@55        # checkpoint 55 s before the end
trap 'echo "saved at step $step" > ckpt-$SLURM_JOB_ID.txt; {after}' USR1
echo "started"
for step in $(seq 1 600); do
    sleep 0.1 &
    wait
done
"""


def test_signal_to_the_batch_shell_before_the_time_limit(cluster, users):
    alice, _ = users
    write_script(cluster, "ckpt.sh", CHECKPOINT.format(after="exit 0"))
    begun = time.monotonic()
    job_id = cluster.submit("ckpt.sh", user=alice.pw_name)
    job = cluster.wait_ended(job_id, timeout=40)
    took = time.monotonic() - begun
    assert job["state"] == "COMPLETED", job
    assert 3 < took < 30, took                       # 5 s after the start, not at 60 s
    assert read(os.path.join(cluster.work, f"ckpt-{job_id}.txt")).startswith("saved at step")
    assert "started" in cluster.output(job_id)


def test_a_job_that_keeps_running_after_the_signal_times_out(cluster, users):
    """The trap saves and carries on; the owner then lowers the time limit to 8 s, which
    the running job's supervisor applies at once: the job ends TIMEOUT."""
    alice, _ = users
    write_script(cluster, "ckpt-on.sh", CHECKPOINT.format(after="true"))
    job_id = cluster.submit("ckpt-on.sh", user=alice.pw_name)
    ckpt = os.path.join(cluster.work, f"ckpt-{job_id}.txt")
    wait_for(lambda: read(ckpt), 30, "the checkpoint file")
    assert cluster.job(job_id)["state"] == "RUNNING"
    lowered = cluster.run("rcontrol", "update", "job", str(job_id), "timelimit=0:08",
                          user=alice.pw_name)
    assert lowered.returncode == 0, lowered.stderr
    job = cluster.wait_ended(job_id, timeout=30)
    assert job["state"] == "TIMEOUT", job
    assert job["time_limit"] == 8
    assert job["end_time"] - job["start_time"] < 20


def test_signal_without_b_reaches_the_jobs_processes_not_the_shell(cluster, users):
    alice, _ = users
    write_script(cluster, "children.sh", """#!/bin/bash
#SBATCH -t 1
#SBATCH --signal USR1@57   # to the job's processes, not this shell
python3 - <<'EOF' &
import signal, sys, time
def got(signum, frame):
    open("child-got-usr1.txt", "w").write("child got USR1\\n")
    sys.exit(0)
signal.signal(signal.SIGUSR1, got)
print("child ready", flush=True)
time.sleep(120)
EOF
wait
echo "the shell is still here"
""")
    job_id = cluster.submit("children.sh", user=alice.pw_name)
    job = cluster.wait_ended(job_id, timeout=40)
    assert job["state"] == "COMPLETED", job
    assert read(os.path.join(cluster.work, "child-got-usr1.txt")) == "child got USR1\n"
    out = cluster.output(job_id)
    assert "child ready" in out and "the shell is still here" in out


def test_output_files_truncated_by_default_appended_on_request(cluster, users):
    alice, _ = users
    log = os.path.join(cluster.work, "open-mode.log")
    for word, extra in (("first", []), ("second", []), ("third", ["--open-mode=append"])):
        job_id = cluster.submit("-o", "open-mode.log", *extra, "--wrap", f"echo {word}",
                                user=alice.pw_name)
        assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    assert read(log) == "second\nthird\n"


def test_requeue_a_running_job_keeps_its_id_and_both_runs_output(cluster, users):
    alice, bob = users
    write_script(cluster, "twice.sh", """#!/bin/bash
#SBATCH -J twice   # requeued by hand
echo "run $SLURM_RESTART_COUNT of job $SLURM_JOB_ID"
sleep 60 &
wait
""")
    job_id = cluster.submit("twice.sh", user=alice.pw_name)
    wait_for(output_has(cluster, job_id, "run 0"), 30, "the first run")

    refused = cluster.run("rcontrol", "requeue", str(job_id), user=bob.pw_name)
    assert "permission denied" in one_error_line(refused)
    assert cluster.job(job_id)["restart_count"] == 0

    ok = cluster.run("rcontrol", "requeue", str(job_id), user=alice.pw_name)
    assert ok.returncode == 0, ok.stderr
    wait_for(output_has(cluster, job_id, "run 1"), 30, "the second run")
    job = cluster.wait_state(job_id, "RUNNING")
    assert job["restart_count"] == 1
    assert cluster.output(job_id) == f"run 0 of job {job_id}\nrun 1 of job {job_id}\n"

    # root requeues it held: it waits for an operator's release
    held = cluster.run("rcontrol", "requeuehold", str(job_id))
    assert held.returncode == 0, held.stderr
    job = cluster.wait_state(job_id, "PENDING")
    assert job["restart_count"] == 2 and job["reason"] == "JobHeldAdmin"
    again = cluster.run("rcontrol", "requeue", str(job_id), user=alice.pw_name)
    assert "is pending" in one_error_line(again)
    cluster.run("rcancel", str(job_id), check=True)
    assert cluster.wait_ended(job_id)["state"] == "CANCELLED"


def test_requeue_an_ended_job_runs_it_again(cluster, users):
    alice, _ = users
    job_id = cluster.submit("--wrap", "echo run $SLURM_RESTART_COUNT", user=alice.pw_name)
    assert cluster.wait_ended(job_id)["state"] == "COMPLETED"
    ok = cluster.run("rcontrol", "requeue", str(job_id), user=alice.pw_name)
    assert ok.returncode == 0, ok.stderr
    wait_for(output_has(cluster, job_id, "run 1"), 30, "the second run")
    job = cluster.wait_ended(job_id)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1
    assert cluster.output(job_id) == "run 0\nrun 1\n"
    missing = cluster.run("rcontrol", "requeue", "999999")
    assert "job 999999 not found" in one_error_line(missing)


def test_update_a_pending_job(cluster, users):
    alice, bob = users
    job_id = cluster.submit("-H", "-t", "10", "--wrap", "true", user=alice.pw_name)

    def update(*words, user=None):
        return cluster.run("rcontrol", "update", f"JobId={job_id}", *words, user=user)

    assert update("TimeLimit=5", user=alice.pw_name).returncode == 0
    assert cluster.job(job_id)["time_limit"] == 300
    assert update("TimeLimit=-1", user=alice.pw_name).returncode == 0     # a minute less
    assert cluster.job(job_id)["time_limit"] == 240
    assert "only operators" in one_error_line(update("TimeLimit=+1", user=alice.pw_name))
    assert "only operators and admins may raise a time limit" in one_error_line(
        update("timelimit=20", user=alice.pw_name))
    assert "only operators" in one_error_line(update("TimeLimit=UNLIMITED", user=alice.pw_name))
    assert update("nice=10", user=alice.pw_name).returncode == 0
    assert "lower a job's nice value" in one_error_line(update("Nice=5", user=alice.pw_name))
    assert "only operators and admins may change QOS" in one_error_line(
        update("QOS=high", user=alice.pw_name))
    assert "permission denied" in one_error_line(update("TimeLimit=1", user=bob.pw_name))
    job = cluster.job(job_id)
    assert (job["time_limit"], job["nice"], job["qos"]) == (240, 10, "normal")

    # root may do more, checked as a submission is
    before = job["priority"]
    ok = cluster.run("rcontrol", "update", "job", str(job_id), "TimeLimit=30", "qos=high")
    assert ok.returncode == 0, ok.stderr
    job = cluster.job(job_id)
    assert (job["time_limit"], job["qos"]) == (1800, "high")
    assert job["priority"] == before + 100           # the high QoS's priority
    assert "invalid QoS 'gold'" in one_error_line(update("QOS=gold"))
    assert "invalid account" in one_error_line(update("Account=nosuch", "TimeLimit=1"))
    assert cluster.job(job_id)["time_limit"] == 1800     # a refused update changes nothing
    assert update("Priority=7", "TimeLimit=+0:30").returncode == 0
    job = cluster.job(job_id)
    assert (job["priority"], job["time_limit"]) == (7, 1830)
    cluster.run("rcancel", str(job_id), check=True)


def test_update_usage_errors(cluster):
    for words, text in ((["JobId=4", "Colour=red"], "cannot update 'colour'"),
                        (["job"], "needs a job id"),
                        (["JobId=4"], "nothing to update"),
                        (["JobId=x1", "Nice=1"], "invalid job id"),
                        (["JobId=4", "TimeLimit=soon"], "invalid time")):
        result = cluster.run("rcontrol", "update", *words)
        assert result.returncode == 2 and text in one_error_line(result), result.stderr
    gone = cluster.run("rcontrol", "update", "JobId=999999", "TimeLimit=1")
    assert "job 999999 not found" in one_error_line(gone)


def test_rq_watch_into_a_pipe_stops_when_the_job_ends(cluster, users):
    alice, _ = users
    job_id = cluster.submit("-J", "watched", "--wrap", "sleep 2.5", user=alice.pw_name)
    cluster.wait_state(job_id, "RUNNING")
    begun = time.monotonic()
    result = cluster.run("rq", "-j", str(job_id), "--watch=0.5", "-o", "%i %j %t",
                         timeout=30)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - begun < 20
    listings = [block for block in result.stdout.split("\n\n") if block.strip()]
    assert len(listings) >= 2
    assert f"{job_id} watched R" in listings[0]
    assert cluster.job(job_id)["state"] == "COMPLETED"
    # -i as squeue's --iterate; nothing listed: one listing and done
    quiet = cluster.run("rq", "-u", "nobody-here", "-i", "1", timeout=10)
    assert quiet.returncode == 0 and quiet.stdout.count("JOBID") == 1, quiet.stdout
    bad = cluster.run("rq", "--watch=0")
    assert "invalid interval" in one_error_line(bad, "rq")


def test_rq_watch_stops_quietly_on_ctrl_c(cluster, users):
    alice, _ = users
    job_id = cluster.submit("-H", "--wrap", "true", user=alice.pw_name)
    # SIGINT as at a terminal: a runner that started the tests in the background has
    # them ignore it, and Python then never turns it into KeyboardInterrupt
    proc = subprocess.Popen([command_path("rq"), "--watch=0.2"], env=cluster.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        first = proc.stdout.readline()      # watching: its first listing is out
        proc.send_signal(2)
        # (read on from the same buffered pipe: communicate() would miss what readline
        # has already buffered)
        out = first + proc.stdout.read()
        err = proc.stderr.read()
        proc.wait(timeout=30)
    finally:
        proc.kill()
        cluster.run("rcancel", str(job_id))
    assert proc.returncode == 0 and err == "", err
    assert str(job_id) in out


def test_rq_watch_on_a_terminal_redraws_in_place(cluster, users):
    import pty
    alice, _ = users
    job_id = cluster.submit("-J", "onscreen", "--wrap", "sleep 1.5", user=alice.pw_name)
    cluster.wait_state(job_id, "RUNNING")
    leader, follower = pty.openpty()
    proc = subprocess.Popen([command_path("rq"), "-j", str(job_id), "--watch=0.3"],
                            env=cluster.env, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:             # EIO: rq has exited and closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
        os.close(leader)
    clear = b"\x1b[H\x1b[2J"
    assert screen.startswith(clear) and screen.count(clear) >= 2
    assert b"onscreen" in screen.split(clear)[1]


def test_a_new_time_limit_reaches_a_job_whose_node_daemon_was_away(new_cluster, users):
    alice, _ = users
    c = new_cluster(gpus=0)
    node = c.node
    job_id = c.submit("-t", "1", "--wrap", "echo started; sleep 60", user=alice.pw_name)
    c.wait_state(job_id, "RUNNING")
    wait_for(output_has(c, job_id, "started"), 20, "the job's start")
    c.kill9("rmsd")
    ok = c.run("rcontrol", "update", f"JobId={job_id}", "TimeLimit=0:03")
    assert ok.returncode == 0, ok.stderr
    c.start_rmsd(node)                  # says hello: the new limit goes with the answer
    job = c.wait_ended(job_id, timeout=30)
    assert job["state"] == "TIMEOUT" and job["time_limit"] == 3, job
    assert job["end_time"] - job["start_time"] < 30
