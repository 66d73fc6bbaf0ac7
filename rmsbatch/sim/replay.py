"""Replaying a trace through the scheduler core with a virtual clock.

The same `rmsbatch.sched.plan.schedule` that rmsctld runs decides every start; this
module only plays the world around it: jobs arrive at their submit times, run for
their actual run times, and give their nodes back. The clock jumps from event to
event (an arrival, an end), and a pass runs after each distinct moment, as rmsctld
runs one after every submission and every end.

A trace job becomes a pending job on a cluster of identical nodes (`Shape`):
- processors (SWF): whole nodes, ceil(procs / cpus per node) of them, as RLScheduler
  and the Parallel Workloads Archive's own simulators allocate;
- GPUs: one node when the job fits on one, else whole nodes (8-GPU jobs on 8-GPU
  nodes); a fractional GPU (Alibaba's gpu_milli) books a whole device, since the
  placement core has no shares of one device.
Since processor jobs take whole nodes, those nodes are interchangeable and a job's
nodes are any k of them: the replay books one pooled node with a processor per node,
which allows exactly the same starts as k separate nodes and spares the core a scan
over hundreds of identical ones per decision.
Its time limit, which backfill plans with, is its requested time when the trace has
one (`estimate="requested"`) or its actual run time (`"actual"`, a perfect estimate).
"""
from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass, field, replace

from rmsbatch.sched import plan
from rmsbatch.sched.placement import NodeView, Request, take
from rmsbatch.sched.plan import PartitionView, PendingJob, Policy

log = logging.getLogger("rmsbatch.sim")

PARTITION = "sim"


@dataclass(frozen=True)
class Shape:
    """The simulated cluster: `nodes` identical nodes."""
    nodes: int
    cpus_per_node: int = 1
    gpus_per_node: int = 0
    mem_mb_per_node: int = 0

    @property
    def cpus(self) -> int:
        return self.nodes * self.cpus_per_node

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node


class ReplayError(Exception):
    """The trace cannot be replayed on this shape (a job larger than the machine)."""


@dataclass
class Outcome:
    """One replayed job: when it arrived, started and ended, on how many nodes."""
    id: int
    submit: float
    start: float
    end: float
    run: float
    nodes: int
    cpus: int
    gpus: int
    tenant: str
    user: str

    @property
    def wait(self) -> float:
        return self.start - self.submit


@dataclass
class Replay:
    """Replays `jobs` (rmsbatch.sim.traces.TraceJob, sorted by submit) on `shape`."""
    jobs: list
    shape: Shape
    # A replay reads no start estimates: only the reservations backfill needs are planned.
    policy: Policy = field(default_factory=lambda: Policy(estimates=False, reasons=False))
    estimate: str = "requested"         # or "actual"
    # sets waiting jobs' priorities (rmsbatch.sim.priorities); None: submit order (FIFO)
    priority: object = None
    # The two shortcuts (both exact; tests/test_sim.py replays with and without them):
    # pool interchangeable one-processor nodes, and decide only newcomers after arrivals.
    pool: bool = True
    incremental: bool = True
    passes: int = 0

    @property
    def pooled(self) -> bool:
        s = self.shape
        return self.pool and not s.gpus_per_node and not s.mem_mb_per_node

    def requests(self, job) -> tuple[Request, int]:
        """The placement request for a trace job, and its node count."""
        s = self.shape
        if job.gpus:
            if not s.gpus_per_node:
                raise ReplayError(f"job {job.id} asks for {job.gpus} GPUs and the simulated "
                                  "nodes have none: give --gpus-per-node")
            nodes = max(1, math.ceil(job.gpus / s.gpus_per_node))
            per_node = math.ceil(job.gpus / nodes)
            cpus = min(s.cpus_per_node, max(1, math.ceil((job.procs or nodes) / nodes)))
            return Request(nodes=nodes, cpus=cpus, gpus=per_node), nodes
        nodes = max(1, math.ceil(max(job.procs, 1) / s.cpus_per_node))
        if self.pooled:
            return Request(nodes=1, cpus=nodes), nodes
        return Request(nodes=nodes, cpus=s.cpus_per_node), nodes

    def time_limit(self, job) -> int:
        if self.estimate == "requested" and job.requested:
            return max(1, math.ceil(job.requested))
        return max(1, math.ceil(job.run))

    def run(self, progress=None) -> list[Outcome]:
        """Replay to the end; `progress(done, total)` is called now and then."""
        s = self.shape
        if self.pooled:
            nodes = {"pool": NodeView("pool", s.nodes, 0, {})}
        else:
            nodes = {f"n{i:05d}": NodeView(f"n{i:05d}", s.cpus_per_node, s.mem_mb_per_node,
                                           {g: "gpu" for g in range(s.gpus_per_node)})
                     for i in range(s.nodes)}
        parts = {PARTITION: PartitionView(PARTITION, True, list(nodes))}
        pending: dict[int, PendingJob] = {}
        by_id = {}
        running: dict[int, tuple] = {}          # id -> (alloc, planned end)
        ends: list[tuple[float, int]] = []      # heap of (actual end, id)
        outcomes: list[Outcome] = []
        done: dict[int, Outcome] = {}
        arrivals = iter(sorted(self.jobs, key=lambda j: (j.submit, j.id)))
        upcoming = next(arrivals, None)
        total = len(self.jobs)
        counts = {}
        for job in self.jobs:
            request, counts[job.id] = self.requests(job)
            if counts[job.id] > s.nodes or (request.cpus > s.cpus_per_node
                                            and not self.pooled):
                raise ReplayError(f"job {job.id} needs {counts[job.id]} nodes of {s.cpus_per_node} "
                                  f"CPUs; the simulated cluster has {s.nodes}")
        per_unit = s.cpus_per_node if self.pooled else 1     # processors per pooled CPU
        planned_ends: list[tuple[float, int]] = []     # heap of (planned end, id)
        last = None         # the last pass's Decisions, while nothing has changed since
        while upcoming is not None or ends or pending:
            now = min(t for t in (upcoming.submit if upcoming else None,
                                  ends[0][0] if ends else None) if t is not None) \
                if (upcoming is not None or ends) else None
            if now is None:
                # Jobs wait and nothing will ever change: a bug, not a trace property.
                raise ReplayError(f"{len(pending)} jobs can never start")
            # Without backfill, a job that arrives behind one that waits cannot start:
            # only an end (or an arrival to an empty queue) calls for a pass.
            needed = self.policy.backfill or not pending
            while ends and ends[0][0] <= now:
                _, job_id = heapq.heappop(ends)
                take(nodes, running.pop(job_id)[0], -1)
                needed, last = True, None
                if self.priority is not None:
                    o = done[job_id]
                    self.priority.ended(o.tenant, o.user, o.cpus, o.gpus, o.start, o.end)
            while planned_ends and (planned_ends[0][1] not in running
                                    or planned_ends[0][0] <= now):
                # a job past its planned end moves what backfill plans around
                if heapq.heappop(planned_ends)[1] in running:
                    last = None
            waiting = list(pending.values())
            arrived = []
            while upcoming is not None and upcoming.submit <= now:
                request, _ = self.requests(upcoming)
                p = PendingJob(upcoming.id, PARTITION, 0, upcoming.submit, request)
                p.time_limit = self.time_limit(upcoming)
                p.user, p.account = upcoming.user, upcoming.tenant
                pending[upcoming.id] = p
                arrived.append(p)
                by_id[upcoming.id] = upcoming
                upcoming = next(arrivals, None)
            if not needed and self.priority is None:
                continue
            if self.priority is not None:
                self.priority.assign(list(pending.values()), now)
                decisions = self._pass(list(pending.values()), nodes, parts, now, running)
            elif last is not None and waiting and self.incremental:
                decisions = self._arrivals(last, waiting, arrived, nodes, parts, now, running)
            else:
                # Without a priority function, arrival order is the order (submit, id).
                decisions = self._pass(waiting + arrived, nodes, parts, now, running)
            last = None if decisions.starts else decisions
            for job_id, alloc in decisions.starts:
                p = pending.pop(job_id)
                tj = by_id.pop(job_id)
                running[job_id] = (alloc, now + p.time_limit)
                heapq.heappush(ends, (now + tj.run, job_id))
                heapq.heappush(planned_ends, (now + p.time_limit, job_id))
                done[job_id] = Outcome(
                    job_id, tj.submit, now, now + tj.run, tj.run, counts[job_id],
                    sum(a.cpus for a in alloc.values()) * per_unit,
                    sum(len(a.gpus) for a in alloc.values()), tj.tenant, tj.user)
                outcomes.append(done[job_id])
            if progress is not None and decisions.starts:
                progress(len(outcomes), total)
        outcomes.sort(key=lambda o: (o.submit, o.id))
        return outcomes

    def _pass(self, pending, nodes, parts, now, running, policy=None):
        self.passes += 1
        return plan.schedule(pending, nodes, parts, now, running=list(running.values()),
                             policy=policy or self.policy, ordered=self.priority is None)

    def _arrivals(self, last, waiting, arrived, nodes, parts, now, running):
        """The pass after jobs arrive, in submit order, when nothing has changed since
        the last pass: no job ended or passed its planned end, and that pass started
        none. Then every job that waited then fails now as it did (the same room, the
        same reservations, a later window to fit before them), so only the jobs that
        held reservations, which book them again, and the newcomers are decided; the
        depth is shortened by the jobs left out, so the newcomers get as far as in a
        whole pass. A whole trace replays alike either way (tests/test_sim.py)."""
        heads = [j for j in waiting if j.id in last.est_start]
        depth = self.policy.depth - (len(waiting) - len(heads))
        if depth <= len(heads):
            return last         # the whole pass would stop before the newcomers
        return self._pass(heads + arrived, nodes, parts, now, running,
                          replace(self.policy, depth=depth))
