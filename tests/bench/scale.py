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


def build(seed: int = 7):
    from rmsbatch.sched.placement import NodeView, Request
    from rmsbatch.sched.plan import PartitionView, PendingJob
    names = [f"gpu{i:03d}" for i in range(1, NODES + 1)]
    nodes = {}
    for i, name in enumerate(names):
        gtype = "h100" if i < NODES // 2 else "a100"
        nodes[name] = NodeView(name, 64, 512_000, {g: gtype for g in range(8)},
                               frozenset({gtype, "ib"}))
    partitions = {
        "main": PartitionView("main", True, names),
        "h100": PartitionView("h100", True, names[:NODES // 2]),
        "a100": PartitionView("a100", True, names[NODES // 2:]),
        "debug": PartitionView("debug", True, names[-8:]),
    }
    rng = random.Random(seed)
    weights = [w for w, _ in SHAPES]
    pending = []
    now = 1_700_000_000.0
    for job_id in range(1, JOBS + 1):
        n, cpus, mem, gpus, gtype = rng.choices([s for _, s in SHAPES], weights)[0]
        part = rng.choices(["main", "h100", "a100", "debug"], [60, 15, 15, 10])[0]
        if part in ("h100", "a100"):
            gtype = part if gpus else None
        req = Request(nodes=n, cpus=cpus, mem_mb=mem, mem_whole_node=mem == 0, gpus=gpus,
                      gpu_type=gtype)
        pending.append(PendingJob(job_id, part, rng.choice([0, 0, 10, 100]),
                                  now - JOBS + job_id, req, hold=1 if rng.random() < 0.05 else 0))
    return pending, nodes, partitions, now


def timed_pass(pending, nodes, partitions, now):
    from rmsbatch.sched import plan as scheduler
    start = time.perf_counter()
    decisions = scheduler.schedule(list(pending), nodes, partitions, now)
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


def scheduler_at_scale(ctx, reps: int | None = None) -> None:
    reps = reps or (3 if ctx.sizes.query_reps < 20 else 7)
    label = f"{NODES} nodes x 8 GPUs, {JOBS:,} pending"
    rows = {
        "pass_empty": ctx.row("sched", f"10 scheduler pass, {label}, empty cluster", "ms",
                              target=Target("abs_max", 1.0, "≤ 1 s")),
        "pass_full": ctx.row("sched", f"10 scheduler pass, {label}, full cluster", "ms",
                             target=Target("abs_max", 1.0, "≤ 1 s")),
        "per_job": ctx.row("sched", "10 per-job decision, pass time / jobs considered", "µs"),
        "alloc50": ctx.row("sched", "10 per-job decision (each allocate call)", "µs",
                           target=Target("abs_max", 100e-6, "≤ 100 µs")),
        "alloc99": ctx.row("sched", "10 per-job decision (each allocate call)", "µs",
                           stat="p99"),
    }

    def run():
        pending, nodes0, partitions, now = build()
        empty, full, per_job, started = [], [], [], 0
        for _ in range(reps + 1):                  # the first round is a warm-up
            nodes = copy.deepcopy(nodes0)
            took, decisions = timed_pass(pending, nodes, partitions, now)
            started = len(decisions.starts)
            ids = {i for i, _ in decisions.starts}
            rest = [j for j in pending if j.id not in ids]
            filled = copy.deepcopy(nodes)
            took_full, _ = timed_pass(rest, filled, partitions, now + 1)
            empty.append(took)
            full.append(took_full)
            per_job.append(took / len(pending))
        calls = instrumented_pass(pending, copy.deepcopy(nodes0), partitions, now)
        extra = {"started_in_first_pass": started, "allocate_calls": len(calls)}
        util.log(f"scheduler: {started} jobs started on the empty cluster, "
                 f"{len(calls)} allocate calls in a pass")
        return (Measurement(empty[1:], extra=extra), Measurement(full[1:]),
                Measurement(per_job[1:]), Measurement(calls, extra=extra), Measurement(calls))

    class Core:
        label = "rmsbatch"
    ctx.measure(Core(), list(rows.values()), run)
    for r in rows.values():
        r.cells["Slurm"] = "n/a"
