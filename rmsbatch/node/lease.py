"""The supervisor's side of a job's lease (the contract is in rmsbatch.ctld.leases).

rmsd renews the leases of every run it supervises with each heartbeat and writes
what rmsctld granted to `<state_dir>/<node>/leases.json` ({"until": T, "runs": [...]}),
which each supervisor reads. When that file has not moved the deadline for half a
lease (rmsd is down, restarting, or cut off), the supervisor asks rmsctld itself,
every `retry_s`. When the deadline passes with neither path renewing it, the job must
die before rmsctld gives it up as lost (deadline + margin), so that a requeued job
never runs twice at once: `check()` then says "kill".

Two exceptions, where rmsctld is known not to be deciding anything, so nothing can
start the job elsewhere: its socket refuses connections (rmsctld is down; it grants
every running job a fresh lease when it starts), or it is on this host and takes our
request but does not answer in time (it is stopped or busy: it will read the request
before it next judges leases, and it forgives the time it did not run). The job goes
on in both cases.

Deadlines are wall-clock times on rmsctld's clock; hosts must keep their clocks
within the lease margin of each other (NTP), as MUNGE credentials also require.
"""
from __future__ import annotations

import json
import os
import time


class LeaseKeeper:
    def __init__(self, *, until: float, lease_s: float, file: str | None,
                 controller: str | None, node: str, job_id: int, run: int,
                 retry_s: float = 5.0, clock=time.time, conf_dir: str | None = None):
        self.until = until
        self.lease_s = lease_s
        self.file = file
        self.controller = controller    # its socket's path, or "tcp:HOST:PORT"
        self.conf_dir = conf_dir        # the configuration (for TCP: cluster, munged)
        self.node = node
        self.job_id = job_id
        self.run = run
        self.name = f"{job_id}.{run}"
        self.retry_s = retry_s
        self.clock = clock
        self.file_mtime = 0.0
        self.next_direct = 0.0
        self.controller_idle = ""       # why rmsctld is known not to be deciding, if it is
        self.last_error = ""

    @property
    def _local(self) -> bool:
        return bool(self.controller) and self.controller.startswith("/")

    def _read_file(self) -> None:
        if not self.file:
            return
        try:
            mtime = os.stat(self.file).st_mtime
        except OSError:
            return
        if mtime == self.file_mtime:
            return
        self.file_mtime = mtime
        try:
            with open(self.file) as fh:
                data = json.load(fh)
            if self.name in data.get("runs", ()):
                self.until = max(self.until, float(data["until"]))
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            pass

    def ask_controller(self, timeout: float = 2.0) -> dict | None:
        """One `lease` request; the reply, or None (self.last_error says why)."""
        from rmsbatch.net import client
        try:
            with client.Client(self.controller, timeout=timeout, conf=self.conf_dir) as conn:
                reply = conn.call("lease", node=self.node, job_id=self.job_id, run=self.run)
        except client.ControllerUnavailable as exc:
            # Down (refused, absent): nothing is deciding. Took the request and said
            # nothing: on a local socket (which cannot be cut off) rmsctld is stopped or
            # busy, and reads the request before it judges leases. Anything else (a
            # reset, an unreachable host) may hide a live rmsctld.
            # Over TCP neither says anything: a refused or silent port on another host
            # may be a cut link, behind which rmsctld lives and decides.
            self.controller_idle = "down" if exc.down and self._local else (
                "busy" if exc.timed_out and self._local else "")
            self.last_error = str(exc)
            return None
        except client.ClientError as exc:       # refused, or a garbled answer
            self.controller_idle = ""
            self.last_error = str(exc)
            return None
        self.controller_idle = ""
        return reply

    def check(self) -> tuple[str, str] | None:
        """None while the lease holds; ("stop", why) when rmsctld says this run is no
        longer current; ("kill", why) when the lease ran out."""
        now = self.clock()
        self._read_file()
        if self.controller and self.until - now < self.lease_s / 2 and now >= self.next_direct:
            self.next_direct = now + self.retry_s
            reply = self.ask_controller()
            if reply is not None:
                if reply.get("stop"):
                    return "stop", str(reply.get("why") or "rmsctld stopped this run")
                if isinstance(reply.get("lease_until"), (int, float)):
                    self.until = max(self.until, float(reply["lease_until"]))
        if now < self.until or self.controller_idle:
            return None
        return "kill", (f"lease expired: neither rmsd nor rmsctld renewed it for "
                        f"{self.lease_s:g} s ({self.last_error or 'no answer'})")
