"""Placement: does a request fit on nodes, and where.

`allocate` answers with an Allocation or raises InsufficientResources (wait:
it may fit later); `check_feasible` raises InfeasibleRequest when no node
could ever satisfy the request (reject at submit), with the numbers that say
why. Nodes are taken best fit (the node the job leaves least free on: see
`leftover`); on a node, GPUs are chosen by topology where the
node reports it: a multi-GPU job gets GPUs linked to each other (NVLink, XGMI,
partitions of one physical GPU) and on one NUMA node, and a one-GPU job the GPU
whose linked peers are already busy, so well-connected groups stay whole. Among
devices that satisfy a request the smallest (by memory) goes first: a 1g.5gb MIG
instance before a 2g.10gb one, an L40S before an H100, so big devices stay free for
the requests only they can meet.

Beyond CPUs, memory and GPUs a node books local disk (--tmp) and generic resources
(--gres nvme:1) per job; a request may name nodes it must include (-w, taken first)
or avoid (-x), and a node range (-N MIN-MAX: as many as fit now, up to MAX).
Licenses are cluster-wide: they travel on the batch node's NodeAlloc, so the views
of the nodes add up to what running jobs hold (rmsbatch.sched.plan books them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

# GPUs sold as "80 GB" report a little less (80 GB HBM shows as 81,559 MiB, a 40 GB
# MIG slice as 40,192 MiB): a --gpu-mem request is met by devices within this share.
GPU_MEM_SLACK = 0.95
UNKNOWN_SIZE = 1 << 40          # a device of unknown memory sorts after every known one


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
    gpu_mem_mb: int = 0         # at least this much memory on each GPU
    # -- from real job scripts (rsub -N MIN-MAX, --tmp, --gres, -w, -x)
    nodes_max: int | None = None    # start on up to this many nodes when they are free
    tmp_mb: int = 0                 # node-local disk, per node
    gres: tuple = ()                # ((name, count), ...) per node, GPUs aside
    nodelist: frozenset = frozenset()   # the allocation includes all of these
    exclude: frozenset = frozenset()    # and none of these


@dataclass(frozen=True)
class Gpu:
    """One allocatable device as placement sees it."""
    type: str = "gpu"           # "h100", or a MIG profile such as "1g.10gb"
    mem_mb: int = 0             # 0: unknown
    model: str = ""             # the physical GPU's type, for MIG instances ("a100")
    partition: bool = False     # a MIG instance or an AMD partition
    numa: int | None = None
    links: tuple = ()           # ((peer index, weight), ...)


@dataclass
class NodeView:
    """A node as placement sees it: capacity and what is free now."""
    name: str
    cpus: int
    mem_mb: int
    gpus: dict[int, Gpu]                        # index -> device (a str: its type)
    features: frozenset[str] = frozenset()
    usable: bool = True                         # up and not drained
    free_cpus: int = -1
    free_mem: int = -1
    free_gpus: set[int] | None = None
    jobs: int = 0
    exclusive: bool = False                     # held by an --exclusive job
    drained: set[int] = field(default_factory=set)   # devices out of service
    gpus_known: bool = True                     # False until an auto-detected node reports
    tmp_mb: int = 0                             # node-local disk jobs may book (--tmp)
    gres: dict = field(default_factory=dict)    # generic resources: name -> count
    free_tmp: int = -1
    free_gres: dict | None = None
    licenses: dict = field(default_factory=dict)    # held by the jobs whose batch node this is

    def __post_init__(self):
        if self.free_tmp < 0:
            self.free_tmp = self.tmp_mb
        if self.free_gres is None:
            self.free_gres = dict(self.gres)
        self.gpus = {i: Gpu(g) if isinstance(g, str) else g for i, g in self.gpus.items()}
        if self.free_cpus < 0:
            self.free_cpus = self.cpus
        if self.free_mem < 0:
            self.free_mem = self.mem_mb
        if self.free_gpus is None:
            self.free_gpus = set(self.gpus) - self.drained
        self.weights = {i: dict(g.links) for i, g in self.gpus.items() if g.links}
        # what each requested type names: a type, and for MIG instances "a100_1g.10gb"
        self.by_type: dict[str, set[int]] = {}
        for i, g in self.gpus.items():
            self.by_type.setdefault(g.type, set()).add(i)
            if g.partition and g.model:
                self.by_type.setdefault(f"{g.model}_{g.type}", set()).add(i)
        self.topology = bool(self.weights) or any(g.numa is not None for g in self.gpus.values())
        # best fit: smaller devices first (unknown sizes last); None where all are alike
        sizes = {g.mem_mb for g in self.gpus.values()}
        self.size = None if len(sizes) <= 1 else {
            i: g.mem_mb or UNKNOWN_SIZE for i, g in self.gpus.items()}

    def drain_gpu(self, index: int) -> None:
        self.drained.add(index)
        self.free_gpus.discard(index)

    def undrain_gpus(self, busy: set[int], which=None) -> None:
        """Devices back in service (all, or `which`); `busy`: those allocated to jobs now."""
        back = set(self.drained) if which is None else set(which) & self.drained
        self.free_gpus.update(i for i in back if i in self.gpus and i not in busy)
        self.drained -= back


@dataclass
class NodeAlloc:
    cpus: int
    mem_mb: int
    gpus: list[int]
    exclusive: bool = False
    tmp_mb: int = 0
    gres: dict = field(default_factory=dict)
    licenses: dict = field(default_factory=dict)    # cluster-wide: on the batch node only


Allocation = dict  # node name -> NodeAlloc


def matches_constraint(expr: str | None, features: frozenset[str]) -> bool:
    """`a&b` needs both, `a|b` either; `&` binds tighter than `|`."""
    if not expr:
        return True
    return any(all(f.strip() in features for f in alt.split("&") if f.strip())
               for alt in expr.replace(",", "&").split("|"))


def _gpus_of_type(node: NodeView, req: Request, indices) -> list[int]:
    """The devices among `indices` that satisfy the request, smallest first."""
    if req.gpu_type is not None:
        indices = node.by_type.get(req.gpu_type, _NONE).intersection(indices)
    if req.gpu_mem_mb:
        floor = req.gpu_mem_mb * GPU_MEM_SLACK
        indices = [i for i in indices if node.gpus[i].mem_mb >= floor]
    size = node.size
    if size is None:
        return sorted(indices)
    return sorted(indices, key=lambda i: (size[i], i))


_NONE: frozenset = frozenset()


def _gpu_kind(req: Request) -> str:
    kind = f"{req.gpu_type} GPUs" if req.gpu_type else "GPUs"
    if req.gpu_mem_mb:
        kind += f" with {req.gpu_mem_mb} MB"
    return kind


def shape_problem(req: Request, node: NodeView) -> str | None:
    """Why this node could never run the request, or None if it could."""
    if not matches_constraint(req.constraint, node.features):
        return f"node {node.name} lacks features {req.constraint!r}"
    if req.cpus > node.cpus:
        return f"requested {req.cpus} CPUs per node; node {node.name} has {node.cpus}"
    if not req.mem_whole_node and req.mem_mb > node.mem_mb:
        return f"requested {req.mem_mb} MB per node; node {node.name} has {node.mem_mb} MB"
    if req.gpus and node.gpus_known:
        have = len(_gpus_of_type(node, req, node.gpus))
        if req.gpus > have:
            return f"requested {req.gpus} {_gpu_kind(req)} per node; node {node.name} has {have}"
    if req.tmp_mb > node.tmp_mb:
        return (f"requested {req.tmp_mb} MB of local disk (--tmp) per node; node {node.name} "
                f"has {node.tmp_mb} MB")
    for name, count in req.gres:
        if count > node.gres.get(name, 0):
            return (f"requested {name}:{count} per node; node {node.name} has "
                    f"{name}:{node.gres.get(name, 0)}")
    return None


def _candidates(req: Request, nodes: list[NodeView]) -> list[NodeView]:
    """The nodes the request may use, the ones it names (-w) first."""
    if req.exclude:
        nodes = [n for n in nodes if n.name not in req.exclude]
    if req.nodelist:
        nodes = ([n for n in nodes if n.name in req.nodelist]
                 + [n for n in nodes if n.name not in req.nodelist])
    return nodes


def check_feasible(req: Request, nodes: list[NodeView], partition: str) -> None:
    names = {n.name for n in nodes}
    outside = sorted(req.nodelist - names)
    if outside:
        raise InfeasibleRequest(f"requested node(s) {', '.join(outside)} (-w) are not in "
                                f"partition {partition} ({len(names)} nodes)")
    if req.exclude and not names - req.exclude:
        raise InfeasibleRequest(f"-x excludes every node of partition {partition}")
    for node in nodes:
        why = shape_problem(req, node) if node.name in req.nodelist else None
        if why:
            raise InfeasibleRequest(f"{why} (named with -w)")
    nodes = _candidates(req, nodes)
    problems = [p for p in (shape_problem(req, n) for n in nodes) if p]
    fitting = len(nodes) - len(problems)
    if fitting >= req.nodes and fitting > 0:
        return
    if not nodes:
        raise InfeasibleRequest(f"partition {partition} has no nodes")
    if fitting < req.nodes and not problems:
        raise InfeasibleRequest(f"requested {req.nodes} nodes; partition {partition} "
                                f"has {len(nodes)}")
    # Say it in terms of the biggest node with the features asked for, which is what a
    # user can act on.
    featured = [n for n in nodes if matches_constraint(req.constraint, n.features)] or nodes
    biggest = max(featured, key=lambda n: (len(n.gpus), n.cpus, n.mem_mb))
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
    if node.free_cpus < req.cpus:       # free never exceeds the node's size: no shape check
        return None
    mem = node.mem_mb if req.mem_whole_node else req.mem_mb
    if (req.mem_whole_node and node.jobs) or node.free_mem < mem:
        return None
    if node.free_tmp < req.tmp_mb:
        return None
    if req.gres and any(node.free_gres.get(name, 0) < count for name, count in req.gres):
        return None
    if req.constraint and not matches_constraint(req.constraint, node.features):
        return None
    if req.gpus:
        free = _gpus_of_type(node, req, node.free_gpus)
        if len(free) < req.gpus:
            return None
        if not node.topology or len(free) == req.gpus:
            return sorted(free[:req.gpus])
        return choose_gpus(node, free, req.gpus)
    return []


def choose_gpus(node: NodeView, free: list[int], count: int) -> list[int]:
    """`count` of the `free` GPUs, by topology (see the module's doc)."""
    w = node.weights

    def weight(a: int, b: int) -> int:
        return w.get(a, {}).get(b, 0)

    def numa(i: int):
        return node.gpus[i].numa

    size = node.size or {}

    if count == 1:
        # best fit: the smallest device, then the one that breaks up the least of what
        # is still free
        return [min(free, key=lambda i: (size.get(i, 0),
                                         sum(weight(i, j) for j in free if j != i), i))]
    best = None
    seeds, numas = [], set()
    for i in sorted(free):              # a few seeds: one per NUMA node, then the first
        if numa(i) not in numas or len(seeds) < 2:
            seeds.append(i)
            numas.add(numa(i))
        if len(seeds) >= 4:
            break
    if free[0] not in seeds:            # and the smallest device
        seeds.append(free[0])
    for seed in seeds:
        chosen, rest = [seed], [i for i in free if i != seed]
        while len(chosen) < count:
            nxt = max(rest, key=lambda i: (sum(weight(i, c) for c in chosen),
                                           numa(i) == numa(seed), -size.get(i, 0), -i))
            chosen.append(nxt)
            rest.remove(nxt)
        score = (sum(weight(a, b) for a in chosen for b in chosen if a < b),
                 sum(1 for c in chosen if numa(c) == numa(seed)),
                 -sum(size.get(c, 0) for c in chosen), -sum(chosen))
        if best is None or score > best[0]:
            best = (score, sorted(chosen))
    return best[1]


def allocate(req: Request, nodes: list[NodeView]) -> Allocation:
    """Nodes for the request now: every node it names (-w), then the best fitting of
    the others up to `nodes_max` (at least `nodes`)."""
    chosen: Allocation = {}
    most = max(req.nodes_max or req.nodes, req.nodes)
    ranked = []
    perfect = 0
    for index, node in enumerate(_candidates(req, nodes)):
        gpus = fits_now(req, node)
        if node.name in req.nodelist:
            if gpus is None:
                break       # a named node is busy: the job waits for it
            chosen[node.name] = _part(req, node, gpus)
            continue
        if gpus is None:
            continue
        left = leftover(req, node)
        ranked.append((left, index, node, gpus))
        if left[0] == 0:
            # No GPU left idle beside it: as good a fit as matters. (Scanning on for the
            # fewest CPUs left would cost every placement on a big cluster the whole
            # node list.)
            perfect += 1
            if perfect >= most - len(chosen) and not req.nodelist:
                break
    named = all(n in chosen for n in req.nodelist)
    if named and len(chosen) < most:
        if perfect < len(ranked):       # (all equally good: in the order found)
            ranked.sort(key=lambda r: (r[0], r[1]))
        for _, _, node, gpus in ranked[:most - len(chosen)]:
            chosen[node.name] = _part(req, node, gpus)
    if len(chosen) >= req.nodes and named:
        return chosen
    raise InsufficientResources(f"{len(chosen)} of {req.nodes} nodes available")


def leftover(req: Request, node: NodeView) -> tuple[int, int, int]:
    """What the request would leave free on the node (GPUs, CPUs, memory): the node that
    leaves least is the best fit, so one-GPU jobs fill a node before breaking into an
    empty 8-GPU one, and jobs without GPUs keep off GPU nodes while others have room."""
    if req.exclusive:       # the whole node, however big: waste is what it did not ask for
        return (len(node.gpus) - req.gpus, node.cpus - req.cpus, 0)
    mem = node.mem_mb if req.mem_whole_node else req.mem_mb
    return (len(node.free_gpus) - req.gpus, node.free_cpus - req.cpus, node.free_mem - mem)


def _part(req: Request, node: NodeView, gpus: list[int]) -> NodeAlloc:
    if req.exclusive:
        return NodeAlloc(node.cpus, node.mem_mb, sorted(set(node.gpus) - node.drained), True,
                         node.tmp_mb, dict(node.gres))
    mem = node.mem_mb if req.mem_whole_node else req.mem_mb
    return NodeAlloc(req.cpus, mem, gpus, False, req.tmp_mb, dict(req.gres))


def take(nodes: dict[str, NodeView], alloc: Allocation, sign: int = 1) -> None:
    """Apply (sign=1) or give back (sign=-1) an allocation to the node views."""
    for name, a in alloc.items():
        node = nodes.get(name)
        if node is None:
            continue
        node.free_cpus -= sign * a.cpus
        node.free_mem -= sign * a.mem_mb
        node.free_tmp -= sign * a.tmp_mb
        for kind, count in a.gres.items():
            node.free_gres[kind] = node.free_gres.get(kind, 0) - sign * count
        for lic, count in a.licenses.items():
            node.licenses[lic] = node.licenses.get(lic, 0) + sign * count
        node.jobs += sign
        if sign > 0:
            node.free_gpus.difference_update(a.gpus)
            node.exclusive = node.exclusive or a.exclusive
        else:
            node.free_gpus.update(i for i in a.gpus if i in node.gpus and i not in node.drained)
            if a.exclusive:
                node.exclusive = False
