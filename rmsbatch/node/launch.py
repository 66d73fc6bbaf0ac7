"""Launching one run of a job on this node: its job directory (script and job.json),
its environment (rmsbatch.node.jobenv), its TMPDIR and prolog plan
(rmsbatch.node.prolog), the limits its supervisor applies, and the supervisor itself.

The node daemon (rmsbatch.node.daemon) decides *whether* to launch; this module says
*what* the run gets. Nothing here talks to the controller.
"""
from __future__ import annotations

import logging
import os
import pwd

from rmsbatch.node import jobenv, procs, prolog, supervisor
from rmsbatch.node.devices import record
from rmsbatch.node.devices.usage import GpuUsage
from rmsbatch.node.jobdir import JOB_FILE, LOCK_FILE, hold_lock, write_json

log = logging.getLogger("rmsbatch.noded")


class LaunchError(Exception):
    """The run cannot be set up here. `node_fault`: the node is at fault (a user it does
    not know, say), so the job is requeued elsewhere and the node drained."""

    def __init__(self, message: str, node_fault: bool = True):
        super().__init__(message)
        self.node_fault = node_fault


def prepare(nd, job: dict, jobdir: str) -> None:
    """Write the run's script and job.json. `nd` is the NodeDaemon."""
    user, uid, gid = job["user"], job["uid"], job["gid"]
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise LaunchError(f"user {user} does not exist on node {nd.node}") from None
    if pw.pw_uid != uid:
        raise LaunchError(f"user {user} has uid {pw.pw_uid} on node {nd.node} but "
                          f"uid {uid} where the job was submitted")
    if not nd.privileged and uid != os.geteuid():
        raise LaunchError(f"rmsd on {nd.node} runs unprivileged as uid {os.geteuid()} "
                          f"and cannot start jobs for {user}", node_fault=False)
    groups = os.getgrouplist(user, gid) if nd.privileged else os.getgroups()
    script = os.path.join(jobdir, "script")
    fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o500)
    with os.fdopen(fd, "w") as fh:
        if nd.privileged:
            os.fchown(fh.fileno(), uid, gid)
        fh.write(job["script"])
    run = os.path.basename(jobdir)
    ndc = nd.config.cluster.node_daemon
    cc = nd.config.cluster.controller
    spec = job.get("spec_extra") or {}
    prolog.write_plan(nd, job, jobdir)
    data = {
        "job_id": job["job_id"], "name": job["name"], "user": user, "uid": uid,
        "gid": gid, "groups": groups, "home": pw.pw_dir, "script_path": script,
        "argv": job["argv"], "workdir": job["workdir"], "submit_dir": job["submit_dir"],
        "output": job["output"], "error": job["error"],
        "environment": jobenv.environment(nd, job, pw, prolog.tmpdir_for(nd, run)),
        "time_limit": job["time_limit"],
        "kill_grace": job.get("kill_grace", 30), "node": nd.node,
        "notify_socket": nd.notify_path, "array_job_id": job.get("array_job_id"),
        "array_task_id": job.get("array_task_id"),
        "isolation": isolation(nd, job, run),
        "gpus": list(job["alloc"]["gpus"]),
        "lease": {"until": float(job.get("lease_until") or 0) or None,
                  "lease_s": cc.job_lease, "file": nd.lease_path,
                  "controller": nd.controller_via or nd.config.socket,
                  "conf_dir": nd.config.directory, "run": job["restart_count"],
                  "retry_s": cc.heartbeat_interval} if job.get("lease_until") else None,
        "umask": spec.get("umask") if ndc.propagate_umask else None,
        "rlimits": {k: v for k, v in (spec.get("rlimits") or {}).items()
                    if k in ndc.propagate_rlimits} or None,
    }
    data["control"] = run_control(job)
    data["holder"] = job.get("batch") is False      # rmsbatch.ctld.service.allocation_holder
    # Not fsynced: the supervisor forked next reads it, and a crash of the machine ends
    # the run with it, so two fsyncs per launch (the most of a launch) would buy nothing.
    write_json(os.path.join(jobdir, JOB_FILE), data, durable=False)
    if job["alloc"]["gpus"]:
        nd.gpu_usage[run] = GpuUsage(jobdir, job["alloc"]["gpus"], **nd.usage_settings())


def run_control(job: dict) -> dict:
    """job.json "control": the signal due before the time limit (--signal) and how the
    output files are opened. A requeued run appends unless the job asked to truncate,
    as in Slurm, so the first run's output survives the requeue."""
    spec = job.get("spec_extra") or {}
    mode = spec.get("open_mode") or ("append" if job["restart_count"] else "truncate")
    return {"signal": spec.get("signal"), "open_mode": mode}


def isolation(nd, job: dict, run: str) -> dict | None:
    """The limits the job's supervisor applies (job.json "isolation")."""
    if nd.isolation_mode == "off":
        return None
    alloc = job["alloc"]
    node = nd.config.nodes[nd.node]
    every, allowed = record.device_files(nd.devices, alloc["gpus"])
    spec = {"mem_bytes": alloc["mem_mb"] * 1024 * 1024,
            "pids_max": nd.config.cluster.node_daemon.pids_max,
            "devices": every, "allowed": allowed, "mode": nd.isolation_mode,
            "cgroup_parent": nd.cgroup_parent}
    used = {c for cpus in nd.cpus_in_use.values() for c in cpus}
    free = [c for c in nd.host_cpus if c not in used]
    if alloc["cpus"] <= len(free):
        # CPUs on the NUMA node of the job's accelerators first, then the rest
        near = set(record.local_cpus(nd.devices, alloc["gpus"]))
        ordered = [c for c in free if c in near] + [c for c in free if c not in near]
        spec["cpus"] = sorted(ordered[:alloc["cpus"]])
        nd.cpus_in_use[run] = spec["cpus"]
    else:
        spec["why_no_cpuset"] = (f"{len(free)} of the host's {len(nd.host_cpus)} CPUs "
                                 f"free for {alloc['cpus']} (node declares {node.cpus})")
    return spec


def spawn_supervisor(jobdir: str, spawner=None) -> int | None:
    """Start the run's supervisor, holding its lock from before (so the run is never
    without a live lock holder while its supervisor lives). Through rmsd's spawner
    (rmsbatch.node.spawner) when there is one, else by forking rmsd. None: the spawner
    took the request and did not say what became of it; the run then either has a
    supervisor or, once our hold on the lock ends, reads as lost (and is reported so):
    forking a second one here could run the job twice."""
    lock = hold_lock(os.path.join(jobdir, LOCK_FILE))
    try:
        if spawner is not None:
            from rmsbatch.node.spawner import SpawnerGone, Unanswered
            try:
                return spawner.spawn(jobdir, lock)
            except Unanswered as exc:
                log.error("job %s: %s", os.path.basename(jobdir), exc)
                return None
            except SpawnerGone:
                pass
        return fork_supervisor(jobdir, lock)
    finally:
        os.close(lock)          # the supervisor holds it now


def fork_supervisor(jobdir: str, lock: int) -> int:
    """Fork without exec: a fresh interpreter would add tens of milliseconds to every
    job's start. The child leaves its parent's session, so it survives rmsd (and the
    spawner) being killed, and keeps LOCK open as its descriptor 3."""
    pid = os.fork()
    if pid:
        return pid
    try:
        procs.detach({3: lock})
        supervisor.main([jobdir, "--lock-fd", "3"])   # imported up front: the fork inherits it
        os._exit(0)
    except BaseException:
        os._exit(1)
