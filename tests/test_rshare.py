"""Fair-share with real daemons: an account's finished usage lowers its next job's
priority below another account's on a full cluster; `rshare` shows why (and still
does after rmsctld restarts, from the spool); `rq --priority` and `rcontrol show job`
show the factors."""
from __future__ import annotations

import json
import os

import pytest

from conftest import Clock, controller_on_spool, fake_conn

TENANTS = """admins = ["root"]
private_accounting = false
[[accounts]]
name = "heavy"
users = ["*"]
[[accounts]]
name = "light"
users = ["*"]
[[accounts]]
name = "light-sub"
parent = "light"
users = ["*"]
"""


def _tenants(c) -> None:
    with open(os.path.join(c.dir, "tenants.toml"), "w") as fh:
        fh.write(TENANTS)


def _shares(c, *args) -> dict:
    result = c.run("rshare", "--json", "-a", *args, check=True)
    return {(r["account"], r["user"]): r for r in json.loads(result.stdout)["shares"]}


def test_usage_orders_accounts_and_rshare_shows_it(new_cluster):
    c = new_cluster(gpus=2, before_start=_tenants)
    used = c.submit("-A", "heavy", "-G", "2", "--wrap", "sleep 2")
    assert c.wait_ended(used)["state"] == "COMPLETED"
    blocker = c.submit("-A", "heavy", "-G", "2", "--wrap", "sleep 300")
    c.wait_state(blocker, "RUNNING")
    # the heavy account's job is older, but its account has used the cluster
    older = c.submit("-A", "heavy", "-G", "2", "--wrap", "true")
    newer = c.submit("-A", "light", "-G", "2", "--wrap", "true")

    listing = c.run("rq", "--priority", check=True).stdout
    lines = listing.splitlines()
    assert lines[0].split()[:6] == ["JOBID", "PARTITION", "USER", "ACCOUNT", "PRIORITY", "AGE"]
    assert [line.split()[0] for line in lines[1:3]] == [str(newer), str(older)]
    assert "fair-share up to 10000" in listing
    shown = {j["id"]: j for j in json.loads(c.run("rq", "--priority", "--json",
                                                  check=True).stdout)["jobs"]}
    assert shown[newer]["factors"]["fairshare"] == 1.0           # never used anything
    assert shown[older]["factors"]["fairshare"] < 0.6
    assert shown[newer]["priority"] > shown[older]["priority"]

    detail = c.run("rcontrol", "show", "job", str(older), check=True).stdout
    assert "PriorityFactors=Age=" in detail and "FairShare=" in detail

    shares = _shares(c)
    assert shares[("heavy", None)]["raw_usage"] > 2 * 2 * 32    # 2 s of 2 GPUs at least
    assert shares[("light", None)]["raw_usage"] == 0
    assert shares[("light-sub", None)]["norm_shares"] == 0.25   # half of light's half
    assert shares[("heavy", "root")]["factor"] < shares[("light", "root")]["factor"]
    text = c.run("rshare", "-a", check=True).stdout
    assert text.splitlines()[0].split() == ["Account", "User", "RawShares", "NormShares",
                                            "RawUsage", "EffectvUsage", "FairShare"]
    assert " light-sub " in text                             # indented under light
    # what-if: many more shares for heavy raise its factor, and nothing changes
    what_if = _shares(c, "--what-if", "heavy=100")
    assert what_if[("heavy", "root")]["factor"] > shares[("heavy", "root")]["factor"]
    assert _shares(c)[("heavy", None)]["raw_shares"] == 1
    bad = c.run("rshare", "--what-if", "nosuch=3")
    assert bad.returncode == 1 and bad.stderr.startswith("rshare: error: no account 'nosuch'")
    assert len(bad.stderr.splitlines()) == 1

    # the cluster frees: the light account's job goes first
    c.run("rcancel", str(blocker), check=True)
    assert c.wait_ended(newer)["state"] == "COMPLETED"
    assert c.wait_ended(older)["state"] == "COMPLETED"
    assert c.job(newer)["start_time"] <= c.job(older)["start_time"]

    # usage survives rmsctld's restart: it is rebuilt from the spool
    before = _shares(c)[("heavy", None)]["raw_usage"]
    c.down()
    c.up()
    after = _shares(c)[("heavy", None)]["raw_usage"]
    assert 0.99 * before <= after <= before


# -- the controller's usage on a real spool, its clock in the test's hands -------------------
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
[priority]
half_life = 3600
billing_gpu_types = { h100 = 100.0 }
"""
QOS = '[[qos]]\nname = "normal"\n'


def _controller(tmp_path, clock, qos=QOS):
    return controller_on_spool(tmp_path, CLUSTER, TENANTS, qos, clock=clock)


def test_controller_usage_decays_and_priorities_age(tmp_path):
    from rmsbatch.core.jobspec import JobSpec
    clock, root = Clock(), fake_conn()
    ctl = _controller(tmp_path, clock)
    assert ctl.handle(root, {"op": "node_hello", "node": "g1", "inventory": {}})["ok"]

    def submit(account, gpus):
        spec = JobSpec(script="#!/bin/sh\ntrue\n", workdir="/tmp", submit_dir="/tmp",
                       account=account, gpus=gpus).to_dict()
        reply = ctl.handle(root, {"op": "submit", "spec": spec})
        assert reply["ok"], reply
        return reply["job_id"]

    used = submit("heavy", 4)
    ctl.schedule()
    clock.now += 600                           # 10 minutes on 4 H100s
    outcome = {"job_id": used, "run": 0, "state": "COMPLETED", "exit_code": 0, "signal": 0,
               "start_time": clock.now - 600, "end_time": clock.now}
    assert ctl.handle(root, {"op": "job_ended", "node": "g1", "outcome": outcome})["ok"]
    billed = ctl.usage.usage(clock.now)[("heavy", "root")]
    rate = 4 * 100 + 1 + 0.25 * 1              # H100s at 100, a CPU, a GiB of memory
    # 600 s at that rate, its first seconds already decayed a little (half-life 1 h)
    assert billed == pytest.approx(600 * rate * 0.944, rel=0.01)

    blocker = submit("light", 4)
    ctl.schedule()
    mine, theirs = submit("heavy", 4), submit("light", 4)
    ctl.schedule()
    assert ctl.pending[theirs].priority > ctl.pending[mine].priority
    before = ctl.pending[mine].priority
    clock.now += 2 * 3600                      # two half-lives, two hours older
    ctl.schedule()
    assert ctl.pending[mine].priority > before           # age grew, usage decayed
    assert ctl.usage.usage(clock.now)[("heavy", "root")] == pytest.approx(billed / 4, rel=0.01)
    assert blocker in ctl.running

    # rmsctld restarted: the same usage, from the spool
    again = _controller(tmp_path, clock)
    assert again.usage.usage(clock.now)[("heavy", "root")] == pytest.approx(billed / 4, rel=0.01)


def test_a_qos_usage_factor_scales_what_its_jobs_are_billed(tmp_path):
    clock = Clock()
    for name in ("full", "half", "free"):
        (tmp_path / name).mkdir()
    full = _controller(tmp_path / "full", clock)
    half = _controller(tmp_path / "half", clock, QOS + "usage_factor = 0.5\n")
    row = (1, "heavy", "root", 0.0, 600.0, 1, 4, 1024, 1, "h100", "normal", None, None)
    assert half.usage.rate(row) == pytest.approx(full.usage.rate(row) / 2)
    free = _controller(tmp_path / "free", clock, QOS + "usage_factor = 0\n")
    assert free.usage.rate(row) == 0


def test_usage_rebuilt_at_start_is_the_sum_of_every_runs_own_charge(tmp_path):
    """At a restart the finished runs' usage is summed by SQLite (a million rows would
    take most of a minute in Python): each kind of run (charged at start, priced by its
    GPU type, by its allocation, under a QoS usage factor, ended before it started)
    adds exactly what the per-run path adds when a run ends."""
    import sqlite3

    from rmsbatch.sched import fairshare
    clock = Clock()
    clock.now = 1_000_000.0
    qos = QOS + 'usage_factor = 0.5\n[[qos]]\nname = "free"\nusage_factor = 0\n'
    first = _controller(tmp_path, clock, qos)
    db = sqlite3.connect(first.spool.path)
    alloc = json.dumps({"g1": {"cpus": 2, "gpus": [0, 1], "mem_mb": 2048}})
    rows = [  # account, user, qos, cpus, gpus, mem, gpu_type, billing, alloc, start, end
        ("heavy", "ann", "normal", 1, 4, 1024, "h100", None, None, -7200, -3600),
        ("heavy", "ann", "normal", 8, 0, 4096, None, 3.5, None, -900, -60),
        ("heavy", "bob", "free", 1, 1, 1024, "H100", None, None, -600, -10),
        ("light", "ann", "normal", 2, 2, 0, None, None, alloc, -5000, -100),
        ("light", "ann", "normal", 2, 2, 1024, None, None, alloc, -3000, -2000),
        ("light", "cy", "normal", 1, 1, 1024, "a100", None, None, -400, -400),
        ("light", "cy", "normal", 1, 0, 512, None, None, None, -10**6, -10**6 + 5),
    ]
    for n, (account, user, q, cpus, gpus, mem, gtype, billing, al, start, end) in \
            enumerate(rows, 1):
        db.execute("INSERT INTO jobs (id, name, user, uid, gid, account, partition, qos, "
                   "state, submit_time, start_time, end_time, nodes, ntasks, cpus_per_task, "
                   "req_cpus, req_mem_mb, req_gpus, gpu_type, alloc_cpus, alloc_gpus, "
                   "billing, alloc, nodelist) VALUES (?, 'r', ?, 0, 0, ?, 'gpu', ?, "
                   "'COMPLETED', ?, ?, ?, 1, 1, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'g1')",
                   (n, user, account, q, clock.now + start, clock.now + start,
                    clock.now + end, cpus, cpus, mem, gpus, gtype, cpus, gpus, billing, al))
    db.commit()
    db.close()
    again = controller_on_spool(tmp_path, clock=clock)     # rmsctld restarted
    want: dict = {}
    for row in again.spool.usage_rows(ids=range(1, len(rows) + 1)):
        used = fairshare.decayed(again.usage.rate(row), row[3], row[4], clock.now, 3600.0)
        want[(row[1], row[2])] = want.get((row[1], row[2]), 0.0) + used
    assert want[("heavy", "bob")] == 0                   # a free QoS
    assert want[("light", "ann")] > 0                    # priced from its allocation
    got = again.usage.done
    assert set(got) <= set(want)
    # cy ran nothing that counts: no time, or 30 half-lives ago and more (forgotten)
    assert got.get(("light", "cy"), 0.0) == pytest.approx(0.0, abs=1e-9)
    for key, value in want.items():
        assert got.get(key, 0.0) == pytest.approx(value, rel=1e-9, abs=1e-9), key
