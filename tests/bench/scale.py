"""Figure 10 (rmsbatch only): the pure scheduler core at cluster scale.

128 nodes x 8 GPUs (two GPU types), four partitions, 10,000 pending jobs of mixed
shapes. Two passes are timed on fresh snapshots: the first on an empty cluster
(hundreds of jobs start), the second on the cluster that pass filled (nothing
fits; every partition blocks). Per-job decision times come from timing each
`placement.allocate` call the real `scheduler.schedule` makes (the module's
`allocate` is wrapped for one instrumented pass), and as pass time / jobs.
"""
from __future__ import annotations

import copy
import random
import time

from tests.bench import util
from tests.bench.report import Target
from tests.bench.util import Measurement

NODES = 128
JOBS = 10_000
SHAPES = [  # weight, (nodes, cpus, mem_mb, gpus, gpu type or None)
    (30, (1, 8, 64_000, 1, None)),
    (15, (1, 16, 128_000, 2, None)),
    (10, (1, 32, 256_000, 4, "h100")),
    (10, (1, 64, 0, 8, None)),            # 0 MB here means the whole node
    (5, (2, 64, 0, 8, "a100")),
    (15, (1, 4, 16_000, 0, None)),
    (10, (1, 8, 64_000, 1, "a100")),
    (5, (4, 32, 256_000, 8, "h100")),
]


USERS = [(f"user{i:02d}", f"acct{i % 6}") for i in range(40)]


def build(seed: int = 7, scale: int = 1):
    """`scale` times the nodes and the jobs. Jobs have time limits (backfill plans with
    them), users in six accounts (fair-share) and QoS levels with a per-user GPU limit."""
    from rmsbatch.sched.placement import NodeView, Request
    from rmsbatch.sched.plan import PartitionView, PendingJob
    count = NODES * scale
    names = [f"gpu{i:04d}" for i in range(1, count + 1)]
    nodes = {}
    for i, name in enumerate(names):
        gtype = "h100" if i < count // 2 else "a100"
        nodes[name] = NodeView(name, 64, 512_000, {g: gtype for g in range(8)},
                               frozenset({gtype, "ib"}))
    partitions = {
        "main": PartitionView("main", True, names),
        "h100": PartitionView("h100", True, names[:count // 2]),
        "a100": PartitionView("a100", True, names[count // 2:]),
        "debug": PartitionView("debug", True, names[-8:]),
    }
    rng = random.Random(seed)
    weights = [w for w, _ in SHAPES]
    pending = []
    now = 1_700_000_000.0
    jobs = JOBS * scale
    for job_id in range(1, jobs + 1):
        n, cpus, mem, gpus, gtype = rng.choices([s for _, s in SHAPES], weights)[0]
        part = rng.choices(["main", "h100", "a100", "debug"], [60, 15, 15, 10])[0]
        if part in ("h100", "a100"):
            gtype = part if gpus else None
        req = Request(nodes=n, cpus=cpus, mem_mb=mem, mem_whole_node=mem == 0, gpus=gpus,
                      gpu_type=gtype)
        job = PendingJob(job_id, part, rng.choice([0, 0, 10, 100]), now - jobs + job_id, req,
                         hold=1 if rng.random() < 0.05 else 0)
        job.time_limit = rng.choice([600, 3600, 4 * 3600, 24 * 3600])
        job.user, job.account = rng.choice(USERS)
        job.qos = rng.choice(["normal", "normal", "high", "low"])
        pending.append(job)
    return pending, nodes, partitions, now


def policy_parts(pending, now):
    """What rmsctld adds to a pass: fair-share priorities (usage drawn at random per
    account) and a limits tally (8 GPUs per user in high, 64 per account)."""
    from rmsbatch.sched import limits, priority
    rng = random.Random(11)
    fair = {(u, a): rng.random() for u, a in USERS}
    ctx = priority.Context(qos_priority={"high": 1000, "normal": 0, "low": -1000},
                           fairshare={(a, u): f for (u, a), f in fair.items()},
                           cpus=64 * NODES, gpus=8 * NODES)
    policy = limits.Policy(qos={"high": limits.QosLimits(gpus_per_user=8)},
                           accounts={f"acct{i}": limits.AccountLimits(gpus=64)
                                     for i in range(6)})
    return ctx, policy


def timed_pass(pending, nodes, partitions, now, running=(), full_policy=False):
    """One pass as rmsctld runs it: with `full_policy`, priorities recomputed (fair-share,
    age, QoS) and limits checked first, inside the time."""
    from rmsbatch.sched import limits, priority
    from rmsbatch.sched import plan as scheduler
    start = time.perf_counter()
    tally = None
    if full_policy:
        ctx, policy = policy_parts(pending, now)
        for job in pending:
            job.factors = None
        priority.assign(pending, now, ctx)
        tally = limits.LimitTally(policy, [])
    decisions = scheduler.schedule(list(pending), nodes, partitions, now, limits=tally,
                                   running=running)
    return time.perf_counter() - start, decisions


def instrumented_pass(pending, nodes, partitions, now) -> list[float]:
    """Seconds of every allocate() call the scheduler makes in one pass."""
    from rmsbatch.sched import plan as scheduler
    real = scheduler.allocate
    calls: list[float] = []

    def allocate(req, candidates):
        t = time.perf_counter()
        try:
            return real(req, candidates)
        finally:
            calls.append(time.perf_counter() - t)

    scheduler.allocate = allocate
    try:
        scheduler.schedule(list(pending), nodes, partitions, now)
    finally:
        scheduler.allocate = real
    return calls


def _two_passes(scale: int, reps: int):
    """The empty-cluster pass and the full-cluster pass (backfill planning against the
    running jobs' ends), both with fair-share priorities and limits."""
    pending, nodes0, partitions, now = build(scale=scale)
    empty, full, per_job, started = [], [], [], 0
    for _ in range(reps + 1):                  # the first round is a warm-up
        nodes = copy.deepcopy(nodes0)
        took, decisions = timed_pass(pending, nodes, partitions, now, full_policy=True)
        started = len(decisions.starts)
        limit = {j.id: j.time_limit for j in pending}
        running = [(alloc, now + limit[i]) for i, alloc in decisions.starts]
        ids = {i for i, _ in decisions.starts}
        rest = [j for j in pending if j.id not in ids]
        filled = copy.deepcopy(nodes)
        took_full, later = timed_pass(rest, filled, partitions, now + 1, running,
                                      full_policy=True)
        empty.append(took)
        full.append(took_full)
        per_job.append(took_full / len(rest))
    extra = {"started_in_first_pass": started, "planned_starts": len(later.est_start)}
    return empty[1:], full[1:], per_job[1:], extra, (pending, nodes0, partitions, now)


def scheduler_at_scale(ctx, reps: int | None = None) -> None:
    reps = reps or (3 if ctx.sizes.query_reps < 20 else 7)
    label = f"{NODES} nodes x 8 GPUs, {JOBS:,} pending, backfill, fair-share, limits"
    rows = {
        "pass_empty": ctx.row("sched", f"10 scheduler pass, {label}, empty cluster", "ms",
                              target=Target("abs_max", 1.0, "≤ 1 s")),
        "pass_full": ctx.row("sched", f"10 scheduler pass, {label}, full cluster", "ms",
                             target=Target("abs_max", 1.0, "≤ 1 s")),
        "per_job": ctx.row("sched", "10 per-job decision, full pass time / jobs", "µs",
                           target=Target("abs_max", 100e-6, "≤ 100 µs")),
        "alloc50": ctx.row("sched", "10 per-job decision (each allocate call)", "µs",
                           target=Target("abs_max", 100e-6, "≤ 100 µs")),
        "alloc99": ctx.row("sched", "10 per-job decision (each allocate call)", "µs",
                           stat="p99"),
        "full2": ctx.row("sched", f"10 full-cluster pass at 2x ({2 * NODES} nodes, "
                                  f"{2 * JOBS:,} pending)", "ms"),
        "full4": ctx.row("sched", f"10 full-cluster pass at 4x ({4 * NODES} nodes, "
                                  f"{4 * JOBS:,} pending)", "ms"),
    }

    def run():
        empty, full, per_job, extra, snapshot = _two_passes(1, reps)
        pending, nodes0, partitions, now = snapshot
        calls = instrumented_pass(pending, copy.deepcopy(nodes0), partitions, now)
        extra["allocate_calls"] = len(calls)
        util.log(f"scheduler: {extra['started_in_first_pass']} jobs started on the empty "
                 f"cluster, {len(calls)} allocate calls in a pass, "
                 f"{extra['planned_starts']} start estimates in the full pass")
        _, full2, _, _, _ = _two_passes(2, 1)
        _, full4, _, _, _ = _two_passes(4, 1)
        return (Measurement(empty, extra=extra), Measurement(full), Measurement(per_job),
                Measurement(calls, extra=extra), Measurement(calls), Measurement(full2),
                Measurement(full4))

    class Core:
        label = "rmsbatch"
    ctx.measure(Core(), list(rows.values()), run)
    for r in rows.values():
        r.cells["Slurm"] = "n/a"
