"""The task model: what a job's options add up to, resolved as Slurm's sbatch does.

A job script states its shape in many overlapping ways (-n, -N, --ntasks-per-node,
--gpus, --gpus-per-node, --gres, --gpus-per-task, --cpus-per-gpu, --ntasks-per-gpu,
--mem-per-cpu, --mem-per-gpu, --hint). `resolve` turns a JobSpec and the shape of
the partition's nodes into one request: nodes, tasks, and per node the CPUs, GPUs and
memory. The rules (sbatch(1)):

  tasks     -n; or nodes x --ntasks-per-node; or GPUs x --ntasks-per-gpu; else one
            per node
  nodes     -N; without it, as many as the tasks need (a task's CPUs, or its
            --gpus-per-task, cannot be split over nodes): `-n 384 --exclusive` on
            96-CPU nodes is 4 nodes
  GPUs      per node from --gpus-per-node (or --gres gpu), or tasks on the node x
            --gpus-per-task, or --gpus spread over the nodes
  CPUs      per node: tasks on the node x --cpus-per-task, or GPUs on the node x
            --cpus-per-gpu; --hint=nomultithread (or --ntasks-per-core=1) makes each
            CPU a whole core: threads_per_core logical CPUs
  memory    per node: --mem, or --mem-per-cpu x CPUs, or --mem-per-gpu x GPUs, or the
            default per CPU

Options that say the same thing are reconciled; options that contradict each other
are a TaskModelError naming both. Pure: no configuration files, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass

from rmsbatch.core import hostlist


class TaskModelError(ValueError):
    """The options contradict each other; the message names them."""


@dataclass(frozen=True)
class NodeShape:
    """The largest node the job could use: what one node can hold."""
    cpus: int
    gpus: int
    threads_per_core: int = 1


@dataclass(frozen=True)
class Resolved:
    nodes: int
    nodes_max: int | None
    ntasks: int
    tasks_per_node: int         # the most tasks on one node
    cpus_per_node: int          # logical CPUs
    gpus_per_node: int
    gpus_total: int
    mem_per_node: int           # MB; 0 with mem_whole_node
    mem_whole_node: bool
    threads_per_core: int       # logical CPUs per CPU asked for (2 under nomultithread)


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def whole_cores(spec) -> bool:
    return spec.hint == "nomultithread" or spec.ntasks_per_core == 1


def resolve(spec, shape: NodeShape | None, default_mem_per_cpu: int,
            node_mem_mb: int) -> Resolved:
    """The job's request; `shape` None: no node could hold it (the caller says why)."""
    if spec.cpus_per_gpu and spec.cpus_per_task > 1:
        raise TaskModelError(f"--cpus-per-gpu={spec.cpus_per_gpu} and --cpus-per-task="
                             f"{spec.cpus_per_task} cannot be combined; give one of them")
    threads = shape.threads_per_core if shape and whole_cores(spec) else 1
    task_cpus = spec.cpus_per_task * threads
    gpt = spec.gpus_per_task or 0
    nodes = spec.nodes
    ntasks = spec.ntasks
    if spec.nodelist:
        named = len(hostlist.expand(spec.nodelist))
        if spec.nodes_given and named > (spec.nodes_max or nodes):
            raise TaskModelError(f"--nodelist={spec.nodelist} names {named} nodes but "
                                 f"--nodes={nodes} asks for fewer; give -N {named} or drop -N")
        nodes = max(nodes, named)
    if not spec.nodes_given and not spec.ntasks_per_node and shape is not None:
        nodes = max(nodes, _nodes_for_tasks(ntasks, task_cpus, gpt, shape))
    nodes_max = spec.nodes_max if spec.nodes_max and spec.nodes_max > nodes else None
    if spec.ntasks_per_node and ntasks > (nodes_max or nodes) * spec.ntasks_per_node:
        most = (nodes_max or nodes) * spec.ntasks_per_node
        raise TaskModelError(f"--ntasks={ntasks} and --ntasks-per-node={spec.ntasks_per_node} "
                             f"disagree: {nodes_max or nodes} node(s) hold at most {most} tasks")
    if ntasks < nodes:
        ntasks = nodes          # at least one task per node (checked by rsub when -n was given)
    per_node_tasks = spec.ntasks_per_node or _ceil(ntasks, nodes)
    gpn = _gpus_per_node(spec, nodes, per_node_tasks, gpt)
    if spec.gpus_per_node is None and spec.gpus and not gpt:
        total = spec.gpus
    else:
        total = gpn * nodes
    if gpt and spec.gpus and spec.gpus_per_node is None and spec.gpus < ntasks * gpt:
        raise TaskModelError(f"--gpus={spec.gpus} and --gpus-per-task={gpt} disagree: "
                             f"{ntasks} tasks need {ntasks * gpt} GPUs")
    if spec.cpus_per_gpu and gpn:
        cpus = max(gpn * spec.cpus_per_gpu * threads, per_node_tasks * threads)
    else:
        cpus = per_node_tasks * task_cpus
    whole = spec.mem_mb == 0
    if spec.mem_mb is not None:
        mem = node_mem_mb if whole else spec.mem_mb
    elif spec.mem_per_cpu_mb is not None:
        mem = spec.mem_per_cpu_mb * cpus
    elif spec.mem_per_gpu_mb is not None:
        mem = spec.mem_per_gpu_mb * max(1, gpn)
    else:
        mem = default_mem_per_cpu * cpus
    return Resolved(nodes, nodes_max, ntasks, per_node_tasks, cpus, gpn, total,
                    0 if whole else mem, whole, threads)


def _nodes_for_tasks(ntasks: int, task_cpus: int, gpt: int, shape: NodeShape) -> int:
    """The fewest nodes that hold the tasks; 1 where not even one task fits a node
    (admission then says which resource is short)."""
    per_node = shape.cpus // task_cpus
    if gpt:
        per_node = min(per_node, shape.gpus // gpt)
    if per_node < 1:
        return 1
    return _ceil(ntasks, per_node)


def _gpus_per_node(spec, nodes: int, tasks_on_node: int, gpt: int) -> int:
    if spec.gpus_per_node is not None:
        if gpt and spec.gpus_per_node < tasks_on_node * gpt:
            raise TaskModelError(
                f"--gpus-per-node={spec.gpus_per_node} and --gpus-per-task={gpt} disagree: "
                f"{tasks_on_node} tasks on a node need {tasks_on_node * gpt} GPUs")
        # `--gpus=16 --gpus-per-node=8` on one node asks for both: the larger holds
        if spec.gpus and spec.gpus != spec.gpus_per_node * nodes:
            return max(spec.gpus_per_node, _ceil(spec.gpus, nodes))
        return spec.gpus_per_node
    if gpt:
        return tasks_on_node * gpt
    return _ceil(spec.gpus, nodes) if spec.gpus else 0
