"""What holds a pending job back besides resources: its array's throttle, its
dependency and its begin time, on the controller's side.

The scheduler core decides (rmsbatch.sched.plan: pure); this module gives it what it
needs from the spool (`snapshot`), turns spool rows into what it reads
(`fill_pending`, `task_of`), acts on dependencies that can never be satisfied
(`never_satisfied`) and says what an array task's run is told (`array_launch_keys`).
"""
from __future__ import annotations

import functools
import logging

from rmsbatch.core import arrayspec
from rmsbatch.core import dependency as deps
from rmsbatch.core.states import JobState
from rmsbatch.sched import plan as scheduler

log = logging.getLogger("rmsbatch.controller")


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> deps.Dependency:
    # the tasks of an array share one dependency text: parse it once
    return deps.parse(text)


@functools.lru_cache(maxsize=64)
def _summary(spec: str) -> dict[str, int]:
    return arrayspec.summary(arrayspec.parse(spec)[0])


def fill_pending(job: scheduler.PendingJob, row: dict) -> None:
    job.user, job.name = row["user"], row["name"]
    job.array_job_id, job.array_task_id = row.get("array_job_id"), row.get("array_task_id")
    job.throttle = row.get("array_throttle") or 0
    job.begin_time = row.get("begin_time")
    text = row.get("dependency")
    try:
        job.dependency = _parsed(text) if text else None
    except deps.DependencyError:    # checked at submit: only a damaged spool gets here
        log.error("job %d: unreadable dependency %r: ignored", row["id"], text)
        job.dependency = None


def task_of(first: scheduler.PendingJob, job_id: int, task: int) -> scheduler.PendingJob:
    # not copy.copy, nor the dataclass's __init__: 10,000 tasks, each a few microseconds
    job = object.__new__(scheduler.PendingJob)
    job.__dict__.update(first.__dict__, id=job_id, array_task_id=task)
    return job


def held_back(job: scheduler.PendingJob) -> bool:
    return job.dependency is not None or job.begin_time is not None or bool(job.throttle)


def any_dependency(pending) -> bool:
    return any(j.dependency is not None for j in pending)


def snapshot(spool, pending: list[scheduler.PendingJob]) -> scheduler.Waits | None:
    """The states the pending jobs' dependencies and throttles are judged by; None when
    no pending job has either (the common case costs nothing)."""
    named = set()
    singleton = throttled = False
    for job in pending:
        if job.dependency is not None:
            named |= job.dependency.job_ids()
            singleton = singleton or job.dependency.singleton
        throttled = throttled or bool(job.throttle)
    if not named and not singleton and not throttled:
        return None
    waits = scheduler.Waits()
    for job_id, state, start, array_id, task in spool.dependency_rows(named):
        waits.jobs[job_id] = (state, start, array_id, task)
        if array_id is not None:
            waits.arrays.setdefault(array_id, {})[task] = job_id
    if singleton:
        for job_id, user, name, state in spool.active_names():
            waits.named.setdefault((user, name), []).append((job_id, state))
    if throttled:
        waits.running_tasks = spool.running_tasks()
    return waits


def never_satisfied(ctl, job_ids: list[int], changed: dict, now: float) -> None:
    """Jobs whose dependency can never be satisfied: cancelled if the cluster or the job
    says so, else they wait with that reason (once logged)."""
    kill_default = ctl.config.cluster.controller.kill_invalid_depend
    for job_id in job_ids:
        if job_id not in changed:
            continue        # already judged in an earlier pass
        spec = ctl.spool.job_spec(job_id) or {}
        kill = spec.get("kill_on_invalid_dep")
        if kill is None:
            kill = kill_default
        if not kill:
            log.info("job %d: dependency can never be satisfied: left pending", job_id)
            continue
        if ctl.finish(job_id, JobState.CANCELLED, end_time=now,
                      reason=scheduler.DEPENDENCY_NEVER,
                      end_reason="dependency can never be satisfied (DependencyNeverSatisfied)"):
            ctl.pending.pop(job_id, None)
            ctl.reasons.pop(job_id, None)
            log.info("job %d: dependency can never be satisfied: cancelled", job_id)


def array_launch_keys(row: dict) -> dict:
    """What the node needs to know of the array a task belongs to (None outside arrays):
    its ids, and COUNT, MIN, MAX and STEP of its task ids."""
    if row.get("array_job_id") is None or not row.get("array_spec"):
        return {"array_job_id": None, "array_task_id": None, "array": None}
    return {"array_job_id": row["array_job_id"], "array_task_id": row["array_task_id"],
            "array": _summary(row["array_spec"])}
