"""Where the tasks of a job step go: which nodes of the job's allocation, how many
tasks on each, and which of the node's GPUs each task sees.

Pure: it takes the allocation and the step's request and returns the layout, or
raises LayoutError saying what does not fit. As srun does:

  * without -N and -w, a step takes as few of the allocation's nodes (in order) as
    its tasks need CPUs; with them, exactly those nodes;
  * without -n, one task per node (or --ntasks-per-node on each);
  * tasks are numbered in blocks: node 0 gets tasks 0..k-1, node 1 the next, ...
  * GPUs: --gpus-per-task gives each task its own; --gpu-bind=single:N lets N tasks
    share one; map_gpu:L names them (indices of the job's GPUs on the node, as the
    job numbers them); none (or nothing asked) lets every task see all of them.

CPUs are not divided among a step's tasks nor among steps: steps may share the CPUs
of the allocation, and -c only counts towards how many tasks fit on a node.
"""
from __future__ import annotations

from dataclasses import dataclass, field


class LayoutError(ValueError):
    """The step does not fit the allocation; the message says how to ask instead."""


@dataclass(frozen=True)
class StepRequest:
    ntasks: int | None = None
    nodes: int | None = None
    nodelist: tuple[str, ...] = ()
    cpus_per_task: int = 1
    ntasks_per_node: int | None = None
    gpus_per_task: int | None = None
    gpu_bind: str | None = None


@dataclass
class NodeTasks:
    node: str
    tasks: list[int]
    # per local task, the node-local GPU indices it sees; None: all of the job's
    gpus: list[list[int] | None] = field(default_factory=list)


def _gpu_bind(text: str | None) -> tuple[str, list[int]]:
    if not text:
        return "", []
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    try:
        if kind in ("closest", "none") and not arg:
            return kind, []
        if kind == "single" and int(arg) >= 1:
            return kind, [int(arg)]
        if kind == "map_gpu" and arg:
            ids = [int(x) for x in arg.split(",")]
            if all(i >= 0 for i in ids):
                return kind, ids
    except ValueError:
        pass
    raise LayoutError(f"--gpu-bind={text}: use closest, none, single:N or map_gpu:ID[,ID...]")


def layout(alloc: list[tuple[str, int, list[int]]], req: StepRequest) -> list[NodeTasks]:
    """`alloc`: the job's nodes in order, as (name, CPUs, GPU indices)."""
    names = [n for n, _, _ in alloc]
    cpus = {n: c for n, c, _ in alloc}
    gpus = {n: g for n, _, g in alloc}
    cpt = max(1, req.cpus_per_task)
    for what, value in (("-n/--ntasks", req.ntasks), ("-N/--nodes", req.nodes),
                        ("--ntasks-per-node", req.ntasks_per_node),
                        ("--gpus-per-task", req.gpus_per_task)):
        if value is not None and value < 1:
            raise LayoutError(f"{what} must be at least 1, not {value}")
    if req.nodelist:
        outside = [n for n in req.nodelist if n not in cpus]
        if outside:
            raise LayoutError(f"-w/--nodelist: {','.join(outside)} not in the job's "
                              f"allocation ({','.join(names)})")
    fixed: list[str] | None = None
    if req.nodelist or req.nodes is not None:
        chosen = [n for n in names if n in req.nodelist]
        want = req.nodes if req.nodes is not None else len(chosen)
        if want < len(chosen):
            raise LayoutError(f"-N/--nodes {want} is fewer than the {len(chosen)} nodes of "
                              "-w/--nodelist")
        rest = [n for n in names if n not in chosen]
        if want > len(names):
            raise LayoutError(f"-N/--nodes {want}: the job has only {len(names)} node(s) "
                              f"({','.join(names)})")
        fixed = [n for n in names if n in chosen or n in rest[:want - len(chosen)]]
    if req.ntasks_per_node is not None:
        nodes = fixed if fixed is not None else (
            names if req.ntasks is None else
            names[:max(1, -(-req.ntasks // req.ntasks_per_node))])
        n = req.ntasks if req.ntasks is not None else req.ntasks_per_node * len(nodes)
        if n > req.ntasks_per_node * len(nodes):
            raise LayoutError(f"{n} tasks at --ntasks-per-node {req.ntasks_per_node} need "
                              f"{-(-n // req.ntasks_per_node)} nodes; the job has {len(nodes)}")
        counts = [min(req.ntasks_per_node, n - i * req.ntasks_per_node)
                  for i in range(len(nodes))]
    else:
        if fixed is not None:
            nodes = fixed
            n = req.ntasks if req.ntasks is not None else len(nodes)
        elif req.ntasks is None:
            nodes, n = names, len(names)
        else:
            n, room, nodes = req.ntasks, 0, []
            for name in names:
                if room >= n:
                    break
                nodes.append(name)
                room += max(1, cpus[name] // cpt)
            if room < n:
                total = sum(cpus.values())
                raise LayoutError(f"{n} tasks of {cpt} CPU(s) each do not fit the job's "
                                  f"{total} CPU(s): ask fewer tasks (-n) or fewer CPUs per "
                                  "task (-c), or submit the job with more")
        if n < len(nodes):
            raise LayoutError(f"{n} task(s) cannot cover {len(nodes)} nodes: ask at least "
                              "one task per node, or fewer nodes (-N)")
        counts = [n // len(nodes) + (1 if i < n % len(nodes) else 0) for i in range(len(nodes))]
    kind, args = _gpu_bind(req.gpu_bind)
    out, first = [], 0
    for name, count in zip(nodes, counts):
        if count <= 0:
            continue
        have = sorted(gpus[name])
        per_task: list[list[int] | None] = []
        for local in range(count):
            if kind == "none":
                per_task.append(None)
            elif kind == "single":
                k = local // args[0]
                if k >= len(have):
                    raise LayoutError(f"--gpu-bind=single:{args[0]}: {count} tasks need "
                                      f"{-(-count // args[0])} GPU(s) on {name}; the job has "
                                      f"{len(have)} there")
                per_task.append([have[k]])
            elif kind == "map_gpu":
                k = args[local % len(args)]
                if k >= len(have):
                    raise LayoutError(f"--gpu-bind=map_gpu: GPU {k} is not one of the job's "
                                      f"{len(have)} GPU(s) on {name} (they are 0..{len(have) - 1})")
                per_task.append([have[k]])
            elif req.gpus_per_task:
                g = req.gpus_per_task
                if (local + 1) * g > len(have):
                    raise LayoutError(f"{count} task(s) with --gpus-per-task {g} need {count * g} "
                                      f"GPU(s) on {name}; the job has {len(have)} there")
                per_task.append(have[local * g:(local + 1) * g])
            else:
                per_task.append(None)
        out.append(NodeTasks(name, list(range(first, first + count)), per_task))
        first += count
    return out
