"""The scheduler core: a snapshot in, decisions out.

Pure: no SQL, no sockets, no clock (`now` is an argument), so the controller
and a trace simulator run the same code. The policy for now: priority, then
submit order, first fit; within a partition, the first job that cannot start
blocks those behind it (no backfill yet), so big jobs are not starved. A job
that waits for licenses, its reservation, or nodes it named (-w) does not block the
others. Jobs stay off the nodes of reservations that are not theirs while their time
limit would reach into them. Every pending job gets a reason.
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
LICENSES = "Licenses"
RESERVATION = "Reservation"     # its reservation is not active (yet, or any more)


@dataclass
class PendingJob:
    id: int
    partition: str
    priority: int
    submit_time: float
    request: Request
    hold: int = 0              # 0 none, 1 user, 2 admin
    # -- cluster-wide: licenses and reservations (rmsbatch.sched.jobrequest)
    time_limit: int = 0        # seconds; 0: none (it overlaps every later reservation)
    licenses: dict = field(default_factory=dict)
    license_totals: dict = field(default_factory=dict)
    reservation: str | None = None      # the one it asked for
    window: object = None               # ... as a jobrequest.Window; None: gone
    reserved: tuple = ()                # the other reservations: their nodes are not its


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
    out = Decisions()
    held = licenses_held(nodes)
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
        why = reservation_wait(job, now) or licenses_wait(job, held)
        if why:
            out.reasons[job.id] = why
            continue
        candidates = nodes_for(job, members[job.partition], now)
        try:
            alloc = allocate(job.request, candidates)
        except InsufficientResources:
            out.reasons[job.id] = waiting_reason(job, candidates)
            if not confined(job):
                blocked.add(job.partition)
                out.blocked[job.partition] = order_key(job)
            continue
        book_licenses(job, alloc, held)
        take(nodes, alloc)
        out.starts.append((job.id, alloc))
    return out


# -- licenses and reservations: cluster-wide, beyond any one node -----------------------
def licenses_held(nodes: dict[str, NodeView]) -> dict[str, int]:
    """Licenses held by running jobs (booked on their batch nodes' views)."""
    held: dict[str, int] = {}
    for node in nodes.values():
        for name, count in node.licenses.items():
            held[name] = held.get(name, 0) + count
    return held


def licenses_wait(job: PendingJob, held: dict[str, int]) -> str | None:
    for name, count in job.licenses.items():
        if held.get(name, 0) + count > job.license_totals.get(name, 0):
            return LICENSES
    return None


def book_licenses(job: PendingJob, alloc: Allocation, held: dict[str, int]) -> None:
    if not job.licenses:
        return
    first = next(iter(alloc))
    alloc[first].licenses = dict(job.licenses)
    for name, count in job.licenses.items():
        held[name] = held.get(name, 0) + count


def reservation_wait(job: PendingJob, now: float) -> str | None:
    if job.reservation is None:
        return None
    if job.window is None or not job.window.active(now):
        return RESERVATION
    return None


def waiting_reason(job: PendingJob, candidates: list[NodeView]) -> str:
    """Resources, or ReqNodeNotAvail when too few nodes are up, or a node it named is not."""
    usable = sum(1 for n in candidates if n.usable)
    named_down = any(n.name in job.request.nodelist and not n.usable for n in candidates)
    return NODES_UNAVAILABLE if usable < job.request.nodes or named_down else RESOURCES


def confined(job: PendingJob) -> bool:
    """A job held to some nodes (its reservation, -w) does not hold up the others."""
    return job.reservation is not None or bool(job.request.nodelist)


def nodes_for(job: PendingJob, members: list[NodeView], now: float) -> list[NodeView]:
    """The partition's nodes this job may start on now: its reservation's, or those of no
    reservation that its run (up to its time limit) would meet."""
    if job.window is not None:
        return [n for n in members if n.name in job.window.nodes]
    end = now + job.time_limit if job.time_limit else None
    kept_off = set()
    for window in job.reserved:
        if window.overlaps(now, end):
            kept_off |= window.nodes
    return [n for n in members if n.name not in kept_off] if kept_off else members
