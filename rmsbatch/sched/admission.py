"""Admission: may this job be queued at all, and as what.

Pure (configuration, the submitted spec and the node views in; the job's row or a
refusal out), so the controller and the trace simulator judge submissions alike.
A job that can never run is refused here, at submit time, rather than left pending.
"""
from __future__ import annotations

import os

from rmsbatch.core.jobspec import JobSpec
from rmsbatch.core.states import JobState
from rmsbatch.core.units import format_time
from rmsbatch.sched import placement
from rmsbatch.sched.placement import NodeView, Request
from rmsbatch.sched.plan import HELD_USER


class AdmissionError(Exception):
                     """The job may not be queued; the message says why and what to change."""


def default_output(spec) -> str:
    """Where a job's output goes when it names no file: the submit directory."""
    submit_dir = spec["submit_dir"] if isinstance(spec, dict) else spec.submit_dir
    array = spec.get("array") if isinstance(spec, dict) else spec.array
    return os.path.join(submit_dir, "rms-%A_%a.out" if array else "rms-%j.out")


def admit(spec: JobSpec, user: str, uid: int, gid: int, cfg, nodes: dict[str, NodeView],
          now: float) -> dict:
    """Check a spec against the configuration; the job row to insert. Raises
    AdmissionError (the message is for the submitter) when the job may not be queued:
    a wrong partition, account or QoS, a limit it exceeds, or a request that no node
    of its partition could ever hold."""
    partition = spec.partition or cfg.default_partition
    if partition not in cfg.partitions:
        raise AdmissionError(f"invalid partition {partition!r} (partitions: "
                             f"{', '.join(cfg.partitions)})")
    part = cfg.partitions[partition]
    account = spec.account or cfg.default_account(user)
    if account is None:
        raise AdmissionError(f"user {user} has no account: ask an admin to add you to an "
                             "account in tenants.toml")
    acct = cfg.account_named(account)
    if acct is None:
        raise AdmissionError(f"invalid account {account!r} (your accounts: "
                             f"{', '.join(cfg.accounts_of(user)) or 'none'})")
    if user not in acct.users and "*" not in acct.users:
        raise AdmissionError(f"user {user} may not use account {account!r} (your accounts: "
                             f"{', '.join(cfg.accounts_of(user)) or 'none'})")
    qos_name = spec.qos or acct.default_qos or cfg.qos.default
    qos = cfg.qos_named(qos_name)
    if qos is None:
        raise AdmissionError(f"invalid QoS {qos_name!r} (QoS levels: "
                             f"{', '.join(q.name for q in cfg.qos.qos)})")
    if acct.qos and qos_name not in acct.qos:
        raise AdmissionError(f"account {account} may not use QoS {qos_name!r} (allowed: "
                             f"{', '.join(acct.qos)})")
    limit = spec.time_limit
    if limit is None:
        limit = part.default_time or part.max_time
    for cap, what in ((part.max_time, f"partition {partition}"), (qos.max_time, f"QoS {qos_name}")):
        if cap and (limit == 0 or limit > cap):
            asked = "UNLIMITED" if limit == 0 else format_time(limit)
            raise AdmissionError(f"time limit {asked} exceeds the maximum of {what} "
                                 f"({format_time(cap)}): ask for less with --time")
    if spec.gpus_per_node is not None and spec.gpus and spec.gpus != spec.gpus_per_node * spec.nodes:
        gpus_node = max(spec.gpus_per_node, spec.gpus_on_node())
    else:
        gpus_node = spec.gpus_on_node()
    members = [nodes[n] for n in cfg.partition_nodes[partition]]
    mem_whole = spec.mem_mb == 0
    smallest = min((n.mem_mb for n in members), default=0)
    mem_node = spec.mem_on_node(smallest, cfg.cluster.controller.default_mem_per_cpu)
    gpu_mem = (spec.gpu_mem_mb or 0) if gpus_node else 0
    request = Request(spec.nodes, spec.cpus_on_node(), 0 if mem_whole else mem_node,
                      mem_whole, gpus_node, spec.gpu_type, spec.exclusive, spec.constraint,
                      gpu_mem)
    try:
        placement.check_feasible(request, members, partition)
    except placement.InfeasibleRequest as exc:
        raise AdmissionError(f"request can never run: {exc}") from None
    name = spec.name or "job"
    return {
        "name": name, "user": user, "uid": uid, "gid": gid, "account": account,
        "partition": partition, "qos": qos_name, "state": JobState.PENDING.value,
        "reason": HELD_USER if spec.hold else "None",
        "priority": qos.priority + part.priority - spec.nice, "nice": spec.nice,
        "hold": 1 if spec.hold else 0, "submit_time": now, "time_limit": limit,
        "nodes": spec.nodes, "ntasks": spec.ntasks, "cpus_per_task": spec.cpus_per_task,
        "req_cpus": spec.cpus_total, "req_mem_mb": 0 if mem_whole else mem_node,
        "req_gpus": gpus_node * spec.nodes, "gpus_per_node": gpus_node,
        "mem_whole_node": int(mem_whole), "gpu_type": spec.gpu_type, "gpu_mem_mb": gpu_mem,
        "constraint_expr": spec.constraint, "exclusive": int(spec.exclusive),
        "requeue": int(spec.requeue), "command": name, "workdir": spec.workdir,
        "stdout": spec.output or default_output(spec),
        "stderr": spec.error or spec.output or default_output(spec),
        "submit_host": spec.submit_host,
    }
