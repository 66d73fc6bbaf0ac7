"""What the figures need from a batch system, and the parts rmsbatch and Slurm share.

A figure only speaks to this interface: the command lines to time (`submit_held`,
`queue_default`, ...) and a few fast helpers to set the stage (`fill_held`,
`active_ids`, `cancel_ids`, `add_finished`). rms.py and slurm.py fill it in.
"""
from __future__ import annotations

import os
import time

from tests.bench import util


class System:
    label = "?"                      # the column in the table
    family = "?"                     # "rmsbatch" or "Slurm"
    variant = "default"

    def __init__(self, workdir: str, env: dict):
        self.workdir = workdir       # cwd of every job and command (output files land here)
        self.env = env
        os.makedirs(workdir, exist_ok=True)

    # -- command lines that are timed ---------------------------------------------------
    def submit_held(self) -> list[str]:
        raise NotImplementedError

    def submit(self, *args: str) -> list[str]:
        raise NotImplementedError

    def queue_default(self) -> list[str]:
        raise NotImplementedError

    def queue_format(self) -> list[str]:
        raise NotImplementedError

    def queue_one(self, job_id: int) -> list[str]:
        raise NotImplementedError

    def cancel_all(self) -> list[str]:
        raise NotImplementedError

    def acct_list(self, since: str, until: str) -> list[str]:
        """Every user's jobs in the window (-S, -E), as `-X -n -P -o` the figure-8 fields."""
        raise NotImplementedError

    def acct_report(self, since: str, until: str) -> list[str]:
        """Usage per account and user in the window."""
        raise NotImplementedError

    # -- helpers that set the stage (not timed) ------------------------------------------
    def active_ids(self) -> list[int]:
        raise NotImplementedError

    def cancel_ids(self, ids: list[int]) -> None:
        raise NotImplementedError

    def add_finished(self, count: int, start: float, now: float) -> dict:
        """Write `count` synthetic finished jobs (tests.bench.synthetic) into the
        accounting store; what it took (seconds, ...)."""
        raise NotImplementedError

    def controller_pid(self) -> int:
        raise NotImplementedError

    def fill_held(self, count: int) -> None:
        """Submit `count` held jobs as fast as this system allows (8 parallel CLI calls)."""
        argv = self.submit_held()
        util.parallel(8, list(range(count)), lambda _: util.timed(argv, self.env, self.workdir))

    def version(self) -> str:
        return "?"

    # -- shared -----------------------------------------------------------------------
    def timed(self, argv: list[str]) -> tuple[float, str]:
        return util.timed(argv, self.env, self.workdir)

    @staticmethod
    def parse_job_id(stdout: str) -> int:
        """Both print `Submitted batch job N`."""
        return int(stdout.strip().split()[-1])

    def wait_empty(self, timeout: float, interval: float = 0.05) -> float:
        """Poll until no job is active; the time.time() at which the first empty poll began."""
        deadline = time.monotonic() + timeout
        while True:
            began = time.time()
            if not self.active_ids():
                return began
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.label}: queue not empty after {timeout:.0f} s")
            time.sleep(interval)

    def ensure_queued(self, count: int) -> None:
        """Exactly `count` held jobs in the queue (and nothing running)."""
        ids = self.active_ids()
        if len(ids) > count:
            self.cancel_ids(sorted(ids)[count:])
            util.wait_until(lambda: len(self.active_ids()) <= count, 300,
                            interval=0.2, what=f"{self.label}: trimming the queue")
            ids = self.active_ids()
        missing = count - len(ids)
        if missing > 0:
            util.log(f"{self.label}: submitting {missing} held jobs")
            start = time.perf_counter()
            self.fill_held(missing)
            util.log(f"{self.label}: {missing} held jobs in {time.perf_counter() - start:.1f} s")
        have = len(self.active_ids())
        if have != count:
            raise RuntimeError(f"{self.label}: wanted {count} queued jobs, have {have}")

    def empty_queue(self) -> None:
        ids = self.active_ids()
        if ids:
            self.cancel_ids(ids)
            self.wait_empty(300, interval=0.2)
