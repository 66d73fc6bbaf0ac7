"""Placement: does a request fit on nodes, and where.

`allocate` answers with an Allocation or raises InsufficientResources (wait:
it may fit later); `check_feasible` raises InfeasibleRequest when no node
could ever satisfy the request (reject at submit), with the numbers that say
why. First fit for now; topology-aware placement is a later policy.
"""
from __future__ import annotations

from dataclasses import dataclass


class InsufficientResources(Exception):
    """Not enough free resources now; the request may fit later."""


class InfeasibleRequest(Exception):
    """No node in the partition could ever satisfy the request."""


@dataclass(frozen=True)
class Request:
    nodes: int = 1
    cpus: int = 1               # per node
    mem_mb: int = 0             # per node
    mem_whole_node: bool = False
    gpus: int = 0               # per node
    gpu_type: str | None = None
    exclusive: bool = False
    constraint: str | None = None


@dataclass
class NodeView:
    """A node as placement sees it: capacity and what is free now."""
    name: str
    cpus: int
    mem_mb: int
    gpus: dict[int, str]                        # index -> type
    features: frozenset[str] = frozenset()
    usable: bool = True                         # up and not drained
    free_cpus: int = -1
    free_mem: int = -1
    free_gpus: set[int] | None = None
    jobs: int = 0
    exclusive: bool = False                     # held by an --exclusive job

    def __post_init__(self):
        if self.free_cpus < 0:
            self.free_cpus = self.cpus
        if self.free_mem < 0:
            self.free_mem = self.mem_mb
        if self.free_gpus is None:
            self.free_gpus = set(self.gpus)


@dataclass
class NodeAlloc:
    cpus: int
    mem_mb: int
    gpus: list[int]
    exclusive: bool = False


Allocation = dict  # node name -> NodeAlloc


def matches_constraint(expr: str | None, features: frozenset[str]) -> bool:
    """`a&b` needs both, `a|b` either; `&` binds tighter than `|`."""
    if not expr:
        return True
    return any(all(f.strip() in features for f in alt.split("&") if f.strip())
               for alt in expr.replace(",", "&").split("|"))


def _gpus_of_type(node: NodeView, gpu_type: str | None, indices) -> list[int]:
    return sorted(i for i in indices if gpu_type is None or node.gpus[i] == gpu_type)


def shape_problem(req: Request, node: NodeView) -> str | None:
    """Why this node could never run the request, or None if it could."""
    if not matches_constraint(req.constraint, node.features):
        return f"node {node.name} lacks features {req.constraint!r}"
    if req.cpus > node.cpus:
        return f"requested {req.cpus} CPUs per node; node {node.name} has {node.cpus}"
    if not req.mem_whole_node and req.mem_mb > node.mem_mb:
        return f"requested {req.mem_mb} MB per node; node {node.name} has {node.mem_mb} MB"
    if req.gpus:
        have = len(_gpus_of_type(node, req.gpu_type, node.gpus))
        if req.gpus > have:
            kind = f"{req.gpu_type} GPUs" if req.gpu_type else "GPUs"
            return f"requested {req.gpus} {kind} per node; node {node.name} has {have}"
    return None


def check_feasible(req: Request, nodes: list[NodeView], partition: str) -> None:
    problems = [p for p in (shape_problem(req, n) for n in nodes) if p]
    fitting = len(nodes) - len(problems)
    if fitting >= req.nodes and fitting > 0:
        return
    if not nodes:
        raise InfeasibleRequest(f"partition {partition} has no nodes")
    if fitting < req.nodes and not problems:
        raise InfeasibleRequest(f"requested {req.nodes} nodes; partition {partition} "
                                f"has {len(nodes)}")
    # Say it in terms of the biggest node, which is what a user can act on.
    biggest = max(nodes, key=lambda n: (len(n.gpus), n.cpus, n.mem_mb))
    why = shape_problem(req, biggest) or problems[0]
    if fitting:
        why = f"requested {req.nodes} nodes; only {fitting} in partition {partition} fit ({why})"
    else:
        why = f"{why} (the largest node in partition {partition})"
    raise InfeasibleRequest(why)


def fits_now(req: Request, node: NodeView) -> list[int] | None:
    """The GPUs to use if the request fits on the node now, else None."""
    if not node.usable or node.exclusive or (req.exclusive and node.jobs):
        return None
    if shape_problem(req, node):
        return None
    if node.free_cpus < req.cpus:
        return None
    mem = node.mem_mb if req.mem_whole_node else req.mem_mb
    if (req.mem_whole_node and node.jobs) or node.free_mem < mem:
        return None
    if req.gpus:
        free = _gpus_of_type(node, req.gpu_type, node.free_gpus)
        if len(free) < req.gpus:
            return None
        return free[:req.gpus]
    return []


def allocate(req: Request, nodes: list[NodeView]) -> Allocation:
    chosen: Allocation = {}
    for node in nodes:
        gpus = fits_now(req, node)
        if gpus is None:
            continue
        if req.exclusive:
            chosen[node.name] = NodeAlloc(node.cpus, node.mem_mb, sorted(node.gpus), True)
        else:
            mem = node.mem_mb if req.mem_whole_node else req.mem_mb
            chosen[node.name] = NodeAlloc(req.cpus, mem, gpus)
        if len(chosen) == req.nodes:
            return chosen
    raise InsufficientResources(f"{len(chosen)} of {req.nodes} nodes available")


def take(nodes: dict[str, NodeView], alloc: Allocation, sign: int = 1) -> None:
    """Apply (sign=1) or give back (sign=-1) an allocation to the node views."""
    for name, a in alloc.items():
        node = nodes.get(name)
        if node is None:
            continue
        node.free_cpus -= sign * a.cpus
        node.free_mem -= sign * a.mem_mb
        node.jobs += sign
        if sign > 0:
            node.free_gpus.difference_update(a.gpus)
            node.exclusive = node.exclusive or a.exclusive
        else:
            node.free_gpus.update(i for i in a.gpus if i in node.gpus)
            if a.exclusive:
                node.exclusive = False
