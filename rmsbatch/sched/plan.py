"""The scheduler core: a snapshot in, decisions out.

Pure: no SQL, no sockets, no clock (`now` is an argument), so the controller
and a trace simulator run the same code. The policy for now: priority, then
submit order, first fit; within a partition, the first job that cannot start
blocks those behind it (no backfill yet), so big jobs are not starved.
Every pending job gets a reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rmsbatch.sched.placement import (Allocation, InsufficientResources, NodeView, Request,
                                allocate, take)

# Slurm's reason names, so users and tools recognise them.
HELD_USER = "JobHeldUser"
HELD_ADMIN = "JobHeldAdmin"
PARTITION_DOWN = "PartitionDown"
NODES_UNAVAILABLE = "ReqNodeNotAvail"
RESOURCES = "Resources"
PRIORITY = "Priority"


@dataclass
class PendingJob:
    id: int
    partition: str
    priority: int
    submit_time: float
    request: Request
    hold: int = 0              # 0 none, 1 user, 2 admin


@dataclass
class PartitionView:
    name: str
    up: bool
    nodes: list[str]


@dataclass
class Decisions:
    starts: list[tuple[int, Allocation]] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    # partition -> order key of the job that could not start there: anything
    # that sorts after it waits for Priority until something changes
    blocked: dict[str, tuple] = field(default_factory=dict)


def order_key(job: PendingJob) -> tuple:
    return (-job.priority, job.submit_time, job.id)


def order(pending: list[PendingJob]) -> list[PendingJob]:
    return sorted(pending, key=order_key)


def schedule(pending: list[PendingJob], nodes: dict[str, NodeView],
             partitions: dict[str, PartitionView], now: float) -> Decisions:
    """Decide which pending jobs start now; `nodes` is updated with the starts."""
    del now  # no time-based policy yet (begin times, backfill) but callers pass it
    out = Decisions()
    blocked: set[str] = set()
    members: dict[str, list[NodeView]] = {
        p.name: [nodes[n] for n in p.nodes if n in nodes] for p in partitions.values()}
    for job in order(pending):
        if job.hold:
            out.reasons[job.id] = HELD_ADMIN if job.hold == 2 else HELD_USER
            continue
        part = partitions.get(job.partition)
        if part is None or not part.up:
            out.reasons[job.id] = PARTITION_DOWN
            continue
        if job.partition in blocked:
            out.reasons[job.id] = PRIORITY
            continue
        candidates = members[job.partition]
        try:
            alloc = allocate(job.request, candidates)
        except InsufficientResources:
            usable = sum(1 for n in candidates if n.usable)
            out.reasons[job.id] = NODES_UNAVAILABLE if usable < job.request.nodes else RESOURCES
            blocked.add(job.partition)
            out.blocked[job.partition] = order_key(job)
            continue
        take(nodes, alloc)
        out.starts.append((job.id, alloc))
    return out
