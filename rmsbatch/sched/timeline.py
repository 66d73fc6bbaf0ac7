"""What each node holds over time: the backfill planner's picture of the future.

The node views (rmsbatch.sched.placement.NodeView) say what is free *now*. A Timeline
adds when each running job gives its part back (its start plus its time limit; a job
without a limit never does) and the future bookings the planner makes for the jobs it
protects (EASY backfill's reservations), so it can answer two questions:

- `views(nodes, start, end)`: the nodes as if it were `start`, with what stays free over
  the whole of [start, end) -- what a job of that run time could be given -- so the
  ordinary placement code (`allocate`) decides over a window as it does for now;
- `earliest(request, nodes, run)`: the first time a request fits for `run` seconds, and
  where, or None when no end in sight frees enough ("unknown", never invented).

Pure, like the rest of the scheduler: times are numbers handed in.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from rmsbatch.sched.placement import (Allocation, InsufficientResources, NodeAlloc, NodeView,
                                      Request, allocate)

NEVER = math.inf


@dataclass
class _Held:
    start: float
    end: float
    alloc: NodeAlloc


@dataclass
class _NodeFuture:
    releases: list[_Held] = field(default_factory=list)   # running now, ending at `end`
    bookings: list[_Held] = field(default_factory=list)   # held from `start` (the planner's)


class Timeline:
    def __init__(self, now: float):
        self.now = now
        self.nodes: dict[str, _NodeFuture] = {}
        self.booked = False             # any booking at all: plain "now" checks suffice until then

    # -- what goes in
    def running(self, alloc: Allocation, end: float | None) -> None:
        """A job that holds `alloc` until `end` (None: no time limit, for ever)."""
        # A job past its limit is being killed: it frees in a moment, not now.
        until = NEVER if end is None else max(end, self.now + 1)
        for name, part in alloc.items():
            self.nodes.setdefault(name, _NodeFuture()).releases.append(
                _Held(self.now, until, part))

    def book(self, alloc: Allocation, start: float, end: float | None) -> None:
        """Hold `alloc` from `start` to `end` for a job that waits: a reservation."""
        until = NEVER if end is None else end
        for name, part in alloc.items():
            self.nodes.setdefault(name, _NodeFuture()).bookings.append(_Held(start, until, part))
        self.booked = True

    def bookings_on(self, names) -> bool:
        return any(self.nodes[n].bookings for n in names if n in self.nodes)

    # -- what comes out
    def views(self, nodes: list[NodeView], start: float, end: float) -> list[NodeView]:
        """The nodes with what stays free over [start, end); unchanged nodes are the
        views themselves (the caller must not change them)."""
        return [self.view(n, start, end) for n in nodes]

    def view(self, node: NodeView, start: float, end: float) -> NodeView:
        future = self.nodes.get(node.name)
        if future is None:
            return node
        gone = [h for h in future.releases if h.end <= start]
        # Bookings that meet the window; the worst moment is the start of the window or
        # the start of one of them, since what is running only ever gives back.
        meeting = [b for b in future.bookings if b.start < end and start < b.end]
        if not gone and not meeting:
            return node
        v = copy.copy(node)
        v.free_gpus = set(node.free_gpus)
        v.free_gres = dict(node.free_gres)
        for h in gone:
            _give(v, h.alloc, node)
        if meeting:
            moments = sorted({start} | {b.start for b in meeting if b.start > start})
            worst = _Usage()
            for t in moments:
                worst.widen(_Usage.of(b for b in meeting if b.start <= t < b.end))
            v.free_cpus -= worst.cpus
            v.free_mem -= worst.mem
            v.free_tmp -= worst.tmp
            v.free_gpus -= worst.gpus
            for kind, count in worst.gres.items():
                v.free_gres[kind] = v.free_gres.get(kind, 0) - count
            v.jobs += worst.jobs
            v.exclusive = v.exclusive or worst.exclusive
        return v

    def times(self, nodes: list[NodeView]) -> list[float]:
        """The moments something on these nodes frees up, from now on, in order."""
        found = {self.now}
        for n in nodes:
            future = self.nodes.get(n.name)
            if future is None:
                continue
            found.update(h.end for h in future.releases if h.end != NEVER)
            found.update(b.end for b in future.bookings if b.end != NEVER)
        return sorted(t for t in found if t >= self.now)

    def earliest(self, request: Request, nodes: list[NodeView], run: float | None,
                 ) -> tuple[float, Allocation] | None:
        """When (and where) the request first fits for `run` seconds (None: no limit,
        so it must fit for ever); None when nothing in view frees enough."""
        for t in self.times(nodes):
            end = NEVER if run is None else t + run
            try:
                return t, allocate(request, self.views(nodes, t, end))
            except InsufficientResources:
                continue
        return None


class _Usage:
    __slots__ = ("cpus", "mem", "tmp", "gpus", "gres", "jobs", "exclusive")

    def __init__(self):
        self.cpus = self.mem = self.tmp = self.jobs = 0
        self.gpus: set[int] = set()
        self.gres: dict[str, int] = {}
        self.exclusive = False

    @classmethod
    def of(cls, held) -> "_Usage":
        u = cls()
        for h in held:
            a = h.alloc
            u.cpus += a.cpus
            u.mem += a.mem_mb
            u.tmp += a.tmp_mb
            u.gpus.update(a.gpus)
            for kind, count in a.gres.items():
                u.gres[kind] = u.gres.get(kind, 0) + count
            u.jobs += 1
            u.exclusive = u.exclusive or a.exclusive
        return u

    def widen(self, other: "_Usage") -> None:
        """The most of each resource held at any of the moments seen."""
        self.cpus = max(self.cpus, other.cpus)
        self.mem = max(self.mem, other.mem)
        self.tmp = max(self.tmp, other.tmp)
        self.gpus |= other.gpus         # a device booked at any moment is not free throughout
        for kind, count in other.gres.items():
            self.gres[kind] = max(self.gres.get(kind, 0), count)
        self.jobs = max(self.jobs, other.jobs)
        self.exclusive = self.exclusive or other.exclusive


def _give(view: NodeView, a: NodeAlloc, node: NodeView) -> None:
    """A running job's part, given back to a copied view."""
    view.free_cpus += a.cpus
    view.free_mem += a.mem_mb
    view.free_tmp += a.tmp_mb
    for kind, count in a.gres.items():
        view.free_gres[kind] = view.free_gres.get(kind, 0) + count
    view.free_gpus.update(i for i in a.gpus if i in node.gpus and i not in node.drained)
    view.jobs -= 1
    if a.exclusive:
        view.exclusive = False
