"""The per-job supervisor, with real processes and real files.

Each test builds a JOBDIR with a job.json and a script, runs
`python -m rmsbatch.node.supervisor JOBDIR` and reads JOBDIR/outcome.json.
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from rmsbatch.node.jobfile import expand_pattern
from rmsbatch.node.supervisor import outcome_from_status
from tests.conftest import wait_for

IS_ROOT = os.geteuid() == 0
TEST_USER = "rmstestsup1"
TEST_GROUP = "rmstestsupg1"
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (creates a user, drops privileges)")


# --------------------------------------------------------------------------
# helpers

@pytest.fixture
def world():
    """A directory under /tmp that any user may traverse and write."""
    d = tempfile.mkdtemp(prefix="rmssup-", dir="/tmp")
    os.chmod(d, 0o777)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def make_job(base: Path, body: str, *, job_id: int = 42, shebang: str = "#!/bin/sh",
             **overrides) -> Path:
    """Write JOBDIR (base/jobdir), the script (base/script.sh) and job.json."""
    jobdir = base / "jobdir"
    jobdir.mkdir(exist_ok=True)
    workdir = base / "work"
    workdir.mkdir(exist_ok=True)
    script = base / "script.sh"
    script.write_text(f"{shebang}\n{body}\n")
    script.chmod(0o755)
    me = pwd.getpwuid(os.getuid())
    job = {
        "job_id": job_id, "name": "testjob", "user": me.pw_name,
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups() or [os.getgid()],
        "home": me.pw_dir, "script_path": str(script), "argv": [],
        "workdir": str(workdir), "submit_dir": str(workdir),
        "output": None, "error": None,
        "environment": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": me.pw_dir},
        "time_limit": 0, "kill_grace": 1, "node": "node7",
        "notify_socket": None, "array_job_id": None, "array_task_id": None,
    }
    job.update(overrides)
    (jobdir / "job.json").write_text(json.dumps(job))
    return jobdir


def start(jobdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rmsbatch.node.supervisor", str(jobdir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def finish(proc: subprocess.Popen, jobdir: Path, timeout: float = 10) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (out, err, (jobdir / "supervisor.log").read_text())
    assert err == b"" and out == b""
    return json.loads((jobdir / "outcome.json").read_text())


def run_job(jobdir: Path, timeout: float = 10) -> dict:
    return finish(start(jobdir), jobdir, timeout)


def read_pidfile(jobdir: Path) -> dict | None:
    try:
        return json.loads((jobdir / "pid").read_text())
    except (OSError, ValueError):
        return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# --------------------------------------------------------------------------
# pure functions

def test_expand_pattern():
    kw = dict(job_id=42, name="train", user="alice", node="gpu01")
    assert expand_pattern("rms-%j.out", **kw) == "rms-42.out"
    assert expand_pattern("%x-%J-%u-%N.log", **kw) == "train-42-alice-gpu01.log"
    assert expand_pattern("%4j_%%_%n_%t_%s", **kw) == "0042_%_0_0_4294967294"
    assert expand_pattern("%A_%a", **kw) == "42_4294967294"
    assert expand_pattern("%A_%3a", **kw, array_job_id=40, array_task_id=2) == "40_002"
    assert expand_pattern("%8x", **kw) == "train"            # no padding of text fields
    assert expand_pattern("logs/%j/out", **kw) == "logs/42/out"
    assert expand_pattern("a\\%j%x", **kw) == "a%j%x"         # backslash: literal, removed
    assert expand_pattern("100%", **kw) == "100%"
    assert expand_pattern("%q", **kw) == "%q"


def test_outcome_from_status():
    assert outcome_from_status(0, cancelled=False, timed_out=False) == ("COMPLETED", 0, 0)
    assert outcome_from_status(3 << 8, cancelled=False, timed_out=False) == ("FAILED", 3, 0)
    assert outcome_from_status(9, cancelled=False, timed_out=False) == ("FAILED", 0, 9)
    assert outcome_from_status(0, cancelled=True, timed_out=False) == ("CANCELLED", 0, 0)
    assert outcome_from_status(15, cancelled=False, timed_out=True) == ("TIMEOUT", 0, 15)
    assert outcome_from_status(15, cancelled=True, timed_out=True)[0] == "CANCELLED"


# --------------------------------------------------------------------------
# end to end

def test_completed_output_pidfile_and_log(world):
    jobdir = make_job(world, "echo hello; echo oops >&2; exit 0")
    res = run_job(jobdir)
    assert res["state"] == "COMPLETED" and res["exit_code"] == 0 and res["signal"] == 0
    assert res["job_id"] == 42 and res["reason"] == ""
    assert set(res) == {"job_id", "state", "exit_code", "signal", "start_time", "end_time",
                        "max_rss_kb", "total_cpu_s", "reason", "protections", "launch_failed"}
    assert res["start_time"] <= res["end_time"] <= time.time()
    assert res["max_rss_kb"] > 0 and res["total_cpu_s"] >= 0
    out = world / "work" / "rms-42.out"             # default pattern, both streams
    assert out.read_text() == "hello\noops\n"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644 & ~umask
    pid = read_pidfile(jobdir)
    assert set(pid) >= {"pid", "start_time"} and pid["start_time"] == res["start_time"]
    lines = (jobdir / "supervisor.log").read_text().splitlines()
    assert lines and all(line.startswith("job 42: ") for line in lines)
    assert not list(jobdir.glob("*.tmp*"))


def test_exit_code_failed(world):
    res = run_job(make_job(world, "exit 3"))
    assert (res["state"], res["exit_code"], res["signal"]) == ("FAILED", 3, 0)


def test_killed_by_signal(world):
    res = run_job(make_job(world, "kill -9 $$"))
    assert (res["state"], res["exit_code"], res["signal"]) == ("FAILED", 0, 9)


def test_end_noticed_quickly(world):
    res = run_job(make_job(world, "sleep 0.3"))
    assert res["state"] == "COMPLETED"
    assert 0.29 <= res["end_time"] - res["start_time"] < 0.6


def test_timeout(world):
    jobdir = make_job(world, "sleep 30", time_limit=1, kill_grace=1)
    t0 = time.monotonic()
    res = run_job(jobdir)
    assert time.monotonic() - t0 < 3.0
    assert res["state"] == "TIMEOUT" and res["signal"] == signal.SIGTERM


def test_cancel_kills_the_job_and_its_children(world):
    body = f"sleep 30 &\necho $! > {world}/sleep.pid\necho started\nwait"
    jobdir = make_job(world, body, kill_grace=5)
    proc = start(jobdir)
    wait_for(lambda: (world / "sleep.pid").exists() and
             (world / "sleep.pid").read_text().strip(), what="job start")
    pid = read_pidfile(jobdir)["pid"]
    sleep_pid = int((world / "sleep.pid").read_text())
    assert os.getsid(pid) == pid and os.getpgid(sleep_pid) == pid
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    res = finish(proc, jobdir)
    assert time.monotonic() - t0 < 2.0                # no need for the 5 s grace
    assert res["state"] == "CANCELLED"
    assert gone(pid) and gone(sleep_pid)


def test_cancel_sigkills_after_grace(world):
    body = f"trap '' TERM\necho ready > {world}/ready\nsleep 30\nexit 0"
    jobdir = make_job(world, body, kill_grace=1)
    proc = start(jobdir)
    wait_for(lambda: (world / "ready").exists(), what="job start")
    pid = read_pidfile(jobdir)["pid"]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    res = finish(proc, jobdir)
    assert 0.9 <= time.monotonic() - t0 < 2.5
    assert (res["state"], res["signal"]) == ("CANCELLED", signal.SIGKILL)
    assert gone(pid)


def test_leftover_background_processes_are_killed(world):
    body = f"sleep 30 &\necho $! > {world}/bg.pid\nsetsid sleep 31 &\necho $! > {world}/bg2.pid\nexit 0"
    res = run_job(make_job(world, body))
    assert res["state"] == "COMPLETED"
    for name in ("bg.pid", "bg2.pid"):
        assert gone(int((world / name).read_text())), name


def test_patterns_end_to_end(world):
    jobdir = make_job(world, "echo out; echo err >&2", name="my job",
                      output="o-%j-%x-%u-%N-%4j-%%.txt", error="e\\-%j.txt")
    res = run_job(jobdir)
    assert res["state"] == "COMPLETED"
    user = pwd.getpwuid(os.getuid()).pw_name
    assert (world / "work" / f"o-42-my job-{user}-node7-0042-%.txt").read_text() == "out\n"
    assert (world / "work" / "e-%j.txt").read_text() == "err\n"


def test_distinct_output_and_error_absolute_truncated_or_appended(world):
    out, err = world / "abs-out.txt", world / "abs-err.txt"
    out.write_text("before\n")
    err.write_text("before\n")
    jobdir = make_job(world, "echo to-out; echo to-err >&2", output=str(out), error=str(err))
    assert run_job(jobdir)["state"] == "COMPLETED"
    assert out.read_text() == "to-out\n"          # truncated, as Slurm does by default
    assert err.read_text() == "to-err\n"
    shutil.rmtree(jobdir)
    jobdir = make_job(world, "echo again", output=str(out), error=str(err),
                      control={"signal": None, "open_mode": "append"})
    assert run_job(jobdir)["state"] == "COMPLETED"
    assert out.read_text() == "to-out\nagain\n"
    assert err.read_text() == "to-err\n"


def test_same_file_for_output_and_error(world):
    jobdir = make_job(world, "echo a; echo b >&2; echo c", output="x/%j.log", error="./x/%j.log")
    assert run_job(jobdir)["state"] == "COMPLETED"
    assert (world / "work" / "x" / "42.log").read_text() == "a\nb\nc\n"


def test_output_directory_created(world):
    jobdir = make_job(world, "echo deep", output="logs/%j/deeper/out.txt")
    assert run_job(jobdir)["state"] == "COMPLETED"
    assert (world / "work" / "logs" / "42" / "deeper" / "out.txt").read_text() == "deep\n"


def test_output_under_a_regular_file_fails_with_reason(world):
    (world / "work").mkdir()
    (world / "work" / "plain").write_text("")
    res = run_job(make_job(world, "echo never", output="plain/out.txt"))
    assert (res["state"], res["exit_code"]) == ("FAILED", 1)
    assert "plain/out.txt" in res["reason"] and "Not a directory" in res["reason"]


def test_unwritable_output_fails_with_reason(world, test_user):
    locked = world / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    extra = {}
    if IS_ROOT:                                  # root ignores modes: run as the test user
        extra = dict(uid=test_user.pw_uid, gid=test_user.pw_gid, groups=[test_user.pw_gid],
                     user=test_user.pw_name)
    target = locked / "out.txt"
    jobdir = make_job(world, "echo never", output=str(target), **extra)
    os.chmod(world / "script.sh", 0o755)
    os.chmod(world / "work", 0o777)
    res = run_job(jobdir)
    assert (res["state"], res["exit_code"], res["signal"]) == ("FAILED", 1, 0)
    assert res["reason"] == f"cannot open output file {target}: Permission denied"
    assert not target.exists()


def test_bad_workdir(world):
    res = run_job(make_job(world, "echo never", workdir=str(world / "nope")))
    assert res["state"] == "FAILED"
    assert res["reason"].startswith(f"cannot chdir to {world / 'nope'}: ")


def test_the_job_starts_with_default_signals_whatever_its_supervisor_had(world):
    """Signals the supervisor catches (SIGTERM, SIGCHLD), Python ignores (SIGPIPE) and
    its own parent ignored (SIGHUP, SIGUSR2, as a nohup'ed rmsd would pass on) are all
    back to their defaults in the job, and none is blocked."""
    out = world / "sigs.txt"
    jobdir = make_job(world, f"grep -E '^Sig(Ign|Blk)' /proc/self/status > {out}")

    def ignore_some():
        for sig in (signal.SIGHUP, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_IGN)
    proc = subprocess.Popen([sys.executable, "-m", "rmsbatch.node.supervisor", str(jobdir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=ignore_some)
    assert finish(proc, jobdir)["state"] == "COMPLETED"
    masks = dict(line.split(":") for line in out.read_text().split("\n") if line)
    assert {k: int(v, 16) for k, v in masks.items()} == {"SigIgn": 0, "SigBlk": 0}


def test_script_not_executable(world):
    jobdir = make_job(world, "echo never")
    (world / "script.sh").chmod(0o644)
    res = run_job(jobdir)
    assert res["state"] == "FAILED" and "cannot execute" in res["reason"]


def test_environment_argv_and_workdir(world):
    # LC_ALL set: otherwise the job's python adds LC_CTYPE itself (PEP 538)
    env = {"PATH": "/usr/bin:/bin", "RMS_JOB_ID": "42", "WITH SPACE": "a b\nc", "EMPTY": "",
           "LC_ALL": "C.UTF-8"}
    body = ("import json, os, sys\n"
            "json.dump({'env': dict(os.environ), 'argv': sys.argv[1:], 'cwd': os.getcwd(),"
            " 'stdin': sys.stdin.read(), 'pid': os.getpid()}, sys.stdout)")
    jobdir = make_job(world, body, shebang=f"#!{sys.executable}", environment=env,
                      argv=["one", "two words", ""], output=str(world / "env.json"))
    assert run_job(jobdir)["state"] == "COMPLETED"
    seen = json.loads((world / "env.json").read_text())
    # the job's own pid, set by the job's process itself just before exec, as Slurm does
    assert seen["env"].pop("SLURM_TASK_PID") == seen["env"].pop("RMS_TASK_PID") == str(seen["pid"])
    assert seen["env"] == env
    assert seen["argv"] == ["one", "two words", ""]
    assert seen["cwd"] == str(world / "work")
    assert seen["stdin"] == ""


def test_notify_socket(world):
    path = str(world / "rmsd.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(10)
    try:
        proc = start(make_job(world, "exit 0", job_id=77, notify_socket=path))
        conn, _ = srv.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(1024)
                if not chunk:
                    break
                data += chunk
        assert json.loads(data) == {"op": "ended", "job_id": 77}
        assert data == b'{"op": "ended", "job_id": 77}\n'
        res = finish(proc, world / "jobdir")
        assert res["state"] == "COMPLETED"
    finally:
        srv.close()


def test_notify_socket_missing_is_ignored(world):
    res = run_job(make_job(world, "exit 0", notify_socket=str(world / "nobody.sock")))
    assert res["state"] == "COMPLETED"


def test_malformed_job_json(tmp_path):
    jobdir = tmp_path / "job55"
    jobdir.mkdir()
    (jobdir / "job.json").write_text("{not json")
    res = run_job(jobdir)
    assert res["state"] == "FAILED" and res["job_id"] == 55
    assert "job.json" in res["reason"]
    assert "job.json" in (jobdir / "supervisor.log").read_text()


def test_missing_job_json_and_bad_keys(tmp_path):
    jobdir = tmp_path / "job56"
    jobdir.mkdir()
    res = run_job(jobdir)
    assert res["state"] == "FAILED" and "job.json" in res["reason"]
    (jobdir / "outcome.json").unlink()
    (jobdir / "job.json").write_text(json.dumps({"job_id": 56, "uid": "root"}))
    res = run_job(jobdir)
    assert res["state"] == "FAILED" and "'uid'" in res["reason"]


# --------------------------------------------------------------------------
# as root: dropping privileges

@pytest.fixture(scope="module")
def test_user():
    if not IS_ROOT:
        return pwd.getpwuid(os.getuid())
    for cmd in (["groupadd", "--system", TEST_GROUP],
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 TEST_USER]):
        name = cmd[-1]
        exists = (grp.getgrnam if cmd[0] == "groupadd" else pwd.getpwnam)
        try:
            exists(name)
        except KeyError:
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"{' '.join(cmd)} failed: {r.stderr.strip()}")
    return pwd.getpwnam(TEST_USER)


@needs_root
@pytest.mark.root
def test_runs_as_the_user_with_groups(world, test_user):
    extra_gid = grp.getgrnam(TEST_GROUP).gr_gid
    body = "id -u; id -g; id -G; touch made-here"
    jobdir = make_job(world, body, uid=test_user.pw_uid, gid=test_user.pw_gid,
                      groups=[test_user.pw_gid, extra_gid], user=TEST_USER,
                      output="logs/%u-%j.out")
    os.chmod(world / "work", 0o777)
    res = run_job(jobdir)
    assert res["state"] == "COMPLETED", res
    out = world / "work" / "logs" / f"{TEST_USER}-42.out"
    uid, gid, groups = out.read_text().splitlines()
    assert int(uid) == test_user.pw_uid and int(gid) == test_user.pw_gid
    assert {int(g) for g in groups.split()} == {test_user.pw_gid, extra_gid}
    assert out.stat().st_uid == test_user.pw_uid                  # opened as the user
    assert (world / "work" / "logs").stat().st_uid == test_user.pw_uid   # created as the user
    assert (world / "work" / "made-here").stat().st_uid == test_user.pw_uid
    assert (jobdir / "outcome.json").stat().st_uid == 0


@needs_root
@pytest.mark.root
def test_user_cannot_use_roots_workdir(world, test_user, tmp_path):
    private = tmp_path / "private"                  # under pytest's 0700 root-owned dir
    private.mkdir()
    jobdir = make_job(world, "echo never", uid=test_user.pw_uid, gid=test_user.pw_gid,
                      groups=[test_user.pw_gid], user=TEST_USER, workdir=str(private))
    res = run_job(jobdir)
    assert res["state"] == "FAILED"
    assert res["reason"] == f"cannot chdir to {private}: Permission denied"
