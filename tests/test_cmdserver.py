"""The command server, with the installed rsub, rq and rcancel (the small C programs),
real servers, real users, real signals and real limits: a call served by a fork of the
server says, exits and submits what the same call does without it; the caller's
environment, directory and limits reach the job; signals reach the command; a killed
caller takes its command along; a killed or outdated server costs no call; another
user's directory or server is never used."""
from __future__ import annotations

import glob
import os
import resource
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, command_path, wait_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fast_client_installed() -> bool:
    with open(command_path("rsub"), "rb") as fh:
        return fh.read(4) == b"\x7fELF"


pytestmark = pytest.mark.skipif(not _fast_client_installed(),
                                reason="rsub is the Python script (no C compiler at install)")


def servers(directory: str) -> list[int]:
    """Pids of the command servers listening with their socket in `directory` (a
    server writes its pid in its lock file once it listens)."""
    found = []
    for lock in glob.glob(os.path.join(directory, "*.lock")):
        try:
            with open(lock) as fh:
                pid = int(fh.read().split()[0])
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if b"--serve" in fh.read():
                    found.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return found


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


class Place:
    """A socket directory of this test and the environment that sends calls there."""

    def __init__(self, cluster, directory: str, uid: int | None = None):
        self.cluster = cluster
        self.dir = directory
        self.log = os.path.join(directory, "server.log")
        self.env = {"RMS_CMDSERVER_DIR": directory, "RMS_CMDSERVER_LOG": self.log}

    def run(self, *args, **kw):
        env = dict(self.env, **kw.pop("env", {}))
        return self.cluster.run(*args, env=env, **kw)

    def start(self, *args) -> subprocess.Popen:
        """A call left running (rsub --wait, say), through this place's server."""
        return subprocess.Popen([command_path(args[0]), *args[1:]],
                                env=dict(self.cluster.env, **self.env), cwd=self.cluster.work,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def warm(self) -> int:
        """Start the server (the first call runs the ordinary way and starts it)."""
        assert self.run("rq", "-h").returncode == 0
        wait_for(lambda: servers(self.dir), 20, "a command server listening")
        return servers(self.dir)[0]

    def served(self) -> list[str]:
        try:
            with open(self.log) as fh:
                return [line.split()[-4] for line in fh if " for pid " in line]
        except FileNotFoundError:
            return []

    def declined(self) -> list[str]:
        try:
            with open(self.log) as fh:
                return [line.split("declined a call: ")[1].strip() for line in fh
                        if "declined a call" in line]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        for pid in servers(self.dir):
            os.kill(pid, signal.SIGTERM)


@pytest.fixture
def place(cluster, tmp_path):
    directory = str(tmp_path / "cmd")
    os.mkdir(directory, 0o700)
    p = Place(cluster, directory)
    yield p
    p.stop()


def test_a_served_call_says_exits_and_submits_what_the_ordinary_one_does(cluster, place):
    server = place.warm()
    script = os.path.join(cluster.work, "served.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\n#RMS --job-name=served   # a name\n#RMS -t 5\necho ran\n")
    calls = [("rsub", "--bogus"), ("rsub", "-t", "5", "--mem=12Q", "--wrap", "true"),
             ("rq", "-j", "999999999"), ("rcancel", "999999999"), ("rq", "--help"),
             ("rsub", "--help"), ("rcancel", "--version")]
    for argv in calls:
        fast = place.run(*argv)
        slow = place.run(*argv, env={"RMS_CMDSERVER": "off"})
        assert (fast.returncode, fast.stdout, fast.stderr) == \
               (slow.returncode, slow.stdout, slow.stderr), argv
    # a relative script path, from the caller's directory; and a script on stdin
    fast = place.run("rsub", "-H", "--parsable", "served.sh")
    piped = place.run("rsub", "-H", "--parsable", input="#!/bin/sh\n#RMS -J piped\ntrue\n")
    assert fast.returncode == 0 and piped.returncode == 0, (fast.stderr, piped.stderr)
    assert cluster.job(int(fast.stdout))["name"] == "served"
    assert cluster.job(int(fast.stdout))["workdir"] == cluster.work
    assert cluster.job(int(piped.stdout))["name"] == "piped"
    for job in (fast.stdout, piped.stdout):
        cluster.run("rcancel", job.strip(), check=True)
    assert servers(place.dir) == [server]
    served = place.served()
    assert (served.count("rsub"), served.count("rq"), served.count("rcancel")) == (5, 2, 2)
    assert place.declined() == []


def test_the_callers_environment_directory_and_limits_reach_the_job(cluster, place):
    place.warm()
    work = os.path.join(cluster.work, "limits")
    os.makedirs(work, exist_ok=True)

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 400))
        os.umask(0o027)

    env = dict(cluster.env, **place.env, SERVED_VALUE="from the caller")
    result = subprocess.run(
        [command_path("rsub"), "--wait", "-o", "limits.out", "--wrap",
         'echo "$SERVED_VALUE|$(ulimit -n)|$(umask)|$(pwd)"'],
        cwd=work, env=env, preexec_fn=limited, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(os.path.join(work, "limits.out")) as fh:
        assert fh.read().strip() == f"from the caller|200|0027|{work}"
    assert "rsub" in place.served()


def test_signals_reach_the_command_and_a_killed_caller_takes_it_along(cluster, place):
    server = place.warm()
    seen: set[int] = set()
    for sig, want in ((signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM),
                      (signal.SIGKILL, -signal.SIGKILL)):
        caller = place.start("rsub", "--wait", "--wrap", "sleep 60")
        wait_for(lambda: set(children(server)) - seen, 20, "the command forked by the server")
        command = (set(children(server)) - seen).pop()
        seen.add(command)
        time.sleep(0.5)          # rsub is waiting on its job now, not starting up
        caller.send_signal(sig)
        out, err = caller.communicate(timeout=30)
        assert caller.returncode == want, (sig, err)
        wait_for(lambda: gone(command), 15, "the command to end with its caller")
    cluster.run("rcancel", "--me", check=True)
    assert servers(place.dir) == [server]


def test_a_killed_server_costs_no_call_and_is_replaced(cluster, place):
    first = place.warm()
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: gone(first), 10, "the server to die")
    result = place.run("rsub", "-H", "--parsable", "--wrap", "true")
    assert result.returncode == 0, result.stderr
    cluster.run("rcancel", result.stdout.strip(), check=True)
    wait_for(lambda: servers(place.dir), 20, "a new server")
    assert servers(place.dir) != [first]
    before = place.served().count("rq")
    assert place.run("rq", "-h").returncode == 0
    assert place.served().count("rq") == before + 1


def test_a_server_killed_mid_call_still_lets_the_caller_end_as_its_command_did(cluster, place):
    server = place.warm()
    caller = place.start("rsub", "--wait", "--wrap", "sleep 2; exit 3")
    wait_for(lambda: children(server), 20, "the command forked by the server")
    os.kill(server, signal.SIGKILL)
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 3, err          # the job's exit code, as rsub --wait gives


def test_a_stopped_server_lets_running_calls_finish_and_answers_them(cluster, place):
    server = place.warm()
    caller = place.start("rsub", "--wait", "--wrap", "sleep 4; exit 4")
    wait_for(lambda: children(server), 20, "the command forked by the server")
    os.kill(server, signal.SIGTERM)
    wait_for(lambda: not glob.glob(os.path.join(place.dir, "*.sock")), 10,
             "the stopping server to take its socket away")
    time.sleep(1)                           # an exiting server would be gone by now
    assert not gone(server)                 # still there for its running call
    out, err = caller.communicate(timeout=60)
    assert caller.returncode == 4, err
    wait_for(lambda: gone(server), 10, "the server to end after its last call")


def test_a_changed_installation_is_served_by_a_new_server(cluster, place):
    import rmsbatch.cli.rq as rq_module
    old = place.warm()
    st = os.stat(rq_module.__file__)
    os.utime(rq_module.__file__, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        result = place.run("rcancel", "999999999")
        assert result.returncode == 1 and "999999999" in result.stderr
        assert place.declined() == ["installation changed"]
        wait_for(lambda: gone(old), 10, "the outdated server to stop")
        place.run("rq", "-h", check=True)
        wait_for(lambda: servers(place.dir), 20, "a new server")
    finally:
        os.utime(rq_module.__file__, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_many_calls_at_once_each_get_their_own_job(cluster, place):
    place.warm()
    procs = [place.start("rsub", "-H", "--parsable", "--wrap", "true") for _ in range(20)]
    results = [p.communicate(timeout=60) + (p.returncode,) for p in procs]
    assert all(rc == 0 for _, _, rc in results), results
    ids = {int(out) for out, _, _ in results}
    assert len(ids) == 20
    cluster.run("rcancel", *map(str, ids), check=True)


def test_no_server_when_switched_off_or_called_from_a_job(cluster, place):
    off = {"RMS_CMDSERVER": "off"}
    assert place.run("rq", "-h", env=off).returncode == 0
    # the job has the submitter's environment, less the switch: it calls rq as a
    # workflow step would, from inside the job
    job = cluster.submit("--wrap", f"unset RMS_CMDSERVER; {command_path('rq')} -h > /dev/null "
                                   "&& echo listed && sleep 60",
                         env=dict(place.env, **off))
    out = os.path.join(cluster.work, f"rms-{job}.out")
    wait_for(lambda: os.path.exists(out) and "listed" in cluster.output(job), 30,
             "the job's rq")
    # a server started by either would listen well within this (and one started in
    # the job would live in its cgroup until the job ends)
    time.sleep(3)
    assert servers(place.dir) == [] and not glob.glob(os.path.join(place.dir, "*.sock"))
    cluster.run("rcancel", str(job), check=True)


def test_an_idle_server_ends_by_itself(cluster, place):
    place.env["RMS_CMDSERVER_IDLE"] = "1"
    server = place.warm()
    wait_for(lambda: gone(server), 15, "the idle server to end")
    assert not glob.glob(os.path.join(place.dir, "*.sock"))


# -- users --------------------------------------------------------------------------
@pytest.fixture
def shared_tmp():
    """A directory users can reach (pytest's own tmp_path is private to root)."""
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="rmscmd-users-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def user_dir(base: str, pw) -> str:
    path = os.path.join(base, pw.pw_name)
    os.mkdir(path, 0o700)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


@pytest.mark.skipif(not ROOT, reason="needs two real users")
def test_each_user_has_a_server_of_their_own_and_never_uses_anothers(cluster, users, shared_tmp):
    alice, bob = users
    dirs = {pw.pw_name: user_dir(shared_tmp, pw) for pw in (alice, bob)}
    try:
        for name in dirs:
            env = {"RMS_CMDSERVER_DIR": dirs[name]}
            assert cluster.run("rq", "-h", user=name, env=env).returncode == 0
            wait_for(lambda: servers(dirs[name]), 20, f"{name}'s server")
            uid = os.stat(f"/proc/{servers(dirs[name])[0]}").st_uid
            assert uid == (alice if name == "rmsalice" else bob).pw_uid
        # alice pointed at a directory of bob's that anyone may write to (as a squatter
        # would make /tmp/rmsbatch-UID for her): served the ordinary way, nothing of
        # hers made there
        squat = os.path.join(shared_tmp, "squat")
        os.mkdir(squat)
        os.chown(squat, bob.pw_uid, bob.pw_gid)
        os.chmod(squat, 0o777)
        result = cluster.run("rsub", "-H", "--parsable", "--wrap", "true", user="rmsalice",
                             env={"RMS_CMDSERVER_DIR": squat})
        assert result.returncode == 0, result.stderr
        assert cluster.job(int(result.stdout))["user"] == "rmsalice"
        cluster.run("rcancel", result.stdout.strip(), user="rmsalice", check=True)
        time.sleep(1)           # a server started there would have made its files by now
        assert os.listdir(squat) == []
    finally:
        for d in dirs.values():
            for pid in servers(d):
                os.kill(pid, signal.SIGTERM)


@pytest.mark.skipif(not ROOT, reason="needs a real unprivileged user")
def test_a_hard_limit_above_the_users_server_is_not_lost(cluster, users, shared_tmp):
    """A server started under a low hard limit cannot raise a later caller's: it
    declines that call, which then runs the ordinary way with the caller's limit."""
    alice, _ = users
    d = user_dir(shared_tmp, alice)
    log = os.path.join(d, "server.log")
    env = dict(cluster.env, RMS_CMDSERVER_DIR=d, RMS_CMDSERVER_LOG=log, HOME=alice.pw_dir,
               USER="rmsalice", LOGNAME="rmsalice")
    setpriv = ["setpriv", f"--reuid={alice.pw_uid}", f"--regid={alice.pw_gid}",
               "--init-groups", "--"]

    def run(hard, *argv):
        return subprocess.run([*setpriv, command_path(argv[0]), *argv[1:]], env=env,
                              cwd=cluster.work, capture_output=True, text=True, timeout=60,
                              preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE,
                                                                    (hard, hard)))
    try:
        assert run(300, "rq", "-h").returncode == 0
        wait_for(lambda: servers(d), 20, "alice's server")
        result = run(900, "rsub", "--wait", "-o", "alice-limit.out", "--wrap", "ulimit -n")
        assert result.returncode == 0, result.stderr
        with open(os.path.join(cluster.work, "alice-limit.out")) as fh:
            assert fh.read().strip() == "900"
        with open(log) as fh:
            assert "declined a call: a hard limit above the server's" in fh.read()
    finally:
        for pid in servers(d):
            os.kill(pid, signal.SIGTERM)


# -- the install --------------------------------------------------------------------
def test_without_a_c_compiler_the_python_scripts_are_installed(tmp_path):
    out = {}
    for label, cc in (("with", os.environ.get("CC", "cc")), ("without", "false")):
        build = str(tmp_path / label)
        result = subprocess.run([sys.executable, "setup.py", "-q", "build_scripts",
                                 "--build-dir", build], cwd=REPO, capture_output=True,
                                text=True, env=dict(os.environ, CC=cc), timeout=300)
        assert result.returncode == 0, result.stderr
        out[label] = result.stderr
        for name in ("rsub", "rq", "rcancel"):
            with open(os.path.join(build, name), "rb") as fh:
                head = fh.read(4)
            assert head == (b"\x7fELF" if label == "with" else b"#!" + head[2:]), (label, name)
            assert os.access(os.path.join(build, name), os.X_OK)
    assert "could not build the fast rsub" in out["without"]


def test_rms_client_says_what_is_wrong_in_one_line(shared_tmp):
    exe = command_path("rms-client")
    for argv, code, says in (([], 2, "name the command to run"),
                             (["srun"], 2, "srun: name the command to run"),
                             (["--serve", os.path.join(shared_tmp, "s.sock")], 1,
                              "is not private to this user"),
                             (["--serve", "/nonexistent/dir/s.sock"], 1, "cannot serve on")):
        result = subprocess.run([exe, *argv], capture_output=True, text=True, timeout=30)
        assert result.returncode == code, (argv, result.stderr)
        assert result.stderr.count("\n") == 1 and says in result.stderr, result.stderr
