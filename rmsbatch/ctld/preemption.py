"""Carrying out preemption: the victims the scheduler chose (rmsbatch.sched.preempt)
get SIGTERM, every process of them (the checkpoint signal), and their QoS's
`grace_time` to save their work; when their run ends, or at the end of the grace at
the latest (killed then), they are requeued -- the next run sees RMS_RESTART_COUNT one
higher -- or, with `preempt_mode = "cancel"`, they end PREEMPTED.

A victim's grace is kept in the spool with the job (the end of it, the job it makes
room for, requeue or cancel): a controller restarted in the grace carries on with it,
without a second signal or a new grace.
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass

from rmsbatch.core.states import JobState
from rmsbatch.sched.preempt import Preemption, Victim

log = logging.getLogger("rmsbatch.controller")


@dataclass
class Going:
    deadline: float
    for_job: int
    mode: str


class Preemptions:
    def __init__(self):
        self.going: dict[int, Going] = {}

    def context(self, ctl, now: float) -> Preemption | None:
        """What the scheduler may preempt now; None when nothing in the configuration
        preempts anything."""
        levels = {q.name: q for q in ctl.config.qos.qos}
        may = {q.name: frozenset(q.preempt) for q in levels.values() if q.preempt}
        tiers = None
        if ctl.config.cluster.scheduler.partition_preemption:
            tiers = {p.name: p.priority for p in ctl.config.partitions.values()}
        if not may and tiers is None:
            return None
        victims = []
        for job_id, alloc in ctl.running.items():
            meta = ctl.run_meta.get(job_id)
            if meta is None or job_id in self.going:
                continue
            qos, partition, priority, start = meta
            level = levels.get(qos)
            if level is None:
                continue
            victims.append(Victim(job_id, alloc, qos, partition, priority, start,
                                  level.preempt_mode, float(level.min_runtime),
                                  float(level.grace_time)))
        return Preemption(victims, may, tiers,
                          frozenset(g.for_job for g in self.going.values()))

    def start(self, ctl, chosen: list[tuple[Victim, int]], now: float) -> None:
        """Signal the chosen victims and start their grace."""
        for victim, for_job in chosen:
            if victim.id not in ctl.running:
                continue
            row = ctl.spool.job(victim.id)
            going = Going(now + victim.grace, for_job, victim.mode)
            ctl.spool.update_job(victim.id, preempt_until=going.deadline,
                                 preempt_for=for_job, preempt_mode=victim.mode)
            self._hold(ctl, victim.id, going)
            message = {"op": "signal", "job_id": victim.id, "run": row["restart_count"],
                       "signal": int(signal.SIGTERM), "scope": "full"}
            for name in ctl.running[victim.id]:
                ctl.to_node(name, message)
            what = "requeued" if victim.mode == "requeue" else "cancelled"
            log.info("job %d: preempted for job %d: SIGTERM now, %s in %.0f s at the latest",
                     victim.id, for_job, what, victim.grace)

    def resume(self, ctl, row: dict) -> None:
        """A running job's grace as the spool has it (at start, and after a rollback)."""
        if row.get("preempt_until") is not None:
            self._hold(ctl, row["id"], Going(row["preempt_until"], row["preempt_for"],
                                             row["preempt_mode"] or "requeue"))

    def _hold(self, ctl, job_id: int, going: Going) -> None:
        self.going[job_id] = going
        end = ctl.ends.get(job_id)      # backfill plans with it gone at the grace's end
        ctl.ends[job_id] = going.deadline if end is None else min(end, going.deadline)

    def ended(self, ctl, job_id: int, row: dict) -> bool:
        """A victim's run has ended by itself within its grace: requeue or cancel it
        instead of recording how it ended. False when the job is no victim."""
        going = self.going.get(job_id)
        if going is None:
            return False
        if row["cancel_requested"]:        # its owner cancelled it meanwhile: as asked
            del self.going[job_id]
            return False
        self._carry_out(ctl, job_id, going, "ended within its grace time")
        return True

    def tick(self, ctl, now: float) -> None:
        """Victims still running at the end of their grace: killed, then requeued or
        cancelled."""
        for job_id, going in list(self.going.items()):
            if job_id not in ctl.running:
                del self.going[job_id]
            elif now >= going.deadline:
                self._carry_out(ctl, job_id, going, "killed at the end of its grace time")

    def forget(self, job_id: int) -> None:
        self.going.pop(job_id, None)

    def _carry_out(self, ctl, job_id: int, going: Going, how: str) -> None:
        del self.going[job_id]
        why = f"preempted for job {going.for_job}"
        if going.mode == "cancel":
            row = ctl.spool.job(job_id)
            if ctl.finish(job_id, JobState.PREEMPTED, end_reason=why):
                ctl.stop_run(row, now=True)
                log.info("job %d: %s, %s: PREEMPTED", job_id, why, how)
        elif ctl.requeue(job_id, why):
            log.info("job %d: %s, %s: requeued", job_id, why, how)
