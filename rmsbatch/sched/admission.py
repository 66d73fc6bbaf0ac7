"""Admission: may this job be queued at all, and as what.

Pure (configuration, the submitted spec and the node views in; the job's row or a
refusal out), so the controller and the trace simulator judge submissions alike.
A job that can never run is refused here, at submit time, rather than left pending:
more CPUs, GPUs, memory, disk or GRES than any node has, nodes (-w) outside its
partition, licenses the cluster lacks, a reservation it may not use, another cluster,
a site option this cluster does not list. Its shape (tasks, nodes, per-node CPUs,
GPUs and memory) is resolved by rmsbatch.sched.taskmodel.
"""
from __future__ import annotations

import json
import os

from rmsbatch.core.jobspec import JobSpec
from rmsbatch.core.states import JobState
from rmsbatch.core.units import format_time
from rmsbatch.sched import placement, taskmodel
from rmsbatch.sched.jobrequest import Window, request_of, task_model_columns, windows
from rmsbatch.sched.placement import NodeView
from rmsbatch.sched.plan import HELD_USER


class AdmissionError(Exception):
    """The job may not be queued; the message says why and what to change."""


def default_output(spec) -> str:
    """Where a job's output goes when it names no file: the submit directory."""
    submit_dir = spec["submit_dir"] if isinstance(spec, dict) else spec.submit_dir
    array = spec.get("array") if isinstance(spec, dict) else spec.array
    return os.path.join(submit_dir, "rms-%A_%a.out" if array else "rms-%j.out")


def admit(spec: JobSpec, user: str, uid: int, gid: int, cfg, nodes: dict[str, NodeView],
          now: float, reservations: tuple | None = None) -> dict:
    """Check a spec against the configuration (and `reservations`: every reservation,
    the runtime ones too; default: cluster.toml's); the job row to insert. Raises
    AdmissionError (the message is for the submitter) when the job may not be queued:
    a wrong partition, account or QoS, a limit it exceeds, options that contradict
    each other, or a request that no node of its partition could ever hold."""
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
    check_partition_allows(partition, part, account, qos_name)
    limit = spec.time_limit
    if limit is None:
        limit = part.default_time or part.max_time
    for cap, what in ((part.max_time, f"partition {partition}"), (qos.max_time, f"QoS {qos_name}")):
        if cap and (limit == 0 or limit > cap):
            asked = "UNLIMITED" if limit == 0 else format_time(limit)
            raise AdmissionError(f"time limit {asked} exceeds the maximum of {what} "
                                 f"({format_time(cap)}): ask for less with --time")
    members = [nodes[n] for n in cfg.partition_nodes[partition]]
    check_cluster(spec, cfg)
    check_site_options(spec, cfg)
    check_licenses(spec, cfg)
    window = check_reservation(spec, user, account, cfg, now, reservations)
    check_node_names(spec, cfg)
    resolved = _resolve(spec, cfg, members)
    gpus_node = resolved.gpus_per_node
    mem_whole = resolved.mem_whole_node
    mem_node = resolved.mem_per_node
    gpu_mem = (spec.gpu_mem_mb or 0) if gpus_node else 0
    request = request_of(spec, resolved, gpu_mem)
    try:
        placement.check_feasible(request, members, partition)
        if window is not None:
            inside = [n for n in members if n.name in window.nodes]
            placement.check_feasible(request, inside, f"{partition} within reservation "
                                                      f"{spec.reservation}")
    except placement.InfeasibleRequest as exc:
        raise AdmissionError(f"request can never run: {exc}") from None
    for level in account_chain(cfg, acct):     # a parent's limits cover its sub-accounts
        check_limits(qos, level, gpus_node * resolved.nodes,
                     resolved.cpus_per_node * resolved.nodes,
                     0 if mem_whole else mem_node * resolved.nodes)
    name = spec.name or "job"
    row = {
        "name": name, "user": user, "uid": uid, "gid": gid, "account": account,
        "partition": partition, "qos": qos_name, "state": JobState.PENDING.value,
        "reason": HELD_USER if spec.hold else "None",
        "priority": qos.priority + part.priority - spec.nice, "nice": spec.nice,
        "hold": 1 if spec.hold else 0, "submit_time": now, "time_limit": limit,
        "nodes": resolved.nodes, "ntasks": resolved.ntasks, "cpus_per_task": spec.cpus_per_task,
        "req_cpus": resolved.cpus_per_node * resolved.nodes,
        "req_mem_mb": 0 if mem_whole else mem_node,
        "req_gpus": gpus_node * resolved.nodes, "gpus_per_node": gpus_node,
        "mem_whole_node": int(mem_whole), "gpu_type": spec.gpu_type, "gpu_mem_mb": gpu_mem,
        "constraint_expr": spec.constraint, "exclusive": int(spec.exclusive),
        "requeue": int(spec.requeue), "command": name, "workdir": spec.workdir,
        "stdout": spec.output or default_output(spec),
        "stderr": spec.error or spec.output or default_output(spec),
        "submit_host": spec.submit_host,
    }
    row.update(task_model_columns(spec, resolved))
    row.update({"signal": json.dumps(spec.signal) if spec.signal else None,
                "open_mode": spec.open_mode})
    return row


def _resolve(spec: JobSpec, cfg, members: list[NodeView]) -> taskmodel.Resolved:
    """The job's shape on the largest node of its partition that it could use."""
    usable = [n for n in members if placement.matches_constraint(spec.constraint, n.features)
              and not (spec.exclude and n.name in _names(spec.exclude))] or members
    biggest = max(usable, key=lambda n: (n.cpus, len(n.gpus), n.mem_mb), default=None)
    shape = None
    if biggest is not None:
        wanted = [g for g in biggest.gpus.values()
                  if spec.gpu_type is None or g.type == spec.gpu_type]
        gpus = len(wanted) if biggest.gpus_known else 1 << 20    # not detected yet
        threads = max(cfg.nodes[n.name].threads_per_core for n in usable)
        shape = taskmodel.NodeShape(biggest.cpus, gpus, threads)
    smallest = min((n.mem_mb for n in members), default=0)
    try:
        return taskmodel.resolve(spec, shape, cfg.cluster.controller.default_mem_per_cpu,
                                 smallest)
    except taskmodel.TaskModelError as exc:
        raise AdmissionError(str(exc)) from None


def _names(hosts: str) -> set[str]:
    from rmsbatch.core.hostlist import expand
    return set(expand(hosts))


# -- what a job names beyond its partition: cluster, site options, licenses, reservation
def check_cluster(spec: JobSpec, cfg) -> None:
    if spec.clusters is not None and spec.clusters != cfg.cluster.name:
        raise AdmissionError(f"--clusters={spec.clusters}: this is cluster "
                             f"{cfg.cluster.name!r}; submit there, or drop --clusters")


def check_site_options(spec: JobSpec, cfg) -> None:
    allowed = cfg.cluster.submit.site_options
    unknown = sorted(set(spec.site_options) - set(allowed))
    if unknown:
        listed = ", ".join(f"--{n}" for n in allowed) or "none"
        raise AdmissionError(f"--{unknown[0]}: not an option of this cluster's submit "
                             f"plugins (site options: {listed})")


def check_node_names(spec: JobSpec, cfg) -> None:
    """-x naming a node the cluster does not have is a typo, as Slurm says."""
    if spec.exclude:
        unknown = sorted(_names(spec.exclude) - set(cfg.nodes))
        if unknown:
            raise AdmissionError(f"--exclude={spec.exclude}: no node named {unknown[0]} in "
                                 "this cluster")


def check_licenses(spec: JobSpec, cfg) -> None:
    have = cfg.cluster.licenses
    for name, count in sorted(spec.licenses.items()):
        if name not in have:
            known = ", ".join(f"{n}:{c}" for n, c in sorted(have.items())) or "none"
            raise AdmissionError(f"--licenses: no license named {name!r} on this cluster "
                                 f"(licenses: {known})")
        if count > have[name]:
            raise AdmissionError(f"--licenses: requested {name}:{count}; the cluster has "
                                 f"{have[name]}")


def check_reservation(spec: JobSpec, user: str, account: str, cfg,
                      now: float, every: tuple | None = None) -> Window | None:
    """The job's reservation, which the user (or the account) may use; None without one."""
    if spec.reservation is None:
        return None
    found = {w.name: w for w in (windows(cfg) if every is None else every)}
    window = found.get(spec.reservation)
    if window is None:
        known = ", ".join(sorted(found)) or "none"
        raise AdmissionError(f"--reservation={spec.reservation}: no such reservation "
                             f"(reservations: {known})")
    if not window.admits(user, account):
        raise AdmissionError(f"--reservation={spec.reservation}: user {user} (account "
                             f"{account}) may not use it; ask an admin to add you to it")
    if window.end is not None and window.end <= now:
        raise AdmissionError(f"--reservation={spec.reservation}: the reservation has ended")
    return window


# -- QoS, account and partition limits (rmsbatch.sched.limits) --------------------------
def check_partition_allows(name: str, part, account: str, qos: str) -> None:
    if part.allow_accounts and account not in part.allow_accounts:
        raise AdmissionError(f"account {account} may not use partition {name} (cluster.toml "
                             f"allow_accounts: {', '.join(part.allow_accounts)}): submit to "
                             "another partition with -p, or ask an admin to allow it")
    if part.allow_qos and qos not in part.allow_qos:
        raise AdmissionError(f"QoS {qos} may not be used in partition {name} (cluster.toml "
                             f"allow_qos: {', '.join(part.allow_qos)}): choose another "
                             "with -q or -p, or ask an admin to allow it")


def account_chain(cfg, acct) -> list:
    """The account and its parents (tenants.toml `parent`), nearest first."""
    chain = [acct]
    parent = getattr(acct, "parent", None)
    while parent is not None:
        up = cfg.account_named(parent)
        if up is None or up in chain:
            break
        chain.append(up)
        parent = getattr(up, "parent", None)
    return chain


def check_limits(qos, acct, gpus: int, cpus: int, mem_mb: int) -> None:
    """Refuse what a limit would keep waiting for ever, even alone on the cluster."""
    checks = (
        (qos.max_gpus_per_user, gpus, "GPUs", f"QoS {qos.name}", "qos.toml", "max_gpus_per_user"),
        (qos.max_gpus, gpus, "GPUs", f"QoS {qos.name}", "qos.toml", "max_gpus"),
        (acct.max_gpus, gpus, "GPUs", f"account {acct.name}", "tenants.toml", "max_gpus"),
        (qos.max_cpus_per_user, cpus, "CPUs", f"QoS {qos.name}", "qos.toml", "max_cpus_per_user"),
        (qos.max_cpus, cpus, "CPUs", f"QoS {qos.name}", "qos.toml", "max_cpus"),
        (acct.max_cpus, cpus, "CPUs", f"account {acct.name}", "tenants.toml", "max_cpus"),
        (acct.max_mem, mem_mb, "MB of memory", f"account {acct.name}", "tenants.toml",
         "max_mem"),
        (qos.max_jobs_per_user, 1, "job", f"QoS {qos.name}", "qos.toml", "max_jobs_per_user"),
        (acct.max_jobs, 1, "job", f"account {acct.name}", "tenants.toml", "max_jobs"))
    for cap, asked, what, owner, where, key in checks:
        if cap is not None and asked and asked > cap:
            if what == "job":
                raise AdmissionError(f"{owner} may run no jobs ({where}: {key} = 0): submit "
                                     "with another QoS or account, or ask an admin to raise it")
            raise AdmissionError(f"{asked} {what} exceed the limit of {owner} ({where}: {key} "
                                 f"= {cap}): ask for fewer, or ask an admin to raise it")


def check_submit_count(qos, acct, user: str, user_jobs: int, account_jobs: int,
                       adding: int) -> None:
    """Refuse a submission of `adding` jobs (an array: each task) that would take the
    user's active jobs of the QoS, or the account's, over its max_submit limit."""
    for cap, have, owner, where, key in (
            (qos.max_submit_per_user, user_jobs, f"user {user} in QoS {qos.name}", "qos.toml",
             "max_submit_per_user"),
            (acct.max_submit, account_jobs, f"account {acct.name}", "tenants.toml",
             "max_submit")):
        if cap is not None and have + adding > cap:
            more = f" and {adding} more" if adding > 1 else ""
            raise AdmissionError(f"job submit limit reached: {owner} has {have} pending or "
                                 f"running job(s){more}, the limit is {cap} ({where}: {key}): "
                                 "wait for some to end, or ask an admin to raise it")
