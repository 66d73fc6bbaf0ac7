"""Job and node states, and the job state machine.

Every transition the spool makes is checked against `TRANSITIONS` and
performed as a guarded UPDATE (`... WHERE state IN (allowed sources)`), so two
processes can never both start, or both finish, the same job.
"""
from __future__ import annotations

from enum import Enum


class JobState(str, Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETING = "COMPLETING"      # cancel or kill sent, waiting for the end report
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    NODE_FAIL = "NODE_FAIL"
    PREEMPTED = "PREEMPTED"

    @property
    def short(self) -> str:
        return SHORT[self]

    @property
    def is_pending(self) -> bool:
        return self is JobState.PENDING

    @property
    def is_active(self) -> bool:
        return self in ACTIVE

    @property
    def is_finished(self) -> bool:
        return self in FINISHED


SHORT = {
    JobState.PENDING: "PD", JobState.RUNNING: "R", JobState.COMPLETING: "CG",
    JobState.COMPLETED: "CD", JobState.FAILED: "F", JobState.CANCELLED: "CA",
    JobState.TIMEOUT: "TO", JobState.OUT_OF_MEMORY: "OOM", JobState.NODE_FAIL: "NF",
    JobState.PREEMPTED: "PR",
}
ACTIVE = frozenset({JobState.PENDING, JobState.RUNNING, JobState.COMPLETING})
FINISHED = frozenset(JobState) - ACTIVE
RUNNING_LIKE = frozenset({JobState.RUNNING, JobState.COMPLETING})

# target state -> states it may be entered from
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.COMPLETING}),  # requeue
    JobState.RUNNING: frozenset({JobState.PENDING}),
    JobState.COMPLETING: frozenset({JobState.RUNNING}),
    JobState.COMPLETED: RUNNING_LIKE,
    JobState.FAILED: RUNNING_LIKE | {JobState.PENDING},   # launch failure before start
    JobState.CANCELLED: RUNNING_LIKE | {JobState.PENDING},
    JobState.TIMEOUT: RUNNING_LIKE,
    JobState.OUT_OF_MEMORY: RUNNING_LIKE,
    JobState.NODE_FAIL: RUNNING_LIKE,
    JobState.PREEMPTED: RUNNING_LIKE,
}

# `rcontrol requeue` also takes back jobs that have ended, as `scontrol requeue` does
# (spool.transition(..., sources=REQUEUE_FROM)); other requeues only running ones.
REQUEUE_FROM = RUNNING_LIKE | FINISHED


def parse_state(text: str) -> JobState:
    """Accept a state by full name or short code, any case (as squeue -t does)."""
    key = text.strip().upper()
    for state in JobState:
        if key in (state.value, state.short):
            return state
    if key in ("CANCELED",):
        return JobState.CANCELLED
    names = ", ".join(s.value for s in JobState)
    raise ValueError(f"unknown job state {text!r} (use one of {names})")


class NodeState(str, Enum):
    IDLE = "IDLE"
    MIXED = "MIXED"
    ALLOCATED = "ALLOCATED"
    DOWN = "DOWN"          # not answering, or never registered
    DRAIN = "DRAIN"        # drained by an admin, or by a health check, and empty
    DRAINING = "DRAINING"  # drained, jobs still running

    @property
    def is_usable(self) -> bool:
        return self in (NodeState.IDLE, NodeState.MIXED)
