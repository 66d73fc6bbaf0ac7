"""Advance reservations made at run time (rcontrol create|update|delete reservation,
rinfo -T), with real daemons: who may make them, what they refuse, how they hold
jobs off and let theirs in, and that they outlive a kill -9 of rmsctld."""
from __future__ import annotations

import json
import os
import re
import shutil

import pytest
from conftest import ROOT, Cluster, _kill_leftovers, _new_cluster_dir, wait_for

from rmsbatch.core import hostlist
from rmsbatch.sched import plan
from rmsbatch.sched.jobrequest import MAINT, Window, place
from rmsbatch.sched.placement import NodeView, Request

needs_root = pytest.mark.skipif(not ROOT, reason="needs root to create users")

# In cluster.toml, far ahead: read-only for rcontrol, and in nobody's way today
FROM_FILE = """
[[reservations]]
name = "fromfile"
nodes = "{node}"
users = ["root"]
start = 2030-01-01T00:00:00
end = 2030-01-02T00:00:00
"""


# -- the scheduler core, on a hand-built snapshot ---------------------------------------
NOW = 1_800_000_000.0


def snapshot(*windows):
    nodes = {n: NodeView(n, 8, 64000, {i: "gpu" for i in range(4)}) for n in ("g1", "g2")}
    parts = {"p": plan.PartitionView("p", True, ["g1", "g2"])}

    def job(job_id, gpus, reservation=None, time_limit=3600):
        j = plan.PendingJob(job_id, "p", 0, NOW + job_id, Request(gpus=gpus))
        j.time_limit, j.reservation = time_limit, reservation
        place(j, windows)
        return j
    return nodes, parts, job


def test_core_keeps_others_off_and_lets_its_jobs_past_a_blocked_queue():
    soon = Window("soon", frozenset({"g2"}), frozenset({"ada"}), start=NOW + 1800,
                  end=NOW + 7200, runtime=True)
    nodes, parts, job = snapshot(soon)
    nodes["g1"].free_gpus = set()       # g1 is busy: only the reserved g2 is free
    # an hour's job would reach into it: kept off, and told why; a short one fits before
    # it; the reservation's own job waits for its start, then runs past the blocked one
    jobs = [job(1, 4), job(2, 4, time_limit=600), job(3, 1, "soon")]
    out = plan.schedule(jobs[:1], nodes, parts, NOW)
    assert out.starts == [] and out.reasons == {1: f"{plan.RESERVED} reservation soon"}
    out = plan.schedule(jobs[1:], nodes, parts, NOW)
    assert [j for j, _ in out.starts] == [2] and out.reasons == {3: plan.RESERVATION}
    nodes, parts, job = snapshot(soon)
    nodes["g1"].free_gpus = set()
    out = plan.schedule([job(1, 4), job(3, 1, "soon")], nodes, parts, NOW + 1800)
    assert [j for j, _ in out.starts] == [3]
    assert out.reasons == {1: f"{plan.RESERVED} reservation soon"}


def test_core_says_maintenance_for_a_maint_reservation():
    maint = Window("m", frozenset({"g1", "g2"}), frozenset({"root"}), start=NOW,
                   end=NOW + 60, flags=frozenset({MAINT}), runtime=True)
    nodes, parts, job = snapshot(maint)
    out = plan.schedule([job(1, 1)], nodes, parts, NOW)
    assert out.reasons == {1: f"{plan.RESERVED} maintenance"}
    # without it (deleted): the job starts
    nodes, parts, job = snapshot()
    assert [j for j, _ in plan.schedule([job(1, 1)], nodes, parts, NOW).starts] == [1]


# -- with real daemons -----------------------------------------------------------------
@pytest.fixture(scope="module")
def c():
    c = Cluster(_new_cluster_dir(), gpus=2)
    c.run("rms-local", "up", "--dir", c.dir, "--gpus", "2", check=True)
    c.down()
    path = os.path.join(c.dir, "cluster.toml")
    with open(path) as fh:
        text = fh.read()
    node = re.search(r'\[\[nodes\]\]\nnames = "([^"]*)"', text).group(1)
    with open(path, "a") as fh:
        fh.write(FROM_FILE.format(node=node))
    c.up()
    yield c
    c.down()
    _kill_leftovers(c.dir)
    shutil.rmtree(c.dir, ignore_errors=True)


def rcontrol(c, *words, user=None):
    return c.run("rcontrol", *words, user=user)


def refused(result, *words) -> str:
    """A refusal: non-zero, and one line that says what and why."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rcontrol: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def table(c) -> dict[str, list[str]]:
    """rinfo -T by reservation name."""
    out = c.run("rinfo", "-T", check=True).stdout.splitlines()
    assert out[0].split() == ["RESV_NAME", "STATE", "START_TIME", "END_TIME", "DURATION",
                              "NODELIST"]
    return {line.split()[0]: line.split() for line in out[1:]}


@needs_root
def test_reserved_node_runs_only_its_users_jobs_until_deleted(c, users):
    alice, bob = users
    node = c.node
    create = ("create", "reservation", "ReservationName=lab", "StartTime=now",
              "Duration=1:00:00", f"Nodes={node}", f"Users={alice.pw_name}")
    refused(rcontrol(c, *create, user=bob.pw_name), "permission denied")
    assert "lab" not in table(c)

    made = rcontrol(c, *create)
    assert made.returncode == 0, made.stderr
    assert table(c)["lab"][1:2] == ["ACTIVE"] and table(c)["lab"][-1] == node

    waiting = c.submit("-t", "5", "--wrap", "true", user=bob.pw_name)
    inside = c.submit("-t", "5", "--reservation=lab", "--wrap", "sleep 1", user=alice.pw_name)
    assert c.wait_ended(inside)["state"] == "COMPLETED"
    job = c.wait_state(waiting, "PENDING")
    assert job["reason"] == "ReqNodeNotAvail, Reserved for reservation lab"
    rq = c.run("rq", "-j", str(waiting), check=True).stdout
    assert "Reserved for reservation lab" in rq

    # not hers: bob may not use it, until an operator adds him
    refusal = c.run("rsub", "-t", "5", "--reservation=lab", "--wrap", "true", user=bob.pw_name)
    assert refusal.returncode != 0 and "may not use it" in refusal.stderr
    assert rcontrol(c, "update", "reservation", "ReservationName=lab",
                    f"Users={alice.pw_name},{bob.pw_name}").returncode == 0
    shown = json.loads(rcontrol(c, "show", "reservation", "lab", "--json").stdout)
    assert shown["reservations"][0]["users"] == sorted([alice.pw_name, bob.pw_name])

    # kept in the spool: a kill -9 of rmsctld loses neither it nor its hold on the node
    c.kill9("rmsctld")
    c.up()
    assert table(c)["lab"][1] == "ACTIVE"
    assert c.wait_state(waiting, "PENDING")["reason"].endswith("reservation lab")

    refused(rcontrol(c, "delete", "reservation", "lab", user=bob.pw_name), "permission denied")
    assert rcontrol(c, "delete", "reservation", "lab").returncode == 0
    assert c.wait_ended(waiting)["state"] == "COMPLETED"
    assert "lab" not in table(c)
    assert table(c)["fromfile"][1] == "INACTIVE"        # cluster.toml's stays


@needs_root
@pytest.mark.parametrize("words, says", [
    (["Nodes=nosuchnode"], ["no node named", "nosuchnode"]),
    (["StartTime=2020-01-01T00:00:00"], ["in the past", "StartTime=now"]),
    (["ReservationName=fromfile"], ["already exists", "cluster.toml"]),
    (["Users="], ["Users= on create reservation is empty"]),
    (["Flags=SOMETIMES"], ["unknown flag SOMETIMES"]),
    (["TRES=gres/gpu:8"], ["expected gres/gpu=COUNT"]),
    (["Nodes=-", "TRES=cpu=4"], ["reserving cpu is not supported"]),
    (["Nodes=-", "TRES=gres/gpu=3"], ["only 2 GPUs", "IGNORE_JOBS"]),
    (["Nodes=-", "NodeCnt=2"], ["NodeCnt=2", "only 1 node(s)"]),
    (["NodeCnt=1"], ["both Nodes= and a count"]),
    (["CoreCnt=4"], ["not supported"]),
])
def test_bad_reservations_are_refused_in_one_line(c, words, says):
    fields = {"ReservationName": "bad", "StartTime": "now", "Duration": "30", "Nodes": c.node,
              "Users": "root"}
    extra = []
    for word in words:
        key, _, value = word.partition("=")
        if key in fields and value == "-":
            del fields[key]
        elif key in fields:
            fields[key] = value
        else:
            extra.append(word)
    result = rcontrol(c, "create", "reservation", *(f"{k}={v}" for k, v in fields.items()),
                      *extra)
    refused(result, *says)
    assert "bad" not in table(c)


@needs_root
def test_a_gpu_count_reserves_the_nodes_that_have_them(c):
    made = rcontrol(c, "create", "reservation", "ReservationName=gpus", "StartTime=now+1hour",
                    "Duration=30", "TRES=gres/gpu=2", "Users=root")
    assert made.returncode == 0, made.stderr
    shown = rcontrol(c, "show", "reservation", "gpus").stdout
    assert f"Nodes={c.node} NodeCnt=1" in shown and ",gres/gpu=2" in shown
    assert table(c)["gpus"][1] == "INACTIVE"
    assert rcontrol(c, "delete", "reservation", "gpus").returncode == 0


@needs_root
def test_end_before_start_and_no_users_are_refused(c):
    base = ("create", "reservation", "ReservationName=bad", f"Nodes={c.node}")
    refused(rcontrol(c, *base, "StartTime=now+1hour", "EndTime=now+30minutes", "Users=root"),
            "not after its StartTime")
    refused(rcontrol(c, *base, "StartTime=now", "Duration=30"), "no users or accounts")
    refused(rcontrol(c, "update", "reservation", "ReservationName=fromfile", "Duration=10"),
            "defined in cluster.toml: change it there")
    refused(rcontrol(c, "delete", "reservation", "fromfile"), "defined in cluster.toml")
    refused(rcontrol(c, "delete", "reservation", "nosuch"), "not found")


@needs_root
def test_running_jobs_refuse_a_reservation_unless_ignore_jobs(c, users):
    alice, _ = users
    running = c.submit("-t", "10", "--wrap", "sleep 60", user=alice.pw_name)
    c.wait_state(running, "RUNNING")
    try:
        create = ("create", "reservation", "ReservationName=fix", "StartTime=now",
                  "Duration=20", f"Nodes={c.node}", "Users=root")
        refused(rcontrol(c, *create), f"running job(s) {running}", "IGNORE_JOBS")
        made = rcontrol(c, *create, "Flags=MAINT,IGNORE_JOBS")
        assert made.returncode == 0, made.stderr
        refused(rcontrol(c, *create, "Flags=IGNORE_JOBS"), "fix already exists")
        nodes = c.run("rinfo", "-N", "-h", check=True).stdout.split()
        assert nodes[3] == "maint"
        held = c.submit("-t", "5", "--wrap", "true", user=alice.pw_name)
        assert c.wait_state(held, "PENDING")["reason"] == \
            "ReqNodeNotAvail, Reserved for maintenance"
        assert rcontrol(c, "delete", "reservation", "fix").returncode == 0
        assert c.run("rinfo", "-N", "-h", check=True).stdout.split()[3] != "maint"
    finally:
        c.run("rcancel", str(running))


@needs_root
def test_a_reservation_starts_and_ends_by_itself(c, users):
    alice, _ = users
    made = rcontrol(c, "create", "reservation", "ReservationName=soon", "StartTime=now+6",
                    "Duration=0:04", f"Nodes={c.node}", f"Users={alice.pw_name}")
    assert made.returncode == 0, made.stderr
    assert table(c)["soon"][1] == "INACTIVE"
    job = c.submit("-t", "1", "--reservation=soon", "--wrap", "true", user=alice.pw_name)
    wait_for(lambda: c.job(job)["reason"] == "Reservation", 10, "reason Reservation")
    # nothing else happens meanwhile: its start alone lets the job in
    assert c.wait_ended(job, timeout=20)["state"] == "COMPLETED"
    # and after its end it is gone, by itself
    wait_for(lambda: "soon" not in table(c), 20, "the ended reservation dropped")


@needs_root
def test_a_job_in_a_reservation_ends_with_it_even_when_its_end_moves(c, users):
    """As Slurm (ResvOverRun=0): a job still running when its reservation ends is
    stopped, TIMEOUT, though its own time limit was longer; moving the end moves it."""
    alice, _ = users
    made = rcontrol(c, "create", "reservation", "ReservationName=short", "StartTime=now",
                    "Duration=0:04", f"Nodes={c.node}", f"Users={alice.pw_name}")
    assert made.returncode == 0, made.stderr
    job = c.submit("-t", "10", "--reservation=short", "--wrap", "sleep 120",
                   user=alice.pw_name)
    c.wait_state(job, "RUNNING")
    moved = rcontrol(c, "update", "reservation", "ReservationName=short", "Duration=0:09")
    assert moved.returncode == 0, moved.stderr
    ended = c.wait_ended(job, timeout=40)
    assert ended["state"] == "TIMEOUT", ended
    ran = ended["end_time"] - ended["start_time"]
    assert 7 <= ran < 30, ran              # not at the first end (4 s), at the moved one
    assert c.job(job)["time_limit"] == 600         # its own limit is what it asked for
    wait_for(lambda: "short" not in table(c), 20, "the ended reservation dropped")


# -- counts instead of names: the controller picks the nodes ------------------------------
COUNTED = """
name = "t"
[controller]
socket = "run/s.sock"
spool_dir = "spool"
[[nodes]]
names = "big[1-2]"
cpus = 32
memory = "256G"
[[nodes.gpus]]
type = "h100"
count = 8
[[nodes]]
names = "small[1-3]"
cpus = 8
memory = "64G"
[[nodes.gpus]]
type = "a100"
count = 2
[[nodes]]
names = "cpu1"
cpus = 64
memory = "256G"
[[partitions]]
name = "gpu"
nodes = "big[1-2],small[1-3]"
default = true
[[partitions]]
name = "cpu"
nodes = "cpu1"
"""


@pytest.fixture
def counted(tmp_path):
    from conftest import controller_on_spool, fake_conn
    ctl = controller_on_spool(tmp_path, COUNTED, 'admins = ["root"]\n[[accounts]]\n'
                              'name = "lab"\nusers = ["*"]\n', '[[qos]]\nname = "normal"\n')
    for node in ("big1", "big2", "small1", "small2", "small3", "cpu1"):
        assert ctl.handle(fake_conn(0), {"op": "node_hello", "node": node,
                                         "inventory": {}})["ok"]
    yield ctl, fake_conn(0)
    ctl.spool.close()


def reserve(ctl, conn, **fields):
    return ctl.handle(conn, {"op": "create_reservation", "start": "now", "duration": 3600,
                             "users": ["root"], **fields})


@pytest.mark.parametrize("fields, nodes", [
    ({"gpus": 16}, {"big1", "big2"}),                       # the fewest nodes
    ({"gpus": 10}, {"big1", "small1"}),                     # the smallest that makes it up
    ({"gpus": 4, "gpu_type": "a100"}, {"small1", "small2"}),
    ({"node_count": 1, "partition": "cpu"}, {"cpu1"}),
    ({"node_count": 2}, {"big1", "big2"}),
])
def test_a_count_of_gpus_or_nodes_picks_whole_nodes(counted, fields, nodes):
    ctl, conn = counted
    reply = reserve(ctl, conn, name="r", **fields)
    assert reply["ok"], reply
    assert set(hostlist.expand(reply["reservation"]["nodes"])) == nodes
    assert reply["reservation"]["gpus"] == sum(8 if n.startswith("big") else
                                               2 if n.startswith("small") else 0 for n in nodes)


def test_a_count_skips_reserved_drained_and_busy_nodes_or_says_why_not(counted):
    ctl, conn = counted
    assert reserve(ctl, conn, name="first", gpus=8)["ok"]           # takes big1
    second = reserve(ctl, conn, name="second", gpus=8)
    assert second["ok"] and second["reservation"]["nodes"] == "big2"
    ctl.node_status["small1"].drain = True
    third = reserve(ctl, conn, name="third", gpus=4, gpu_type="a100")
    assert third["ok"] and third["reservation"]["nodes"] == "small[2-3]"
    short = reserve(ctl, conn, name="fourth", gpus=2)
    assert not short["ok"] and "only 0 GPUs" in short["error"] and "IGNORE_JOBS" in short["error"]
    both = reserve(ctl, conn, name="x", gpus=2, nodes="cpu1")
    assert not both["ok"] and "both Nodes= and a count" in both["error"]
    nosuch = reserve(ctl, conn, name="x", node_count=1, partition="nosuch")
    assert not nosuch["ok"] and "no such partition" in nosuch["error"]
    assert sorted(w.name for w in ctl.windows()) == ["first", "second", "third"]
