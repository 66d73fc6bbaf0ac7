"""Three hosts on one machine: rmsctld here, a compute node and a login node each in
its own network namespace behind a veth pair, each host with its own munged (one key);
the job is submitted and followed from the login node. The link is cut under a
running job: the controller gives the job up and requeues it once its lease is out,
the node's supervisor kills it first (it never runs twice), and when the link comes
back the node reconciles and the job runs again to completion. Timings are the
defaults for a cluster (heartbeat 5 s, lease 20 s + 5 s margin)."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, Cluster, _kill_leftovers, _new_cluster_dir, command_path, wait_for

# (namespace, veth here, veth there, address here, address there)
NODE = ("rmstest-h1", "rmsv0", "rmsv1", "10.199.0.1", "10.199.0.2")
LOGIN = ("rmstest-login", "rmsv2", "rmsv3", "10.199.1.1", "10.199.1.2")
NS, VETH_HERE, VETH_THERE, HERE, THERE = NODE
MUNGED = shutil.which("munged") or "/usr/sbin/munged"

pytestmark = [
    pytest.mark.skipif(not ROOT, reason="network namespaces need root"),
    pytest.mark.skipif(not (os.path.exists(MUNGED) and shutil.which("ip")
                            and shutil.which("nsenter")),
                       reason="needs munge, iproute2 and nsenter"),
]


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_ns(*argv, ns=NS):
    # nsenter, not `ip netns exec`: that also remounts /sys, hiding the cgroups
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def add_host(ns, veth_here, veth_there, here, there) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth_here, "type", "veth", "peer", "name", veth_there)
    sh("ip", "link", "set", veth_there, "netns", ns)
    sh("ip", "addr", "add", f"{here}/24", "dev", veth_here)
    sh("ip", "link", "set", veth_here, "up")
    sh(*in_ns("ip", "addr", "add", f"{there}/24", "dev", veth_there, ns=ns))
    sh(*in_ns("ip", "link", "set", veth_there, "up", ns=ns))
    sh(*in_ns("ip", "link", "set", "lo", "up", ns=ns))


def remove_host(ns, veth_here, *_) -> None:
    sh("ip", "netns", "del", ns, check=False)
    sh("ip", "link", "del", veth_here, check=False)


def start_munged(directory: str, key: str, netns: str | None) -> subprocess.Popen:
    os.makedirs(directory, exist_ok=True)
    sock = os.path.join(directory, "socket")
    argv = [MUNGED, "-F", f"--socket={sock}", f"--key-file={key}",
            f"--log-file={directory}/log", f"--pid-file={directory}/pid",
            f"--seed-file={directory}/seed"]
    proc = subprocess.Popen(in_ns(*argv, ns=netns) if netns else argv,
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: os.path.exists(sock), 10, "munged")
    except AssertionError:
        proc.kill()
        raise
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hosts():
    for host in (NODE, LOGIN):
        remove_host(*host)
    home = _new_cluster_dir()
    key = os.path.join(home, "munge.key")
    sh("mungekey", "--create", "--keyfile", key)
    procs = []
    try:
        for host in (NODE, LOGIN):
            add_host(*host)
        procs.append(start_munged(os.path.join(home, "munge-here"), key, netns=None))
        procs.append(start_munged(os.path.join(home, "munge-there"), key, netns=NS))
        procs.append(start_munged(os.path.join(home, "munge-login"), key, netns=LOGIN[0]))

        c = Cluster(os.path.join(home, "c"), gpus=0)
        os.makedirs(c.dir, exist_ok=True)
        c.up()
        c.down()
        c.set_nodes("h1")
        port = free_port()
        # the defaults for a cluster, not rms-local's quicker ones
        c.tweak("heartbeat_interval = 2\nnode_timeout = 10\n",
                f'address = "{HERE}:{port}"\n'
                f'munge_socket = "{home}/munge-here/socket"\n')
        procs.append(c.start_rmsctld())
        # the node's rmsd: in its namespace, over TCP, with its own host's munged
        env = dict(c.env, RMS_CONTROLLER=f"{HERE}:{port}",
                   RMS_MUNGE_SOCKET=f"{home}/munge-there/socket")
        with open(os.path.join(c.dir, "log", "rmsd-h1.log.stderr"), "ab") as log:
            procs.append(subprocess.Popen(
                in_ns("env", *(f"{k}={v}" for k, v in env.items()),
                      command_path("rmsd"), "--conf-dir", c.dir, "-N", "h1"),
                stdout=log, stderr=log, start_new_session=True))
        wait_for(lambda: c.node_record("h1").get("connected"), 30, "node h1 over TCP")
        # the login node: commands over TCP with its own munged, to the address the
        # controller has on the login network
        c.login = lambda *argv: subprocess.run(
            in_ns("env", f"RMS_CONF_DIR={c.dir}", f"RMS_CONTROLLER={LOGIN[3]}:{port}",
                  f"RMS_MUNGE_SOCKET={home}/munge-login/socket", *argv, ns=LOGIN[0]),
            capture_output=True, text=True, timeout=120)
        yield c
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        if "c" in locals():
            _kill_leftovers(c.dir)
        for host in (NODE, LOGIN):
            remove_host(*host)
        shutil.rmtree(home, ignore_errors=True)


def test_a_cut_link_requeues_the_job_once_and_it_never_runs_twice(hosts, capsys):
    c = hosts
    runs = os.path.join(c.work, "runs")
    script = os.path.join(c.work, "job.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH --requeue -t 10\n"
                 f'echo "$RMS_RESTART_COUNT $$ $(date +%s.%N)" >> {runs}\n'
                 '[ "$RMS_RESTART_COUNT" = 0 ] && sleep 600\nexit 0\n')
    submitted = c.login(command_path("rsub"), "--parsable", script)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())
    c.wait_state(job_id, "RUNNING", timeout=30)
    wait_for(lambda: os.path.exists(runs), 10, "the job to start")
    first_pid = int(open(runs).read().split()[1])

    cut = time.time()
    sh("ip", "link", "set", VETH_HERE, "down")
    # watch both at once: when the node killed the job, when the controller gave it up
    seen: dict[str, float] = {}
    deadline = time.time() + 90
    while len(seen) < 2 and time.time() < deadline:
        if "died" not in seen and not os.path.exists(f"/proc/{first_pid}"):
            seen["died"] = time.time()
        if "given_up" not in seen and c.job(job_id)["state"] != "RUNNING":
            seen["given_up"] = time.time()
        time.sleep(0.05)
    assert len(seen) == 2, f"after 90 s only {seen} (cut at {cut})"
    died, given_up = seen["died"], seen["given_up"]
    record = c.job(job_id)
    assert record["state"] == "PENDING" and record["restart_count"] == 1, record
    # The node's supervisor killed it at the end of its lease, before the controller
    # gave it up (a lease margin later): it never ran on after being written off.
    assert died < given_up, (died - cut, given_up - cut)

    sh("ip", "link", "set", VETH_HERE, "up")
    back = time.time()
    job = c.wait_ended(job_id, timeout=90)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
    listed = c.login(command_path("rq"), "-t", "all", "-h", "-o", "%i %T", "-j", str(job_id))
    assert listed.stdout.split() == [str(job_id), "COMPLETED"], listed.stderr
    lines = [line.split() for line in open(runs).read().splitlines()]
    assert [line[0] for line in lines] == ["0", "1"], lines     # once each, no double
    with capsys.disabled():
        print(f"\n[figures] link cut -> job given up and requeued: {given_up - cut:.1f} s; "
              f"job killed on the node: {died - cut:.1f} s; link back -> job completed: "
              f"{time.time() - back:.1f} s; jobs lost: 0")
