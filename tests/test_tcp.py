"""rmsctld over TCP with MUNGE: commands and a node daemon that are not on the
controller's Unix socket prove who they are with a credential from a real munged; a
replayed, expired, foreign or missing credential is refused with the reason."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, Cluster, _kill_leftovers, _new_cluster_dir, command_path, wait_for
from rmsbatch.net import munge

MUNGED = shutil.which("munged") or "/usr/sbin/munged"
pytestmark = [
    pytest.mark.skipif(not ROOT, reason="munged and test users need root"),
    pytest.mark.skipif(not os.path.exists(MUNGED), reason="munge is not installed"),
]


class Munged:
    """A munged of our own: its key, socket and logs in one directory."""

    def __init__(self, directory: str):
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.socket = os.path.join(directory, "munge.socket")
        key = os.path.join(directory, "munge.key")
        subprocess.run(["mungekey", "--create", "--keyfile", key], check=True)
        self.proc = subprocess.Popen(
            [MUNGED, "-F", f"--socket={self.socket}", f"--key-file={key}",
             f"--log-file={directory}/munged.log", f"--pid-file={directory}/munged.pid",
             f"--seed-file={directory}/munged.seed"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: os.path.exists(self.socket), 10, "munged socket")
        except AssertionError:
            self.stop()
            raise
        os.chmod(directory, 0o755)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def net():
    """A cluster whose rmsctld also listens on TCP, its node daemon connected over TCP,
    and two munged: the cluster's, and one with another key."""
    home = _new_cluster_dir()
    started = []
    try:
        good = Munged(os.path.join(home, "m1"))
        started.append(good)
        other = Munged(os.path.join(home, "m2"))
        started.append(other)
        c = Cluster(os.path.join(home, "c"), gpus=2)
        os.makedirs(c.dir, exist_ok=True)
        c.run("rms-local", "up", "--dir", c.dir, "--gpus", "2", check=True)
        c.down()
        port = free_port()
        path = os.path.join(c.dir, "cluster.toml")
        with open(path) as fh:
            text = fh.read()
        text = text.replace("[controller]\n", f'[controller]\naddress = "127.0.0.1:{port}"\n'
                                              f'munge_socket = "{good.socket}"\n'
                                              "request_timeout = 3\n", 1)
        with open(path, "w") as fh:
            fh.write(text)
        c.address = f"127.0.0.1:{port}"
        c.tcp_env = {"RMS_CONTROLLER": c.address}
        # the node daemon inherits RMS_CONTROLLER: it goes over TCP like a remote node
        c.run("rms-local", "up", "--dir", c.dir, "--gpus", "2", env=c.tcp_env, check=True)
        yield c, good, other, port
    finally:
        if "c" in locals():
            c.down()
            _kill_leftovers(c.dir)
        for m in started:
            m.stop()
        shutil.rmtree(home, ignore_errors=True)


def handshake(port: int, *lines) -> list[dict]:
    """Requests on one TCP connection, each sent once the one before was answered, as
    clients do; the replies until the controller hangs up."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        reader = s.makefile("rb")
        for line in lines:
            try:
                s.sendall(json.dumps(line).encode() + b"\n")
                reply = reader.readline()
            except OSError:
                break
            if not reply:
                break
            replies.append(json.loads(reply))
    return replies


def credential(m: Munged, cluster: str = "local", **kw) -> str:
    return munge.encode(munge.payload_for(cluster, "api"), m.socket, **kw)


def test_a_user_submits_and_lists_over_tcp_as_herself(net, users):
    c, good, _, port = net
    alice, _ = users
    rmsd = psutil_tcp_peers(c.pid("rmsd"))
    assert port in rmsd, "the node daemon should reach rmsctld over TCP"
    job = c.run("rsub", "--wait", "-o", "/dev/null", "--wrap", "true", user=alice.pw_name,
                env=c.tcp_env)
    assert job.returncode == 0, job.stderr
    job_id = int(job.stdout.split()[-1])
    record = c.job(job_id)
    assert record["user"] == alice.pw_name and record["state"] == "COMPLETED"
    listed = c.run("rq", "-t", "all", "-h", "-o", "%i %u", "-j", str(job_id),
                   user=alice.pw_name, env=c.tcp_env)
    assert listed.stdout.split() == [str(job_id), alice.pw_name], listed.stderr


def psutil_tcp_peers(pid: int) -> set[int]:
    import psutil
    return {conn.raddr.port for conn in psutil.Process(pid).net_connections(kind="tcp")
            if conn.raddr and conn.status == "ESTABLISHED"}


def test_a_replayed_credential_is_refused(net):
    c, good, _, port = net
    cred = credential(good)
    first = handshake(port, {"op": "auth", "cred": cred}, {"op": "ping"})
    assert first[0]["ok"] and first[0]["uid"] == 0
    again = handshake(port, {"op": "auth", "cred": cred}, {"op": "ping"})
    assert len(again) == 1 and not again[0]["ok"]
    assert "credential replayed" in again[0]["error"]


@pytest.mark.parametrize("case, says", [
    ("other key", "credential invalid"),
    ("other cluster", "another purpose or cluster"),
    ("expired", "credential expired"),
    ("no auth", "authenticate first"),
    ("garbage", "authenticate first"),
    ("not a credential", "not a MUNGE credential"),
])
def test_a_bad_or_missing_credential_is_refused_and_closed(net, case, says):
    c, good, other, port = net
    if case == "other key":
        first = {"op": "auth", "cred": credential(other)}
    elif case == "other cluster":
        first = {"op": "auth", "cred": credential(good, cluster="elsewhere")}
    elif case == "expired":
        first = {"op": "auth", "cred": credential(good, ttl=1)}
        time.sleep(2.2)
    elif case == "no auth":
        first = {"op": "jobs"}
    elif case == "garbage":
        first = "not json at all"
    else:
        first = {"op": "auth", "cred": "hello"}
    replies = handshake(port, first, {"op": "jobs"})
    assert len(replies) == 1 and not replies[0]["ok"], replies
    assert says in replies[0]["error"]


def test_commands_say_why_the_controller_refused_them(net):
    """A login node whose munged has another key: one line, the reason, non-zero."""
    c, _, other, _ = net
    conf = os.path.join(os.path.dirname(c.dir), "login")
    os.makedirs(conf, exist_ok=True)
    with open(os.path.join(c.dir, "cluster.toml")) as fh:
        text = fh.read()
    with open(os.path.join(conf, "cluster.toml"), "w") as fh:
        fh.write(text.replace(f'munge_socket = "{os.path.dirname(other.socket)[:-1]}1',
                              f'munge_socket = "{os.path.dirname(other.socket)[:-1]}2'))
    result = c.run("rq", env={"RMS_CONF_DIR": conf})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rq: error:") and \
        "credential invalid" in lines[0], result.stderr
    # without RMS_CONTROLLER: no controller socket here, so the address in cluster.toml
    assert not os.path.exists(os.path.join(conf, "run", "rmsctld.sock"))


def test_a_user_cannot_pass_as_a_node(net, users):
    c, good, _, port = net
    alice, _ = users
    cred = subprocess.run(["munge", "-S", good.socket, "-s", "rmsbatch:local:api"],
                          capture_output=True, text=True, check=True,
                          user=alice.pw_name).stdout.strip()
    replies = handshake(port, {"op": "auth", "cred": cred},
                        {"op": "node_hello", "node": c.node, "inventory": {}})
    assert replies[0]["ok"] and replies[0]["uid"] == alice.pw_uid
    assert not replies[1]["ok"] and "permission denied" in replies[1]["error"]


def test_the_node_daemon_comes_back_over_tcp_after_a_controller_kill(net):
    c, _, _, port = net
    c.kill9("rmsctld")
    c.run("rms-local", "up", "--dir", c.dir, "--gpus", "2", env=c.tcp_env, check=True)
    wait_for(lambda: port in psutil_tcp_peers(c.pid("rmsd")), 20,
             "rmsd reconnected over TCP")
    job = c.run("rsub", "--wait", "-o", "/dev/null", "--wrap", "true", env=c.tcp_env)
    assert job.returncode == 0, job.stderr


def test_a_connection_that_never_authenticates_is_dropped(net):
    """Idle (or trickling blank lines), it would hold one of the slots every
    unauthenticated connection shares until the controller restarts."""
    c, _, _, port = net
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for _ in range(4):
            s.sendall(b"\n")
            time.sleep(1)
        reply = s.makefile("rb").readline()
    assert "not authenticated 3 s after it was opened" in json.loads(reply)["error"]


def test_a_remote_supervisor_kills_its_job_when_the_controller_is_out_of_reach(net, tmp_path):
    """On the controller's host an absent socket means rmsctld is down, and nothing can
    start the job elsewhere, so the job goes on. Over TCP a refused or silent port says
    nothing of the kind (a cut link looks the same): the lease runs out and the job must
    die before rmsctld gives it up and starts it again."""
    from conftest import Clock
    from rmsbatch.node.lease import LeaseKeeper
    _, good, _, _ = net
    (tmp_path / "cluster.toml").write_text(
        f'name = "local"\n[controller]\nmunge_socket = "{good.socket}"\n')
    clock = Clock(1000.0)

    def keeper(controller):
        return LeaseKeeper(until=1010.0, lease_s=20.0, file=None, controller=controller,
                           node="n1", job_id=7, run=0, retry_s=1.0, clock=clock,
                           conf_dir=str(tmp_path))
    local = keeper(str(tmp_path / "no-such.sock"))
    remote = keeper(f"tcp:127.0.0.1:{free_port()}")
    clock.now = 1011.0
    assert local.check() is None and local.controller_idle == "down"
    verdict = remote.check()
    assert verdict is not None and verdict[0] == "kill", verdict
    assert "lease expired" in verdict[1] and "Connection refused" in verdict[1]


def test_rsub_wait_over_tcp_rides_out_a_controller_kill(net, users):
    """A login node's `rsub --wait` while rmsctld is killed and started again: it
    reconnects by itself (a fresh credential each time) and reports the job's end."""
    c, _, _, _ = net
    alice, _ = users
    go = os.path.join(c.work, "go-tcp")
    waiting = subprocess.Popen(
        ["setpriv", f"--reuid={alice.pw_uid}", f"--regid={alice.pw_gid}", "--init-groups",
         "--", command_path("rsub"), "--wait", "-o", "/dev/null", "--wrap",
         f"while [ ! -e {go} ]; do sleep 0.1; done"],
        env={**c.env, **c.tcp_env, "HOME": alice.pw_dir, "USER": alice.pw_name},
        cwd=c.work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = wait_for(lambda: next((j["id"] for j in c.api("jobs", active=True)["jobs"]
                                    if j["user"] == alice.pw_name), None), 20, "the job")
    c.wait_state(job_id, "RUNNING")
    c.kill9("rmsctld")
    c.run("rms-local", "up", "--dir", c.dir, "--gpus", "2", env=c.tcp_env, check=True)
    open(go, "w").close()
    out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert c.job(job_id)["state"] == "COMPLETED"
