"""Ops that change a job after its submission: requeue (and requeue held), and update
(time limit, partition, QoS, account, priority, nice), as `scontrol requeue` and
`scontrol update JobId=...` do.

Requeue follows scontrol: a running (or completing) job goes back to PENDING with
its run stopped at once and its restart count one higher; a job that has ended
(COMPLETED, FAILED, CANCELLED, TIMEOUT, ...) is taken back as well; a pending job is
refused, since it has not run. The owner may requeue their jobs, operators any.

An update is checked against the configuration by admission itself (the rules of
`rmsbatch.sched.admission.admit`, not a copy of them), and is all or nothing. The
owner may only ask for less: a lower time limit, a higher nice value; raising the
time limit and changing partition, QoS, account or priority is for operators.
A running job's new time limit is sent to its node, whose rmsd passes it to the
run's supervisor.

Priority=N pins the job's priority at N, and the spool records that it is pinned
(`priority_pinned`), so that the scheduler keeps N across restarts and configuration
changes; Priority=reset returns the job to its multifactor priority. A new nice
value, QoS or partition leaves a pinned job's priority as it is (as Slurm recomputes
only priorities it manages) and gives any other job admission's value for it.
"""
from __future__ import annotations

import logging

from rmsbatch.core.jobspec import JobSpec
from rmsbatch.core.states import REQUEUE_FROM, RUNNING_LIKE, JobState
from rmsbatch.core.units import format_time
from rmsbatch.ctld import requests
from rmsbatch.ctld.ops import USER, op
from rmsbatch.ctld.ops import reservations as resv
from rmsbatch.ctld.records import batch_node
from rmsbatch.ctld.requests import RequestError
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.admission import AdmissionError, admit

log = logging.getLogger("rmsbatch.controller")

# What `rcontrol update` calls each field (scontrol's key names), for messages.
KEYS = {"time_limit": "TimeLimit", "partition": "Partition", "qos": "QOS",
        "account": "Account", "priority": "Priority", "nice": "Nice"}
OPERATOR_ONLY = ("partition", "qos", "account", "priority")
PENDING_ONLY = ("partition", "qos", "account")
RESET = "reset"         # Priority=reset: unpinned, the job follows its factors again


def _limit(seconds: int) -> str:
    return "UNLIMITED" if seconds == 0 else format_time(seconds)


# -- requeue -----------------------------------------------------------------------------
@op("requeue", model=requests.Requeue, role=USER, audit=True)
def requeue(ctl, conn, req: requests.Requeue) -> dict:
    caller = ctl.user_name(conn.uid)
    admin = ctl.is_privileged(conn)
    verb = "requeuehold" if req.hold else "requeue"
    done, errors = [], []
    for job_id in dict.fromkeys(req.ids):
        row = ctl.spool.job(job_id)
        if row is None:
            errors.append(f"job {job_id} not found")
            continue
        if row["user"] != caller and not admin:
            errors.append(f"{verb} job {job_id}: permission denied (job belongs to "
                          f"{row['user']}; you may {verb} only your own jobs)")
            continue
        state = JobState(row["state"])
        if state is JobState.PENDING:
            errors.append(f"job {job_id} is pending: it has not run, so there is nothing to "
                          "requeue (to keep it from starting: rcontrol hold)")
            continue
        if not _requeue_one(ctl, row, state, f"rcontrol {verb} by {caller}", errors):
            continue
        if req.hold:
            value = 2 if admin and row["user"] != caller else 1
            reason = scheduler.HELD_ADMIN if value == 2 else scheduler.HELD_USER
            ctl.spool.update_job(job_id, hold=value, reason=reason)
            ctl.pending[job_id].hold = value
            ctl.reasons[job_id] = reason
        ctl.changes += 1
        done.append(job_id)
        log.info("job %d: %s by %s (was %s)", job_id, verb, caller, state.value)
    ctl.dirty = True
    return {"requeued": done, "errors": errors}


def _requeue_one(ctl, row: dict, state: JobState, why: str, errors: list[str]) -> bool:
    job_id = row["id"]
    if state in RUNNING_LIKE:
        # The controller's own requeue: the run is stopped at once, not after a grace.
        if not ctl.requeue(job_id, why):
            errors.append(f"job {job_id} could not be requeued (it ended meanwhile): "
                          "try again")
            return False
        if row["cancel_requested"]:     # a cancel it was completing is superseded
            ctl.spool.update_job(job_id, cancel_requested=0)
        return True
    if row["partition"] not in ctl.config.partitions:
        errors.append(f"job {job_id} ran in partition {row['partition']}, which no longer "
                      "exists: submit it again")
        return False
    cc = ctl.config.cluster.controller
    if len(ctl.pending) + len(ctl.running) >= cc.max_jobs:
        errors.append(f"job {job_id} not requeued: the queue is full ({cc.max_jobs} active "
                      "jobs); try again later")
        return False
    if not ctl.spool.transition(
            job_id, JobState.PENDING, sources=REQUEUE_FROM, start_time=None, end_time=None,
            alloc=None, nodelist="", alloc_cpus=0, alloc_gpus=0, launched=0,
            cancel_requested=0, exit_code=None, exit_signal=None, max_rss_kb=None,
            total_cpu_s=None, gpu_util=None, gpu_mem_peak_mb=None, gpu_energy_j=None,
            protections="", reason="None", end_reason=why[:500],
            restart_count=row["restart_count"] + 1):
        errors.append(f"job {job_id} could not be requeued: try again")
        return False
    ctl.add_pending(ctl.spool.job(job_id))
    return True


# -- update ------------------------------------------------------------------------------
@op("update_job", model=requests.UpdateJob, role=USER, audit=True)
def update_job(ctl, conn, req: requests.UpdateJob) -> dict:
    changes = {k: getattr(req, k) for k in KEYS if getattr(req, k) is not None}
    if req.time_limit_change is not None and "time_limit" in changes:
        raise RequestError("update: give TimeLimit once, as a time or as a change (+T, -T)")
    if not changes and req.time_limit_change is None:
        raise RequestError("update: nothing to change: give TimeLimit=, Partition=, QOS=, "
                           "Account=, Priority= or Nice=")
    caller = ctl.user_name(conn.uid)
    admin = ctl.is_privileged(conn)
    for job_id in dict.fromkeys(req.ids):
        row = ctl.spool.job(job_id)
        if row is None:
            raise RequestError(f"job {job_id} not found")
        if row["user"] != caller and not admin:
            raise RequestError(f"update job {job_id}: permission denied (job belongs to "
                               f"{row['user']}; you may update only your own jobs)")
        state = JobState(row["state"])
        if state.is_finished or state is JobState.COMPLETING:
            raise RequestError(f"job {job_id} has already ended ({state.value}): "
                               "nothing to update")
        if req.time_limit_change is not None:
            changes = dict(changes, time_limit=_changed_limit(job_id, row["time_limit"],
                                                              req.time_limit_change))
        if not admin:
            _check_user_may(job_id, row, changes)
        late = [KEYS[k] for k in PENDING_ONLY if k in changes]
        if late and state is not JobState.PENDING:
            raise RequestError(f"job {job_id} is {state.value}: {', '.join(late)} can change "
                               "only while it is pending")
        _update_one(ctl, row, changes, caller)
    ctl.dirty = True
    return {"updated": list(dict.fromkeys(req.ids))}


def _changed_limit(job_id: int, limit: int, change: int) -> int:
    if limit == 0:
        raise RequestError(f"job {job_id} has no time limit (UNLIMITED) to add to or take "
                           "from: give TimeLimit=TIME")
    if limit + change <= 0:
        raise RequestError(f"job {job_id}: its time limit is {_limit(limit)}; taking "
                           f"{_limit(-change)} leaves none: give less")
    return limit + change


def _check_user_may(job_id: int, row: dict, changes: dict) -> None:
    """The owner may ask for less, never for more."""
    for key in OPERATOR_ONLY:
        if key in changes:
            raise RequestError(f"update job {job_id}: only operators and admins may change "
                               f"{KEYS[key]}")
    if "time_limit" in changes:
        new, old = changes["time_limit"], row["time_limit"]
        if old != 0 and (new == 0 or new > old):
            raise RequestError(f"update job {job_id}: only operators and admins may raise a "
                               f"time limit (it is {_limit(old)}): give TimeLimit={_limit(old)} "
                               "or less")
    if "nice" in changes and changes["nice"] < row["nice"]:
        raise RequestError(f"update job {job_id}: only operators and admins may lower a job's "
                           f"nice value (it is {row['nice']}): give Nice={row['nice']} or more")


def _priority_fields(row: dict, changes: dict, admitted: int) -> dict:
    """The stored priority, and whether it is pinned, after these changes; `admitted`:
    what admission stores for the job as changed."""
    if "priority" in changes:
        if changes["priority"] == RESET:
            return {"priority": admitted, "priority_pinned": 0}
        return {"priority": changes["priority"], "priority_pinned": 1}
    if row["priority_pinned"] != 1 and any(k in changes for k in ("partition", "qos", "nice")):
        return {"priority": admitted}
    return {}


def _update_one(ctl, row: dict, changes: dict, caller: str) -> None:
    job_id = row["id"]
    spec = JobSpec.from_dict(ctl.spool.job_spec(job_id))
    # Judged as the job now is, with the changes: what was submitted is not what counts.
    spec.partition = changes.get("partition", row["partition"])
    spec.qos = changes.get("qos", row["qos"])
    spec.account = changes.get("account", row["account"])
    spec.time_limit = changes.get("time_limit", row["time_limit"])
    spec.nice = changes.get("nice", row["nice"])
    try:
        admitted = admit(spec, row["user"], row["uid"], row["gid"], ctl.config, ctl.nodes,
                         ctl.clock(), ctl.windows())
    except AdmissionError as exc:
        raise RequestError(f"job {job_id} not updated: {exc}") from None
    fields = {k: admitted[k] for k in ("partition", "qos", "account", "time_limit", "nice")}
    if "account" in changes:
        from rmsbatch.ctld.ops.jobs import tenant_path
        fields["tenant_path"] = tenant_path(ctl.config, admitted["account"])
    fields.update(_priority_fields(row, changes, admitted["priority"]))
    ctl.spool.update_job(job_id, **fields)
    ctl.changes += 1
    state = JobState(row["state"])
    if state is JobState.PENDING:
        ctl.add_pending(ctl.spool.job(job_id))
    elif "time_limit" in changes and fields["time_limit"] != row["time_limit"]:
        start = row["start_time"] or ctl.clock()
        seconds = resv.time_limit(ctl, fields["time_limit"], row["reservation"], start)
        ctl.set_end(job_id, start, seconds)
        ctl.dirty = True        # backfill plans with running jobs' ends
        node = batch_node(ctl.running.get(job_id) or {})
        if node is not None:
            ctl.to_node(node, {"op": "time_limit", "job_id": job_id,
                               "run": row["restart_count"], "seconds": seconds})
    shown = ", ".join(f"{KEYS[k]}={_limit(v) if k == 'time_limit' else v}"
                      for k, v in changes.items())
    log.info("job %d: updated by %s: %s", job_id, caller, shown)
