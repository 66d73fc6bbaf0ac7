"""Fixtures that start real single-host clusters and drive them through the
installed commands, as a user would."""
from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.geteuid() == 0
BIN = os.path.dirname(sys.executable)


def command_path(name: str) -> str:
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else (shutil.which(name) or name)


# The installed rsub, rq and rcancel run in forks of their user's command server (see
# rmsbatch/cli/cmdserver.py). The suite's servers keep their sockets in directories of
# this run, one per user (as a user's own would be), and are stopped at its end.
CMDSERVER_BASE = f"/tmp/rmscmd-test-{os.getpid()}"


def cmdserver_dir(uid: int) -> str:
    """This run's socket directory for `uid`: private to that user, made once."""
    path = f"{CMDSERVER_BASE}-{uid}"
    if not os.path.isdir(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
        if uid != os.getuid():
            os.chown(path, uid, -1)
    return path


def stop_cmdservers() -> None:
    for lock in glob.glob(f"{CMDSERVER_BASE}-*/*.lock"):
        with contextlib.suppress(OSError, ValueError):
            with open(lock) as f:
                os.kill(int(f.read().split()[0]), signal.SIGTERM)
    for path in glob.glob(f"{CMDSERVER_BASE}-*"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _cmdservers():
    os.environ["RMS_CMDSERVER_DIR"] = cmdserver_dir(os.getuid())
    yield
    stop_cmdservers()


def make_traversable(path: str) -> None:
    """Let other users reach `path` (the interpreter may live under /root on CI
    machines): add only the search bit on the directories above it."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(2, len(parts)):
        d = os.sep.join(parts[:i])
        mode = os.stat(d).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(d, mode | stat.S_IXOTH)


def wait_for(pred, timeout: float = 5.0, what: str = "condition"):
    """The predicate's first true value, polled; AssertionError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ensure_user(name: str, groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
    """The user, created if missing, and in `groups` whether it was created now or by
    an earlier run (which may have been interrupted before it added the groups)."""
    for g in groups:
        subprocess.run(["groupadd", "-f", g], check=True)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        cmd = ["useradd", "--create-home", "--shell", "/bin/bash", name]
        if groups:
            cmd[1:1] = ["-G", ",".join(groups)]
        subprocess.run(cmd, check=True, capture_output=True)
        pw = pwd.getpwnam(name)
    import grp
    member_of = {grp.getgrgid(g).gr_name for g in os.getgrouplist(name, pw.pw_gid)}
    missing = [g for g in groups if g not in member_of]
    if missing:
        subprocess.run(["usermod", "-a", "-G", ",".join(missing), name], check=True,
                       capture_output=True)
    return pw


class Cluster:
    """A running single-host cluster in its own directory."""

    def __init__(self, directory: str, gpus: int = 4):
        self.dir = directory
        self.gpus = gpus
        self.env = dict(os.environ, RMS_CONF_DIR=directory, PYTHONUNBUFFERED="1")
        self.env.pop("RMS_DEBUG", None)
        self.work = os.path.join(directory, "work")
        os.makedirs(self.work, exist_ok=True)
        os.chmod(self.work, 0o1777)

    # -- commands ------------------------------------------------------------
    def run(self, *args, user: str | None = None, input: str | bytes | None = None,
            cwd: str | None = None, check: bool = False, timeout: float = 60,
            env: dict | None = None) -> subprocess.CompletedProcess:
        argv = [command_path(args[0]), *args[1:]]
        run_env = dict(self.env, **(env or {}))
        if user is not None:
            pw = pwd.getpwnam(user)
            run_env.update(HOME=pw.pw_dir, USER=user, LOGNAME=user)
            if "RMS_CMDSERVER_DIR" not in (env or {}):
                run_env["RMS_CMDSERVER_DIR"] = cmdserver_dir(pw.pw_uid)
            argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                    "--init-groups", "--", *argv]
        result = subprocess.run(argv, input=input, capture_output=True, cwd=cwd or self.work,
                                env=run_env, timeout=timeout,
                                text=not isinstance(input, bytes))
        if check and result.returncode != 0:
            raise AssertionError(f"{args} exited {result.returncode}: {result.stderr}")
        return result

    def submit(self, *args, **kw) -> int:
        result = self.run("rsub", "--parsable", *args, **kw)
        assert result.returncode == 0, result.stderr
        return int(result.stdout.strip())

    def job(self, job_id: int) -> dict:
        result = self.run("rcontrol", "show", "job", str(job_id), "--json")
        if result.returncode == 0:
            return json.loads(result.stdout)["jobs"][0]
        # fall back to the API directly (rcontrol's --json is a convenience)
        return self.api("jobs", ids=[job_id])["jobs"][0]

    def api(self, op: str, **fields) -> dict:
        from rmsbatch.net.client import Client, socket_path
        with Client(socket_path(self.dir)) as c:
            return c.call(op, **fields)

    def wait_state(self, job_id: int, states, timeout: float = 30) -> dict:
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.time() + timeout
        while True:
            job = self.api("jobs", ids=[job_id])["jobs"][0]
            if job["state"] in states:
                return job
            if time.time() > deadline:
                raise AssertionError(f"job {job_id} is {job['state']}, not {states} after {timeout}s")
            time.sleep(0.05)

    def wait_launched(self, job_id: int, timeout: float = 30) -> dict:
        """RUNNING, and its supervisor started on its (first) node: the controller says
        RUNNING when it decides, before the node has the job, so a test that then stops
        or kills rmsd must wait for this, or may stop the launch itself."""
        job = self.wait_state(job_id, "RUNNING", timeout)
        pattern = os.path.join(self.dir, "state", "*", "jobs",
                               f"{job_id}.{job['restart_count']}", "pid")
        wait_for(lambda: glob.glob(pattern), timeout, f"job {job_id}'s supervisor")
        return job

    def wait_ended(self, job_id: int, timeout: float = 30) -> dict:
        return self.wait_state(job_id, ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                        "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"], timeout)

    # -- daemons -------------------------------------------------------------
    def up(self, *extra) -> subprocess.CompletedProcess:
        return self.run("rms-local", "up", "--dir", self.dir, "--gpus", str(self.gpus), *extra,
                        check=True)

    def down(self) -> None:
        self.run("rms-local", "down", "--dir", self.dir)

    def pid(self, daemon: str) -> int | None:
        name = "rmsctld.pid" if daemon == "rmsctld" else f"rmsd-{self.node}.pid"
        try:
            with open(os.path.join(self.dir, "run", name)) as fh:
                return int(fh.read())
        except (OSError, ValueError):
            return None

    def kill9(self, daemon: str) -> None:
        pid = self.pid(daemon)
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 5
        while time.time() < deadline:
            try:
                with open(f"/proc/{pid}/stat") as fh:
                    if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
            except OSError:
                break
            time.sleep(0.02)

    @property
    def node(self) -> str:
        return self.api("nodes")["nodes"][0]["name"]

    def output(self, job_id: int) -> str:
        """The job's default output file (rms-ID.out in the work directory)."""
        with open(os.path.join(self.work, f"rms-{job_id}.out")) as fh:
            return fh.read()

    def rmsd_pid(self, node: str) -> int | None:
        try:
            with open(os.path.join(self.dir, "run", f"rmsd-{node}.pid")) as fh:
                return int(fh.read())
        except (OSError, ValueError):
            return None

    def start_rmsd(self, node: str) -> None:
        """One more node daemon on this host (INSTALL's "several nodes on one host")."""
        log = open(os.path.join(self.dir, "log", f"rmsd-{node}.log.stderr"), "ab")
        subprocess.Popen([command_path("rmsd"), "--conf-dir", self.dir, "-N", node],
                         env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                         start_new_session=True)
        wait_for(lambda: self.node_record(node).get("connected"), 20, f"node {node}")

    def start_rmsctld(self) -> subprocess.Popen:
        """rmsctld alone, without rms-local's node daemon (the nodes are elsewhere: a
        network namespace, a fleet); the caller stops it (its own session)."""
        with open(os.path.join(self.dir, "log", "rmsctld.log.stderr"), "ab") as log:
            proc = subprocess.Popen([command_path("rmsctld"), "--conf-dir", self.dir],
                                    env=self.env, stdout=log, stderr=log,
                                    start_new_session=True)
        wait_for(lambda: os.path.exists(os.path.join(self.dir, "run", "rmsctld.sock")), 20,
                 "rmsctld")
        return proc

    def node_record(self, name: str) -> dict:
        return next((n for n in self.api("nodes")["nodes"] if n["name"] == name), {})

    def fast(self, **timings) -> None:
        """Short heartbeats, timeouts and leases, so failures show within seconds."""
        values = {"heartbeat_interval": 0.5, "node_timeout": 2, "node_fail_timeout": 4,
                  "job_lease": 2, "lease_margin": 1, **timings}
        self.tweak("heartbeat_interval = 2\nnode_timeout = 10",
                   "\n".join(f"{k} = {v}" for k, v in values.items()))

    def set_nodes(self, names: str) -> None:
        """Declare these nodes (a hostlist) instead of the one rms-local wrote."""
        import re
        path = os.path.join(self.dir, "cluster.toml")
        with open(path) as fh:
            text = fh.read()
        text = re.sub(r'(\[\[nodes\]\]\nnames = )"[^"]*"', f'\\1"{names}"', text, count=1)
        with open(path, "w") as fh:
            fh.write(text)

    def tweak(self, old: str, new: str) -> None:
        path = os.path.join(self.dir, "cluster.toml")
        with open(path) as fh:
            text = fh.read()
        assert old in text, old
        with open(path, "w") as fh:
            fh.write(text.replace(old, new))


def cluster_toml(name: str, nodes: str, **node_daemon) -> str:
    """A cluster.toml for tests that write their own nodes: rms-local's layout of run,
    log, spool and state directories, quick heartbeats, and `node_daemon` keys added."""
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in node_daemon.items())
    return f"""name = "{name}"
[controller]
socket = "run/rmsctld.sock"
spool_dir = "spool"
log_file = "log/rmsctld.log"
pid_file = "run/rmsctld.pid"
heartbeat_interval = 1
node_timeout = 10
kill_grace = 2

[node_daemon]
state_dir = "state"
log_file = "log/rmsd-%n.log"
pid_file = "run/rmsd-%n.pid"
{extra}
{nodes}
[[partitions]]
name = "main"
nodes = "ALL"
default = true
"""


LAB_TENANTS = ('admins = ["root"]\nprivate_accounting = false\n[[accounts]]\nname = "lab"\n'
               'users = ["*"]\n')
NORMAL_QOS = 'default = "normal"\n[[qos]]\nname = "normal"\n'


@contextlib.contextmanager
def user_cluster(user: pwd.struct_passwd, label: str):
    """A cluster directory owned by an ordinary user (single-user mode once that user
    runs `rms-local up` in it); stopped by that user and removed at the end."""
    directory = f"/tmp/rms-test-{label}-{os.getpid()}"
    subprocess.run(["rm", "-rf", directory])
    os.makedirs(directory)
    os.chown(directory, user.pw_uid, user.pw_gid)
    c = Cluster(directory, gpus=0)
    try:
        yield c
    finally:
        c.run("rms-local", "down", "--dir", directory, user=user.pw_name)
        subprocess.run(["rm", "-rf", directory])


def _new_cluster_dir() -> str:
    directory = tempfile.mkdtemp(prefix="rms-test-", dir="/tmp")
    os.chmod(directory, 0o755)
    return directory


@pytest.fixture
def new_cluster():
    """Factory: clusters this test owns and may break; all stopped at the end."""
    made = []

    def make(gpus: int = 4, start: bool = True, before_start=None) -> Cluster:
        c = Cluster(_new_cluster_dir(), gpus)
        made.append(c)
        if before_start:
            c.run("rms-local", "up", "--dir", c.dir, "--gpus", str(gpus), check=True)
            c.down()
            before_start(c)
        if start:
            c.up()
        return c

    yield make
    for c in made:
        c.down()
        _kill_leftovers(c.dir)
        shutil.rmtree(c.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """A cluster shared by the tests of one module (they must not break it)."""
    c = Cluster(_new_cluster_dir(), 4)
    c.up()
    yield c
    c.down()
    _kill_leftovers(c.dir)
    shutil.rmtree(c.dir, ignore_errors=True)


def pids_matching(test) -> list[int]:
    """Pids of the processes whose command line (bytes) passes `test`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if test(cmd):
            found.append(int(pid))
    return found


def daemons_of(directory: str) -> list[int]:
    """Pids of the rmsctld and rmsd processes started for a cluster directory."""
    return pids_matching(lambda cmd: directory.encode() in cmd
                         and (b"rmsctld" in cmd or b"rmsd" in cmd))


def _kill_leftovers(directory: str) -> None:
    """Belt and braces: no daemon of a test cluster outlives its test, and neither do
    the (empty) cgroup parents its nodes made: thousands of them, left by earlier
    runs, slow down every cpuset change on the host."""
    for pid in daemons_of(directory):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    # Supervisors (and the spawner's workers) of runs a test left behind, and their
    # jobs: whatever holds a file of the cluster's directory open, or sits in one of
    # its job cgroups.
    from rmsbatch.node.isolation import cgroup_parent
    state = os.path.join(directory, "state")
    nodes = os.listdir(state) if os.path.isdir(state) else []
    suffixes = {cgroup_parent("x", "x", os.path.join(state, n)).rsplit("_", 1)[1] for n in nodes}
    parents = [os.path.join(top, parent)
               for top in glob.glob("/sys/fs/cgroup/*/rmsbatch") + glob.glob("/sys/fs/cgroup/rmsbatch")
               for parent in os.listdir(top) if parent.rsplit("_", 1)[-1] in suffixes]
    victims = set(_holding(directory + "/"))
    for path in parents:
        for procs in glob.glob(os.path.join(path, "*", "cgroup.procs")):
            with contextlib.suppress(OSError), open(procs) as fh:
                victims.update(int(pid) for pid in fh.read().split())
    for pid in victims - {os.getpid()}:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + 2
    for path in parents:
        for child in glob.glob(os.path.join(path, "*/")):
            while True:
                try:
                    os.rmdir(child)
                    break
                except OSError:     # its processes are still dying, or not ours to remove
                    if time.time() > deadline:
                        break
                    time.sleep(0.01)
        _rmdir_quietly(path)


def _holding(prefix: str):
    """Pids of processes with a file under PREFIX open."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                    yield int(pid)
                    break
            except OSError:
                continue


def _rmdir_quietly(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass        # not empty (a job still in it), or not ours to remove


@pytest.fixture(scope="session")
def users():
    """Two real Unix users (created when root), able to run our commands."""
    if not ROOT:
        pytest.skip("creating users needs root")
    make_traversable(sys.executable)
    make_traversable(os.path.realpath(sys.executable))
    import rmsbatch
    make_traversable(os.path.dirname(rmsbatch.__file__))
    alice = ensure_user("rmsalice", ("rmsteam",))
    bob = ensure_user("rmsbob")
    return alice, bob


# -- rmsctld's Controller object on a real spool, without daemons or sockets ------------------
class Clock:
    """A clock the test moves by hand (`clock.now += 600`)."""

    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def fake_conn(uid: int = 0, gid: int = 0):
    """A connection as the controller sees one: just the peer's credentials."""
    from rmsbatch.net.loop import Conn
    conn = Conn.__new__(Conn)
    conn.uid, conn.gid, conn.pid = uid, gid, 1
    conn.meta, conn.closed, conn.outbuf, conn.listener = {}, False, bytearray(), "api"
    return conn


def controller_on_spool(directory, cluster: str | None = None, tenants: str | None = None,
                        qos: str | None = None, clock=None):
    """A Controller on a real spool under `directory`, configured by these texts (None:
    keep the file already there, as after a restart). What it would send stays on the
    connection it is for (`conn.meta["sent"]`)."""
    from rmsbatch import config as configmod
    from rmsbatch.ctld.service import Controller
    from rmsbatch.ctld.spool import Spool
    for name, text in (("cluster.toml", cluster), ("tenants.toml", tenants), ("qos.toml", qos)):
        if text is not None:
            with open(os.path.join(str(directory), name), "w") as fh:
                fh.write(text)
    cfg = configmod.load(str(directory))
    ctl = Controller(cfg, Spool(cfg.spool_dir), clock=clock or time.time)
    ctl.loop.send = lambda conn, msg: conn.meta.setdefault("sent", []).append(msg)
    ctl.loop.close = lambda conn: setattr(conn, "closed", True)
    return ctl
