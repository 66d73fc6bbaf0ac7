"""Retention's first half: copy old records out of the spool into monthly archive files.

Finished jobs that ended before the cutoff (with their steps), and audit records made
before it, go to one SQLite file per calendar month (by end or record time):
`ARCHIVE_DIR/rmsbatch-YYYY-MM.db`, tables `jobs`, `steps`, `audit` with the spool's
column names. Any SQLite tool opens one, and `rsacct --archive FILE` reports from it
with the same queries as from the spool (rmsbatch.acct.store). A file that exists
already is added to (rows replaced by id), so a run interrupted half-way is simply run
again. Files are synced before the ids are handed back: the controller deletes from
the spool (rmsbatch.ctld.retention) only what is safely on disk elsewhere.

It runs in an accounting worker, reading the spool on its read-only connection.
"""
from __future__ import annotations

import os
import time

from rmsbatch.acct.store import STEP_COLUMNS, Store
from rmsbatch.core import states

FINISHED = tuple(sorted(s.value for s in states.FINISHED))
BATCH = 5000


def month_of(t: float) -> str:
    lt = time.localtime(t)
    return f"{lt.tm_year:04d}-{lt.tm_mon:02d}"


def file_for(archive_dir: str, month: str) -> str:
    return os.path.join(archive_dir, f"rmsbatch-{month}.db")


def archive(store: Store, archive_dir: str, before: float, limit: int = 200_000) -> dict:
    """Copy up to `limit` finished jobs that ended before `before` (and their steps), and
    the audit records older than it. Returns {"job_ids": [...], "audit_before_id": N,
    "files": [...]}: what may now be deleted from the spool."""
    import sqlite_utils
    os.makedirs(archive_dir, mode=0o700, exist_ok=True)
    marks = ", ".join("?" * len(FINISHED))
    cur = store.db.execute(
        f"SELECT * FROM jobs WHERE end_time < ? AND state IN ({marks}) ORDER BY id LIMIT ?",
        (before, *FINISHED, limit))
    names = [d[0] for d in cur.description]
    by_month: dict[str, list[dict]] = {}
    for row in cur:
        rec = dict(zip(names, row))
        by_month.setdefault(month_of(rec["end_time"]), []).append(rec)
    ids: list[int] = []
    files = set()
    for month, rows in sorted(by_month.items()):
        path = file_for(archive_dir, month)
        db = sqlite_utils.Database(path)
        db["jobs"].insert_all(rows, pk="id", replace=True, alter=True, batch_size=BATCH)
        job_ids = [r["id"] for r in rows]
        steps = store.steps(job_ids)
        if steps:
            db["steps"].insert_all(steps, pk=("job_id", "step_id"), replace=True, alter=True,
                                   batch_size=BATCH)
        elif "steps" not in db.table_names():
            db["steps"].create({c: str for c in STEP_COLUMNS}, pk=("job_id", "step_id"))
        _indexes(db)
        db.close()
        _sync(path)
        ids += job_ids
        files.add(path)
    audit_upto = 0
    if store.has_audit:
        cur = store.db.execute("SELECT * FROM audit WHERE time < ? ORDER BY id LIMIT ?",
                               (before, limit))
        names = [d[0] for d in cur.description]
        by_month = {}
        for row in cur:
            rec = dict(zip(names, row))
            by_month.setdefault(month_of(rec["time"]), []).append(rec)
            audit_upto = max(audit_upto, rec["id"])
        for month, rows in sorted(by_month.items()):
            path = file_for(archive_dir, month)
            db = sqlite_utils.Database(path)
            db["audit"].insert_all(rows, pk="id", replace=True, alter=True, batch_size=BATCH)
            db.close()
            _sync(path)
            files.add(path)
    return {"job_ids": ids, "audit_upto": audit_upto, "files": sorted(files)}


def _indexes(db) -> None:
    """The filters rsacct uses most, so an archive answers as the spool does."""
    for columns in (["user"], ["account"], ["end_time"], ["state"]):
        db["jobs"].create_index(columns, if_not_exists=True)


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
