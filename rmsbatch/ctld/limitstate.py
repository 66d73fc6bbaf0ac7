"""The controller's side of the limits (rmsbatch.sched.limits): what each running job
holds against them, kept beside the running allocations, and the tally each
scheduling pass asks.

The charges follow `Controller.running` rather than every path that starts, ends or
requeues a job: each pass drops the charges of jobs no longer running and adds those
of jobs it has not seen (after a restart or a rebuild, read once from the spool), so
no path can leave a limit held by a job that is gone.
"""
from __future__ import annotations

from rmsbatch.core.states import JobState
from rmsbatch.sched import limits
from rmsbatch.sched.limits import Charge, LimitTally

RUNNING_STATES = [JobState.RUNNING.value, JobState.COMPLETING.value]


class RunningCharges:
    def __init__(self):
        self.charges: dict[int, Charge] = {}
        # active jobs by (user, QoS) and by account, as of ctl.changes == counted_at
        self.by_user: dict[tuple[str, str], int] = {}
        self.by_account: dict[str, int] = {}
        self.counted_at: int | None = None
        self.checked_at: int | None = None
        self.counted_in: dict | None = None     # ... and of this pending dict (a rebuild
                                                # replaces it)

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
        # accounts whose budget (or a parent's) is spent (rmsbatch.ctld.budgets)
        spent = ctl.budgets.spent(ctl.clock(), ctl.running) if ctl.budgets.active \
            else frozenset()
        if not policy.qos and not policy.accounts:
            self.charges.clear()
            return LimitTally(policy, (), spent) if spent else None
        self.sync(ctl)
        return LimitTally(policy, self.charges.values(), spent) \
            if policy.running or spent else None

    def active_counts(self, ctl, user: str, qos: str, account: str) -> tuple[int, int]:
        """Pending and running jobs of the user in the QoS, and of the account (for
        max_submit): each array task counts. Counted by a scan of the active jobs, made
        only where such a limit is set, and again only once something other than a
        submission has changed the controller's jobs (`submitted` keeps it current)."""
        if self.counted_at != ctl.changes or self.counted_in is not ctl.pending:
            self._count(ctl)
        self.checked_at = self.counted_at
        return self.by_user.get((user, qos), 0), self.by_account.get(account, 0)

    def submitted(self, ctl, row: dict, jobs: int) -> None:
        """A submission that active_counts was asked about (and nothing since) added
        `jobs` pending jobs: the counts stay current without a new scan."""
        if self.counted_at is None or self.checked_at != self.counted_at:
            return
        key = (row["user"], row["qos"])
        self.by_user[key] = self.by_user.get(key, 0) + jobs
        self.by_account[row["account"]] = self.by_account.get(row["account"], 0) + jobs
        self.counted_at = ctl.changes

    def _count(self, ctl) -> None:
        self.sync(ctl)
        by_user: dict[tuple[str, str], int] = {}
        by_account: dict[str, int] = {}
        for j in list(ctl.pending.values()) + list(self.charges.values()):
            key = (j.user, j.qos)
            by_user[key] = by_user.get(key, 0) + 1
            by_account[j.account] = by_account.get(j.account, 0) + 1
        self.by_user, self.by_account = by_user, by_account
        self.counted_at, self.counted_in = ctl.changes, ctl.pending


class _Who:
    __slots__ = ("user", "account", "qos")

    def __init__(self, user, account, qos):
        self.user, self.account, self.qos = user, account, qos
