"""The spool: one SQLite database in WAL mode, the single source of truth.

This is the only module that speaks SQL. It owns the schema and its numbered
migrations, transactions, and the guarded state updates: a transition is an
UPDATE whose WHERE clause names the states it may come from, so two writers
can never both start, or both finish, the same job.

Job scripts and environments are stored inside the database (table
job_payloads), in the same transaction as the job row: an acknowledged
submission is durable as a whole, and editing the script file afterwards
changes nothing.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from contextlib import contextmanager

from rmsbatch.core.states import ACTIVE, TRANSITIONS, JobState

log = logging.getLogger("rmsbatch.spool")

FILENAME = "rmsbatch.db"

MIGRATIONS: list[str] = [
    # 1: jobs, their payloads, nodes
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL, user TEXT NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
        account TEXT NOT NULL, partition TEXT NOT NULL, qos TEXT NOT NULL,
        state TEXT NOT NULL, reason TEXT NOT NULL DEFAULT 'None',
        priority INTEGER NOT NULL DEFAULT 0, nice INTEGER NOT NULL DEFAULT 0,
        hold INTEGER NOT NULL DEFAULT 0,
        submit_time REAL NOT NULL, start_time REAL, end_time REAL,
        time_limit INTEGER NOT NULL DEFAULT 0,
        nodes INTEGER NOT NULL, ntasks INTEGER NOT NULL, cpus_per_task INTEGER NOT NULL,
        req_cpus INTEGER NOT NULL, req_mem_mb INTEGER NOT NULL, req_gpus INTEGER NOT NULL,
        gpus_per_node INTEGER NOT NULL DEFAULT 0, mem_whole_node INTEGER NOT NULL DEFAULT 0,
        gpu_type TEXT, constraint_expr TEXT, exclusive INTEGER NOT NULL DEFAULT 0,
        alloc TEXT, nodelist TEXT NOT NULL DEFAULT '',
        alloc_cpus INTEGER NOT NULL DEFAULT 0, alloc_gpus INTEGER NOT NULL DEFAULT 0,
        launched INTEGER NOT NULL DEFAULT 0, cancel_requested INTEGER NOT NULL DEFAULT 0,
        exit_code INTEGER, exit_signal INTEGER, max_rss_kb INTEGER, total_cpu_s REAL,
        requeue INTEGER NOT NULL DEFAULT 0, restart_count INTEGER NOT NULL DEFAULT 0,
        command TEXT NOT NULL DEFAULT '', workdir TEXT NOT NULL DEFAULT '',
        stdout TEXT, stderr TEXT, submit_host TEXT NOT NULL DEFAULT '',
        protections TEXT NOT NULL DEFAULT '', end_reason TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_user ON jobs(user);
    CREATE INDEX jobs_end ON jobs(end_time);
    CREATE TABLE job_payloads (
        job_id INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
        spec TEXT NOT NULL
    );
    CREATE TABLE nodes (
        name TEXT PRIMARY KEY,
        up INTEGER NOT NULL DEFAULT 0,
        drain INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        last_heartbeat REAL,
        inventory TEXT NOT NULL DEFAULT '{}'
    );
    """,
    # 2: accelerators: what a job asked of each GPU and what it used; devices drained
    """
    ALTER TABLE jobs ADD COLUMN gpu_mem_mb INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN gpu_util REAL;
    ALTER TABLE jobs ADD COLUMN gpu_mem_peak_mb INTEGER;
    ALTER TABLE jobs ADD COLUMN gpu_energy_j REAL;
    ALTER TABLE nodes ADD COLUMN gpu_drain TEXT NOT NULL DEFAULT '{}';
    """,
    # 3: real job scripts: the task model, arrays, dependencies, control, steps
    """
    ALTER TABLE jobs ADD COLUMN ntasks_per_node INTEGER;
    ALTER TABLE jobs ADD COLUMN gpus_per_task INTEGER;
    ALTER TABLE jobs ADD COLUMN tmp_mb INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN licenses TEXT;
    ALTER TABLE jobs ADD COLUMN gres TEXT;
    ALTER TABLE jobs ADD COLUMN req_nodelist TEXT;
    ALTER TABLE jobs ADD COLUMN exclude TEXT;
    ALTER TABLE jobs ADD COLUMN reservation TEXT;
    ALTER TABLE jobs ADD COLUMN array_job_id INTEGER;
    ALTER TABLE jobs ADD COLUMN array_task_id INTEGER;
    ALTER TABLE jobs ADD COLUMN array_spec TEXT;
    ALTER TABLE jobs ADD COLUMN array_throttle INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN payload_id INTEGER;
    ALTER TABLE jobs ADD COLUMN dependency TEXT;
    ALTER TABLE jobs ADD COLUMN begin_time REAL;
    ALTER TABLE jobs ADD COLUMN signal TEXT;
    ALTER TABLE jobs ADD COLUMN open_mode TEXT;
    CREATE INDEX jobs_array ON jobs(array_job_id);
    CREATE TABLE steps (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        step_id INTEGER NOT NULL,
        name TEXT NOT NULL DEFAULT '', nodelist TEXT NOT NULL DEFAULT '',
        ntasks INTEGER NOT NULL DEFAULT 1, state TEXT NOT NULL,
        start_time REAL, end_time REAL, exit_code INTEGER, exit_signal INTEGER,
        total_cpu_s REAL, max_rss_kb INTEGER,
        PRIMARY KEY (job_id, step_id)
    );
    """,
    # 4: the rest of the task model, as resolved at submit (rsub -N MIN-MAX, --hint, ...)
    """
    ALTER TABLE jobs ADD COLUMN nodes_max INTEGER;
    ALTER TABLE jobs ADD COLUMN ntasks_per_gpu INTEGER;
    ALTER TABLE jobs ADD COLUMN ntasks_per_core INTEGER;
    ALTER TABLE jobs ADD COLUMN cpus_per_gpu INTEGER;
    ALTER TABLE jobs ADD COLUMN threads_per_core INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE jobs ADD COLUMN hint TEXT;
    ALTER TABLE jobs ADD COLUMN gpu_bind TEXT;
    ALTER TABLE jobs ADD COLUMN wait_all_nodes INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN site_options TEXT;
    """,
    # 5: advance reservations made at run time (rcontrol create reservation); those of
    # cluster.toml stay in the file. users, accounts, flags: comma-separated
    """
    CREATE TABLE reservations (
        name TEXT PRIMARY KEY,
        nodes TEXT NOT NULL,
        users TEXT NOT NULL DEFAULT '',
        accounts TEXT NOT NULL DEFAULT '',
        start_time REAL NOT NULL,
        end_time REAL,
        flags TEXT NOT NULL DEFAULT '',
        created_by TEXT NOT NULL DEFAULT '',
        created_time REAL NOT NULL
    );
    """,
    # 6: a run being preempted (rmsbatch.ctld.preemption): the end of its grace, the job
    # it makes room for, and requeue or cancel, so that a controller restart in the
    # grace neither signals it again nor gives it a new grace
    """
    ALTER TABLE jobs ADD COLUMN preempt_until REAL;
    ALTER TABLE jobs ADD COLUMN preempt_for INTEGER;
    ALTER TABLE jobs ADD COLUMN preempt_mode TEXT;
    """,
    # 7: accounting (rmsbatch.acct). What a run is charged, fixed when it starts: billing
    # units per hour, memory held, the allocated GPUs' types; the tenant path (account
    # and its parents) as it was at submission; how long the job's GPUs sat idle, and
    # since when they are idle now. An audit trail of the requests that change state.
    """
    ALTER TABLE jobs ADD COLUMN billing REAL;
    ALTER TABLE jobs ADD COLUMN alloc_mem_mb INTEGER;
    ALTER TABLE jobs ADD COLUMN alloc_gpu_type TEXT;
    ALTER TABLE jobs ADD COLUMN tenant_path TEXT;
    ALTER TABLE jobs ADD COLUMN gpu_idle_s REAL;
    ALTER TABLE jobs ADD COLUMN idle_since REAL;
    CREATE INDEX jobs_account ON jobs(account);
    CREATE INDEX jobs_submit ON jobs(submit_time);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        time REAL NOT NULL,
        user TEXT NOT NULL,
        uid INTEGER,
        origin TEXT NOT NULL DEFAULT '',
        op TEXT NOT NULL,
        target TEXT NOT NULL DEFAULT '',
        request TEXT NOT NULL DEFAULT '{}',
        ok INTEGER NOT NULL,
        result TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_time ON audit(time);
    """,
    # 8: whether an operator pinned the job's priority (rcontrol update job ID Priority=N;
    # `priority` then holds the pinned value). A flag beside `priority`, not a nullable
    # pinned value in a column of its own: `priority` keeps meaning "the priority as
    # stored", which listings, accounting and preemption already read. 0: it follows the
    # multifactor priority; 1: pinned. Before this schema a pin was only guessed (a stored
    # priority other than QoS + partition priority - nice). That guess needs the
    # configuration, which a migration does not have, so the active jobs of an older spool
    # are marked -1 ("not known yet") and the controller applies the guess to them once,
    # at its next start, with the configuration they were stored under
    # (rmsbatch.ctld.pins), and writes 0 or 1. Jobs that had ended get 0: a pin matters
    # only while a job waits, and one requeued later follows its factors.
    """
    ALTER TABLE jobs ADD COLUMN priority_pinned INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET priority_pinned = -1 WHERE state IN ('PENDING', 'RUNNING', 'COMPLETING');
    """,
]

# jobs.priority_pinned of a job from before schema 8 whose pin is not judged yet
PIN_UNKNOWN = -1

# Columns returned in job records; payloads (script, env) are read separately.
JOB_COLUMNS = (
    "id", "name", "user", "uid", "gid", "account", "partition", "qos", "state", "reason",
    "priority", "nice", "hold", "submit_time", "start_time", "end_time", "time_limit",
    "nodes", "ntasks", "cpus_per_task", "req_cpus", "req_mem_mb", "req_gpus",
    "gpus_per_node", "mem_whole_node", "gpu_type", "constraint_expr", "exclusive",
    "alloc", "nodelist", "alloc_cpus", "alloc_gpus", "launched", "cancel_requested",
    "exit_code", "exit_signal", "max_rss_kb", "total_cpu_s", "requeue", "restart_count",
    "command", "workdir", "stdout", "stderr", "submit_host", "protections", "end_reason",
    "gpu_mem_mb", "gpu_util", "gpu_mem_peak_mb", "gpu_energy_j",
    "ntasks_per_node", "gpus_per_task", "tmp_mb", "licenses", "gres", "req_nodelist",
    "exclude", "reservation", "array_job_id", "array_task_id", "array_spec",
    "array_throttle", "payload_id", "dependency", "begin_time", "signal", "open_mode",
    "nodes_max", "ntasks_per_gpu", "ntasks_per_core", "cpus_per_gpu", "threads_per_core",
    "hint", "gpu_bind", "wait_all_nodes", "site_options",
    "preempt_until", "preempt_for", "preempt_mode",
    "billing", "alloc_mem_mb", "alloc_gpu_type", "tenant_path", "gpu_idle_s", "idle_since",
    "priority_pinned",
)
_SELECT = "SELECT " + ", ".join(JOB_COLUMNS) + " FROM jobs"


def job_filter(*, ids=None, users=None, accounts=None, partitions=None, states=None,
               names=None, start_after=None, end_before=None, array_tasks=None,
               qos=None) -> tuple[list[str], list]:
    """WHERE terms (ANDed) and their arguments for the usual job filters; shared with
    the accounting reader (rmsbatch.acct.store), which pages through the same rows."""
    where, args = [], []
    named = []
    if ids:
        marks = ", ".join("?" * len(ids))
        named.append(f"id IN ({marks}) OR array_job_id IN ({marks})")
        args.extend(ids)
        args.extend(ids)
    for array_id, task_id in array_tasks or ():
        named.append("(array_job_id = ? AND array_task_id = ?)")
        args.extend((array_id, task_id))
    if named:
        where.append("(" + " OR ".join(named) + ")")
    for column, values in (("user", users), ("account", accounts), ("partition", partitions),
                           ("state", states), ("name", names), ("qos", qos)):
        if values:
            where.append(f"{column} IN ({', '.join('?' * len(values))})")
            args.extend(values)
    if start_after is not None:
        # sacct's window: jobs that were in the system after this time
        where.append("(end_time IS NULL OR end_time >= ?)")
        args.append(start_after)
    if end_before is not None:
        where.append("submit_time <= ?")
        args.append(end_before)
    return where, args



def _lookup(column: str, table: dict, args: list, default: str = "?") -> str:
    """SQL for `table`[column] (a CASE, its values appended to `args`), else `default`
    (a "?" is the caller's to fill)."""
    if not table:
        return default
    for key, value in table.items():
        args += [key, value]
    whens = " ".join("WHEN ? THEN ?" for _ in table)
    return f"CASE {column} {whens} ELSE {default} END"

class SpoolError(Exception):
    pass


class Spool:
    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, FILENAME)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.row_factory = None
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before we acknowledge it.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=10000")
        self._depth = 0
        self.migrate()

    def close(self) -> None:
        self.db.close()

    # -- schema ---------------------------------------------------------------
    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise SpoolError(f"spool {self.path} has schema {current}, newer than this "
                             f"rmsbatch ({len(MIGRATIONS)}): upgrade rmsbatch")
        for number in range(current + 1, len(MIGRATIONS) + 1):
            with self.transaction():
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={number}")
            log.info("spool %s: migrated to schema %d", self.path, number)

    # -- transactions -----------------------------------------------------------
    def version(self) -> tuple[int, int]:
        """Changes whenever the spool's data may have: rows this connection changed
        (rolled back ones too), and commits by any other connection."""
        return self.db.total_changes, self.db.execute("PRAGMA data_version").fetchone()[0]

    @contextmanager
    def transaction(self):
        """Outermost: BEGIN IMMEDIATE ... COMMIT. Nested: a savepoint."""
        if self._depth == 0:
            self.db.execute("BEGIN IMMEDIATE")
        else:
            self.db.execute(f"SAVEPOINT sp{self._depth}")
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            # SQLite rolls the whole transaction back by itself on some errors (a full
            # disk): then there is nothing left to undo, and the original error stands.
            if self.db.in_transaction:
                if self._depth == 0:
                    self.db.execute("ROLLBACK")
                else:
                    self.db.execute(f"ROLLBACK TO sp{self._depth}")
                    self.db.execute(f"RELEASE sp{self._depth}")
            raise
        self._depth -= 1
        if self._depth == 0:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                # A failed COMMIT (a full disk) may leave the transaction open, and every
                # later BEGIN would fail: end it, so the next one starts clean.
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
        else:
            self.db.execute(f"RELEASE sp{self._depth}")

    # -- jobs -----------------------------------------------------------------
    def insert_job(self, row: dict, spec: dict) -> int:
        cols = ", ".join(row)
        marks = ", ".join("?" * len(row))
        cur = self.db.execute(f"INSERT INTO jobs ({cols}) VALUES ({marks})", tuple(row.values()))
        job_id = cur.lastrowid
        self.db.execute("INSERT INTO job_payloads (job_id, spec) VALUES (?, ?)",
                        (job_id, json.dumps(spec)))
        return job_id

    def insert_array(self, row: dict, spec: dict, task_ids: list[int]) -> list[int]:
        """One row per task, in one statement; the first task's id is the array's
        (array_job_id) and its payload is every task's (payload_id): a 10,000-task
        array stores its script and environment once. The tasks' ids, in order."""
        first = self.insert_job({**row, "array_task_id": task_ids[0]}, spec)
        self.db.execute("UPDATE jobs SET array_job_id = ?, payload_id = ? WHERE id = ?",
                        (first, first, first))
        rest = {**row, "array_job_id": first, "payload_id": first}
        cols = ["id", "array_task_id", *rest]
        marks = ", ".join("?" * len(cols))
        values = tuple(rest.values())
        ids = [first + k for k in range(len(task_ids))]
        self.db.executemany(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({marks})",
                            ((ids[k], task_ids[k], *values) for k in range(1, len(ids))))
        return ids

    def transition(self, job_id: int, to: JobState, *, sources=None, **fields) -> bool:
        """Move a job to `to` if its current state allows it (TRANSITIONS, or the
        `sources` given); False if not."""
        sources = TRANSITIONS[to] if sources is None else sources
        fields["state"] = to.value
        sets = ", ".join(f"{k} = ?" for k in fields)
        marks = ", ".join("?" * len(sources))
        cur = self.db.execute(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks})",
            (*fields.values(), job_id, *(s.value for s in sources)))
        return cur.rowcount == 1

    def transition_many(self, job_ids: list[int], to: JobState, **fields) -> list[int]:
        """`transition` for many jobs at once (a whole array cancelled); the ids moved."""
        sources = TRANSITIONS[to]
        fields["state"] = to.value
        sets = ", ".join(f"{k} = ?" for k in fields)
        states = ", ".join("?" * len(sources))
        moved = []
        for k in range(0, len(job_ids), 500):
            chunk = job_ids[k:k + 500]
            cur = self.db.execute(
                f"UPDATE jobs SET {sets} WHERE id IN ({', '.join('?' * len(chunk))}) "
                f"AND state IN ({states}) RETURNING id",
                (*fields.values(), *chunk, *(s.value for s in sources)))
            moved += [r[0] for r in cur.fetchall()]
        return moved

    def update_job(self, job_id: int, **fields) -> None:
        """Change fields that are not the state (reason, hold, priority, ...)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*fields.values(), job_id))

    def set_reasons(self, reasons: dict[int, str]) -> None:
        self.db.executemany("UPDATE jobs SET reason = ? WHERE id = ?",
                            [(r, i) for i, r in reasons.items()])

    def running_idle_gpus(self) -> list[tuple]:
        """(id, restart_count, idle_since, gpu_idle_s) of every running job."""
        return self.db.execute(
            "SELECT id, restart_count, idle_since, gpu_idle_s FROM jobs WHERE state = ?",
            (JobState.RUNNING.value,)).fetchall()

    def set_idle_gpus(self, figures: dict[int, tuple[float | None, float | None]]) -> None:
        """Jobs' (idle_since, gpu_idle_s), by id."""
        self.db.executemany("UPDATE jobs SET idle_since = ?, gpu_idle_s = ? WHERE id = ?",
                            [(since, idle, i) for i, (since, idle) in figures.items()])

    def clear_idle_since(self, ids: list[int] | None = None) -> None:
        """No idle streak for these jobs any more; None: for every active job."""
        if ids is None:
            self.db.execute(
                "UPDATE jobs SET idle_since = NULL WHERE state IN (?, ?, ?) "
                "AND idle_since IS NOT NULL",
                (JobState.PENDING.value, JobState.RUNNING.value, JobState.COMPLETING.value))
            return
        self.db.executemany("UPDATE jobs SET idle_since = NULL WHERE id = ? "
                            "AND idle_since IS NOT NULL", [(i,) for i in ids])

    def job(self, job_id: int) -> dict | None:
        row = self.db.execute(_SELECT + " WHERE id = ?", (job_id,)).fetchone()
        return dict(zip(JOB_COLUMNS, row)) if row else None

    def job_spec(self, job_id: int) -> dict | None:
        """The job's script and environment: its own, or its array's (payload_id)."""
        row = self.db.execute(
            "SELECT spec FROM job_payloads WHERE job_id = COALESCE("
            "(SELECT payload_id FROM jobs WHERE id = ?), ?)", (job_id, job_id)).fetchone()
        return json.loads(row[0]) if row else None

    def jobs(self, *, ids=None, users=None, accounts=None, partitions=None, states=None,
             names=None, start_after=None, end_before=None, columns=None,
             array_tasks=None) -> list:
        """Job rows matching every filter given, by id; as dicts, or as tuples
        of `columns` when those are named (the fast path for big listings).
        An id names a job or a whole array (its tasks); `array_tasks`, pairs
        (array id, task id), name single tasks."""
        where, args = job_filter(ids=ids, users=users, accounts=accounts,
                                 partitions=partitions, states=states, names=names,
                                 start_after=start_after, end_before=end_before,
                                 array_tasks=array_tasks)
        select = _SELECT
        if columns:
            unknown = set(columns) - set(JOB_COLUMNS)
            if unknown:
                raise SpoolError(f"unknown job column(s): {', '.join(sorted(unknown))}")
            select = "SELECT " + ", ".join(columns) + " FROM jobs"
        sql = select + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        cur = self.db.execute(sql, args)
        if columns:
            return cur.fetchall()
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur]

    def dependency_rows(self, ids) -> list[tuple]:
        """(id, state, start_time, array_job_id, array_task_id) of these jobs and of
        every task of the arrays among them: what dependencies on them depend on."""
        ids = list(ids)
        out = []
        for k in range(0, len(ids), 400):       # SQLite's bound on host parameters
            chunk = ids[k:k + 400]
            marks = ", ".join("?" * len(chunk))
            out += self.db.execute(
                "SELECT id, state, start_time, array_job_id, array_task_id FROM jobs "
                f"WHERE id IN ({marks}) OR array_job_id IN ({marks})", (*chunk, *chunk)).fetchall()
        return out

    def running_tasks(self) -> dict[int, int]:
        """Array id -> how many of its tasks run (for throttles)."""
        return dict(self.db.execute(
            "SELECT array_job_id, COUNT(*) FROM jobs WHERE array_job_id IS NOT NULL AND "
            "state IN (?, ?) GROUP BY array_job_id",
            (JobState.RUNNING.value, JobState.COMPLETING.value)).fetchall())

    def active_names(self) -> list[tuple]:
        """(id, user, name, state) of every active job (for singleton dependencies)."""
        return self.db.execute(
            "SELECT id, user, name, state FROM jobs WHERE state IN (?, ?, ?)",
            (JobState.PENDING.value, JobState.RUNNING.value, JobState.COMPLETING.value)
        ).fetchall()

    def active_jobs(self) -> list[dict]:
        return self.jobs(states=[JobState.PENDING.value, JobState.RUNNING.value,
                                 JobState.COMPLETING.value])

    def unjudged_pins(self) -> list[dict]:
        """Active jobs from before schema 8 whose pin is not known yet (PIN_UNKNOWN):
        id, priority, qos, partition, nice. Through the state index: a spool's active
        jobs are few beside its finished ones."""
        marks = ", ".join("?" * len(ACTIVE))
        cur = self.db.execute(
            f"SELECT id, priority, qos, partition, nice FROM jobs WHERE state IN ({marks}) "
            "AND priority_pinned = ?", (*(s.value for s in ACTIVE), PIN_UNKNOWN))
        return [dict(zip(("id", "priority", "qos", "partition", "nice"), r)) for r in cur]

    def set_pins(self, pinned: dict[int, bool]) -> None:
        """Jobs' priority_pinned, by id."""
        self.db.executemany("UPDATE jobs SET priority_pinned = ? WHERE id = ?",
                            [(int(p), i) for i, p in pinned.items()])

    # -- fair-share usage (rmsbatch.ctld.usage) ------------------------------------
    USAGE_COLUMNS = ("id", "account", "user", "start_time", "end_time", "alloc_cpus",
                     "alloc_gpus", "req_mem_mb", "nodes", "gpu_type", "qos", "billing",
                     "alloc")

    def usage_rows(self, ended_since: float | None = None, ids=None) -> list[tuple]:
        """USAGE_COLUMNS of the runs that ended since then (through the end_time index,
        not a scan of every job ever run), or of these jobs; the allocation only where
        the rest does not say the memory or the GPU type (JSON is slow to read)."""
        cols = ", ".join(self.USAGE_COLUMNS[:-1]) + (
            f", CASE WHEN {self._SPARSE} THEN alloc END")
        if ids is not None:
            ids = list(ids)
            out = []
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                out += self.db.execute(
                    f"SELECT {cols} FROM jobs WHERE id IN ({', '.join('?' * len(chunk))}) "
                    "AND start_time IS NOT NULL", chunk).fetchall()
            return out
        return self.db.execute(
            f"SELECT {cols} FROM jobs WHERE end_time >= ? AND start_time IS NOT NULL",
            (ended_since if ended_since is not None else float("-inf"),)).fetchall()

    def usage_sums(self, ended_since: float | None, at: float, half_life: float,
                   prices: dict) -> tuple[list[tuple], list[int]]:
        """(account, user, decayed usage) of the runs that ended since then, summed by
        SQLite: at a restart with a million finished jobs, fetching every row into
        Python took most of the start (25 s). `prices`: "cpu", "mem_gib", "gpu" (any
        type not in "gpu_types"), "gpu_types" {lower-case type: price}, "qos_factor"
        {qos: factor}. The same sums as rmsbatch.sched.fairshare.decayed over
        usage_rows(). Also the ids of the runs whose price needs their allocation (see
        _SPARSE), left to usage_rows(ids=...)."""
        self._need_pow()
        args: list = [prices["cpu"], prices["mem_gib"]]
        gpu = _lookup("lower(gpu_type)", prices["gpu_types"], args)
        args.append(prices["gpu"])
        factor = _lookup("qos", prices["qos_factor"], args, default="1.0")
        rate = (f"(COALESCE(billing, ? * alloc_cpus + ? * req_mem_mb * nodes / "
                f"1024.0 + alloc_gpus * {gpu}) * {factor})")
        if half_life > 0:
            weight = "(? / ln(2.0) * (pow(2.0, (end_time - ?) / ?) - pow(2.0, (start_time - ?) / ?)))"
            args += [half_life, at, half_life, at, half_life]
        else:
            weight = "(end_time - start_time)"
        args.append(ended_since if ended_since is not None else float("-inf"))
        # one scan: the runs priced here summed per (account, user), the others one
        # row each, by id, for usage_rows(ids=...)
        sums, sparse = [], []
        for account, user, used, sparse_id in self.db.execute(
                f"SELECT account, user, SUM(CASE WHEN {self._SPARSE} THEN 0.0 ELSE "
                f"{rate} * {weight} END), CASE WHEN {self._SPARSE} THEN id END AS sid "
                "FROM jobs WHERE end_time >= ? AND start_time IS NOT NULL "
                "AND end_time > start_time GROUP BY account, user, sid", args):
            if sparse_id is None:
                sums.append((account, user, used))
            else:
                sparse.append(sparse_id)
        return sums, sparse

    # runs whose price needs their allocation's JSON: charged before the billing column
    # (spool migration 7), with no memory asked or GPUs of no stated type
    _SPARSE = "billing IS NULL AND (req_mem_mb = 0 OR (alloc_gpus > 0 AND gpu_type IS NULL))"

    def _need_pow(self) -> None:
        """SQLite's math functions are a build option: where they are missing, Python's
        stand in (slower, same values)."""
        try:
            self.db.execute("SELECT pow(2.0, 0.5), ln(2.0)").fetchone()
        except sqlite3.OperationalError:
            import math
            self.db.create_function("pow", 2, math.pow, deterministic=True)
            self.db.create_function("ln", 1, math.log, deterministic=True)

    # -- nodes ----------------------------------------------------------------
    def nodes(self) -> dict[str, dict]:
        cur = self.db.execute(
            "SELECT name, up, drain, reason, last_heartbeat, inventory, gpu_drain FROM nodes")
        cols = [d[0] for d in cur.description]
        rows = [dict(zip(cols, r)) for r in cur]
        return {r["name"]: {**r, "inventory": json.loads(r["inventory"]),
                            "gpu_drain": json.loads(r["gpu_drain"] or "{}")} for r in rows}

    def upsert_node(self, name: str, **fields) -> None:
        for key in ("inventory", "gpu_drain"):
            if key in fields:
                fields[key] = json.dumps(fields[key])
        self.db.execute("INSERT INTO nodes (name) VALUES (?) ON CONFLICT(name) DO NOTHING", (name,))
        if fields:
            sets = ", ".join(f"{k} = ?" for k in fields)
            self.db.execute(f"UPDATE nodes SET {sets} WHERE name = ?", (*fields.values(), name))

    # -- job steps ----------------------------------------------------------------
    STEP_COLUMNS = ("job_id", "step_id", "name", "nodelist", "ntasks", "state", "start_time",
                    "end_time", "exit_code", "exit_signal", "total_cpu_s", "max_rss_kb")

    def insert_step(self, job_id: int, name: str, nodelist: str, ntasks: int,
                    start_time: float) -> int:
        """A new step of the job, RUNNING; returns its id (0, 1, ... per job)."""
        (last,) = self.db.execute("SELECT MAX(step_id) FROM steps WHERE job_id = ?",
                                  (job_id,)).fetchone()
        step_id = 0 if last is None else last + 1
        self.db.execute("INSERT INTO steps (job_id, step_id, name, nodelist, ntasks, state, "
                        "start_time) VALUES (?, ?, ?, ?, ?, 'RUNNING', ?)",
                        (job_id, step_id, name, nodelist, ntasks, start_time))
        return step_id

    def step(self, job_id: int, step_id: int) -> dict | None:
        row = self.db.execute(f"SELECT {', '.join(self.STEP_COLUMNS)} FROM steps "
                              "WHERE job_id = ? AND step_id = ?", (job_id, step_id)).fetchone()
        return dict(zip(self.STEP_COLUMNS, row)) if row else None

    def end_step(self, job_id: int, step_id: int, **fields) -> bool:
        """Record a step's end, once: False when it had ended already."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        cur = self.db.execute(f"UPDATE steps SET {sets} WHERE job_id = ? AND step_id = ? "
                              "AND state = 'RUNNING'", (*fields.values(), job_id, step_id))
        return cur.rowcount == 1

    def close_steps(self, job_id: int, end_time: float, state: str) -> None:
        """The job ended: its steps still running ended with it."""
        self.db.execute("UPDATE steps SET state = ?, end_time = ? WHERE job_id = ? "
                        "AND state = 'RUNNING'", (state, end_time, job_id))

    # -- the audit trail (rmsbatch.ctld.audit) -----------------------------------------
    def add_audit(self, **row) -> None:
        self.db.execute(f"INSERT INTO audit ({', '.join(row)}) VALUES "
                        f"({', '.join('?' * len(row))})", tuple(row.values()))

    # -- retention (rmsbatch.ctld.retention) --------------------------------------------
    def purge_jobs(self, ids: list[int], before: float) -> int:
        """Delete these archived jobs (their payloads and steps go with them): only
        finished ones that ended before `before`, and never a payload that an active
        task of the same array still runs from."""
        active = ", ".join(f"'{s.value}'" for s in sorted(ACTIVE, key=lambda s: s.value))
        done = 0
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            cur = self.db.execute(
                f"DELETE FROM jobs WHERE id IN ({', '.join('?' * len(chunk))}) "
                f"AND end_time < ? AND state NOT IN ({active}) "
                "AND id NOT IN (SELECT payload_id FROM jobs WHERE payload_id IS NOT NULL "
                f"AND state IN ({active}))", (*chunk, before))
            done += cur.rowcount
        return done

    def purge_audit(self, upto_id: int, before: float) -> int:
        return self.db.execute("DELETE FROM audit WHERE id <= ? AND time < ?",
                               (upto_id, before)).rowcount

    # -- budgets (rmsbatch.ctld.budgets) ------------------------------------------------
    def usage_since(self, since: float) -> list[tuple]:
        """(account, GPU-seconds, billing units) of the runs that ended after `since`,
        each counting only its part after it; through the end-time index."""
        return self.db.execute(
            "SELECT account, SUM(alloc_gpus * (end_time - MAX(start_time, ?))), "
            "SUM(COALESCE(billing, 0) * (end_time - MAX(start_time, ?))) / 3600.0 "
            "FROM jobs WHERE end_time > ? AND start_time IS NOT NULL GROUP BY account",
            (since, since, since)).fetchall()

    def budget_rows(self, ids) -> list[tuple]:
        """(id, account, GPUs, billing per hour, start, end) of these jobs."""
        ids = list(ids)
        out = []
        for k in range(0, len(ids), 500):
            chunk = ids[k:k + 500]
            out += self.db.execute(
                "SELECT id, account, alloc_gpus, billing, start_time, end_time FROM jobs "
                f"WHERE id IN ({', '.join('?' * len(chunk))})", chunk).fetchall()
        return out

    def steps(self, job_ids: list[int]) -> list[dict]:
        rows = []
        for i in range(0, len(job_ids), 500):
            chunk = job_ids[i:i + 500]
            rows += self.db.execute(
                f"SELECT {', '.join(self.STEP_COLUMNS)} FROM steps WHERE job_id IN "
                f"({', '.join('?' * len(chunk))}) ORDER BY job_id, step_id", chunk).fetchall()
        return [dict(zip(self.STEP_COLUMNS, r)) for r in rows]

    # -- advance reservations (rcontrol create reservation) ---------------------------
    RESERVATION_COLUMNS = ("name", "nodes", "users", "accounts", "start_time", "end_time",
                           "flags", "created_by", "created_time")

    def reservations(self) -> list[dict]:
        cur = self.db.execute(f"SELECT {', '.join(self.RESERVATION_COLUMNS)} FROM reservations "
                              "ORDER BY start_time, name")
        return [dict(zip(self.RESERVATION_COLUMNS, r)) for r in cur]

    def put_reservation(self, row: dict) -> None:
        """Insert, or replace the reservation of that name whole."""
        cols = [c for c in self.RESERVATION_COLUMNS if c in row]
        self.db.execute(f"INSERT OR REPLACE INTO reservations ({', '.join(cols)}) VALUES "
                        f"({', '.join('?' * len(cols))})", tuple(row[c] for c in cols))

    def delete_reservation(self, name: str) -> bool:
        return self.db.execute("DELETE FROM reservations WHERE name = ?", (name,)).rowcount == 1
