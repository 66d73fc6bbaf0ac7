"""The scheduler core: a snapshot in, decisions out.

Pure: no SQL, no sockets, no clock (`now` is an argument), so the controller
and a trace simulator run the same code. Jobs are taken in priority order (then
submit order) and placed best fit. With backfill (the default Policy), the first job
of each partition and resource shape (`shape_of`) that cannot start gets a
reservation at the earliest time the running jobs' time limits free enough for it
(rmsbatch.sched.timeline), and a job behind it starts now only where it delays no
reservation; every job the pass plans for gets an estimated start. Without backfill
the first job that cannot start blocks its partition (FIFO). A job that waits for
licenses, its reservation, or nodes it named (-w) does not block the others, nor does
one held back by its begin time, its dependency, its array's throttle or a limit (the
controller gives the states those need: `Waits`, a limits tally). Jobs stay off the
nodes of reservations that are not theirs while their time limit would reach into
them. Every pending job gets a reason, and `more` holds the others that also hold it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rmsbatch.core import dependency as deps
from rmsbatch.sched.placement import (Allocation, InsufficientResources, NodeView, Request,
                                allocate, fits_now, take)
from rmsbatch.sched import preempt
from rmsbatch.sched.timeline import NEVER, Timeline, plain

# Slurm's reason names, so users and tools recognise them.
HELD_USER = "JobHeldUser"
HELD_ADMIN = "JobHeldAdmin"
PARTITION_DOWN = "PartitionDown"
NODES_UNAVAILABLE = "ReqNodeNotAvail"
RESOURCES = "Resources"
PRIORITY = "Priority"
LICENSES = "Licenses"
RESERVATION = "Reservation"     # its reservation is not active (yet, or any more)
# Too few nodes outside the reservations it must stay off ("... maintenance" for MAINT
# ones, as Slurm says; else "... reservation NAME")
RESERVED = "ReqNodeNotAvail, Reserved for"
BEGIN_TIME = "BeginTime"
DEPENDENCY = "Dependency"
DEPENDENCY_NEVER = "DependencyNeverSatisfied"
ARRAY_LIMIT = "JobArrayTaskLimit"
PREEMPTING = "preempting"       # (beside Resources) its victims are on their way out


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
    user: str = ""
    name: str = ""
    array_job_id: int | None = None
    array_task_id: int | None = None
    throttle: int = 0          # at most this many tasks of its array run at once
    dependency: deps.Dependency | None = None
    begin_time: float | None = None
    # -- who it is charged to, for priority, fair-share and limits
    account: str = ""
    qos: str = ""
    nice: int = 0
    factors: dict | None = None     # rmsbatch.sched.priority: what `priority` is made of
    pinned: int | None = None       # the priority an operator pinned it at; None: factors


@dataclass
class Waits:
    """What the controller knows beyond the pending jobs, for their dependencies and
    array throttles (see rmsbatch.core.dependency for `jobs` and `arrays`)."""
    jobs: dict[int, tuple] = field(default_factory=dict)
    arrays: dict[int, dict[int, int]] = field(default_factory=dict)   # id -> task -> job
    # verdicts of this pass by (dependency, task): an array's tasks share one dependency,
    # and 10,000 tasks after a 10,000-task array must not cost 10,000 x 10,000
    verdicts: dict[tuple, tuple] = field(default_factory=dict)
    running_tasks: dict[int, int] = field(default_factory=dict)   # array id -> running
    # (user, name) -> ids of active jobs of that name, for singleton
    named: dict[tuple, list[tuple[int, str]]] = field(default_factory=dict)


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
    never: list[int] = field(default_factory=list)   # dependencies that can never hold
    wake_at: float | None = None    # the next begin time (or after+MINUTES) to honour
    # the other reasons a job waits for, beside `reasons` (its first)
    more: dict[int, list[str]] = field(default_factory=dict)
    # when a waiting job is expected to start, from the plan (none: unknown)
    est_start: dict[int, float] = field(default_factory=dict)
    # (victim, for job): running jobs to preempt, for the waiting job that needs room
    preempt: list[tuple] = field(default_factory=list)


def order_key(job: PendingJob) -> tuple:
    return (-job.priority, job.submit_time, job.id)


def order(pending: list[PendingJob]) -> list[PendingJob]:
    return sorted(pending, key=order_key)


def _wake(out: Decisions, when: float | None) -> None:
    if when is not None and (out.wake_at is None or when < out.wake_at):
        out.wake_at = when


def _singleton_free(job: PendingJob, waits: Waits) -> bool:
    """No other job of this name and user runs, and none submitted earlier waits."""
    for other, state in waits.named.get((job.user, job.name), ()):
        if other != job.id and (state != "PENDING" or other < job.id):
            return False
    return True


def _waiting_on(job: PendingJob, waits: Waits, now: float, out: Decisions) -> str | None:
    """Why the job may not start yet whatever the nodes hold: its begin time, its
    dependency or its array's throttle; None if nothing holds it back."""
    if job.begin_time is not None and now < job.begin_time:
        _wake(out, job.begin_time)
        return BEGIN_TIME
    if job.dependency is not None:
        verdict, wake = _verdict(job, waits, now)
        if verdict == deps.NEVER:
            out.never.append(job.id)
            return DEPENDENCY_NEVER
        if verdict == deps.WAIT:
            _wake(out, wake)
            return DEPENDENCY
    if job.throttle and waits.running_tasks.get(job.array_job_id, 0) >= job.throttle:
        return ARRAY_LIMIT
    return None


def _verdict(job: PendingJob, waits: Waits, now: float) -> tuple[str, float | None]:
    dep = job.dependency
    if dep.singleton:       # depends on the job's own name and place in the queue
        verdict = deps.evaluate(dep, waits.jobs, waits.arrays, my_task=job.array_task_id,
                                now=now, singleton_free=_singleton_free(job, waits))
        return verdict, deps.wake_time(dep, waits.jobs, waits.arrays)
    key = (dep.text(), job.array_task_id if dep.corresponding else None)
    if key not in waits.verdicts:
        waits.verdicts[key] = (
            deps.evaluate(dep, waits.jobs, waits.arrays, my_task=job.array_task_id, now=now),
            deps.wake_time(dep, waits.jobs, waits.arrays))
    return waits.verdicts[key]


def _started(job: PendingJob, waits: Waits) -> None:
    """Count a start within the pass, for the throttle and singleton of those after it."""
    if job.throttle:
        waits.running_tasks[job.array_job_id] = waits.running_tasks.get(job.array_job_id, 0) + 1
    if job.dependency is not None and job.dependency.singleton:
        waits.named.setdefault((job.user, job.name), []).append((-1, "RUNNING"))


@dataclass(frozen=True)
class Policy:
    """How a pass decides. `backfill`: EASY backfill (a job may start ahead of higher
    ones when it delays none of the reservations made for them); off, the first job
    that cannot start in a partition holds up every job behind it there (FIFO).
    `depth`: how many waiting jobs a pass plans for (reservations, start estimates);
    those after it wait without an estimate. `estimates`: plan a start for every job
    within the depth (what `rq --start` shows), not only for the reserved ones (all
    that backfill itself needs)."""
    backfill: bool = True
    depth: int = 500
    estimates: bool = True
    # False (a trace replay): stop once nothing more can start -- after the first
    # blocked job of every partition without backfill, after `depth` jobs that could
    # not start with it -- leaving the jobs after it without a reason.
    reasons: bool = True


def shape_of(job: PendingJob) -> tuple:
    """The kinds of resources a job competes for: the top waiting job of each shape in
    a partition gets a reservation, so an h100 job does not hold up a100 jobs and a
    GPU job does not hold up jobs without GPUs."""
    r = job.request
    return (job.partition, r.gpu_type if r.gpus else None, r.gpus > 0, r.constraint,
            r.exclusive)


def schedule(pending: list[PendingJob], nodes: dict[str, NodeView],
             partitions: dict[str, PartitionView], now: float,
             waits: Waits | None = None, limits=None, running=(),
             policy: Policy | None = None, ordered: bool = False,
             preemption: preempt.Preemption | None = None) -> Decisions:
    """Decide which pending jobs start now; `nodes` is updated with the starts.

    `running`: (allocation, end) of every running job, end being its start plus its time
    limit (None: no limit), for backfill. `limits` (optional): what running jobs already
    hold against the QoS, tenant and partition limits, as an object with
    `why_not(job) -> list[str]` (the reasons of every limit the job would pass by
    starting now; empty: none) and `charge(job, alloc)` (count a start made in this
    pass). `ordered`: `pending` is in priority order already (`order`). `preemption`:
    the running jobs that may be preempted and who may preempt whom; the victims
    chosen come out in `Decisions.preempt`."""
    one = Pass(nodes, partitions, now, waits or Waits(), limits, running,
               policy or Policy(), preemption)
    for job in (pending if ordered else order(pending)):
        if one.decide(job):
            break
    return one.out


class Pass:
    """One scheduling pass: what it has decided so far, and what it has learnt that
    holds for the rest of it (room only shrinks within a pass, as jobs start)."""

    def __init__(self, nodes, partitions, now, waits, limits, running, policy, preemption):
        self.nodes, self.partitions, self.now = nodes, partitions, now
        self.waits, self.limits, self.policy, self.preemption = waits, limits, policy, preemption
        waits.verdicts.clear()          # states may have changed since the last pass
        self.out = Decisions()
        self.held = None                # licenses held: counted when a job asks for some
        self.blocked: set[str] = set()
        self.timeline = Timeline(now, running)
        self.protected: set[tuple] = set()  # shapes whose top job holds a reservation
        # (where, kind of request) -> (nodes, cpus, memory) of requests that found no
        # room now: one asking at least as much of as many nodes finds none either
        self.full: dict[tuple, list] = {}
        # (where, kind) -> (nodes, cpus, memory, run end) that found no room around
        # bookings: nor does a request as large or larger that runs as long or longer
        self.around: dict[tuple, list] = {}
        self.up: dict[tuple, int] = {}      # where -> nodes up there
        self.no_victims: set[tuple] = set()
        # (where, request, run) -> Timeline.earliest's answer while the timeline is
        # unchanged: the tasks of an array, all alike, would each ask it anew
        self.earliest: dict[tuple, tuple | None] = {}
        self.planned = self.tried = 0
        # only starts are wanted (a replay): jobs with no room may be passed over quickly
        self.quick = not (policy.reasons or policy.estimates) and preemption is None \
            and limits is None
        self.members: dict[str, list[NodeView]] = {
            p.name: [nodes[n] for n in p.nodes if n in nodes] for p in partitions.values()}

    def decide(self, job: PendingJob) -> bool:
        """Start the job, or say why it waits (and plan when it may start). True: no job
        after it can start in this pass (only when the policy wants no reasons)."""
        out = self.out
        why = self._held_back(job)
        if why is not None:
            out.reasons[job.id] = why
            return False
        candidates, where = nodes_for(job, self.members[job.partition], self.now)
        # Room only shrinks within a pass: a request of the same kind that is at least
        # as large as one that found no room finds none either (Pass.full).
        r = job.request
        kind = (where, _kind(r))
        size = (r.nodes, r.cpus, r.mem_mb)
        room = not _covered(self.full.get(kind), size)
        if not room and self.quick and job.reservation is None and not job.licenses \
                and shape_of(job) in self.protected:
            # A replay wants starts alone: no room, and its shape's reservation is
            # planned already, so there is nothing more to learn about this job.
            return self._waits(job)
        if (self.limits is not None or job.licenses or job.reservation is not None) \
                and self._over_a_limit(job, room):
            return False
        run = job.time_limit or None
        end = self.now + run if run else None
        alloc = self._place(job, candidates, kind, size, room, end or NEVER)
        if alloc is not None:
            self._start(job, alloc, end)
            return False
        if self._preempt(job, candidates, where, end):
            return False
        if job.id not in out.reasons:
            out.reasons[job.id] = self._waiting(job, candidates, where)
        self._plan(job, candidates, where, run)
        return self._waits(job)

    def _waits(self, job: PendingJob) -> bool:
        """It stays pending: it holds up its partition unless it is confined to some
        nodes. True: the pass may stop here."""
        if not confined(job):
            self.blocked.add(job.partition)
            self.out.blocked.setdefault(job.partition, order_key(job))
        if not self.policy.reasons:
            self.tried += 1
            if self.policy.backfill:
                return self.tried >= self.policy.depth
            return len(self.blocked) == len(self.partitions)
        return False

    def _held_back(self, job: PendingJob) -> str | None:
        """Why the job may not start whatever the nodes hold, or None."""
        if job.hold:
            return HELD_ADMIN if job.hold == 2 else HELD_USER
        part = self.partitions.get(job.partition)
        if part is None or not part.up:
            return PARTITION_DOWN
        if job.dependency is not None or job.begin_time is not None or job.throttle:
            why = _waiting_on(job, self.waits, self.now, self.out)
            if why is not None:
                return why
        if job.partition in self.blocked and not self.policy.backfill and job.window is None:
            # (a job of an active reservation runs where the blocked job may not go)
            return PRIORITY
        return None

    def _over_a_limit(self, job: PendingJob, room: bool) -> bool:
        """Its reservation, licenses or a limit hold it: every reason, and True."""
        if job.licenses and self.held is None:
            self.held = licenses_held(self.nodes)
        why = [w for w in (reservation_wait(job, self.now),
                           job.licenses and licenses_wait(job, self.held)) if w]
        if self.limits is not None:
            why += self.limits.why_not(job)
        if not why:
            return False
        self.out.reasons[job.id] = why[0]
        if not room:
            why.append(RESOURCES)
        if len(why) > 1:
            self.out.more[job.id] = why[1:]
        return True

    def _place(self, job, candidates, kind, size, room: bool, until: float):
        """Where the job starts now without delaying any reservation, or None."""
        if room and _covered(self.around.get(kind), size + (until,)):
            # A run this long found no room around what is booked: it would delay a
            # reservation.
            self.out.reasons[job.id] = PRIORITY
            return None
        if not room:
            return None
        try:
            alloc = allocate(job.request, candidates)
        except InsufficientResources:
            _failed(self.full, kind, size)
            return None
        timeline = self.timeline
        if not (timeline.booked and timeline.bookings_on(alloc)) or \
                timeline.keeps(alloc, self.nodes, self.now, until):
            return alloc
        # Room now, but it would delay a reservation there: place it again over its
        # whole run, around what is booked; nodes nothing is booked on first.
        try:
            return allocate(job.request, timeline.unbooked(candidates))
        except InsufficientResources:
            pass
        # only where it has room now can it have room throughout
        fitting = [n for n in candidates if fits_now(job.request, n) is not None]
        if plain(job.request):      # in numbers, without copies of the nodes
            fitting = [n for n in fitting
                       if timeline.fits_over(n, job.request, self.now, until)]
        else:
            fitting = timeline.views(fitting, self.now, until)
        try:
            return allocate(job.request, fitting)
        except InsufficientResources:
            # and any longer run on as many nodes or more
            _failed(self.around, kind, size + (until,))
            self.out.reasons[job.id] = PRIORITY
            return None

    def _start(self, job: PendingJob, alloc: Allocation, end: float | None) -> None:
        book_licenses(job, alloc, self.held)
        take(self.nodes, alloc)
        self.timeline.running(alloc, end)
        self.earliest.clear()
        if self.limits is not None:
            self.limits.charge(job, alloc)
        self.out.starts.append((job.id, alloc))
        _started(job, self.waits)

    def _preempt(self, job: PendingJob, candidates, where, end: float | None) -> bool:
        """Running jobs chosen to make room for it: True."""
        ctx = self.preemption
        if ctx is None or job.id in self.out.reasons or not ctx.wants(job):
            return False
        # who may be pushed out depends on its QoS and partition; once none make room
        # for a request, none will for the same one later in the pass
        key = (job.qos, where, job.request)
        if key in self.no_victims:
            return False
        picked = preempt.choose(job, candidates, ctx, self.now)
        if picked is None:
            self.no_victims.add(key)
            return False
        victims, where_then = picked
        ctx.taken.update(v.id for v in victims)
        self.out.preempt.extend((v, job.id) for v in victims)
        # held for it from now: nobody backfills into what its victims give back
        self.timeline.book(where_then, self.now, end)
        self.earliest.clear()
        self.out.reasons[job.id] = RESOURCES
        self.out.more[job.id] = [f"{PREEMPTING} {len(victims)} job(s)"]
        return True

    def _waiting(self, job: PendingJob, candidates, where) -> str:
        """Why a job that found no room waits."""
        if not self.policy.reasons:
            return RESOURCES
        members = self.members[job.partition]
        if job.request.nodelist or len(candidates) < len(members):
            reason = waiting_reason(job, candidates, members, self.now)
        else:       # the same for every job on these nodes
            if where not in self.up:
                self.up[where] = sum(1 for n in candidates if n.usable)
            reason = NODES_UNAVAILABLE if self.up[where] < job.request.nodes else RESOURCES
        return PRIORITY if reason == RESOURCES and job.partition in self.blocked else reason

    def _plan(self, job: PendingJob, candidates, where, run: float | None) -> None:
        """Its start estimate, and a reservation if it is the first of its shape."""
        shape = shape_of(job)
        reserve = shape not in self.protected and not confined(job)
        policy = self.policy
        if not policy.backfill or self.planned >= policy.depth or not (
                reserve or policy.estimates):
            return
        self.planned += 1
        key = (where, job.request, run)
        if key in self.earliest:
            found = self.earliest[key]
        else:
            found = self.earliest[key] = self.timeline.earliest(job.request, candidates, run)
        if found is None:
            return
        at, where_then = found
        self.out.est_start[job.id] = at
        if reserve:
            self.protected.add(shape)
            self.timeline.book(where_then, at, at + run if run else None)
            self.earliest.clear()


_KIND_FIELDS = tuple(f for f in Request.__dataclass_fields__
                     if f not in ("nodes", "nodes_max", "cpus", "mem_mb"))


def _kind(request: Request) -> tuple:
    """The request without its size (nodes, CPUs, memory): requests of one kind compare
    by size alone, as a larger one fits wherever a smaller one does not. Kept on the
    request (frozen), as thousands of jobs are decided a pass and each asks for it."""
    kind = request.__dict__.get("_kind")
    if kind is None:
        kind = tuple(getattr(request, f) for f in _KIND_FIELDS)
        object.__setattr__(request, "_kind", kind)
    return kind


def _covered(failed: list | None, size: tuple) -> bool:
    """Whether a request of this size (and run end) is at least one that failed."""
    if failed:
        if len(size) == 3:
            n, c, m = size
            for f in failed:
                if f[0] <= n and f[1] <= c and f[2] <= m:
                    return True
        else:
            n, c, m, u = size
            for f in failed:
                if f[0] <= n and f[1] <= c and f[2] <= m and f[3] <= u:
                    return True
    return False


def _failed(memo: dict, kind, size: tuple) -> None:
    """Remember a size that failed, forgetting those it covers (larger ones)."""
    failed = memo.get(kind)
    if failed is None:
        memo[kind] = [size]
        return
    failed[:] = [f for f in failed if not all(a <= b for a, b in zip(size, f))]
    failed.append(size)


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


def waiting_reason(job: PendingJob, candidates: list[NodeView], members=(),
                   now: float = 0.0) -> str:
    """Resources, or ReqNodeNotAvail when too few nodes are up, or a node it named is not;
    or, when it would start now but for reservations not its own, which."""
    usable = sum(1 for n in candidates if n.usable)
    named_down = any(n.name in job.request.nodelist and not n.usable for n in candidates)
    if job.window is None and len(candidates) < len(members):
        end = now + job.time_limit if job.time_limit else None
        names = {n.name for n in members}
        keeping = [w for w in job.reserved if w.overlaps(now, end) and w.nodes & names]
        try:
            if keeping:
                allocate(job.request, members)
        except InsufficientResources:
            keeping = []
        if keeping:
            maint = any("MAINT" in getattr(w, "flags", ()) for w in keeping)
            return f"{RESERVED} {'maintenance' if maint else 'reservation ' + keeping[0].name}"
    return NODES_UNAVAILABLE if usable < job.request.nodes or named_down else RESOURCES


def confined(job: PendingJob) -> bool:
    """A job held to some nodes (its reservation, -w) does not hold up the others."""
    return job.reservation is not None or bool(job.request.nodelist)


def nodes_for(job: PendingJob, members: list[NodeView], now: float,
              ) -> tuple[list[NodeView], tuple]:
    """The partition's nodes this job may start on now: its reservation's, or those of no
    reservation that its run (up to its time limit) would meet; and a key that is the
    same for every job given the same nodes."""
    if job.window is not None:
        return [n for n in members if n.name in job.window.nodes], (job.partition, job.window)
    end = now + job.time_limit if job.time_limit else None
    kept_off = set()
    for window in job.reserved:
        if window.overlaps(now, end):
            kept_off |= window.nodes
    if not kept_off:
        return members, (job.partition,)
    return ([n for n in members if n.name not in kept_off],
            (job.partition, frozenset(kept_off)))
