"""The controller's side of the limits (rmsbatch.sched.limits): what each running job
holds against them, kept beside the running allocations, and the tally each
scheduling pass asks.

The charges follow `Controller.running` rather than every path that starts, ends or
requeues a job: each pass drops the charges of jobs no longer running and adds those
of jobs it has not seen (after a restart or a rebuild, read once from the spool), so
no path can leave a limit held by a job that is gone.
"""
from __future__ import annotations

import logging

from rmsbatch.core.states import JobState
from rmsbatch.sched import limits
from rmsbatch.sched.limits import Charge, LimitTally

log = logging.getLogger("rmsbatch.controller")

RUNNING_STATES = [JobState.RUNNING.value, JobState.COMPLETING.value]


class RunningCharges:
    def __init__(self):
        self.charges: dict[int, Charge] = {}

    def started(self, starts, pending: dict) -> None:
        """Note the starts a pass decided, while their pending jobs are at hand (a start
        the spool then refuses is dropped at the next sync)."""
        for job_id, alloc in starts:
            job = pending.get(job_id)
            if job is not None:
                self.charges[job_id] = limits.charge_of(job, alloc)

    def sync(self, ctl) -> None:
        running = ctl.running
        for job_id in [j for j in self.charges if j not in running]:
            del self.charges[job_id]
        if len(self.charges) == len(running):
            return
        who = {r[0]: r[1:] for r in ctl.spool.jobs(states=RUNNING_STATES,
                                                   columns=["id", "user", "account", "qos"])}
        for job_id, alloc in running.items():
            if job_id not in self.charges and job_id in who:
                user, account, qos = who[job_id]
                self.charges[job_id] = limits.charge_of(_Who(user, account, qos), alloc)

    def tally(self, ctl) -> LimitTally | None:
        """The tally for a pass, or None when no limit on running jobs is set."""
        policy = limits.policy_of(ctl.config)
        if not policy.qos and not policy.accounts:
            self.charges.clear()
            return None
        self.sync(ctl)
        return LimitTally(policy, self.charges.values()) if policy.running else None

    def active_counts(self, ctl, user: str, qos: str, account: str) -> tuple[int, int]:
        """Pending and running jobs of the user in the QoS, and of the account (for
        max_submit): each array task counts. A scan, made only where such a limit is set."""
        self.sync(ctl)
        mine = acct = 0
        for j in ctl.pending.values():
            if j.account == account:
                acct += 1
            if j.user == user and j.qos == qos:
                mine += 1
        for c in self.charges.values():
            if c.account == account:
                acct += 1
            if c.user == user and c.qos == qos:
                mine += 1
        return mine, acct


class _Who:
    __slots__ = ("user", "account", "qos")

    def __init__(self, user, account, qos):
        self.user, self.account, self.qos = user, account, qos
