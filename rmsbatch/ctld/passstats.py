"""How long the controller's scheduling passes take: what sdiag tells a Slurm admin
about the main scheduler, and what the scale benchmark reads (the `stats` request)."""
from __future__ import annotations

import os
import time


class PassStats:
    """Counts and times of the passes that ran the scheduler core since the start."""

    def __init__(self):
        self.since = time.time()
        self.passes = 0
        self.total_s = 0.0
        self.last_s = 0.0
        self.max_s = 0.0
        self.last_jobs = 0

    def add(self, seconds: float, jobs: int) -> None:
        self.passes += 1
        self.total_s += seconds
        self.last_s = seconds
        self.max_s = max(self.max_s, seconds)
        self.last_jobs = jobs

    def record(self) -> dict:
        return {"since": self.since, "passes": self.passes, "pass_s_total": self.total_s,
                "pass_s_last": self.last_s, "pass_s_max": self.max_s,
                "pass_s_mean": self.total_s / self.passes if self.passes else 0.0,
                "last_pass_jobs": self.last_jobs, "rss_kb": _rss_kb()}


def _rss_kb() -> int:
    try:
        with open(f"/proc/{os.getpid()}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0
