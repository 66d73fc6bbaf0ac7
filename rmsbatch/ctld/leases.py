"""Job leases: how the controller knows an old run is dead before it starts a new one.

Every running job holds a lease that ends at a time on the controller's clock. It is
granted when the job starts and renewed by whichever path is up: the node daemon's
heartbeat (for every run it reports alive), or, while the node daemon is down or
restarting, the job's supervisor asking for itself. The supervisor keeps the same
deadline: a supervisor that has not seen its lease renewed by the deadline kills its
job (unless rmsctld itself is down: then nothing can start the job elsewhere, see
rmsd(8)). The controller gives a job up as lost only once the deadline plus a margin
has passed, so the run it gives up on is known dead: a job runs at most once at any
moment. The margin covers clock skew between hosts and the supervisor's own polling.

The controller keeps leases in memory only. On a restart it grants every running job a
full lease from the restart: that can only delay a requeue, never hasten one.
"""
from __future__ import annotations


class Leases:
    def __init__(self, lease_s: float, margin_s: float):
        self.lease_s = lease_s
        self.margin_s = margin_s
        self.until: dict[int, float] = {}

    def renew(self, job_id: int, now: float) -> float:
        """Grant or extend; returns the new deadline."""
        until = now + self.lease_s
        if until > self.until.get(job_id, 0.0):
            self.until[job_id] = until
        return self.until[job_id]

    def drop(self, job_id: int) -> None:
        self.until.pop(job_id, None)

    def expired(self, now: float) -> list[int]:
        """Jobs whose lease ran out more than the margin ago: their runs are dead."""
        return [j for j, until in self.until.items() if now > until + self.margin_s]
