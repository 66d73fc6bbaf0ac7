"""Preemption: which running jobs a waiting job may push out, and the fewest of them.

A waiting job may preempt a running one when its QoS names the other's in `preempt`
(qos.toml), or, where the cluster turns partition tiers on, when its partition's
priority is above the other's. A job is never preempted while its QoS says
`preempt_mode = "off"`, before it has run its QoS's `min_runtime`, nor for a job that
would still not fit once the victims are gone. Among the candidates the choice is the
fewest jobs, then the lowest priority, then the youngest (the least work lost).

Pure, like the rest of the scheduler: the controller says which jobs are running and
what their QoS allows; it also carries the decision out (a signal, the QoS's grace
time, then requeue or cancel: rmsbatch.ctld.preemption).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rmsbatch.sched.placement import (Allocation, InsufficientResources, NodeView, allocate,
                                      fits_now)
from rmsbatch.sched.timeline import copy_view, give_back


@dataclass(frozen=True)
class Victim:
    """A running job as preemption sees it."""
    id: int
    alloc: Allocation
    qos: str
    partition: str
    priority: int
    start: float
    mode: str = "requeue"           # how its QoS preempts it: requeue, cancel, off
    min_runtime: float = 0.0
    grace: float = 60.0


@dataclass
class Preemption:
    """What the scheduler needs to preempt: running jobs that may go, and who may
    push out whom."""
    victims: list[Victim] = field(default_factory=list)
    may: dict[str, frozenset] = field(default_factory=dict)     # QoS -> QoS it preempts
    tiers: dict[str, int] | None = None     # partition -> tier, when tiers preempt
    waiting: frozenset = frozenset()        # jobs whose victims are on their way out
    taken: set = field(default_factory=set)  # chosen in this pass already

    def wants(self, job) -> bool:
        return job.id not in self.waiting and (bool(self.may.get(job.qos))
                                               or self.tiers is not None)

    def eligible(self, job, victim: Victim, now: float) -> bool:
        if victim.id in self.taken or victim.mode == "off" or victim.id == job.id:
            return False
        if now - victim.start < victim.min_runtime:
            return False
        if victim.qos in self.may.get(job.qos, ()):
            return True
        tiers = self.tiers
        return tiers is not None and tiers.get(job.partition, 0) > tiers.get(
            victim.partition, 0)


def choose(job, candidates: list[NodeView], ctx: Preemption, now: float,
           ) -> tuple[list[Victim], Allocation] | None:
    """The victims to preempt for `job` and where it then goes, or None when no set of
    preemptible jobs makes room for it."""
    names = {n.name for n in candidates}
    pool = sorted((v for v in ctx.victims if ctx.eligible(job, v, now)
                   and names.intersection(v.alloc)),
                  key=lambda v: (v.priority, -v.start, v.id))
    if not pool:
        return None
    req = job.request
    if req.nodes == 1 and not req.nodelist:
        return _one_node(req, candidates, pool)
    chosen: list[Victim] = []
    for v in pool:
        chosen.append(v)
        if _placed(req, candidates, chosen) is not None:
            break
    else:
        return None
    for v in reversed(list(chosen)):        # drop any the others make unnecessary
        rest = [c for c in chosen if c is not v]
        if _placed(req, candidates, rest) is not None:
            chosen = rest
    return chosen, _placed(req, candidates, chosen)


def _one_node(req, candidates: list[NodeView], pool: list[Victim]):
    best = None
    for node in candidates:
        here = [v for v in pool if node.name in v.alloc]
        chosen: list[Victim] = []
        for v in here:
            if best is not None and len(chosen) >= len(best[0]):
                break       # cannot beat what another node needs
            chosen.append(v)
            view = _freed(node, chosen)
            if fits_now(req, view) is not None:
                key = (len(chosen), sum(c.priority for c in chosen),
                       -sum(c.start for c in chosen))
                if best is None or key < best[2]:
                    best = (list(chosen), allocate(req, [view]), key)
                break
    return None if best is None else (best[0], best[1])


def _placed(req, candidates: list[NodeView], victims: list[Victim]) -> Allocation | None:
    views = [_freed(n, [v for v in victims if n.name in v.alloc]) for n in candidates]
    try:
        return allocate(req, views)
    except InsufficientResources:
        return None


def _freed(node: NodeView, victims: list[Victim]) -> NodeView:
    """The node as it will be once these jobs have given their parts back."""
    if not victims:
        return node
    v = copy_view(node)
    for victim in victims:
        give_back(v, victim.alloc[node.name], node)
    return v
