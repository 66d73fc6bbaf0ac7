"""An operator's pinned priority (rcontrol update job ID Priority=N) is stored with the
job, not guessed: it survives a controller restart, a pin at exactly what admission
stores stays a pin, and changing a QoS's priority in the configuration pins nobody.
On a controller over a real spool (its clock in the test's hands), on a spool from
before schema 8, and with real daemons restarted with kill -9."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest

from conftest import Clock, controller_on_spool, fake_conn

CLUSTER = """
name = "t"
[controller]
socket = "run/s.sock"
spool_dir = "spool"
[[nodes]]
names = "g1"
cpus = 8
memory = "64G"
[[nodes.gpus]]
type = "h100"
count = 4
[[partitions]]
name = "gpu"
default = true
"""
TENANTS = """admins = ["root"]
[[accounts]]
name = "a"
users = ["*"]
"""
QOS = """default = "normal"
[[qos]]
name = "normal"
[[qos]]
name = "high"
priority = {high}
"""


def _controller(tmp_path, clock, high=100, first=True):
    """rmsctld on the spool under tmp_path, started again: `high` is the high QoS's
    priority in qos.toml (its factor is 1.0 above 0, and 0.0 below normal's 0)."""
    return controller_on_spool(tmp_path, CLUSTER if first else None,
                               TENANTS if first else None, QOS.format(high=high), clock=clock)


def _call(ctl, op, **fields) -> dict:
    reply = ctl.handle(fake_conn(), {"op": op, **fields})
    assert reply["ok"], reply
    return reply


def _submit(ctl, qos="normal", hold=True) -> int:
    from rmsbatch.core.jobspec import JobSpec
    spec = JobSpec(script="#!/bin/sh\ntrue\n", workdir="/tmp", submit_dir="/tmp", qos=qos,
                   hold=hold, gpus=1).to_dict()
    return _call(ctl, "submit", spec=spec)["job_id"]


def _shown(ctl) -> dict:
    """Job id -> its priority as `rq --priority` and `rcontrol show job` get it."""
    ctl.schedule()
    return {j["id"]: j for j in _call(ctl, "priorities")["jobs"]}


def _follows_factors(job: dict) -> bool:
    return not job["pinned"] and job["priority"] == sum(job["weighted"].values()) - job["nice"]


def test_a_pin_survives_a_restart_and_a_new_qos_priority_pins_nobody(tmp_path):
    clock = Clock()
    ctl = _controller(tmp_path, clock)
    pinned, free, exact, niced = (_submit(ctl, "high") for _ in range(4))
    _call(ctl, "update_job", ids=[pinned], priority=5000)
    _call(ctl, "update_job", ids=[exact], priority=100)     # what admission stored for it
    _call(ctl, "update_job", ids=[niced], priority=7000)
    _call(ctl, "update_job", ids=[niced], nice=50)           # a pin outlives a new nice
    shown = _shown(ctl)
    assert (shown[pinned]["pinned"], shown[pinned]["priority"]) == (True, 5000)
    assert (shown[exact]["pinned"], shown[exact]["priority"]) == (True, 100)
    assert (shown[niced]["pinned"], shown[niced]["priority"]) == (True, 7000)
    assert _follows_factors(shown[free]) and shown[free]["factors"]["qos"] == 1.0

    # restarted, with the high QoS now below normal: the unpinned job's stored priority
    # (100, from admission) is no longer what admission would store, and still no pin
    clock.now += 60
    again = _controller(tmp_path, clock, high=-50, first=False)
    shown = _shown(again)
    assert (shown[pinned]["pinned"], shown[pinned]["priority"]) == (True, 5000)
    assert (shown[exact]["pinned"], shown[exact]["priority"]) == (True, 100)
    assert (shown[niced]["pinned"], shown[niced]["priority"]) == (True, 7000)
    assert again.spool.job(free)["priority"] == 100
    assert _follows_factors(shown[free]) and shown[free]["factors"]["qos"] == 0.0
    assert again.pending[free].priority == shown[free]["priority"]

    # Priority=reset: back to the factors, and to admission's stored value
    _call(again, "update_job", ids=[pinned], priority="reset")
    _call(again, "update_job", ids=[free], nice=10)          # unpinned: admission's value
    shown = _shown(again)
    assert _follows_factors(shown[pinned])
    assert again.spool.job(pinned)["priority"] == -50
    assert again.spool.job(free)["priority"] == -60
    third = _controller(tmp_path, clock, high=-50, first=False)
    shown = _shown(third)
    assert _follows_factors(shown[pinned]) and shown[exact]["pinned"]


def test_a_bad_priority_is_refused(tmp_path):
    ctl = _controller(tmp_path, Clock())
    job = _submit(ctl)
    for value in ("auto", "5", -1):
        reply = ctl.handle(fake_conn(), {"op": "update_job", "ids": [job], "priority": value})
        assert not reply["ok"] and "priority" in reply["error"], reply


def _downgrade_to_schema_7(path: str) -> None:
    """The spool as rmsbatch before schema 8 left it: no priority_pinned column."""
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE jobs DROP COLUMN priority_pinned")
    db.execute("PRAGMA user_version=7")
    db.commit()
    db.close()


def _pins(path: str) -> dict:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT id, priority_pinned FROM jobs"))
    finally:
        db.close()


def test_a_spool_at_schema_7_upgrades_and_its_pins_are_judged_once(tmp_path):
    """Migration 8 marks the active jobs "not known yet"; the controller's first start
    judges them by the old rule (a stored priority other than admission's was pinned),
    with the configuration they were stored under, and from then on the flag rules."""
    from rmsbatch.ctld.spool import MIGRATIONS
    clock, root = Clock(), fake_conn()
    ctl = _controller(tmp_path, clock)
    assert ctl.handle(root, {"op": "node_hello", "node": "g1", "inventory": {}})["ok"]
    done = _submit(ctl, hold=False)
    ctl.schedule()
    outcome = {"job_id": done, "run": 0, "state": "COMPLETED", "exit_code": 0, "signal": 0,
               "start_time": clock.now, "end_time": clock.now + 1}
    assert ctl.handle(root, {"op": "job_ended", "node": "g1", "outcome": outcome})["ok"]
    running = _submit(ctl, hold=False)
    ctl.schedule()
    assert running in ctl.running
    plain, pinned, high = _submit(ctl), _submit(ctl), _submit(ctl, "high")
    for job_id, value in ((pinned, 5000), (running, 42), (done, 9)):
        ctl.spool.update_job(job_id, priority=value)    # as the old op stored a pin
    path = ctl.spool.path
    ctl.spool.close()
    _downgrade_to_schema_7(path)

    again = _controller(tmp_path, clock, first=False)
    assert again.spool.schema_version == len(MIGRATIONS)
    assert _pins(path) == {done: 0, running: 1, plain: 0, pinned: 1, high: 0}
    assert again.pending[pinned].pinned == 5000 and again.pending[plain].pinned is None
    shown = _shown(again)
    assert shown[pinned]["pinned"] and _follows_factors(shown[high])

    # judged once: a new QoS priority later makes the high job's stored 100 look
    # "pinned" to the old rule, and it is not
    third = _controller(tmp_path, clock, high=-50, first=False)
    assert _pins(path)[high] == 0 and _follows_factors(_shown(third)[high])


# -- with real daemons -------------------------------------------------------------------
def _priorities(c) -> dict:
    listed = json.loads(c.run("rq", "--priority", "--json", check=True).stdout)["jobs"]
    return {j["id"]: j for j in listed}


def _restart_rmsctld(c) -> None:
    c.kill9("rmsctld")
    c.up()                      # restarts only what is not running: rmsctld, from its spool


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (rms-local's users and cgroups)")
def test_a_pinned_priority_survives_kill_9_and_a_qos_change(new_cluster):
    c = new_cluster(gpus=1)
    pinned = c.submit("-H", "--wrap", "true")
    free = c.submit("-H", "-q", "high", "--wrap", "true")
    exact = c.submit("-H", "-q", "high", "--wrap", "true")
    c.run("rcontrol", "update", "job", str(pinned), "Priority=5000", check=True)
    # rms-local's high QoS has priority 100: what admission stored for this job
    c.run("rcontrol", "update", "JobId=" + str(exact), "Priority=100", check=True)

    _restart_rmsctld(c)
    shown = _priorities(c)
    assert (shown[pinned]["pinned"], shown[pinned]["priority"]) == (True, 5000)
    assert (shown[exact]["pinned"], shown[exact]["priority"]) == (True, 100)
    assert _follows_factors(shown[free])

    # the admin puts the high QoS below normal and restarts
    path = os.path.join(c.dir, "qos.toml")
    with open(path) as fh:
        text = fh.read()
    assert "priority = 100" in text
    with open(path, "w") as fh:
        fh.write(text.replace("priority = 100", "priority = -50"))
    _restart_rmsctld(c)
    shown = _priorities(c)
    assert _follows_factors(shown[free]) and shown[free]["factors"]["qos"] == 0.0
    assert (shown[exact]["pinned"], shown[exact]["priority"]) == (True, 100)
    listing = c.run("rq", "--priority", check=True).stdout
    notes = {int(line.split()[0]): line.endswith("pinned by an operator")
             for line in listing.splitlines()[1:] if line.split()[0].isdigit()}
    assert notes == {pinned: True, free: False, exact: True}
    detail = c.run("rcontrol", "show", "job", str(exact), check=True).stdout
    assert "PriorityFactors=pinned by an operator (Priority=100)" in detail
    assert "PriorityFactors=Age=" in c.run("rcontrol", "show", "job", str(free),
                                           check=True).stdout

    c.run("rcontrol", "update", "job", str(pinned), "Priority=reset", check=True)
    _restart_rmsctld(c)
    assert _follows_factors(_priorities(c)[pinned])
    bad = c.run("rcontrol", "update", "job", str(pinned), "Priority=auto")
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("rcontrol: error: Priority=auto: must be a whole number "
                                  "of 0 or more, or reset"), bad.stderr
    c.run("rcancel", str(pinned), str(free), str(exact), check=True)
