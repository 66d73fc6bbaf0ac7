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
from dataclasses import dataclass, field, replace

from rmsbatch.sched.placement import (Allocation, InsufficientResources, NodeAlloc, NodeView,
                                      Request, allocate, fits_now, matches_constraint)

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
    version: int = 0            # bumped by every change: what was worked out from it is old


class Timeline:
    """Built lazily: a pass in which every job starts or none can needs no picture of the
    future, and a trace replay runs thousands of those."""

    def __init__(self, now: float, running=()):
        self.now = now
        self._waiting = list(running)   # (alloc, end) not spread over the nodes yet
        self._nodes: dict[str, _NodeFuture] | None = None
        self.booked = False             # any booking at all: plain "now" checks suffice until then
        # (node, what it asks of a node, run) -> (version, when it fits or None, not before)
        self._memo: dict[tuple, tuple] = {}

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
            future.version += 1

    def book(self, alloc: Allocation, start: float, end: float | None) -> None:
        """Hold `alloc` from `start` to `end` for a job that waits: a reservation."""
        until = NEVER if end is None else end
        for name, part in alloc.items():
            future = self.nodes.setdefault(name, _NodeFuture())
            future.bookings.append(_Held(start, until, part))
            future.version += 1
        self.booked = True

    def bookings_on(self, names) -> bool:
        future = self.nodes
        return any(future[n].bookings for n in names if n in future)

    def unbooked(self, nodes: list[NodeView]) -> list[NodeView]:
        """The nodes nothing is booked on."""
        future = self.nodes
        return [n for n in nodes if n.name not in future or not future[n.name].bookings]

    def fits_over(self, node: NodeView, request: Request, start: float, end: float) -> bool:
        """For a request of CPUs, memory and disk alone (`plain`) that fits on the node
        now: does it still, around what is booked there, until `end`?"""
        future = self.nodes.get(node.name)
        if future is None or not future.bookings:
            return True
        booked = _booked(future, start, end)
        return booked is None or _Room(node).fits(request, booked)

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
        booked = _booked(future, start, end) if future.bookings else None
        if not gone and booked is None:
            return node
        v = copy_view(node)
        for h in gone:
            give_back(v, h.alloc, node)
        if booked is not None:
            _take_off(v, booked)
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
        if not self.booked and plain(request):
            return self._plain_first(request, nodes, run)
        k = request.nodes
        best: list[float] = []          # the k earliest, as a max-heap (negated)
        found: list[tuple[float, NodeView]] = []
        # what a node is asked (jobs of one shape ask the same of every node)
        shape = (replace(request, nodes=1, nodes_max=None, exclude=frozenset()), run)
        for node in nodes:
            bound = -best[0] if len(best) == k else NEVER
            at = self._remembered(node, request, run, bound, shape)
            if at is None:
                continue
            found.append((at, node))
            if len(best) < k:
                heapq.heappush(best, -at)
            else:
                heapq.heapreplace(best, -at)
        if len(best) < k:
            return None
        at = -best[0]
        able = [node for when, node in found if when <= at]
        try:
            return at, allocate(request, self.views(able, at, _end(at, run)))
        except InsufficientResources:
            return self._scan(request, nodes, run, at)

    def _remembered(self, node: NodeView, request: Request, run: float | None, bound: float,
                    shape: tuple) -> float | None:
        """`_node_earliest`, worked out once per node, shape and state of the node in a
        pass: 10,000 waiting jobs are a few dozen shapes."""
        future = self.nodes.get(node.name)
        version = future.version if future is not None else -1
        key = (node.name, shape)
        seen = self._memo.get(key)
        if seen is not None and seen[0] == version:
            at, not_before = seen[1], seen[2]
            if at is not None:
                return at if at < bound else None
            if not_before >= bound:
                return None
        at = self._node_earliest(node, request, run, bound)
        self._memo[key] = (version, at, bound if at is None else NEVER)
        return at

    def _node_earliest(self, node: NodeView, request: Request, run: float | None,
                       bound: float) -> float | None:
        """When this node alone could take its part of the request for `run` seconds:
        what running jobs give back accrues as their ends pass; what is booked is taken
        off at each moment. None: not before `bound` (or never)."""
        future = self.nodes.get(node.name)
        if future is None:      # nothing ends or is booked here: now or never
            return self.now if fits_now(request, node) is not None else None
        if plain(request):
            return self._plain_earliest(node, future, request, run, bound)
        releases = sorted((h for h in future.releases if h.end != NEVER), key=lambda h: h.end)
        moments = sorted({self.now} | {h.end for h in releases}
                         | {b.end for b in future.bookings if b.end != NEVER})
        base, i = node, 0
        for t in moments:
            if t >= bound:
                return None
            while i < len(releases) and releases[i].end <= t:
                if base is node:
                    base = copy_view(node)
                give_back(base, releases[i].alloc, node)
                i += 1
            if t < self.now:
                continue
            booked = _booked(future, t, _end(t, run)) if future.bookings else None
            view = base
            if booked is not None:
                view = copy_view(base)
                _take_off(view, booked)
            if fits_now(request, view) is not None:
                return t
        return None

    def _plain_first(self, request: Request, nodes: list[NodeView], run: float | None,
                     ) -> tuple[float, Allocation] | None:
        """`earliest` with nothing booked yet, for a request of CPUs, memory and disk:
        each node only gains as running jobs end, so walk the ends in order until
        enough nodes have room."""
        future = self.nodes
        room = {node.name: _Room(node) for node in nodes if _may_use(node, request)}
        ready = [r.node for r in room.values() if r.fits(request)]
        at = self.now
        if len(ready) < request.nodes:
            # sorted on the end alone: two jobs on one node may end at the same moment
            ends = sorted(((h.end, name, h.alloc) for name in room if name in future
                           for h in future[name].releases if h.end != NEVER),
                          key=lambda e: e[0])
            for end, name, a in ends:
                r = room[name]
                had = r.fits(request)
                r.gain(a)
                if not had and r.fits(request):
                    ready.append(r.node)
                    if len(ready) >= request.nodes:
                        at = max(end, self.now)
                        break
            else:
                return None
        # the nodes that had room first; nothing else to choose for CPUs and memory
        return at, {node.name: NodeAlloc(request.cpus, request.mem_mb, [], False,
                                         request.tmp_mb)
                    for node in ready[:request.nodes]}

    def _plain_earliest(self, node: NodeView, future: _NodeFuture, request: Request,
                        run: float | None, bound: float) -> float | None:
        """`_node_earliest` in numbers, for a request of CPUs, memory and disk only: what
        running jobs give back only grows with time, so it adds up as the ends pass."""
        if not _may_use(node, request):
            return None
        room = _Room(node)
        releases = sorted((h for h in future.releases if h.end != NEVER), key=lambda h: h.end)
        moments = sorted({self.now} | {h.end for h in releases}
                         | {b.end for b in future.bookings if b.end != NEVER})
        i = 0
        for t in moments:
            if t >= bound:
                return None
            while i < len(releases) and releases[i].end <= t:
                room.gain(releases[i].alloc)
                i += 1
            if t >= self.now and room.fits(request, _booked(future, t, _end(t, run))):
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


def plain(request: Request) -> bool:
    """A request of CPUs, memory and disk alone (whole-node and exclusive ones aside)."""
    return not (request.gpus or request.gres or request.exclusive or request.mem_whole_node)


def copy_view(node: NodeView) -> NodeView:
    """A shallow copy of a view with its own free sets, without copy.copy's cost."""
    v = object.__new__(NodeView)
    v.__dict__.update(node.__dict__)
    v.free_gpus = set(node.free_gpus)
    v.free_gres = dict(node.free_gres)
    return v


def _take_off(v: NodeView, worst: "_Usage") -> None:
    """What is booked over a window, off a copied view."""
    v.free_cpus -= worst.cpus
    v.free_mem -= worst.mem
    v.free_tmp -= worst.tmp
    v.free_gpus -= worst.gpus
    for kind, count in worst.gres.items():
        v.free_gres[kind] = v.free_gres.get(kind, 0) - count
    v.jobs += worst.jobs
    v.exclusive = v.exclusive or worst.exclusive


def _booked(future: _NodeFuture, start: float, end: float) -> "_Usage | None":
    """The most of each resource booked on a node at any moment of [start, end); None
    when nothing is. The worst moment is the start of the window or the start of one
    of the bookings, since what is running only ever gives back."""
    meeting = [b for b in future.bookings if b.start < end and start < b.end]
    if not meeting:
        return None
    if len(meeting) == 1:
        return _Usage.of(meeting)
    worst = _Usage()
    for t in sorted({start} | {b.start for b in meeting if b.start > start}):
        worst.widen(_Usage.of(b for b in meeting if b.start <= t < b.end))
    return worst


class _Room:
    """A node's CPUs, memory and disk as numbers, for requests of those alone (`plain`)."""
    __slots__ = ("cpus", "mem", "tmp", "exclusive", "node")

    def __init__(self, node: NodeView):
        self.cpus, self.mem, self.tmp = node.free_cpus, node.free_mem, node.free_tmp
        self.exclusive, self.node = node.exclusive, node

    def gain(self, a: NodeAlloc) -> None:
        """A running job's part, given back."""
        self.cpus += a.cpus
        self.mem += a.mem_mb
        self.tmp += a.tmp_mb
        self.exclusive = self.exclusive and not a.exclusive

    def fits(self, request: Request, booked: "_Usage | None" = None) -> bool:
        if booked is None:
            return (not self.exclusive and self.cpus >= request.cpus
                    and self.mem >= request.mem_mb and self.tmp >= request.tmp_mb)
        return (not self.exclusive and not booked.exclusive
                and self.cpus - booked.cpus >= request.cpus
                and self.mem - booked.mem >= request.mem_mb
                and self.tmp - booked.tmp >= request.tmp_mb)


def _may_use(node: NodeView, request: Request) -> bool:
    return node.usable and (not request.constraint
                            or matches_constraint(request.constraint, node.features))


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


def give_back(view: NodeView, a: NodeAlloc, node: NodeView) -> None:
    """A running job's part, given back to a copied view (`node`: the view it is a copy
    of, which says which devices exist and which are drained)."""
    view.free_cpus += a.cpus
    view.free_mem += a.mem_mb
    view.free_tmp += a.tmp_mb
    for kind, count in a.gres.items():
        view.free_gres[kind] = view.free_gres.get(kind, 0) + count
    view.free_gpus.update(i for i in a.gpus if i in node.gpus and i not in node.drained)
    view.jobs -= 1
    if a.exclusive:
        view.exclusive = False
