"""A job's request as the scheduler keeps it: built at submit from the resolved task
model (admission), and again from the spool row whenever the controller rebuilds
its pending jobs.

Besides the placement Request (per node: CPUs, memory, GPUs, disk, GRES; which nodes
it must or must not use), a pending job carries what only the whole cluster can
answer: the licenses it holds while it runs, and the reservations (cluster.toml
`[[reservations]]`, and those made at run time with `rcontrol create reservation`,
which the controller passes in) that confine it or keep it off their nodes. Pure: the
configuration and a row in, values out.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from rmsbatch.core import hostlist
from rmsbatch.sched.placement import Request
from rmsbatch.sched.plan import PendingJob


# Reservation flags, as scontrol spells them. MAINT: its nodes show as `maint` while
# it is active; IGNORE_JOBS: made even though running jobs would still hold its nodes
# when it starts (only creating and updating look at it).
MAINT = "MAINT"
IGNORE_JOBS = "IGNORE_JOBS"
FLAGS = (MAINT, IGNORE_JOBS)


@dataclass(frozen=True)
class Window:
    """A reservation: its nodes, who may use them, and when."""
    name: str
    nodes: frozenset
    users: frozenset = frozenset()
    accounts: frozenset = frozenset()
    start: float | None = None
    end: float | None = None
    flags: frozenset = frozenset()
    runtime: bool = False       # made with rcontrol (kept in the spool), not cluster.toml

    def admits(self, user: str, account: str) -> bool:
        return user in self.users or "*" in self.users or account in self.accounts

    def active(self, now: float) -> bool:
        return (self.start is None or self.start <= now) and (self.end is None or now < self.end)

    def overlaps(self, start: float, end: float | None) -> bool:
        """Does [start, end) (end None: no end) meet the reservation?"""
        return (self.end is None or start < self.end) and (
            self.start is None or end is None or self.start < end)


_cached: tuple = (None, ())


def windows(cfg, runtime=()) -> tuple[Window, ...]:
    """The reservations of a configuration (computed once per configuration), then
    the `runtime` ones (rcontrol create reservation) the caller keeps."""
    global _cached
    if _cached[0] is not cfg:
        _cached = (cfg, tuple(
            Window(r.name, frozenset(hostlist.expand(r.nodes)), frozenset(r.users),
                   frozenset(r.accounts), r.start, r.end)
            for r in cfg.cluster.reservations))
    return _cached[1] + tuple(runtime) if runtime else _cached[1]


def _hosts(text: str | None) -> frozenset:
    return frozenset(hostlist.expand(text)) if text else frozenset()


def request_of(spec, resolved, gpu_mem: int) -> Request:
    """The placement request of a resolved job (rmsbatch.sched.taskmodel)."""
    return Request(
        resolved.nodes, resolved.cpus_per_node, resolved.mem_per_node,
        resolved.mem_whole_node, resolved.gpus_per_node, spec.gpu_type, spec.exclusive,
        spec.constraint, gpu_mem, nodes_max=resolved.nodes_max, tmp_mb=spec.tmp_mb or 0,
        gres=tuple(sorted(spec.gres.items())), nodelist=_hosts(spec.nodelist),
        exclude=_hosts(spec.exclude))


def task_model_columns(spec, resolved) -> dict:
    """The job row's columns for the task model and what a job names beyond its partition."""
    return {
        "ntasks_per_node": spec.ntasks_per_node, "gpus_per_task": spec.gpus_per_task,
        "nodes_max": resolved.nodes_max, "ntasks_per_gpu": spec.ntasks_per_gpu,
        "ntasks_per_core": spec.ntasks_per_core, "cpus_per_gpu": spec.cpus_per_gpu,
        "threads_per_core": resolved.threads_per_core, "hint": spec.hint,
        "gpu_bind": spec.gpu_bind, "wait_all_nodes": int(spec.wait_all_nodes),
        "tmp_mb": spec.tmp_mb or 0,
        "licenses": json.dumps(spec.licenses) if spec.licenses else None,
        "gres": json.dumps(spec.gres) if spec.gres else None,
        "req_nodelist": spec.nodelist, "exclude": spec.exclude,
        "reservation": spec.reservation,
        "site_options": json.dumps(spec.site_options) if spec.site_options else None,
    }


def pending_from_row(row: dict, cfg, every: tuple | None = None) -> PendingJob:
    """The scheduler's pending job for a spool row (the controller's `_pending`);
    `every`: all the reservations (default: the configuration's)."""
    nodes = row["nodes"]
    request = Request(
        nodes, -(-row["req_cpus"] // nodes), row["req_mem_mb"], bool(row["mem_whole_node"]),
        row["gpus_per_node"], row["gpu_type"], bool(row["exclusive"]), row["constraint_expr"],
        row["gpu_mem_mb"] or 0, nodes_max=row.get("nodes_max"), tmp_mb=row.get("tmp_mb") or 0,
        gres=tuple(sorted(json.loads(row.get("gres") or "{}").items())),
        nodelist=_hosts(row.get("req_nodelist")), exclude=_hosts(row.get("exclude")))
    job = PendingJob(row["id"], row["partition"], row["priority"], row["submit_time"],
                     request, row["hold"])
    job.time_limit = row["time_limit"] or 0
    job.account, job.qos, job.nice = row["account"], row["qos"], row["nice"] or 0
    # as stored (rmsbatch.ctld.spool, schema 8): 1 when an operator pinned `priority`
    job.pinned = row["priority"] if row.get("priority_pinned") == 1 else None
    job.licenses = json.loads(row.get("licenses") or "{}")
    job.license_totals = dict(cfg.cluster.licenses)
    job.reservation = row.get("reservation")
    place(job, windows(cfg) if every is None else every)
    return job


def place(job: PendingJob, every: tuple) -> None:
    """The job's reservation among `every` (None: gone, or not made yet), and the
    others, whose nodes it stays off; again whenever reservations change."""
    name = job.reservation
    job.window = next((w for w in every if w.name == name), None)
    job.reserved = tuple(w for w in every if w.name != name)
