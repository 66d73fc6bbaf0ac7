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

import heapq
import math
from dataclasses import dataclass, field

from rmsbatch.sched.placement import (Allocation, InsufficientResources, NodeAlloc, NodeView,
                                      Request, allocate, fits_now)

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
    """Built lazily: a pass in which every job starts or none can needs no picture of the
    future, and a trace replay runs thousands of those."""

    def __init__(self, now: float, running=()):
        self.now = now
        self._waiting = list(running)   # (alloc, end) not spread over the nodes yet
        self._nodes: dict[str, _NodeFuture] | None = None
        self.booked = False             # any booking at all: plain "now" checks suffice until then

    @property
    def nodes(self) -> dict[str, _NodeFuture]:
        if self._nodes is None:
            self._nodes = {}
            for alloc, end in self._waiting:
                self._hold(alloc, end)
            self._waiting = []
        return self._nodes

    # -- what goes in
    def running(self, alloc: Allocation, end: float | None) -> None:
        """A job that holds `alloc` until `end` (None: no time limit, for ever)."""
        if self._nodes is None:
            self._waiting.append((alloc, end))
        else:
            self._hold(alloc, end)

    def _hold(self, alloc: Allocation, end: float | None) -> None:
        # A job past its limit is being killed: it frees in a moment, not now.
        until = NEVER if end is None else max(end, self.now + 1)
        for name, part in alloc.items():
            future = self._nodes.get(name)
            if future is None:
                future = self._nodes[name] = _NodeFuture()
            future.releases.append(_Held(self.now, until, part))

    def book(self, alloc: Allocation, start: float, end: float | None) -> None:
        """Hold `alloc` from `start` to `end` for a job that waits: a reservation."""
        until = NEVER if end is None else end
        for name, part in alloc.items():
            self.nodes.setdefault(name, _NodeFuture()).bookings.append(_Held(start, until, part))
        self.booked = True

    def bookings_on(self, names) -> bool:
        return any(self.nodes[n].bookings for n in names if n in self.nodes)

    def unbooked(self, nodes: list[NodeView]) -> list[NodeView]:
        """The nodes nothing is booked on."""
        return [n for n in nodes if n.name not in self.nodes or not self.nodes[n.name].bookings]

    def keeps(self, alloc: Allocation, nodes: dict[str, NodeView], start: float,
              end: float) -> bool:
        """Would each node still have the part `alloc` takes there over [start, end),
        around what is booked? (Then a job placed now delays no reservation.)"""
        for name, part in alloc.items():
            future = self.nodes.get(name)
            if future is None or not future.bookings:
                continue
            v = self.view(nodes[name], start, end)
            if (v.free_cpus < part.cpus or v.free_mem < part.mem_mb or v.free_tmp < part.tmp_mb
                    or not v.free_gpus.issuperset(part.gpus) or v.exclusive
                    or (part.exclusive and v.jobs)
                    or any(v.free_gres.get(k, 0) < c for k, c in part.gres.items())):
                return False
        return True

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
        v = object.__new__(NodeView)        # a shallow copy, without copy.copy's cost
        v.__dict__.update(node.__dict__)
        v.free_gpus = set(node.free_gpus)
        v.free_gres = dict(node.free_gres)
        for h in gone:
            _give(v, h.alloc, node)
        if meeting:
            if len(meeting) == 1:
                worst = _Usage.of(meeting)
            else:
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
        so it must fit for ever); None when nothing in view frees enough.

        Each node is asked when it alone could take its part (only its own jobs' ends
        matter, and it stops looking past the best answer so far); the request's start
        is the moment enough nodes can, checked by placing it there. Named nodes (-w)
        and the rare case where a booking takes back room in between fall back to
        trying every moment something frees."""
        if request.nodelist:
            return self._scan(request, nodes, run, self.now)
        k = request.nodes
        best: list[float] = []          # the k earliest, as a max-heap (negated)
        for node in nodes:
            bound = -best[0] if len(best) == k else NEVER
            at = self._node_earliest(node, request, run, bound)
            if at is None:
                continue
            if len(best) < k:
                heapq.heappush(best, -at)
            else:
                heapq.heapreplace(best, -at)
        if len(best) < k:
            return None
        at = -best[0]
        try:
            return at, allocate(request, self.views(nodes, at, _end(at, run)))
        except InsufficientResources:
            return self._scan(request, nodes, run, at)

    def _node_earliest(self, node: NodeView, request: Request, run: float | None,
                       bound: float) -> float | None:
        future = self.nodes.get(node.name)
        if future is None:      # nothing ends or is booked here: now or never
            return self.now if fits_now(request, node) is not None else None
        moments = {self.now}
        moments.update(h.end for h in future.releases if h.end != NEVER)
        moments.update(b.end for b in future.bookings if b.end != NEVER)
        for t in sorted(moments):
            if t >= bound:
                return None
            if t < self.now:
                continue
            if fits_now(request, self.view(node, t, _end(t, run))) is not None:
                return t
        return None

    def _scan(self, request: Request, nodes: list[NodeView], run: float | None,
              since: float) -> tuple[float, Allocation] | None:
        for t in self.times(nodes):
            if t < since:
                continue
            try:
                return t, allocate(request, self.views(nodes, t, _end(t, run)))
            except InsufficientResources:
                continue
        return None


def _end(start: float, run: float | None) -> float:
    return NEVER if run is None else start + run


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
