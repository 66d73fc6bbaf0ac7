"""Idle GPUs: running jobs whose allocated GPUs sit unused (cluster.toml [accounting]).

Nodes judge utilization sample by sample (rmsbatch.node.devices.usage) and report with
each heartbeat, per run, since when its GPUs are idle (None: they are not) and how many
seconds they have been idle in all. The controller, on its own clock, at each check:

- flags a job whose GPUs have been idle for `idle_gpu_after`: its `idle_since` (the
  start of the streak) is stored, so `rq` shows it (IdleGPU) and its owner sees the
  warning; a shorter streak stays the nodes' business, so `idle_since` in the spool
  means "flagged", and a job whose GPUs are busy again is unflagged (NULL);
- with `idle_gpu_action` "cancel", a job flagged and idle `idle_gpu_grace` longer is
  cancelled as `rcancel` would (its processes get the kill grace), and ends CANCELLED
  saying why; with "requeue" it is requeued, as a preempted job is;
- keeps `gpu_idle_s`, the seconds its GPUs were idle, up to date while it runs (the
  job's outcome has the last word). GPU-hours idle are gpu_idle_s x alloc_gpus / 3600.

A multi-node job is idle when the GPUs of each of its nodes are: its streak began when
the last of them became idle, and its idle seconds are the nodes' weighted by their
GPUs. It is judged only once every node holding GPUs of its current run has reported
(after a controller restart, within a heartbeat), never on what an earlier run said.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from rmsbatch.core.states import JobState
from rmsbatch.core.units import format_time

log = logging.getLogger("rmsbatch.idlegpu")


@dataclass
class Report:
    run: int
    since: float | None
    idle_s: float


@dataclass
class Streak:
    since: float | None     # None: not idle
    idle_s: float


class IdleGpus:
    def __init__(self):
        self.heard: dict[int, dict[str, Report]] = {}   # job -> node -> latest report
        # job -> when this controller first saw it flagged: its owner gets the whole
        # grace to see the flag, also when rmsctld was down when it came due
        self.flagged_at: dict[int, float] = {}
        self.active: bool | None = None                   # tracking on at the last tick

    # -- from the nodes ------------------------------------------------------------
    def heard_from(self, node: str, reports, current: set[tuple[int, int]]) -> None:
        """A heartbeat's reports; only those of the runs the controller has there count."""
        for job_id, run, since, idle_s in reports or ():
            if (job_id, run) in current:
                self.heard.setdefault(job_id, {})[node] = Report(run, since, idle_s)

    def final(self, ctl, job_id: int, node: str, idle_s: float | None, row: dict) -> dict:
        """The job fields for its end: the outcome's idle seconds (`node` ran the batch
        script) with what the job's other nodes said last; no streak any more."""
        heard = self.heard.pop(job_id, {})
        reports = {n: r.idle_s for n, r in heard.items() if r.run == row["restart_count"]}
        if idle_s is not None:
            reports[node] = idle_s
        alloc = ctl.running.get(job_id) or {}
        fields = {"idle_since": None}
        if all(n in reports for n, a in alloc.items() if a.gpus):
            streak = _combine(alloc, reports)
            if streak is not None:
                fields["gpu_idle_s"] = round(streak.idle_s, 1)
        return fields

    # -- the periodic check ----------------------------------------------------------------
    def tick(self, ctl, now: float) -> None:
        acct = ctl.config.cluster.accounting
        if acct.idle_gpu_util <= 0:
            if self.active is not False:     # turned off (or off at start): nothing flagged
                ctl.spool.clear_idle_since()
                self.heard, self.flagged_at, self.active = {}, {}, False
            return
        self.active = True
        if not self.heard:
            return
        changes = {}
        for job_id, run, stored_since, stored_idle in self._running(ctl):
            streak = self._streak(ctl, job_id, run)
            if streak is None:
                if stored_since is not None and not self.heard[job_id]:
                    changes[job_id] = (None, stored_idle)    # an earlier run's streak
                continue
            since = self._flag(job_id, acct, streak, stored_since, now)
            idle = round(streak.idle_s, 1)
            if since is not None and self._due(job_id, acct, streak, now):
                ctl.spool.set_idle_gpus({job_id: (None, idle)})
                self._act(ctl, job_id, acct, now - streak.since)
            elif (since, idle) != (stored_since, stored_idle):
                changes[job_id] = (since, idle)
        if changes:
            ctl.spool.set_idle_gpus(changes)

    def _running(self, ctl) -> list[tuple]:
        """The running jobs nodes reported on, as the spool has them; what is known of
        the others (ended, requeued) is forgotten, and their flags cleared."""
        running = [r for r in ctl.spool.running_idle_gpus() if r[0] in self.heard]
        gone = set(self.heard) - {r[0] for r in running}
        if gone:
            ctl.spool.clear_idle_since(sorted(gone))
            for job_id in gone:
                del self.heard[job_id]
                self.flagged_at.pop(job_id, None)
        return running

    def _flag(self, job_id: int, acct, streak: Streak, stored_since, now: float):
        """The idle_since to store: the streak's start once it is long enough, else None."""
        flagged = streak.since is not None and now - streak.since >= acct.idle_gpu_after
        if flagged and stored_since is None:
            log.warning("job %d: GPUs idle (under %g%% for %s) since %s", job_id,
                        acct.idle_gpu_util, format_time(acct.idle_gpu_after),
                        time.strftime("%H:%M", time.localtime(streak.since)))
        elif stored_since is not None and not flagged:
            log.info("job %d: GPUs busy again (idle since %s)", job_id,
                     time.strftime("%H:%M", time.localtime(stored_since)))
        if not flagged:
            self.flagged_at.pop(job_id, None)
            return None
        self.flagged_at.setdefault(job_id, now)
        return streak.since

    def _due(self, job_id: int, acct, streak: Streak, now: float) -> bool:
        """Is a flagged job's grace over (and is there an action to take)?"""
        if acct.idle_gpu_action == "flag":
            return False
        flagged = max(self.flagged_at[job_id], streak.since + acct.idle_gpu_after)
        return now >= flagged + acct.idle_gpu_grace

    def _streak(self, ctl, job_id: int, run: int) -> Streak | None:
        """The job's streak from its current run's reports; None until every node of
        it with GPUs has reported."""
        heard = self.heard[job_id]
        stale = [n for n, r in heard.items() if r.run != run]
        for node in stale:
            del heard[node]
        alloc = ctl.running.get(job_id) or {}
        if any(a.gpus and n not in heard for n, a in alloc.items()):
            return None
        return _combine(alloc, {n: r.idle_s for n, r in heard.items()},
                        [r.since for n, r in heard.items() if alloc.get(n) and alloc[n].gpus])

    def _act(self, ctl, job_id: int, acct, idle_for: float) -> None:
        why = (f"idle GPUs: under {acct.idle_gpu_util:g}% utilization for "
               f"{format_time(idle_for)} (cluster.toml [accounting] idle_gpu_action)")
        self.heard.pop(job_id, None)
        self.flagged_at.pop(job_id, None)
        if acct.idle_gpu_action == "requeue":
            ctl.requeue(job_id, why)
            return
        row = ctl.spool.job(job_id)
        # as rcancel: its processes get SIGTERM and the kill grace; the outcome, when it
        # comes, records CANCELLED with this reason (rmsbatch.ctld.ops.nodes.ended)
        if ctl.spool.transition(job_id, JobState.COMPLETING, cancel_requested=1,
                                end_reason=why[:500]):
            ctl.changes += 1
            ctl.dirty = True
            ctl.stop_run(row)
            log.warning("job %d: %s: cancelled", job_id, why)


def _combine(alloc: dict, idle_s: dict[str, float],
             since: list[float | None] | None = None) -> Streak | None:
    """One job's streak from its nodes': idle while all are, since the last became
    idle; idle seconds weighted by each node's GPUs. None without GPUs to weigh."""
    weights = {n: len(a.gpus) for n, a in alloc.items() if a.gpus}
    total = sum(weights.get(n, 0) for n in idle_s)
    if not total:
        return None
    seconds = sum(s * weights.get(n, 0) for n, s in idle_s.items()) / sum(weights.values())
    start = None
    if since and all(s is not None for s in since):
        start = max(since)
    return Streak(start, seconds)
