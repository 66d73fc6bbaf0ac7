"""The controller service object on a real spool, without sockets or daemons:
requests in, spool rows and node orders out."""
from __future__ import annotations

import sqlite3

import pytest

from conftest import Clock, controller_on_spool, fake_conn
from rmsbatch.ctld.service import Controller
from rmsbatch.core.jobspec import JobSpec
from rmsbatch.core.states import JobState

CLUSTER = """
name = "t"
[controller]
socket = "run/s.sock"
spool_dir = "spool"
[[nodes]]
names = "g[1-2]"
cpus = 8
memory = "64G"
[[nodes.gpus]]
type = "a100"
count = 4
[[partitions]]
name = "gpu"
default = true
max_time = "1:00:00"
"""
TENANTS = """
admins = ["root"]
private_accounting = true
[[accounts]]
name = "lab"
users = ["*"]
"""
QOS = """
[[qos]]
name = "normal"
"""


@pytest.fixture
def ctl(tmp_path):
    c = controller_on_spool(tmp_path, CLUSTER, TENANTS, QOS, clock=Clock())
    yield c
    c.spool.close()


ROOT = fake_conn(0)


def spec(**kw) -> dict:
    base = JobSpec(script="#!/bin/sh\ntrue\n", workdir="/tmp", submit_dir="/tmp")
    for k, v in kw.items():
        setattr(base, k, v)
    return base.to_dict()


def submit(ctl, conn=ROOT, **kw) -> int:
    reply = ctl.handle(conn, {"op": "submit", "spec": spec(**kw)})
    assert reply["ok"], reply
    return reply["job_id"]


def register(ctl, node: str):
    conn = fake_conn(0)
    assert ctl.handle(conn, {"op": "node_hello", "node": node, "inventory": {}})["ok"]
    return conn


def test_submit_schedule_launch_end(ctl):
    node = register(ctl, "g1")
    job_id = submit(ctl, gpus=2)
    assert ctl.schedule() == 1
    ctl.flush()
    launch = node.meta["sent"][-1]
    assert launch["op"] == "launch" and launch["job"]["alloc"]["gpus"] == [0, 1]
    row = ctl.spool.job(job_id)
    assert row["state"] == "RUNNING" and row["nodelist"] == "g1" and row["time_limit"] == 3600
    outcome = {"job_id": job_id, "run": 0, "state": "COMPLETED", "exit_code": 0, "signal": 0}
    assert ctl.handle(node, {"op": "job_ended", "node": "g1", "outcome": outcome})["ok"]
    assert ctl.spool.job(job_id)["state"] == "COMPLETED"
    # a repeated report (rmsd restarted before it saw the ack) changes nothing
    outcome["state"] = "FAILED"
    ctl.handle(node, {"op": "job_ended", "node": "g1", "outcome": outcome})
    assert ctl.spool.job(job_id)["state"] == "COMPLETED"
    assert ctl.nodes["g1"].free_gpus == {0, 1, 2, 3}


def test_guarded_transitions_cannot_finish_a_job_twice(ctl):
    job_id = submit(ctl)
    assert ctl.spool.transition(job_id, JobState.CANCELLED, end_time=1.0)
    assert not ctl.spool.transition(job_id, JobState.COMPLETED, end_time=2.0)
    assert not ctl.spool.transition(job_id, JobState.RUNNING)
    # and through a second connection to the same file, as another process would
    other = sqlite3.connect(ctl.spool.path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0] == "CANCELLED"


def test_submit_is_validated_against_the_config(ctl):
    for kw, message in ((dict(partition="cpu"), "invalid partition 'cpu'"),
                        (dict(account="physics"), "invalid account 'physics'"),
                        (dict(qos="high"), "invalid QoS 'high'"),
                        (dict(time_limit=7200), "exceeds the maximum of partition gpu"),
                        (dict(gpus=5), "requested 5 GPUs per node; node g1 has 4"),
                        (dict(gpu_type="h100", gpus=1), "h100 GPUs")):
        reply = ctl.handle(ROOT, {"op": "submit", "spec": spec(**kw)})
        assert not reply["ok"] and message in reply["error"], (kw, reply)
    reply = ctl.handle(ROOT, {"op": "submit", "spec": {**spec(), "evil": 1}})
    assert not reply["ok"] and "evil" in reply["error"]
    assert ctl.spool.jobs() == []


def test_multi_node_job_spans_nodes_and_runs_its_script_once(ctl):
    g1, g2 = register(ctl, "g1"), register(ctl, "g2")
    job_id = submit(ctl, nodes=2, gpus=8)
    ctl.schedule()
    ctl.flush()
    row = ctl.spool.job(job_id)
    assert row["nodelist"] == "g[1-2]" and row["alloc_gpus"] == 8
    # every node sets up its part of the allocation; the script runs on the first only
    first = [m["job"] for m in g1.meta.get("sent", []) if m["op"] == "launch"]
    second = [m["job"] for m in g2.meta.get("sent", []) if m["op"] == "launch"]
    assert len(first) == len(second) == 1
    assert first[0]["nodelist"] == second[0]["nodelist"] == "g[1-2]"
    assert first[0]["script"] == spec()["script"] and "batch" not in first[0]
    assert second[0]["batch"] is False and second[0]["script"] != first[0]["script"]
    assert ctl.nodes["g2"].free_gpus == set()     # held for the job all the same


def test_only_the_first_nodes_outcome_ends_a_multi_node_job(ctl):
    g1, g2 = register(ctl, "g1"), register(ctl, "g2")
    job_id = submit(ctl, nodes=2)
    ctl.schedule()
    ended = {"job_id": job_id, "run": 0, "state": "FAILED", "exit_code": 1, "signal": 0}
    reply = ctl.handle(g2, {"op": "job_ended", "node": "g2", "outcome": ended})
    assert reply["ok"] and reply["ack"] == "job_ended"      # g2 may clean up
    assert ctl.spool.job(job_id)["state"] == "RUNNING"
    ctl.flush()
    g2.meta["sent"] = []
    done = {**ended, "state": "COMPLETED", "exit_code": 0}
    ctl.handle(g1, {"op": "job_ended", "node": "g1", "outcome": done})
    ctl.flush()
    assert ctl.spool.job(job_id)["state"] == "COMPLETED"
    assert [m["op"] for m in g2.meta["sent"]] == ["cancel"]   # g2 releases its part


def test_negative_nice_is_for_operators(ctl):
    reply = ctl.handle(fake_conn(65534), {"op": "submit", "spec": spec(nice=-5)})
    assert not reply["ok"] and "--nice=-5" in reply["error"]
    assert ctl.handle(ROOT, {"op": "submit", "spec": spec(nice=-5)})["ok"]


def test_old_run_outcome_is_ignored_after_requeue(ctl):
    node = register(ctl, "g1")
    job_id = submit(ctl, requeue=True)
    ctl.schedule()
    ctl.clock.now += 1000          # g1 falls silent
    ctl.check_nodes()
    row = ctl.spool.job(job_id)
    assert row["state"] == "PENDING" and row["restart_count"] == 1
    register(ctl, "g1")
    ctl.schedule()
    stale = {"job_id": job_id, "run": 0, "state": "CANCELLED", "exit_code": 0, "signal": 15}
    ctl.handle(node, {"op": "job_ended", "node": "g1", "outcome": stale})
    assert ctl.spool.job(job_id)["state"] == "RUNNING"


def test_rebuild_from_spool(ctl):
    register(ctl, "g1")
    running = submit(ctl, gpus=4)
    waiting = submit(ctl, gpus=1)
    ctl.schedule()
    again = Controller(ctl.config, ctl.spool, clock=ctl.clock)
    assert set(again.running) == {running} and set(again.pending) == {waiting}
    assert again.nodes["g1"].free_gpus == set()


def test_accounting_privacy(ctl):
    submit(ctl)
    alice = fake_conn(65534)   # nobody: an ordinary user
    reply = ctl.handle(alice, {"op": "jobs", "all_users": True})
    assert not reply["ok"] and "private_accounting" in reply["error"]
    reply = ctl.handle(alice, {"op": "jobs", "all_users": False})
    assert reply["ok"] and reply["jobs"] == []
    reply = ctl.handle(alice, {"op": "jobs", "active": True})   # rq: the queue is public
    assert len(reply["jobs"]) == 1


def test_fresh_submissions_behind_a_blocked_job_skip_the_full_pass(ctl):
    register(ctl, "g1")
    register(ctl, "g2")
    first = submit(ctl, nodes=2, gpus=8)
    ctl.schedule()
    big = submit(ctl, gpus=4)
    ctl.schedule()
    assert ctl.reasons[big] == "Resources"
    later = [submit(ctl, gpus=1) for _ in range(3)]
    assert not ctl.dirty and ctl.fresh
    ctl.schedule()
    assert [ctl.reasons[j] for j in later] == ["Priority"] * 3
    assert [ctl.spool.job(j)["reason"] for j in later] == ["Priority"] * 3
    assert ctl.spool.job(first)["state"] == "RUNNING"


def test_a_node_whose_cluster_toml_differs_is_refused_naming_the_key(ctl, tmp_path):
    """Every host reads the same cluster.toml: a node daemon that read another one is
    not registered, and the refusal names the first key that differs."""
    from rmsbatch import config as configmod
    theirs = dict(ctl.config.cluster_digest)
    conn = fake_conn(0)
    same = ctl.handle(conn, {"op": "node_hello", "node": "g1", "inventory": {},
                             "config": theirs})
    assert same["ok"], same
    other = tmp_path / "other"
    other.mkdir()
    for name in ("cluster.toml", "tenants.toml", "qos.toml"):
        text = (tmp_path / name).read_text()
        if name == "cluster.toml":       # another layout, one value changed
            text = "# copied by hand\n" + text.replace('max_time = "1:00:00"',
                                                      'max_time = "2:00:00"')
        (other / name).write_text(text)
    theirs = configmod.load(str(other)).cluster_digest
    refused = ctl.handle(fake_conn(0), {"op": "node_hello", "node": "g2", "inventory": {},
                                        "config": theirs})
    assert not refused["ok"]
    assert "differs from the controller's at partitions[0].max_time" in refused["error"]
    assert ctl.node_status["g2"].up is False
    # an rmsd from before digests: taken as it is
    assert ctl.handle(fake_conn(0), {"op": "node_hello", "node": "g2", "inventory": {}})["ok"]


def test_node_daemon_settings_may_differ_while_they_roll_out(tmp_path):
    """[node_daemon] is rmsd's alone: a node that reloaded a new prolog before the
    controller did is still the same cluster."""
    from rmsbatch import config as configmod
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for sub, extra in (("a", ""), ("b", '\n[node_daemon]\nprolog = "/etc/rmsbatch/prolog"\n')):
        (tmp_path / sub / "cluster.toml").write_text(CLUSTER + extra)
        (tmp_path / sub / "tenants.toml").write_text(TENANTS)
        (tmp_path / sub / "qos.toml").write_text(QOS)
    a, b = (configmod.load(str(tmp_path / s)).cluster_digest for s in ("a", "b"))
    assert a == b and "partitions[0].max_time" in a


# -- listings asked again (rmsbatch.ctld.listings) -------------------------------------------
def listing(ctl, conn=ROOT) -> dict:
    """What a client reads for `rq` (default columns): the reply as sent."""
    import json
    reply = ctl.handle(conn, {"op": "jobs", "active": True,
                              "fields": ["id", "name", "state", "reason"]})
    assert reply["ok"], reply
    data = getattr(reply, "data", None)
    return json.loads(data) if data is not None else reply


def test_a_listing_asked_again_is_served_again_until_anything_changes(ctl, tmp_path):
    first = submit(ctl, hold=True, name="one")
    before = listing(ctl)
    assert [r[0] for r in before["rows"]] == [first]
    hits = ctl.listings.hits
    assert listing(ctl) == before and ctl.listings.hits == hits + 1
    # a change through the controller...
    second = submit(ctl, hold=True, name="two")
    assert [r[0] for r in listing(ctl)["rows"]] == [first, second]
    assert ctl.handle(ROOT, {"op": "cancel", "ids": [first]})["ok"]
    assert [r[0] for r in listing(ctl)["rows"]] == [second]
    # ...or by anyone else writing the spool: never an old answer
    other = sqlite3.connect(ctl.spool.path)
    other.execute("UPDATE jobs SET name = 'renamed' WHERE id = ?", (second,))
    other.commit()
    other.close()
    assert listing(ctl)["rows"][0][1] == "renamed"


def _commits(ctl) -> list[str]:
    """The spool's COMMIT statements from now on (each one an fsync of the WAL)."""
    seen: list[str] = []
    ctl.spool.db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


def test_a_submission_that_fits_is_committed_started_and_launched_at_once(ctl):
    node = register(ctl, "g1")
    commits = _commits(ctl)
    [(_, reply)] = ctl.handle_batch([(ROOT, {"op": "submit", "spec": spec(gpus=1)})])
    job_id = reply["job_id"]
    # one commit for the submission and the start, and the launch is ready to go with
    # the reply: the pass did not wait for the daemon loop
    assert commits == ["COMMIT"]
    assert ctl.spool.job(job_id)["state"] == "RUNNING"
    ctl.flush()
    assert [m["job"]["job_id"] for m in node.meta["sent"] if m["op"] == "launch"] == [job_id]


def test_after_a_slow_pass_a_submission_is_answered_before_the_next(ctl):
    register(ctl, "g1")
    ctl.pass_stats.last_s = 0.5                 # a long queue: nobody's reply waits for it
    commits = _commits(ctl)
    [(_, reply)] = ctl.handle_batch([(ROOT, {"op": "submit", "spec": spec(gpus=1)})])
    assert commits == ["COMMIT"] and ctl.spool.job(reply["job_id"])["state"] == "PENDING"
    assert ctl.needs_pass and ctl.schedule() == 1
    assert ctl.spool.job(reply["job_id"])["state"] == "RUNNING"


def test_a_failing_pass_after_a_submission_loses_nothing(ctl, monkeypatch, caplog):
    from rmsbatch.sched import plan
    register(ctl, "g1")
    real = plan.schedule

    def broken(*args, **kw):
        raise RuntimeError("a bug in the scheduler")
    monkeypatch.setattr(plan, "schedule", broken)
    [(_, reply)] = ctl.handle_batch([(ROOT, {"op": "submit", "spec": spec(gpus=1)})])
    assert reply["ok"] and ctl.spool.job(reply["job_id"])["state"] == "PENDING"
    assert reply["job_id"] in ctl.pending and "a bug in the scheduler" in caplog.text
    monkeypatch.setattr(plan, "schedule", real)
    assert ctl.needs_pass and ctl.schedule() == 1       # the loop's next pass starts it
    assert ctl.spool.job(reply["job_id"])["state"] == "RUNNING"
