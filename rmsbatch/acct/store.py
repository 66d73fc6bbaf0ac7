"""The accounting reader: read-only SQL over the spool, or over an archive file.

It runs in rmsctld's accounting worker (rmsbatch.acct.worker), never on the scheduling
thread, on its own connection: SQLite's WAL lets it read while the controller writes,
and it never takes the write lock. An archive (rmsbatch.acct.archive) has the same
tables and columns, so `rsacct --archive FILE` runs these same queries on the user's
side.

Listings come in pages ordered by job id (`after` is the last id seen), so a query
over a million records is many small replies, none near the API's 64 MiB line limit.
Reports aggregate in SQL, in one scan; a job's hours split across the days it ran
(charts) are done here in one pass over compact rows.
"""
from __future__ import annotations

import math
import sqlite3
import time
from urllib.parse import quote

from rmsbatch.ctld.spool import JOB_COLUMNS, job_filter

PAGE_ROWS = 20_000          # rows per listing page: a few MB of JSON
MAX_PAGE_ROWS = 100_000

# Report group keys -> the SQL expression each groups by.
GROUP_KEYS = {
    "account": "account",
    "tenant": "COALESCE(tenant_path, account)",
    "user": "user",
    "gpu_type": "COALESCE(alloc_gpu_type, '')",
    "partition": "partition",
    "qos": "qos",
}
TIME_KEYS = ("day", "month")
# what a report's sums read of each job (a narrow subquery: job rows are wide)
_REPORT_READS = ("alloc_gpus", "alloc_cpus", "billing", "gpu_util", "gpu_idle_s")

STEP_COLUMNS = ("job_id", "step_id", "name", "nodelist", "ntasks", "state", "start_time",
                "end_time", "exit_code", "exit_signal", "total_cpu_s", "max_rss_kb")
AUDIT_COLUMNS = ("id", "time", "user", "uid", "origin", "op", "target", "request", "ok",
                 "result")


class StoreError(Exception):
    """A query this store cannot run (unknown column, not an accounting file)."""


class Store:
    def __init__(self, path: str, *, archive: bool = False):
        self.path = path
        if archive:
            # an archive is a plain file the user hands us: read-only, and no -wal/-shm
            # files created beside it
            self.db = sqlite3.connect(f"file:{quote(path)}?mode=ro", uri=True)
        else:
            self.db = sqlite3.connect(path)
            self.db.execute("PRAGMA query_only=ON")
            self.db.execute("PRAGMA busy_timeout=10000")
        try:
            have = {r[1] for r in self.db.execute("PRAGMA table_info(jobs)")}
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{path}: not an rmsbatch spool or archive ({exc})") from None
        if "id" not in have or "account" not in have:
            raise StoreError(f"{path}: not an rmsbatch spool or archive (no jobs table)")
        self.columns = have
        self.has_steps = bool(self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='steps'").fetchone())
        self.has_audit = bool(self.db.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit'").fetchone())

    def close(self) -> None:
        self.db.close()

    # -- listings --------------------------------------------------------------------
    def jobs_page(self, filters: dict, columns: list[str], after: int = 0,
                  limit: int = PAGE_ROWS) -> tuple[list[list], int | None]:
        """Rows (lists of `columns`, id first) of jobs matching `filters` with ids above
        `after`; and the id to continue after, None at the end."""
        unknown = [c for c in columns if c not in JOB_COLUMNS]
        if unknown:
            raise StoreError(f"unknown job column(s): {', '.join(unknown)}")
        limit = max(1, min(int(limit), MAX_PAGE_ROWS))
        filters = dict(filters)
        nodes = filters.pop("nodes", None)
        where, args = job_filter(**filters)
        where.append("id > ?")
        args.append(after)
        select = ", ".join(c if c in self.columns else f"NULL AS {c}"
                           for c in ["id", "nodelist", *columns])
        cur = self.db.execute(f"SELECT {select} FROM jobs WHERE {' AND '.join(where)} "
                              "ORDER BY id" + ("" if nodes else " LIMIT ?"),
                              args if nodes else [*args, limit + 1])
        wanted = _expand_all(nodes) if nodes else None
        rows = []
        for row in cur:
            if wanted is not None and not (_expand_all([row[1]]) & wanted if row[1] else False):
                continue
            if len(rows) == limit:
                return rows, rows_last
            rows.append(list(row[2:]))
            rows_last = row[0]
        return rows, None

    def lines_page(self, filters: dict, names: list[str], sep: str, trailing: bool,
                   now: float, after: int = 0, limit: int = PAGE_ROWS,
                   before: int | None = None) -> tuple[list[str], int | None, bool, int | None]:
        """`rsacct -X -P` lines of these fields for ids in (after, before), built by
        SQLite (rmsbatch.acct.lines); the id to continue after; whether a pending array
        task is among them (the client then lists on the ordinary path, which folds
        those); and the page's first id (where a client splits the range)."""
        from rmsbatch.acct import lines
        if not lines.supported(names) or filters.get("nodes"):
            raise StoreError("these fields cannot be listed on the fast path")
        limit = max(1, min(int(limit), MAX_PAGE_ROWS))
        where, args = job_filter(**filters)
        where.append("id > ?")
        args.append(after)
        if before is not None:
            where.append("id < ?")
            args.append(before)
        sql = (f"SELECT id, array_task_id IS NOT NULL AND state = 'PENDING', "
               f"{lines.line_expression(names, trailing)} FROM jobs "
               f"WHERE {' AND '.join(where)} ORDER BY id LIMIT {limit + 1}")
        rows = self.db.execute(_numbered(sql, len(args)),
                               {"now": now, "sep": sep,
                                **{f"a{i}": a for i, a in enumerate(args)}}).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return ([r[2] for r in rows], rows[-1][0] if more else None,
                any(r[1] for r in rows), rows[0][0] if rows else None)

    def max_id(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()[0]

    def steps(self, job_ids: list[int], users: list[str] | None = None) -> list[dict]:
        """The steps of these jobs (of those among them that belong to `users`)."""
        if not self.has_steps:
            return []
        out = []
        mine = ""
        if users:
            mine = (" AND job_id IN (SELECT id FROM jobs WHERE id = job_id AND user IN "
                    f"({', '.join('?' * len(users))}))")
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i:i + 500]
            out += self.db.execute(
                f"SELECT {', '.join(STEP_COLUMNS)} FROM steps WHERE job_id IN "
                f"({', '.join('?' * len(chunk))}){mine} ORDER BY job_id, step_id",
                [*chunk, *(users or ())]).fetchall()
        return [dict(zip(STEP_COLUMNS, r)) for r in out]

    # -- reports -----------------------------------------------------------------------
    def report(self, group_by: list[str], start: float, end: float, filters: dict,
               now: float | None = None) -> list[dict]:
        """Per group over [start, end): jobs that ran in the window and the hours they ran
        inside it (a job across the window's edge counts only its part), billing, GPU
        efficiency (utilization-weighted GPU-hours over GPU-hours where it was measured),
        idle GPU-hours; and the mean and 95th percentile wait of the jobs that started
        in the window."""
        now = time.time() if now is None else now
        end = min(end, now)
        times = [k for k in group_by if k in TIME_KEYS]
        keys = [k for k in group_by if k not in TIME_KEYS]
        bad = [k for k in keys if k not in GROUP_KEYS]
        if bad or len(times) > 1:
            raise StoreError(f"cannot group by {', '.join(bad or times)} (use "
                             f"{', '.join([*GROUP_KEYS, *TIME_KEYS])}; one of day/month)")
        if times:
            return self._series(keys, times[0], start, end, filters, now)
        where, args = job_filter(**_report_filters(filters))
        n = len(keys)
        groups = "".join(f"g{i}, " for i in range(n))
        inner = "".join(f"{GROUP_KEYS[k]} AS g{i}, " for i, k in enumerate(keys))
        ran = "MAX(0, MIN(COALESCE(end_time, :now), :end) - MAX(start_time, :start))"
        # One scan of the jobs that ran in the window, grouped by group and by the whole
        # second each job waited (NULL for jobs that started before the window): the
        # sums add up over the seconds, and the seconds give the mean and the 95th
        # percentile wait exactly to the second, without a million waits in Python.
        # A scan in id order, not an index walk: without statistics SQLite walks the
        # account index and jumps around the table (2.4 times slower over a million
        # jobs); a narrow subquery, as job rows are wide.
        sql = f"""
            SELECT {groups}wait, COUNT(*), SUM(alloc_gpus * ran), SUM(alloc_cpus * ran),
                SUM(COALESCE(billing, 0) * ran),
                SUM(CASE WHEN gpu_util IS NOT NULL THEN gpu_util / 100.0 * alloc_gpus * ran END),
                SUM(CASE WHEN gpu_util IS NOT NULL THEN alloc_gpus * ran END),
                SUM(COALESCE(gpu_idle_s, 0) * alloc_gpus * ran / MAX(whole, 1)),
                SUM(waited)
            FROM (SELECT {inner}alloc_gpus, alloc_cpus, billing, gpu_util, gpu_idle_s,
                         {ran} AS ran, COALESCE(end_time, :now) - start_time AS whole,
                         CASE WHEN start_time >= :start THEN MAX(0, start_time
                             - MAX(submit_time, COALESCE(begin_time, 0))) END AS waited,
                         CASE WHEN start_time >= :start THEN CAST(MAX(0, start_time
                             - MAX(submit_time, COALESCE(begin_time, 0))) AS INTEGER) END
                             AS wait
                  FROM jobs NOT INDEXED WHERE start_time IS NOT NULL AND start_time < :end
                  AND (end_time IS NULL OR end_time > :start)
                  {''.join(' AND ' + w for w in where)})
            GROUP BY {groups}wait"""
        params = {"now": now, "start": start, "end": end}
        params.update({f"a{i}": a for i, a in enumerate(args)})
        sums: dict[tuple, list[float]] = {}
        waits: dict[tuple, list[tuple]] = {}
        for row in self.db.execute(_numbered(sql, len(args)), params):
            group, wait, values = tuple(row[:n]), row[n], row[n + 1:]
            got = sums.setdefault(group, [0.0] * 7)
            for i, v in enumerate(values[:7]):
                got[i] += v or 0
            if wait is not None:
                waits.setdefault(group, []).append((wait, values[0], values[7]))
        out = []
        for group in sorted(sums, key=lambda g: tuple("" if v is None else str(v) for v in g)):
            jobs, gpu_s, cpu_s, bill_s, used_s, measured_s, idle_s = sums[group]
            mean, p95 = _wait_figures(waits.get(group, []))
            out.append({**dict(zip(keys, group)), "jobs": int(jobs),
                        "gpu_hours": gpu_s / 3600, "cpu_hours": cpu_s / 3600,
                        "billing": bill_s / 3600,
                        "gpu_eff": (used_s / measured_s) if measured_s else None,
                        "idle_gpu_hours": idle_s / 3600,
                        "wait_mean_s": mean, "wait_p95_s": p95})
        return out

    def _series(self, keys, unit, start, end, filters, now) -> list[dict]:
        """GPU-, CPU- and billing hours per `unit` (local day or month) and group: each
        job's run split at the period boundaries it crosses."""
        where, args = job_filter(**_report_filters(filters))
        exprs = [GROUP_KEYS[k] for k in keys]
        sql = (f"SELECT {''.join(e + ', ' for e in exprs)}start_time, "
               "COALESCE(end_time, ?), alloc_gpus, alloc_cpus, COALESCE(billing, 0) FROM jobs "
               "WHERE start_time IS NOT NULL AND start_time < ? "
               "AND (end_time IS NULL OR end_time > ?)" + "".join(" AND " + w for w in where))
        out: dict[tuple, dict] = {}
        n = len(keys)
        for row in self.db.execute(sql, [now, end, start, *args]):
            group = tuple(row[:n])
            run_start, run_end, gpus, cpus, billing = row[n:]
            t = max(run_start, start)
            stop = min(run_end, end)
            while t < stop:
                label, boundary = period_of(t, unit)
                piece = min(boundary, stop) - t
                key = (label, *group)
                agg = out.get(key)
                if agg is None:
                    agg = out[key] = {unit: label, **dict(zip(keys, group)), "jobs": 0,
                                      "gpu_hours": 0.0, "cpu_hours": 0.0, "billing": 0.0}
                agg["gpu_hours"] += gpus * piece / 3600
                agg["cpu_hours"] += cpus * piece / 3600
                agg["billing"] += billing * piece / 3600
                agg["jobs"] += 1
                t = boundary
        return [out[k] for k in sorted(out, key=lambda k: tuple(str(v) for v in k))]

    # -- audit -------------------------------------------------------------------------
    def audit_page(self, filters: dict, after: int = 0,
                   limit: int = PAGE_ROWS) -> tuple[list[list], int | None]:
        if not self.has_audit:
            return [], None
        where, args = ["id > ?"], [after]
        for column in ("user", "op"):
            values = filters.get(column + "s")
            if values:
                where.append(f"{column} IN ({', '.join('?' * len(values))})")
                args.extend(values)
        if filters.get("target"):
            where.append("target = ?")
            args.append(filters["target"])
        for column, op, key in (("time", ">=", "start"), ("time", "<", "end")):
            if filters.get(key) is not None:
                where.append(f"{column} {op} ?")
                args.append(filters[key])
        if filters.get("failed"):
            where.append("ok = 0")
        limit = max(1, min(int(limit), MAX_PAGE_ROWS))
        rows = self.db.execute(f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit WHERE "
                               f"{' AND '.join(where)} ORDER BY id LIMIT ?",
                               [*args, limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return [list(r) for r in rows], (rows[-1][0] if more else None)


def _columns_of(keys) -> list[str]:
    """The job columns the group expressions of `keys` read."""
    return [c for k in keys for c in {"tenant": ("tenant_path", "account"),
                                      "gpu_type": ("alloc_gpu_type",)}.get(k, (k,))]


def _expand_all(specs) -> set[str]:
    from rmsbatch.core.hostlist import expand
    try:
        return {n for spec in specs for n in expand(spec)}
    except ValueError as exc:
        raise StoreError(f"nodes: {exc}") from None


def _report_filters(filters: dict) -> dict:
    # a report's window is its own (start, end): the listing's -S/-E terms do not apply;
    # a node filter is a listing's
    return {k: v for k, v in filters.items() if k not in ("start_after", "end_before",
                                                           "nodes")}


def _numbered(sql: str, n: int) -> str:
    """job_filter's `?` marks as :a0, :a1, ... so they mix with the named ones."""
    parts = sql.split("?")
    if len(parts) != n + 1:
        raise StoreError("internal: filter arguments do not match the query")
    return "".join(p + (f":a{i}" if i < n else "") for i, p in enumerate(parts))


def _wait_figures(buckets: list[tuple]) -> tuple[float | None, float | None]:
    """Mean and nearest-rank 95th percentile of waits counted per whole second:
    (second, how many, their exact sum) each."""
    total = sum(count for _, count, _ in buckets)
    if not total:
        return None, None
    rank = max(1, math.ceil(0.95 * total))
    seen = 0
    for second, count, _ in sorted(buckets):
        seen += count
        if seen >= rank:
            return sum(s for _, _, s in buckets) / total, float(second)
    return None, None


def period_of(t: float, unit: str) -> tuple[str, float]:
    """The local day ("2026-12-05") or month ("2026-12") holding `t`, and when it ends."""
    lt = time.localtime(t)
    if unit == "day":
        label = f"{lt.tm_year:04d}-{lt.tm_mon:02d}-{lt.tm_mday:02d}"
        nxt = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday + 1, 0, 0, 0, 0, 0, -1))
    else:
        label = f"{lt.tm_year:04d}-{lt.tm_mon:02d}"
        nxt = time.mktime((lt.tm_year, lt.tm_mon + 1, 1, 0, 0, 0, 0, 0, -1))
    return label, nxt
