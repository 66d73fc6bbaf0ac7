"""Four hosts on one machine: rmsctld here, two compute nodes and a login node each in
its own network namespace, on one bridge (the compute nodes with their own host names), each host with its own munged (one key) and
the compute nodes with their own copy of the configuration (state, logs and the
address their steps are reached at are theirs). Jobs are submitted and followed from
the login node. A two-node job runs a step on both nodes, its tasks' output crossing
between hosts. Then a node's link is cut under a running job: the controller gives
the job up and requeues it once its lease is out, the node's supervisor kills it
first (it never runs twice), the job runs again on the other node, and when the link
comes back the node reconciles. Timings are the defaults for a cluster (heartbeat
5 s, lease 20 s + 5 s margin)."""
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

BRIDGE, HERE = "rmsbr0", "10.199.0.1"
# name -> (namespace, veth here, veth there, address there)
HOSTS = {"h1": ("rmstest-h1", "rmsv1", "rmsv1p", "10.199.0.2"),
         "h2": ("rmstest-h2", "rmsv2", "rmsv2p", "10.199.0.3"),
         "login": ("rmstest-login", "rmsv9", "rmsv9p", "10.199.0.9")}
MUNGED = shutil.which("munged") or "/usr/sbin/munged"

pytestmark = [
    pytest.mark.skipif(not ROOT, reason="network namespaces need root"),
    pytest.mark.skipif(not (os.path.exists(MUNGED) and shutil.which("ip")
                            and shutil.which("nsenter")),
                       reason="needs munge, iproute2 and nsenter"),
]


def sh(*argv, check=True):
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def in_ns(*argv, ns):
    # nsenter, not `ip netns exec`: that also remounts /sys, hiding the cgroups
    return ["nsenter", f"--net=/run/netns/{ns}", *argv]


def add_host(ns, veth_here, veth_there, there) -> None:
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", veth_here, "type", "veth", "peer", "name", veth_there)
    sh("ip", "link", "set", veth_there, "netns", ns)
    sh("ip", "link", "set", veth_here, "master", BRIDGE)
    sh("ip", "link", "set", veth_here, "up")
    sh(*in_ns("ip", "addr", "add", f"{there}/24", "dev", veth_there, ns=ns))
    sh(*in_ns("ip", "link", "set", veth_there, "up", ns=ns))
    sh(*in_ns("ip", "link", "set", "lo", "up", ns=ns))


def remove_hosts() -> None:
    for ns, veth_here, _, _ in HOSTS.values():
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", veth_here, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


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


def host_config(c, name: str, address: str) -> str:
    """The node's own configuration directory: the cluster's files, its step address."""
    directory = os.path.join(os.path.dirname(c.dir), name)
    os.makedirs(os.path.join(directory, "log"), exist_ok=True)
    for f in ("cluster.toml", "tenants.toml", "qos.toml"):
        shutil.copy(os.path.join(c.dir, f), directory)
    path = os.path.join(directory, "cluster.toml")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write(text.replace("[node_daemon]\n", f'[node_daemon]\naddress = "{address}"\n', 1))
    os.chmod(directory, 0o755)
    return directory


@pytest.fixture(scope="module")
def hosts():
    remove_hosts()
    home = _new_cluster_dir()
    key = os.path.join(home, "munge.key")
    sh("mungekey", "--create", "--keyfile", key)
    procs = []
    try:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "addr", "add", f"{HERE}/24", "dev", BRIDGE)
        sh("ip", "link", "set", BRIDGE, "up")
        for host in HOSTS.values():
            add_host(*host)
        procs.append(start_munged(os.path.join(home, "munge-ctl"), key, netns=None))
        for name, (ns, *_rest) in HOSTS.items():
            procs.append(start_munged(os.path.join(home, f"munge-{name}"), key, netns=ns))

        c = Cluster(os.path.join(home, "c"), gpus=0)
        os.makedirs(c.dir, exist_ok=True)
        c.up()
        c.down()
        c.set_nodes("h[1-2]")
        port = free_port()
        # the defaults for a cluster, not rms-local's quicker ones
        c.tweak("heartbeat_interval = 2\nnode_timeout = 10\n",
                f'address = "{HERE}:{port}"\n'
                f'munge_socket = "{home}/munge-ctl/socket"\n')
        procs.append(c.start_rmsctld())
        # each node's rmsd: in its namespace, with its own configuration directory (no
        # controller socket there: over TCP) and its own host's munged
        c.rmsd = {}

        def start_rmsd(name):
            ns, _, _, address = HOSTS[name]
            conf = host_config(c, name, address)
            env = dict(c.env, RMS_CONF_DIR=conf, RMS_MUNGE_SOCKET=f"{home}/munge-{name}/socket")
            with open(os.path.join(conf, "log", "rmsd.stderr"), "ab") as log:
                # its own host name too (a UTS namespace): rmsd takes it as the node's
                c.rmsd[name] = subprocess.Popen(
                    in_ns("unshare", "--uts", "sh", "-c", f"hostname {name} && exec \"$@\"",
                          "-", "env", *(f"{k}={v}" for k, v in env.items()),
                          command_path("rmsd"), "--conf-dir", conf, ns=ns),
                    stdout=log, stderr=log, start_new_session=True)
            procs.append(c.rmsd[name])
        c.start_rmsd = start_rmsd
        for name in ("h1", "h2"):
            start_rmsd(name)
        for name in ("h1", "h2"):
            wait_for(lambda: c.node_record(name).get("connected"), 30, f"node {name} over TCP")
        login_ns = HOSTS["login"][0]
        c.login = lambda *argv: subprocess.run(
            in_ns("env", f"PATH={os.path.dirname(command_path('rsub'))}:{os.environ['PATH']}",
                  f"RMS_CONF_DIR={c.dir}", f"RMS_CONTROLLER={HERE}:{port}",
                  f"RMS_MUNGE_SOCKET={home}/munge-login/socket", *argv, ns=login_ns),
            capture_output=True, text=True, timeout=120, cwd=c.work)
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
            for name in ("h1", "h2"):
                _kill_leftovers(os.path.join(home, name))
        remove_hosts()
        shutil.rmtree(home, ignore_errors=True)


def test_a_two_node_job_runs_a_step_on_both_hosts(hosts):
    c = hosts
    script = os.path.join(c.work, "two.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH -N 2 -t 5\n"
                 "rrun -l sh -c 'echo node $RMS_NODEID on $SLURMD_NODENAME'\n")
    submitted = c.login(command_path("rsub"), "--parsable", script)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())
    job = c.wait_ended(job_id, timeout=60)
    assert job["state"] == "COMPLETED" and job["nodelist"] == "h[1-2]", (job, c.output(job_id))
    assert sorted(c.output(job_id).splitlines()) == ["0: node 0 on h1", "1: node 1 on h2"]


def requeueable_job(c, name: str):
    """A --requeue job, submitted from the login node, that waits on its first run and
    ends at once on the next; each run appends "RESTART PID NODE" to a file. Returns
    (job id, its node, that file, the first run's pid) once it runs."""
    runs = os.path.join(c.work, f"{name}-runs")
    script = os.path.join(c.work, f"{name}.sh")
    with open(script, "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH --requeue -t 10\n"
                 f'echo "$RMS_RESTART_COUNT $$ $SLURMD_NODENAME" >> {runs}\n'
                 '[ "$RMS_RESTART_COUNT" = 0 ] && sleep 600\nexit 0\n')
    submitted = c.login(command_path("rsub"), "--parsable", script)
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())
    node = c.wait_state(job_id, "RUNNING", timeout=30)["nodelist"]
    first = wait_for(lambda: whole_lines(runs), 10, "the job to say it started")
    return job_id, node, runs, int(first[0].split()[1])


def whole_lines(path: str) -> list[str]:
    """The file's complete lines (the job may be writing its first one right now)."""
    try:
        with open(path) as fh:
            text = fh.read()
    except FileNotFoundError:
        return []
    return text[:text.rfind("\n") + 1].splitlines()


def test_a_cut_link_requeues_the_job_once_and_it_never_runs_twice(hosts, capsys):
    c = hosts
    job_id, node, runs, first_pid = requeueable_job(c, "cut")
    other = {"h1": "h2", "h2": "h1"}[node]

    cut = time.time()
    sh("ip", "link", "set", HOSTS[node][1], "down")
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
    # The node's supervisor killed it at the end of its lease, before the controller
    # gave it up (a lease margin later): it never ran on after being written off.
    assert died < given_up, (died - cut, given_up - cut)
    job = c.wait_ended(job_id, timeout=60)          # again, on the other node
    rerun = time.time()
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
    assert job["nodelist"] == other and c.node_record(node)["responding"] is False

    sh("ip", "link", "set", HOSTS[node][1], "up")
    back = time.time()
    wait_for(lambda: c.node_record(node).get("state") == "IDLE", 60, f"{node} back, idle")
    listed = c.login(command_path("rq"), "-t", "all", "-h", "-o", "%i %T", "-j", str(job_id))
    assert listed.stdout.split() == [str(job_id), "COMPLETED"], listed.stderr
    lines = [line.split() for line in open(runs).read().splitlines()]
    assert [line[0] for line in lines] == ["0", "1"], lines     # once each, no double
    with capsys.disabled():
        print(f"\n[figures] link cut -> job killed on its node: {died - cut:.1f} s; given up "
              f"and requeued: {given_up - cut:.1f} s; completed on the other node: "
              f"{rerun - cut:.1f} s; link back -> node idle again: {time.time() - back:.1f} "
              "s; jobs lost: 0")


def test_a_crashed_host_comes_back_without_running_its_job_twice(hosts):
    """Everything of the host dies at once (rmsd, the job's supervisor, the job): the
    job is given up when its lease runs out and runs again elsewhere; the host's rmsd,
    started again, finds the dead run and reports it, and the controller keeps the
    rerun's result."""
    c = hosts
    job_id, node, runs, job_pid = requeueable_job(c, "crash")
    run_dir = os.path.join(os.path.dirname(c.dir), node, "state", node, "jobs", f"{job_id}.0")
    pid_file = os.path.join(run_dir, "pid")     # written (renamed into place) after the fork
    wait_for(lambda: os.path.exists(pid_file), 10, "the run's pid file")
    supervisor = json.load(open(pid_file))["supervisor_pid"]
    for pid in (c.rmsd[node].pid, supervisor, job_pid):    # the host goes down
        os.kill(pid, signal.SIGKILL)
    c.rmsd[node].wait(10)

    job = c.wait_ended(job_id, timeout=60)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
    c.start_rmsd(node)                                      # the host comes back
    wait_for(lambda: c.node_record(node).get("state") == "IDLE", 30, f"{node} back, idle")
    assert c.job(job_id)["state"] == "COMPLETED" and c.job(job_id)["restart_count"] == 1
    lines = [line.split() for line in open(runs).read().splitlines()]
    assert [line[0] for line in lines] == ["0", "1"] and lines[0][2] == node, lines
    assert not os.path.exists(f"/proc/{job_pid}")
