"""The controller survives every request and every reload: a request that fails half-way
changes nothing, a bad configuration is refused and the old one kept, ops are closed
unless they say who may call them, and node reports are accepted only from the node
that runs the job."""
from __future__ import annotations

import json
import os
import signal
import socket
import time

import pytest
from conftest import wait_for

from rmsbatch.node.jobdir import read_line

pytestmark = pytest.mark.slow


def raw(c, message: dict) -> dict:
    """One request as any program could send it, without the client's checks."""
    from rmsbatch.net.client import socket_path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(socket_path(c.dir))
        s.sendall((json.dumps(message) + "\n").encode())
        return json.loads(read_line(s))


def test_a_request_that_fails_half_way_gives_nothing_out_twice(new_cluster):
    """rmsctld restarts while a 2-GPU job ends; the node daemon's registration carries
    that end, and fails (injected) after recording it. The rollback must reach memory
    too: the GPUs stay with the first job until the registration succeeds, so the job
    waiting for them does not start while the first is still RUNNING."""
    c = new_cluster(gpus=2)
    first = c.submit("--gpus", "2", "--wrap", "sleep 2")
    c.wait_state(first, "RUNNING")
    second = c.submit("--gpus", "2", "--wrap", "true")
    c.kill9("rmsctld")
    time.sleep(3)                           # the first job ends; rmsd keeps its outcome
    c.run("rms-local", "up", "--dir", c.dir, env={"RMS_FAILPOINTS": "node_hello.after_ended=1"},
          check=True)
    one, two = c.wait_ended(first), c.wait_ended(second)
    assert one["state"] == two["state"] == "COMPLETED", (one, two)
    log = open(os.path.join(c.dir, "log", "rmsctld.log")).read()
    events = [line for line in log.splitlines()
              if f"job {first}: COMPLETED" in line or f"job {second}: started" in line]
    # the end recorded by the failed registration was rolled back, and the GPUs with it:
    # the second job started only after the successful one recorded the end again
    assert [f"job {second}: started" in e for e in events] == [False, False, True], events
    assert "failpoint node_hello.after_ended" in log          # the failure was logged...
    assert "rebuilt from the spool" in log                     # ...and memory restored
    rmsd_log = open(os.path.join(c.dir, "log", f"rmsd-{c.node}.log")).read()
    assert "rmsctld refused: internal error in rmsctld handling 'node_hello'" in rmsd_log


def test_a_bad_reload_keeps_both_daemons_and_the_old_configuration(new_cluster):
    c = new_cluster(gpus=0)
    running = c.submit("--wrap", "sleep 4; echo done")
    c.wait_state(running, "RUNNING")
    path = os.path.join(c.dir, "cluster.toml")
    good = open(path).read()
    with open(path, "a") as fh:
        fh.write('\n[[partitions]]\nname = "broken"\nnodes = "gpu[1-"\n')
    ctl, rmsd = c.pid("rmsctld"), c.pid("rmsd")
    os.kill(ctl, signal.SIGHUP)
    os.kill(rmsd, signal.SIGHUP)
    result = c.run("rcontrol", "reconfigure")
    assert result.returncode == 1
    assert result.stderr.startswith("rcontrol: error: configuration not reloaded")
    assert "cluster.toml: partitions.1.nodes" in result.stderr and "gpu[001-004" in result.stderr
    time.sleep(1)
    assert c.pid("rmsctld") == ctl and c.pid("rmsd") == rmsd
    for pid in (ctl, rmsd):
        os.kill(pid, 0)
    assert c.run("rinfo", "-h").returncode == 0
    assert c.wait_ended(running)["state"] == "COMPLETED"
    assert c.wait_ended(c.submit("--wrap", "true"))["state"] == "COMPLETED"
    for name in ("rmsctld", f"rmsd-{c.node}"):
        assert "configuration not reloaded (keeping the old one)" in \
            open(os.path.join(c.dir, "log", f"{name}.log")).read()
    # a reload the node daemon takes: it re-derives what it enforces and registers again
    with open(path, "w") as fh:
        fh.write(good.replace("[node_daemon]\n", '[node_daemon]\nisolation = "off"\n'))
    os.kill(rmsd, signal.SIGHUP)
    wait_for(lambda: "isolation = \"off\"" in c.node_record(c.node)["protections"], 10,
             "rmsd to register with its new configuration")
    assert c.run("rcontrol", "reconfigure").returncode == 0


def test_reconfigure_refuses_to_drop_a_node_that_runs_a_job(new_cluster):
    c = new_cluster(gpus=0)
    job_id = c.submit("--wrap", "sleep 3")
    c.wait_state(job_id, "RUNNING")
    c.set_nodes("elsewhere")
    result = c.run("rcontrol", "reconfigure")
    assert result.returncode == 1
    assert f"job {job_id} runs on {c.node}, which the new cluster.toml no longer has" in \
        result.stderr, result.stderr
    assert c.wait_ended(job_id)["state"] == "COMPLETED"


def test_ids_beyond_64_bits_are_refused_cleanly(cluster):
    reply = raw(cluster, {"op": "jobs", "ids": [10 ** 23]})
    assert reply == {"ok": False, "error": "bad request: ids.0: out of range (job ids go "
                                          "from 1 to 9223372036854775807)"}
    reply = raw(cluster, {"op": "cancel", "ids": [2 ** 64]})
    assert not reply["ok"] and "out of range" in reply["error"]
    show = cluster.run("rcontrol", "show", "job", "99999999999999999999999")
    assert show.returncode in (1, 2) and "internal error" not in show.stderr, show.stderr
    assert raw(cluster, {"op": "no_such_op"})["error"] == "unknown request 'no_such_op'"


def test_users_cannot_speak_for_nodes(cluster, users):
    alice, _ = users
    script = ("import json, os, socket, sys\n"
              "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
              "for op in ('node_hello', 'heartbeat', 'job_ended', 'lease'):\n"
              "    s.sendall((json.dumps({'op': op, 'node': sys.argv[2], 'job_id': 1, 'run': 0,"
              " 'outcome': {'job_id': 1, 'run': 0, 'state': 'COMPLETED'}}) + '\\n').encode())\n"
              "    print(s.makefile().readline().strip())\n")
    from rmsbatch.net.client import socket_path
    result = cluster.run("python3", "-c", script, socket_path(cluster.dir), cluster.node,
                         user=alice.pw_name)
    replies = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(replies) == 4
    for reply in replies:
        assert not reply["ok"] and "permission denied" in reply["error"], reply


def test_a_node_cannot_report_on_another_nodes_job(new_cluster):
    """As root (the daemons' uid), a report naming the wrong node, or coming on a
    connection registered as another node, changes nothing."""
    def prepare(c):
        c.set_nodes("rmsna,rmsnb")
    c = new_cluster(gpus=0, before_start=prepare)
    c.start_rmsd("rmsnb")
    job_id = c.submit("--wrap", "sleep 3")
    assert c.wait_state(job_id, "RUNNING")["nodelist"] == "rmsna"
    fake_end = {"job_id": job_id, "run": 0, "state": "FAILED", "exit_code": 9}
    reply = raw(c, {"op": "job_ended", "node": "rmsnb", "outcome": fake_end})
    assert reply["ok"]                          # acknowledged, and ignored
    reply = raw(c, {"op": "lease", "node": "rmsnb", "job_id": job_id, "run": 0})
    assert reply.get("stop") and "no longer current on rmsnb" in reply["why"]
    assert c.job(job_id)["state"] == "RUNNING"
    assert c.wait_ended(job_id)["state"] == "COMPLETED"


def test_reload_brings_new_declared_gpus_to_both_daemons(new_cluster):
    """cluster.toml now declares three stand-in GPUs instead of two: after a reload of
    both daemons a 3-GPU job runs, fenced to the three, and numbered from 0."""
    c = new_cluster(gpus=2)
    assert c.run("rsub", "--gpus", "3", "--wrap", "true").returncode == 1   # cannot fit yet
    path = os.path.join(c.dir, "cluster.toml")
    text = open(path).read()
    import re
    text = re.sub(r"count = 2\nfiles = \"([^\"]*)tty\[10-11\]\"", r'count = 3\nfiles = "\1tty[10-12]"',
                  text)
    assert "tty[10-12]" in text
    open(path, "w").write(text)
    if not os.path.exists("/dev/tty12"):
        pytest.skip("no /dev/tty12 stand-in device on this host")
    c.run("rcontrol", "reconfigure", check=True)
    os.kill(c.pid("rmsd"), signal.SIGHUP)
    log = os.path.join(c.dir, "log", f"rmsd-{c.node}.log")
    wait_for(lambda: "configuration reloaded" in open(log).read(), 10, "rmsd to reload")
    wait_for(lambda: c.node_record(c.node).get("connected") and
             c.node_record(c.node)["gpus"] == 3, 15, "the node with three GPUs")
    job_id = c.submit("--gpus", "3", "--wrap", "echo $CUDA_VISIBLE_DEVICES")
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    assert c.output(job_id) == "0,1,2\n"
