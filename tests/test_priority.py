"""Multifactor priority on hand-built pending jobs (rmsbatch.sched.priority; pure):
each factor, each weight, nice, QoS levels below zero, and an operator's pinned value."""
from __future__ import annotations

import pytest

from rmsbatch.sched import plan as scheduler
from rmsbatch.sched import priority
from rmsbatch.sched.placement import NodeView, Request
from rmsbatch.sched.plan import PartitionView, PendingJob
from rmsbatch.sched.priority import Context, Weights

DAY = 86400.0
QOS = {"normal": 0, "high": 1000, "low": -1000}      # as etc/qos.toml
PARTS = {"batch": 0, "urgent": 10}


def job(i, qos="normal", nice=0, account="a", user="u", partition="batch", submit=0.0,
        **req) -> PendingJob:
    j = PendingJob(i, partition, QOS[qos] + PARTS[partition] - nice, submit, Request(**req))
    j.qos, j.nice, j.account, j.user = qos, nice, account, user
    return j


def ctx(weights=Weights(), fairshare=None) -> Context:
    return Context(weights, QOS, PARTS, fairshare or {("a", "u"): 0.5, ("b", "u"): 0.5},
                   cpus=128, gpus=16)


def prio(j, now=0.0, c=None) -> int:
    priority.assign([j], now, c or ctx())
    return j.priority


def test_age_grows_with_time_pending_and_stops_at_max_age():
    c = ctx(Weights(max_age=7 * DAY))
    ages = [priority.factors(job(1), now, c)["age"] for now in (0, DAY, 7 * DAY, 30 * DAY)]
    assert ages == [0.0, pytest.approx(1 / 7), 1.0, 1.0]
    assert prio(job(1), now=DAY) < prio(job(1), now=3 * DAY) == prio(job(1), now=3 * DAY)
    assert prio(job(1), now=7 * DAY) == prio(job(1), now=70 * DAY)


def test_age_counts_from_the_begin_time():
    j = job(1)
    j.begin_time = 2 * DAY
    assert priority.factors(j, 3 * DAY, ctx())["age"] == pytest.approx(1 / 7)


@pytest.mark.parametrize("name", priority.NAMES)
def test_each_weight_counts(name):
    """With only this weight set, a job whose factor is above 0 gets priority; with
    every weight but this one, the factor changes nothing."""
    only = Weights(**{n: (5000 if n == name else 0) for n in priority.NAMES})
    none = Weights(**{n: (0 if n == name else 5000) for n in priority.NAMES})
    fair = {("a", "u"): 0.2, ("b", "u"): 0.9}
    low = job(1, qos="normal", account="a", gpus=1, submit=0.0)
    high = job(2, qos="high", account="b", partition="urgent", gpus=8, submit=-3 * DAY)
    with_weight = [prio(low, DAY, ctx(only, fair)), prio(high, DAY, ctx(only, fair))]
    assert with_weight[0] < with_weight[1]
    without = ctx(none, fair)
    a, b = priority.factors(low, DAY, without), priority.factors(high, DAY, without)
    a[name] = b[name]
    assert priority.total(a, none, 0) == prio(low, DAY, without)


def test_nice_lowers_and_negative_nice_raises():
    assert prio(job(1, nice=100)) == prio(job(2)) - 100
    assert prio(job(3, nice=-100)) == prio(job(2)) + 100


def test_qos_levels_keep_their_order_below_zero():
    c = ctx()
    assert c.qos_scale == {"low": 0.0, "normal": 0.5, "high": 1.0}
    assert prio(job(1, qos="high")) > prio(job(2, qos="normal")) > prio(job(3, qos="low"))
    assert 0 <= priority.factors(job(3, qos="low"), 0, c)["qos"] <= 1


def test_job_size_favours_big_jobs_unless_told_otherwise():
    small, big = job(1, gpus=1), job(2, gpus=8)       # of 16 GPUs
    assert priority.factors(big, 0, ctx())["job_size"] == 0.5
    assert prio(big) > prio(small)
    flipped = ctx(Weights(favor_small=True))
    assert prio(big, c=flipped) < prio(small, c=flipped)
    cpus = job(3, cpus=64)                             # half of the 128 CPUs
    assert priority.factors(cpus, 0, ctx())["job_size"] == 0.5


def test_fair_share_orders_accounts():
    c = ctx(fairshare={("a", "u"): 0.1, ("b", "u"): 0.9})
    assert prio(job(1, account="a"), c=c) < prio(job(2, account="b"), c=c)


def test_defaults_are_not_zero():
    w = Weights()
    assert all(w.weight(n) > 0 for n in priority.NAMES)


def test_an_operators_priority_is_kept():
    j = job(1)
    j.priority = j.pinned = 7       # rcontrol update job 1 Priority=7
    priority.assign([j], DAY, ctx())
    assert j.priority == 7 and j.factors["pinned"] == 7
    priority.assign([j], 5 * DAY, ctx())    # later passes keep it
    assert j.priority == 7
    assert priority.explain(j, DAY, ctx())["pinned"]


def test_a_pin_is_the_stored_flag_not_a_guess_from_the_stored_priority():
    """A QoS whose priority the configuration changed leaves its jobs' stored priority
    behind: they still follow their factors. A pin at exactly what admission stores
    (QoS + partition priority - nice) is still a pin."""
    stale = job(1, qos="high")
    stale.priority = 123                     # stored under an older qos.toml
    pin = job(2, qos="high")
    pin.pinned = pin.priority                # what admission stored, pinned by an operator
    priority.assign([stale, pin], DAY, ctx())
    assert stale.factors["pinned"] is None
    assert stale.priority == prio(job(3, qos="high"), DAY)
    assert pin.priority == QOS["high"] and pin.factors["pinned"] == QOS["high"]
    assert not priority.explain(stale, DAY, ctx())["pinned"]
    shown = priority.explain(pin, DAY, ctx())
    assert shown["pinned"] and shown["priority"] == QOS["high"]


def test_priorities_order_the_scheduling_pass():
    """Two jobs for one GPU: the one of the account under its share starts."""
    node = NodeView("n1", 8, 64_000, {0: "gpu"})
    c = ctx(fairshare={("a", "u"): 0.1, ("b", "u"): 0.9})
    first, second = job(1, account="a", gpus=1, submit=0.0), job(2, account="b", gpus=1,
                                                                  submit=60.0)
    for j in (first, second):
        j.partition = "batch"
    priority.assign([first, second], 120.0, c)
    out = scheduler.schedule([first, second], {"n1": node},
                             {"batch": PartitionView("batch", True, ["n1"])}, 120.0)
    assert [s[0] for s in out.starts] == [2] and out.reasons == {1: "Resources"}
