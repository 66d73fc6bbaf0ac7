"""Retention: records older than cluster.toml [accounting] archive_after leave the spool.

Once an hour (and at start), an accounting worker copies the finished jobs that ended
before the cutoff, and the audit records made before it, into monthly archive files
(rmsbatch.acct.archive) and hands back what it copied; the controller then deletes
those rows from the spool a few thousand per second, each batch its own short
transaction, so the scheduler and heartbeats never wait behind a long delete. A crash
between copy and delete leaves rows in both places: the next run copies them again
(rows are replaced by id), then deletes them. Totals over spool and archives together
stay what they were.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("rmsbatch.retention")

EVERY_S = 3600.0
RETRY_S = 300.0
PURGE_BATCH = 2000          # rows per transaction, one transaction per controller tick
COPY_LIMIT = 200_000        # jobs per archive run: a backlog goes in several runs


class Retention:
    def __init__(self):
        self.next_at = 0.0
        self.in_flight = False
        self.to_delete: list[int] = []
        self.audit_upto = 0
        self.cutoff = 0.0
        self.more = False

    def tick(self, ctl, now: float) -> None:
        keep = ctl.config.cluster.accounting.archive_after
        if not keep:
            return
        if self.to_delete or self.audit_upto:
            self._purge(ctl)
            return
        if self.in_flight or now < self.next_at:
            return
        self.in_flight = True
        self.cutoff = now - keep
        directory = archive_dir(ctl.config)
        ctl.acct.ask_internal({"kind": "archive", "archive_dir": directory,
                               "before": self.cutoff, "limit": COPY_LIMIT},
                              lambda reply: self._copied(ctl, reply, directory))

    def _copied(self, ctl, reply: dict, directory: str) -> None:
        self.in_flight = False
        now = ctl.clock()
        if not reply.get("ok"):
            log.error("retention: archiving to %s failed: %s; retrying in %d s", directory,
                      reply.get("error"), RETRY_S)
            self.next_at = now + RETRY_S
            return
        self.to_delete = list(reply.get("job_ids") or [])
        self.audit_upto = int(reply.get("audit_upto") or 0)
        self.more = len(self.to_delete) >= COPY_LIMIT
        self.next_at = now if self.more else now + EVERY_S
        if self.to_delete or self.audit_upto:
            log.info("retention: %d job(s) copied to %s; removing them from the spool",
                     len(self.to_delete), ", ".join(reply.get("files") or []) or directory)

    def _purge(self, ctl) -> None:
        chunk, self.to_delete = self.to_delete[:PURGE_BATCH], self.to_delete[PURGE_BATCH:]
        with ctl.spool.transaction():
            gone = ctl.spool.purge_jobs(chunk, self.cutoff) if chunk else 0
            if not self.to_delete and self.audit_upto:
                ctl.spool.purge_audit(self.audit_upto, self.cutoff)
                self.audit_upto = 0
        if gone:
            ctl.changes += 1
        if not self.to_delete and not self.audit_upto:
            log.info("retention: spool purged up to %s", self.cutoff)


def archive_dir(config) -> str:
    path = config.cluster.accounting.archive_dir
    return path if os.path.isabs(path) else os.path.join(config.spool_dir, path)
