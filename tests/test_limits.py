"""What one user can make rmsctld hold is bounded (cluster.toml [controller]:
max_connections_per_user, max_buffered_per_user, max_request, request_timeout).

A real rmsctld (rms-local), real users (useradd) and real sockets: an attacking
user is refused with errors that name the limits, the controller's memory stays
bounded, and another user's commands keep working meanwhile.
"""
from __future__ import annotations

import json
import os
import pwd
import re
import socket
import subprocess
import sys


# Run as the attacking user. Phase 1 opens N connections and counts those the
# server refuses at once, reports, and waits for a line on stdin. Phase 2 sends
# one survivor a large listing request, and each other survivor a large
# unterminated submission, waiting until the server has read what it sent
# before the next; it reports what the server answered, and holds its
# connections open until stdin closes.
ATTACK = r'''
import fcntl, json, select, socket, struct, sys, termios, time
path, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def answer(s, wait):
    s.settimeout(wait)
    try:
        data = s.recv(65536)
    except (socket.timeout, BlockingIOError):
        return None
    except OSError as exc:
        return f"recv: {exc}"
    return json.loads(data.split(b"\n")[0]).get("error") if data else "closed"

def unread(s):
    # bytes sent that the server has not read yet (SIOCOUTQ on a Unix socket)
    return struct.unpack("i", fcntl.ioctl(s, termios.TIOCOUTQ, b"\0" * 4))[0]

conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    conns.append(s)
refusals, refused = [], set()
while True:     # the server answers a refused connection at once
    ready = select.select([s for s in conns if s not in refused], [], [], 3)[0]
    if not ready:
        break
    for s in ready:
        refusals.append(answer(s, 1))
        refused.add(s)
alive = [s for s in conns if s not in refused]
print(json.dumps({"refusals": refusals}), flush=True)
sys.stdin.readline()

listing = alive.pop(0)
listing.settimeout(20)
try:
    listing.sendall(b'{"op":"jobs","names":["' + b"B" * (6 << 20))
except OSError:
    pass
listing_error = answer(listing, 5)

chunk = b"A" * (1 << 20)
holding, errors = 0, []
for s in alive:
    s.settimeout(20)
    try:
        s.sendall(b'{"op":"submit","spec":{"script":"')
        for _ in range(size >> 20):
            s.sendall(chunk)
        deadline = time.time() + 20
        while unread(s) and time.time() < deadline:
            time.sleep(0.01)
        holding += 1
    except OSError:
        errors.append(answer(s, 5))
print(json.dumps({"listing": listing_error, "holding": holding, "errors": errors}), flush=True)
sys.stdin.read()
'''


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def as_user(user: str, argv: list[str], **kw) -> subprocess.Popen:
    pw = pwd.getpwnam(user)
    return subprocess.Popen(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                             "--init-groups", "--", *argv], **kw)


def socket_of(c) -> str:
    from rmsbatch.net.client import socket_path
    return socket_path(c.dir)


def test_attack_is_refused_memory_stays_bounded_and_others_are_served(new_cluster, users):
    alice, bob = users
    c = new_cluster(gpus=0, before_start=lambda c: c.tweak(
        "kill_grace = 5", "kill_grace = 5\nmax_connections_per_user = 16"))
    pid = c.pid("rmsctld")
    before = rss_mb(pid)
    script = os.path.join(c.work, "attack.py")
    with open(script, "w") as fh:
        fh.write(ATTACK)
    # 80 connections, then 15 MiB of unterminated request on each: 1.2 GB if unbounded
    attack = as_user(alice.pw_name, [sys.executable, script, socket_of(c), "80",
                                     str(15 << 20)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        refusals = json.loads(attack.stdout.readline())["refusals"]
        assert len(refusals) == 80 - 16
        assert all(r.startswith("connection refused on rmsctld: rmsalice already has 16 open "
                                "(max_connections_per_user in cluster.toml [controller]); ")
                   for r in refusals), refusals[:3]
        # alice, at her limit, is told why by the commands too; bob is served
        rq = c.run("rq", user=alice.pw_name)
        assert rq.returncode == 1
        assert rq.stderr.startswith("rq: error: connection refused on rmsctld: rmsalice "
                                    "already has 16 open"), rq.stderr
        assert rq.stderr.count("\n") == 1, rq.stderr
        assert c.run("rq", user=bob.pw_name).returncode == 0

        attack.stdin.write("go\n")
        attack.stdin.flush()
        report = json.loads(attack.stdout.readline())
        during = rss_mb(pid)
        rq = c.run("rq", user=bob.pw_name)
        assert rq.returncode == 0, rq.stderr
    finally:
        attack.stdin.close()
        attack.wait(30)
    print(f"rmsctld RSS: {before:.0f} MB before, {during:.0f} MB under attack")
    assert "larger than 4 MiB (max_request in cluster.toml [controller]; a job submission " \
           "may be up to 16 MiB)" in report["listing"], report["listing"]
    # 32 MiB unfinished per user: two 15 MiB submissions fit, the others are cut off
    assert report["holding"] == 2
    assert len(report["errors"]) == 16 - 1 - 2
    assert all("more than 32 MiB in unfinished requests (max_buffered_per_user in "
               "cluster.toml [controller])" in e for e in report["errors"]), report["errors"]
    assert during < 300, f"rmsctld grew to {during:.0f} MB"
    assert c.run("rq", user=alice.pw_name).returncode == 0     # her connections are gone


def test_stalled_request_is_dropped_idle_connection_is_not(new_cluster, users):
    alice, _ = users
    c = new_cluster(gpus=0, before_start=lambda c: c.tweak(
        "kill_grace = 5", "kill_grace = 5\nrequest_timeout = 1"))
    helper = r'''
import json, socket, sys
idle = socket.socket(socket.AF_UNIX); idle.connect(sys.argv[1])
slow = socket.socket(socket.AF_UNIX); slow.connect(sys.argv[1])
slow.sendall(b'{"op":"ping"')        # and nothing more
slow.settimeout(60)
dropped = json.loads(slow.recv(65536).split(b"\n")[0])
closed = slow.recv(65536) == b""
idle.settimeout(60)
idle.sendall(b'{"op":"ping"}\n')     # idle longer than request_timeout, still served
print(json.dumps({"dropped": dropped, "closed": closed,
                  "idle": json.loads(idle.recv(65536).split(b"\n")[0])}))
'''
    script = os.path.join(c.work, "slow.py")
    with open(script, "w") as fh:
        fh.write(helper)
    proc = as_user(alice.pw_name, [sys.executable, script, socket_of(c)],
                   stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=90)
    result = json.loads(out)
    assert result["dropped"]["ok"] is False
    assert result["dropped"]["error"].startswith(
        "request dropped on rmsctld: not finished 1 s after its first byte (request_timeout "
        "in cluster.toml [controller])"), result
    assert result["closed"]
    assert result["idle"]["ok"] is True


def test_large_request_only_for_submissions_and_daemons(cluster, users):
    """A 6 MiB submission goes through (its spec is then judged: the script is
    too long for a job), a 6 MiB listing does not; root (a node daemon) may send
    large reports."""
    alice, _ = users
    helper = r'''
import json, socket, sys
out = {}
for op in ("submit", "jobs"):
    s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.settimeout(60)
    body = {"op": op, "spec": {"script": "#!/bin/sh\n" + "#" * (6 << 20)}} if op == "submit" \
        else {"op": op, "names": ["x" * (6 << 20)]}
    try:
        s.sendall(json.dumps(body).encode() + b"\n")
    except OSError:
        pass
    out[op] = json.loads(s.recv(65536).split(b"\n")[0])
print(json.dumps(out))
'''
    script = os.path.join(cluster.work, "big.py")
    with open(script, "w") as fh:
        fh.write(helper)
    proc = as_user(alice.pw_name, [sys.executable, script, socket_of(cluster)],
                   stdout=subprocess.PIPE, text=True)
    out = json.loads(proc.communicate(timeout=90)[0])
    assert out["submit"]["ok"] is False and "max_request" not in out["submit"]["error"], out
    assert "larger than 4 MiB (max_request" in out["jobs"]["error"], out
    # rsub sends "op" first, so a script near the 4 MiB limit goes through
    big = os.path.join(cluster.work, "big.sh")
    with open(big, "w") as fh:
        fh.write("#!/bin/sh\n" + ("# padding \u00e9\u00e9\u00e9\n" * 245_000))
    assert os.path.getsize(big) > 4 * 10**6
    job = cluster.submit("-H", big, user=alice.pw_name)
    cluster.run("rcancel", str(job), user=alice.pw_name, check=True)
    # root is trusted with large reports (a node's inventory): judged, not cut off
    s = socket.socket(socket.AF_UNIX)
    s.connect(socket_of(cluster))
    s.settimeout(60)
    replies = s.makefile("rb")
    s.sendall(json.dumps({"op": "jobs", "names": ["x" * (6 << 20)]}).encode() + b"\n")
    assert "max_request" not in (json.loads(replies.readline()).get("error") or "")
    s.sendall(b'{"op":"ping"}\n')
    assert json.loads(replies.readline())["ok"] is True
    s.close()


def test_node_with_many_gpus_registers(new_cluster):
    """A node declaring 1024 GPUs (the most a [[nodes.gpus]] table takes) sends a
    large inventory: the limits let it through."""
    def many(c):
        path = os.path.join(c.dir, "cluster.toml")
        with open(path) as fh:
            text = fh.read()
        text = re.sub(r"count = 2\nfiles = .*\n", "count = 1024\n", text)
        assert "count = 1024" in text
        with open(path, "w") as fh:
            fh.write(text)

    c = new_cluster(gpus=2, before_start=many)
    node = c.api("nodes")["nodes"][0]
    assert node["gpus"] == 1024, node
    assert c.run("rinfo", "-N").returncode == 0


def test_limits_are_validated(new_cluster):
    c = new_cluster(gpus=0, start=False)
    c.run("rms-local", "up", "--dir", c.dir, "--gpus", "0", check=True)
    c.down()
    c.tweak("kill_grace = 5", 'kill_grace = 5\nmax_request = "64M"\nmax_buffered_per_user = "8M"')
    result = c.run("rmsctld", "--check-config")
    assert result.returncode == 1
    assert "max_buffered_per_user (8M) must be at least max_request (64M)" in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
