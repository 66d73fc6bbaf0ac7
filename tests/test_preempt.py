"""Preemption: the choice of victims on hand-built snapshots, and with real daemons a
high-QoS job pushing out a low one that checkpoints on its signal, is requeued and
completes later."""
from __future__ import annotations

import os
import time

from rmsbatch.sched import placement
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.placement import NodeAlloc, NodeView, Request
from rmsbatch.sched.plan import PartitionView, PendingJob
from rmsbatch.sched.preempt import Preemption, Victim


def node(name: str, gpus: int = 4) -> NodeView:
    return NodeView(name, 32, 256_000, {i: "a100" for i in range(gpus)})


def running(nodes, job_id, name, gpus, qos="low", priority=0, start=0.0, **kw) -> Victim:
    alloc = {name: NodeAlloc(1, 0, list(gpus))}
    placement.take(nodes, alloc)
    return Victim(job_id, alloc, qos, "gpu", priority, start, **kw)


def high(job_id=100, gpus=2, nodes=1) -> PendingJob:
    job = PendingJob(job_id, "gpu", 1000, 50.0, Request(nodes=nodes, gpus=gpus))
    job.qos, job.time_limit = "high", 600
    return job


def decide(nodes, victims, jobs, now=100.0, **ctx):
    parts = {"gpu": PartitionView("gpu", True, list(nodes))}
    context = Preemption(victims, {"high": frozenset({"low"})}, **ctx)
    return scheduler.schedule(jobs, nodes, parts, now, preemption=context,
                              running=[(v.alloc, None) for v in victims])


def chosen(out) -> list[int]:
    return sorted(v.id for v, _ in out.preempt)


def test_the_fewest_then_lowest_priority_then_youngest_go():
    nodes = {"g1": node("g1"), "g2": node("g2")}
    victims = [
        running(nodes, 1, "g1", [0], start=10), running(nodes, 2, "g1", [1], start=20),
        running(nodes, 3, "g1", [2], start=30), running(nodes, 4, "g1", [3], start=40),
        # g2: one job holds two GPUs -- one victim instead of two
        running(nodes, 5, "g2", [0, 1], priority=5, start=10),
        running(nodes, 6, "g2", [2, 3], priority=1, start=5),
    ]
    out = decide(nodes, victims, [high()])
    assert chosen(out) == [6] and out.starts == []
    assert out.more[100] == ["preempting 1 job(s)"]
    # among equals the youngest: jobs 3 and 4 on g1 once g2's are not preemptible
    victims = [v for v in victims if v.id < 5]
    nodes["g2"].usable = False
    assert chosen(decide(nodes, victims, [high()])) == [3, 4]


def test_never_for_a_job_that_would_still_not_fit():
    nodes = {"g1": node("g1")}
    victims = [running(nodes, 1, "g1", [0, 1]),
               running(nodes, 2, "g1", [2, 3], qos="normal")]     # not preemptible by high
    out = decide(nodes, victims, [high(gpus=4)])
    assert out.preempt == [] and out.reasons[100] == "Resources"


def test_min_runtime_and_mode_off_protect_a_job():
    nodes = {"g1": node("g1", gpus=2)}
    young = running(nodes, 1, "g1", [0], start=90, min_runtime=60)
    keep = running(nodes, 2, "g1", [1], mode="off")
    assert decide(nodes, [young, keep], [high(gpus=1)]).preempt == []
    assert chosen(decide(nodes, [young, keep], [high(gpus=1)], now=200)) == [1]


def test_victims_on_their_way_out_are_not_chosen_twice():
    nodes = {"g1": node("g1")}
    victims = [running(nodes, 1, "g1", [0, 1]), running(nodes, 2, "g1", [2, 3])]
    out = decide(nodes, victims, [high(100), high(101)])
    assert chosen(out) == [1, 2] and {j for _, j in out.preempt} == {100, 101}
    # the next pass: job 100's victims are going; it asks for no more
    out = decide(nodes, [], [high(100)], waiting=frozenset({100}))
    assert out.preempt == []


def test_a_higher_partition_tier_preempts_when_tiers_are_on():
    nodes = {"g1": node("g1", gpus=1)}
    victim = running(nodes, 1, "g1", [0], qos="normal")
    job = high(gpus=1)
    job.partition = "urgent"
    parts = {"gpu": PartitionView("gpu", True, ["g1"]),
             "urgent": PartitionView("urgent", True, ["g1"])}
    for tiers, expected in ((None, []), ({"urgent": 10, "gpu": 0}, [1])):
        context = Preemption([victim], {}, tiers)
        out = scheduler.schedule([job], nodes, parts, 100.0, preemption=context)
        assert chosen(out) == expected


# -- with real daemons --------------------------------------------------------------------
QOS = """
default = "normal"
[[qos]]
name = "normal"
[[qos]]
name = "high"
priority = 1000
preempt = ["low"]
[[qos]]
name = "low"
priority = -1000
preempt_mode = "requeue"
grace_time = 20
"""

CHECKPOINTING = """#!/bin/bash
echo "run $RMS_RESTART_COUNT started"
if [ "$RMS_RESTART_COUNT" -gt 0 ]; then echo "resumed from $(cat {ckpt})"; exit 0; fi
trap 'echo step-7 > {ckpt}; echo "checkpointed on SIGTERM"; exit 0' TERM
for i in $(seq 600); do sleep 0.1; done
"""


def test_a_high_qos_job_preempts_a_low_one_which_checkpoints_and_comes_back(new_cluster):
    def before(c):
        with open(os.path.join(c.dir, "qos.toml"), "w") as fh:
            fh.write(QOS)
    c = new_cluster(gpus=1, before_start=before)
    ckpt = os.path.join(c.work, "ckpt")
    script = os.path.join(c.work, "low.sh")
    with open(script, "w") as fh:
        fh.write(CHECKPOINTING.format(ckpt=ckpt))
    low = c.submit("--qos=low", "--gpus=1", "-t", "10", script)
    c.wait_state(low, "RUNNING")
    out_file = os.path.join(c.work, f"rms-{low}.out")
    deadline = time.time() + 10     # the trap is set once the script has started
    while time.time() < deadline and not (
            os.path.exists(out_file) and "started" in open(out_file).read()):
        time.sleep(0.1)
    urgent = c.submit("--qos=high", "--gpus=1", "-t", "5", "--wrap", "echo urgent done")
    assert c.wait_ended(urgent, timeout=30)["state"] == "COMPLETED"
    job = c.wait_ended(low, timeout=30)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
    out = c.output(low)
    assert "checkpointed on SIGTERM" in out and "run 1 started" in out
    assert "resumed from step-7" in out
    assert c.job(urgent)["start_time"] < job["start_time"]


STUBBORN = """#!/bin/bash
echo "run $RMS_RESTART_COUNT started"
if [ "$RMS_RESTART_COUNT" -gt 0 ]; then exit 0; fi
trap 'echo "got SIGTERM"' TERM
for i in $(seq 1200); do sleep 0.1; done
"""


def test_a_controller_restarted_in_the_grace_carries_on_with_it(new_cluster):
    """kill -9 of rmsctld while a victim is in its grace: after the restart the victim
    gets no second SIGTERM and no new grace; it is requeued when the first one ends."""
    def before(c):
        with open(os.path.join(c.dir, "qos.toml"), "w") as fh:
            fh.write(QOS.replace("grace_time = 20", "grace_time = 8"))
    c = new_cluster(gpus=1, before_start=before)
    script = os.path.join(c.work, "stubborn.sh")
    with open(script, "w") as fh:
        fh.write(STUBBORN)
    low = c.submit("--qos=low", "--gpus=1", "-t", "10", script)
    out_file = os.path.join(c.work, f"rms-{low}.out")

    def output() -> str:
        return open(out_file).read() if os.path.exists(out_file) else ""
    deadline = time.time() + 15
    while "started" not in output() and time.time() < deadline:
        time.sleep(0.1)
    urgent = c.submit("--qos=high", "--gpus=1", "-t", "5", "--wrap", "echo urgent done")
    deadline = time.time() + 15
    while "got SIGTERM" not in output() and time.time() < deadline:
        time.sleep(0.1)
    assert "got SIGTERM" in output()
    c.kill9("rmsctld")
    c.up()
    assert c.wait_ended(urgent, timeout=60)["state"] == "COMPLETED"
    job = c.wait_ended(low, timeout=60)
    assert job["state"] == "COMPLETED" and job["restart_count"] == 1, job
    assert output().count("got SIGTERM") == 1, output()
    assert "run 1 started" in output()
    # one preemption, carried on across the restart (not a second one, whose signal
    # might not even reach a node that has not reconnected yet)
    with open(os.path.join(c.dir, "log", "rmsctld.log")) as fh:
        log = fh.read()
    assert log.count(f"job {low}: preempted for job {urgent}: SIGTERM now") == 1, log
    assert f"job {low}: preempted for job {urgent}, ended within its grace time" in log or \
        f"job {low}: preempted for job {urgent}, killed at the end of its grace time" in log
