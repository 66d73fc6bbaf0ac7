"""The job's process started two ways: by vfork in the C module rmsbatch.node._spawn
(the default where it was built), and by os.fork() and jobprocess.run_child
(RMSBATCH_JOB_FORK=1, and wherever no C compiler built the module). A probe job looks
at everything its process was given (identity, groups, cgroups, session, signals,
descriptors, limits, umask, directory, environment) and both ways must show the same;
failures of the setup must read the same too."""
from __future__ import annotations

import glob
import grp
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from test_supervisor import (IS_ROOT, TEST_GROUP, finish, make_job, needs_root,
                             test_user, world)  # noqa: F401 - fixtures

PROBE = r"""
echo "ids $(id -u) $(id -g) $(id -G | tr ' ' '\n' | sort -n | tr '\n' ' ')"
echo "umask $(umask)"
echo "cwd $(pwd)"
echo "session $([ "$(cut -d' ' -f6 /proc/$$/stat)" = "$$" ] && echo leader)"
echo "taskpid $([ "$SLURM_TASK_PID" = "$$" ] && [ "$RMS_TASK_PID" = "$$" ] && echo ok)"
grep -E '^Sig(Ign|Blk)' /proc/$$/status
echo "fds $(ls /proc/$$/fd | sort -n | tr '\n' ' ')"
echo "limits n=$(ulimit -n) c=$(ulimit -c) s=$(ulimit -s)"
echo "cgroups"; sed 's/[0-9]*$//' /proc/$$/cgroup | sort
echo "env"; tr '\0\n' '\n|' < /proc/$$/environ | grep -v -E '^(SLURM|RMS)_TASK_PID=' | sort
echo "stdin $(cat)"
"""


def run(jobdir, fork: bool, ignore=()) -> dict:
    env = dict(os.environ)
    env.pop("RMSBATCH_JOB_FORK", None)
    if fork:
        env["RMSBATCH_JOB_FORK"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "rmsbatch.node.supervisor", str(jobdir)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=env)
    return finish(proc, jobdir)


def both(world, body: str = PROBE, **job) -> tuple[dict, dict, str, str]:
    """The probe's outcome and output, started by vfork and then by fork."""
    results = []
    for fork in (False, True):
        target = world / f"probe-{fork}.out"
        if target.exists():
            target.unlink()
        jobdir = make_job(world, body, output=str(target), **job)
        (world / "jobdir" / "outcome.json").unlink(missing_ok=True)
        outcome = run(jobdir, fork)
        text = target.read_text() if target.exists() else ""
        results.append((outcome, text.replace(f"probe-{fork}", "probe-X")))
    (vo, vtext), (fo, ftext) = results
    return vo, fo, vtext, ftext


def spawn_module_built() -> bool:
    try:
        import rmsbatch.node._spawn  # noqa: F401
    except ImportError:
        return False
    return True


def test_the_c_module_is_built_where_a_compiler_is():
    """An install with a C compiler builds it; without one the jobs still start (fork),
    and this test says why they are slower."""
    compiler = sysconfig.get_config_var("CC") or "cc"
    if not shutil.which(compiler.split()[0]):
        pytest.skip(f"no C compiler ({compiler}): jobs start by fork")
    assert spawn_module_built(), "rmsbatch.node._spawn was not built: see pip's output"


needs_module = pytest.mark.skipif(not spawn_module_built(), reason="_spawn not built")


@needs_module
def test_a_job_started_by_vfork_is_given_what_a_forked_one_is(world):
    vo, fo, vtext, ftext = both(
        world, umask=0o027, rlimits={"NOFILE": [512, 4096], "CORE": [0, -1]},
        environment={"PATH": "/usr/bin:/bin", "WITH SPACE": "a b\nc", "EMPTY": "",
                     "BASH_FUNC_m%%": "() {  echo m\n}", "SLURM_TASK_PID": "stale"})
    assert vo["state"] == fo["state"] == "COMPLETED", (vo, fo)
    assert vtext == ftext
    assert "taskpid ok" in vtext and "SigIgn:\t0000000000000000" in vtext
    assert "WITH SPACE=a b|c" in vtext and "BASH_FUNC_m%%=() {  echo m|}" in vtext
    assert "umask 0027" in vtext and "limits n=512 c=0" in vtext
    assert "session leader" in vtext                     # of a session of its own
    assert vtext.split("fds ")[1].split()[:3] == ["0", "1", "2"]


@needs_module
@needs_root
@pytest.mark.root
def test_as_another_user_inside_its_cgroup_both_ways_alike(world, test_user):
    extra = grp.getgrnam(TEST_GROUP).gr_gid
    parent = f"rmsbatch-test-spawn-{os.getpid()}"
    try:
        vo, fo, vtext, ftext = both(
            world, uid=test_user.pw_uid, gid=test_user.pw_gid,
            groups=[test_user.pw_gid, extra], user=test_user.pw_name,
            isolation={"mode": "auto", "cgroup_parent": parent, "mem_bytes": 256 << 20,
                       "pids_max": 64})
    finally:
        for top in glob.glob(f"/sys/fs/cgroup/*/{parent}") + glob.glob(f"/sys/fs/cgroup/{parent}"):
            os.rmdir(top)
    assert vo["state"] == fo["state"] == "COMPLETED", (vo, fo)
    assert vtext == ftext
    ids = next(line for line in vtext.splitlines() if line.startswith("ids")).split()
    assert ids[1:] == [str(test_user.pw_uid), str(test_user.pw_gid),
                       *sorted({str(test_user.pw_gid), str(extra)}, key=int)]
    cgroups = vtext.split("cgroups\n")[1].split("env\n")[0]
    assert f"/{parent}/" in cgroups                     # born inside its own cgroup
    assert (world / "probe-False.out").stat().st_uid == test_user.pw_uid


@needs_module
def test_setup_failures_read_the_same_both_ways(world, tmp_path):
    cases = {
        "chdir": dict(workdir=str(world / "nope")),
        "output": dict(output=str(world / "file" / "sub" / "out")),
        "exec": dict(shebang="#!/nonexistent/interpreter"),
    }
    (world / "file").write_text("not a directory")
    for name, job in cases.items():
        reasons = []
        for fork in (False, True):
            jobdir = make_job(world, "echo never", **job)
            (world / "jobdir" / "outcome.json").unlink(missing_ok=True)
            outcome = run(jobdir, fork)
            assert outcome["state"] == "FAILED", (name, fork, outcome)
            reasons.append(outcome["reason"])
        assert reasons[0] == reasons[1], name
        assert "Traceback" not in reasons[0]


@needs_root
def test_with_debug_dumps_allowed_jobs_of_users_start_by_fork(monkeypatch, world):
    """suid_dumpable=1 would let a user trace the vfork child while it shares root's
    memory: then the job's process is forked (run_child) instead."""
    from rmsbatch.node import jobprocess
    from rmsbatch.node.jobfile import load_job
    from rmsbatch.node.isolation import Isolation
    job = load_job(str(make_job(world, "true") / "job.json"))
    iso = Isolation(job.job_id, "x", None)
    args = (job, "/tmp/o", "/tmp/o", 99, iso, [])
    monkeypatch.setattr(jobprocess, "_suid_dumpable", lambda: "0")
    assert jobprocess._spawn_args(*args) is not None
    monkeypatch.setattr(jobprocess, "_suid_dumpable", lambda: "1")
    assert jobprocess._spawn_args(*args) is None


@needs_module
def test_an_output_fifo_nobody_reads_fails_the_job_at_once_both_ways(world):
    """vfork holds the supervisor until the child's exec: an output open that waited for
    a FIFO's reader would leave the job where no cancel or time limit reaches it. Both
    ways fail such a job at once, alike; with a reader there, the job runs."""
    fifo = world / "out.fifo"
    os.mkfifo(fifo)
    reasons = []
    for fork in (False, True):
        jobdir = make_job(world, "echo through", output=str(fifo))
        (world / "jobdir" / "outcome.json").unlink(missing_ok=True)
        outcome = run(jobdir, fork)
        assert outcome["state"] == "FAILED", outcome
        reasons.append(outcome["reason"])
    assert reasons[0] == reasons[1] == f"cannot open output file {fifo}: No such device or address"
    for fork in (False, True):
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        try:
            jobdir = make_job(world, "echo through", output=str(fifo))
            (world / "jobdir" / "outcome.json").unlink(missing_ok=True)
            assert run(jobdir, fork)["state"] == "COMPLETED"
            assert os.read(reader, 100) == b"through\n"
        finally:
            os.close(reader)
