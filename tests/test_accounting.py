"""Accounting at scale, with real daemons: a million synthetic job records in a real
spool, reports checked against direct SQL sums, the scheduler kept running while a big
query runs, budgets, the audit trail, and retention (archive, then purge)."""
from __future__ import annotations

import glob
import json
import os
import random
import signal
import sqlite3
import subprocess
import time

import pytest

from conftest import ensure_user, pids_matching, wait_for

DAY = 86400
COLUMNS = ("id", "name", "user", "uid", "gid", "account", "partition", "qos", "state",
           "submit_time", "start_time", "end_time", "nodes", "ntasks", "cpus_per_task",
           "req_cpus", "req_mem_mb", "req_gpus", "alloc_cpus", "alloc_gpus", "nodelist",
           "billing", "alloc_gpu_type", "tenant_path", "gpu_util", "exit_code", "exit_signal")
TENANTS = {"vision": "vision", "nlp": "nlp", "nlp-translation": "nlp/nlp-translation"}


def spool_file(c) -> str:
    return os.path.join(c.dir, "spool", "rmsbatch.db")


def fill(path: str, n: int, *, first_id: int = 1, ended_before: float, span: float,
         seed: int = 1, user: str = "root", account=None) -> None:
    """`n` finished jobs straight into the spool (the controller stopped), ending within
    `span` seconds before `ended_before`. Indexes are dropped for the load and made
    again after it: a million rows in seconds instead of a minute."""
    rng = random.Random(seed)
    db = sqlite3.connect(path, isolation_level=None)
    # a bulk load, nobody else connected: no WAL copy of every page, no fsync, room to sort
    db.execute("PRAGMA journal_mode=DELETE")
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-400000")
    indexes = db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' "
                         "AND tbl_name = 'jobs' AND sql IS NOT NULL").fetchall()
    db.execute("BEGIN")
    for name, _ in indexes:
        db.execute(f"DROP INDEX {name}")

    rand = rng.random
    shapes = (0, 1, 2, 4, 8, 1, 0)     # GPUs; a length prime to 3 and 10 mixes them all
    states = ("COMPLETED",) * 8 + ("FAILED", "TIMEOUT")

    def rows():
        for i in range(first_id, first_id + n):
            end = ended_before - rand() * span
            start = end - 60 - rand() * 7140
            gpus = shapes[i % 7]
            acct = account or ("vision", "nlp", "nlp-translation")[i % 3]
            yield (i, "synthetic", user, 0, 0, acct, "main", "normal", states[i % 10],
                   start - rand() * 900, start, end, 1, 1, 1, 4, 1024, gpus, 4, gpus,
                   "vm", 4.25 + 32 * gpus, "a100" if gpus else None,
                   TENANTS.get(acct, acct), 50.0 if gpus else None, 0, 0)
    db.executemany(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES "
                   f"({', '.join('?' * len(COLUMNS))})", rows())
    for _, sql in indexes:
        db.execute(sql)
    db.execute("UPDATE sqlite_sequence SET seq = (SELECT MAX(id) FROM jobs) "
               "WHERE name = 'jobs'")
    db.execute("COMMIT")
    db.execute("PRAGMA journal_mode=WAL")
    db.close()


def sql_gpu_hours(path: str, start: float, end: float) -> dict[str, float]:
    """GPU-hours per tenant in [start, end), computed here independently of rmsbatch."""
    db = sqlite3.connect(path)
    out = {}
    for tenant, s, e, gpus in db.execute(
            "SELECT COALESCE(tenant_path, account), start_time, end_time, alloc_gpus "
            "FROM jobs WHERE start_time IS NOT NULL"):
        ran = max(0.0, min(e if e is not None else end, end) - max(s, start))
        out[tenant] = out.get(tenant, 0.0) + gpus * ran / 3600
    db.close()
    return {k: v for k, v in out.items() if v}


def tenants_toml(**budget) -> str:
    extra = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in budget.items())
    return ('admins = ["root"]\noperators = []\nprivate_accounting = true\n'
            '[[accounts]]\nname = "vision"\nusers = ["*"]\n' + extra +
            '[[accounts]]\nname = "nlp"\nusers = ["*"]\n'
            '[[accounts]]\nname = "nlp-translation"\nparent = "nlp"\nusers = ["*"]\n'
            '[users.root]\ndefault_account = "nlp"\n')


def write(c, name: str, text: str) -> None:
    with open(os.path.join(c.dir, name), "w") as fh:
        fh.write(text)


# -- a million records ---------------------------------------------------------------
MILLION = 1_000_000


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    from conftest import Cluster, _kill_leftovers, _new_cluster_dir
    import shutil
    c = Cluster(_new_cluster_dir(), 1)
    c.up()
    c.down()
    write(c, "tenants.toml", tenants_toml())
    now = time.time()
    fill(spool_file(c), MILLION, ended_before=now - 60, span=30 * DAY)
    c.up()
    yield c, now
    c.down()
    _kill_leftovers(c.dir)
    shutil.rmtree(c.dir, ignore_errors=True)


def test_report_totals_over_a_million_records_equal_a_direct_sum(big):
    c, now = big
    start, end = now - 31 * DAY, now
    got = c.run("rsacct", "report", "--by", "tenant", "--json",
                "-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                timeout=300, check=True)
    rows = {r["account"] if "account" in r else r["tenant"]: r
            for r in json.loads(got.stdout)["rows"]}
    want = sql_gpu_hours(spool_file(c), int(start), time.time())
    assert set(rows) == {"vision", "nlp", "nlp/nlp-translation"}
    assert sum(r["jobs"] for r in rows.values()) == MILLION
    for tenant, hours in want.items():
        assert rows[tenant]["gpu_hours"] == pytest.approx(hours, rel=1e-6)


def test_a_listing_pages_through_every_record_of_its_window(big):
    c, now = big
    since = now - 2 * DAY
    db = sqlite3.connect(spool_file(c))
    want = db.execute("SELECT COUNT(*) FROM jobs WHERE end_time >= ?", (since,)).fetchone()[0]
    db.close()
    assert want > 40_000        # more than two pages of 20,000
    out = c.run("rsacct", "-a", "-X", "-n", "-P", "-o", "JobID,State",
                "-S", time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since)),
                timeout=300, check=True).stdout.split()
    assert len(out) == want
    ids = [int(line.split("|")[0]) for line in out]
    assert ids == sorted(set(ids))          # no page repeated or out of order


def test_the_scheduler_keeps_starting_jobs_while_a_big_report_runs(big):
    """The stated bound: a job submitted while a report over a million records runs
    starts within 10 s (an idle cluster starts one in well under a second), and goes
    through before the report is done."""
    c, _ = big
    from conftest import command_path
    query = subprocess.Popen([command_path("rsacct"), "report", "--by", "user,tenant",
                              "-S", "2020-01-01", "--json"],
                             env=c.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: c.api("stats")["stats"]["acct_workers"] >= 1, 30, "a worker busy")
        began = time.time()
        job = c.submit("--wrap", "true")
        ended = c.wait_ended(job, timeout=60)
        assert ended["state"] == "COMPLETED"
        # the job went all the way through while the report still ran
        assert query.poll() is None, "the report ended before the job: no overlap tested"
        assert ended["start_time"] - began < 10
    finally:
        out, err = query.communicate(timeout=600)
    assert query.returncode == 0, err
    assert sum(r["jobs"] for r in json.loads(out)["rows"]) >= MILLION


def test_a_killed_worker_fails_its_query_with_a_message_and_is_replaced(big):
    c, _ = big
    from conftest import command_path
    query = subprocess.Popen([command_path("rsacct"), "report", "--by", "day,tenant",
                              "-S", "2020-01-01", "--json"], env=c.env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spool = spool_file(c).encode()

    def workers():
        return pids_matching(lambda cmd: b"rmsbatch.acct.worker" in cmd and spool in cmd)
    wait_for(lambda: workers(), 30, "an accounting worker")
    time.sleep(0.5)
    for pid in workers():
        os.kill(pid, signal.SIGKILL)
    out, err = query.communicate(timeout=300)
    assert query.returncode == 1
    assert "accounting worker ended during this query" in err and "Traceback" not in err
    again = c.run("rsacct", "-a", "-X", "-n", "-P", "-o", "JobID", "-j", "1", check=True)
    assert again.stdout.split() == ["1"]


# -- budgets, audit, retention on a small cluster --------------------------------------------
def test_a_spent_budget_holds_its_tenants_jobs_and_lets_others_run(new_cluster):
    def setup(c):
        write(c, "tenants.toml", tenants_toml(budget_gpu_hours=10.0, budget_period="month",
                                              budget_warn=0.8))
        # 12 GPU-hours of vision this month: 3 jobs of 8 GPUs for 30 minutes
        now = time.time()
        db = sqlite3.connect(spool_file(c))
        for i in range(1, 4):
            end = now - 60 * i
            db.execute("INSERT INTO jobs (id, name, user, uid, gid, account, partition, qos, "
                       "state, submit_time, start_time, end_time, nodes, ntasks, "
                       "cpus_per_task, req_cpus, req_mem_mb, req_gpus, alloc_gpus, billing, "
                       "tenant_path) VALUES (?, 'old', 'root', 0, 0, 'vision', 'main', "
                       "'normal', 'COMPLETED', ?, ?, ?, 1, 1, 1, 1, 100, 8, 8, 260, 'vision')",
                       (i, end - 1900, end - 1800, end))
        db.commit()
        db.close()
    c = new_cluster(gpus=1, before_start=setup)
    held = c.submit("-A", "vision", "--wrap", "true")
    other = c.submit("-A", "nlp", "--wrap", "true")
    assert c.wait_ended(other)["state"] == "COMPLETED"
    wait_for(lambda: c.job(held)["reason"] == "BudgetExhausted", 10, "the budget reason")
    assert c.job(held)["state"] == "PENDING"
    rq = c.run("rq", check=True)
    assert "BudgetExhausted" in rq.stdout
    assert "account vision" in rq.stderr and "budget" in rq.stderr
    report = c.run("rsacct", "report", "--format", "plain", check=True).stdout
    assert "over budget" in report and "vision" in report
    # the admin raises the budget: the job starts at the next pass
    write(c, "tenants.toml", tenants_toml(budget_gpu_hours=100.0))
    c.run("rcontrol", "reconfigure", check=True)
    assert c.wait_ended(held)["state"] == "COMPLETED"


def test_the_audit_trail_says_who_did_what_from_where_and_refusals_too(new_cluster):
    alice, bob = ensure_user("rmsalice"), ensure_user("rmsbob")
    c = new_cluster(gpus=0, before_start=lambda c: write(c, "tenants.toml", tenants_toml()))
    job = c.submit("--hold", "--wrap", "true", user="rmsalice")
    refused = c.run("rcancel", str(job), user="rmsbob")
    assert refused.returncode != 0
    c.run("rcontrol", "drain", c.node, "Reason=disk check", check=True)
    c.run("rcontrol", "resume", c.node, check=True)
    lines = c.run("rsacct", "audit", "-a", "-P", "-n", check=True).stdout.splitlines()
    cells = [line.split("|") for line in lines]
    assert ["rmsalice", "submit", f"job {job}"] == [cells[0][1], cells[0][3], cells[0][4]]
    cancel = next(r for r in cells if r[3] == "cancel")
    assert cancel[1] == "rmsbob" and cancel[5].startswith("refused:")
    assert cancel[2].startswith("local pid ")
    assert [r[3] for r in cells if r[1] == "root"] == ["drain", "resume"]
    assert "disk check" in c.run("rsacct", "audit", "-a", "--op", "drain", "--json",
                                 check=True).stdout
    # a reload on SIGHUP is a change too, and one refused for a typo says why
    tenants = os.path.join(c.dir, "tenants.toml")
    with open(tenants) as fh:
        good = fh.read()
    write(c, "tenants.toml", good + "\nprivate_acounting = true\n")
    os.kill(c.pid("rmsctld"), signal.SIGHUP)

    def reloads():
        out = c.run("rsacct", "audit", "-a", "-P", "-n", "--op", "reconfigure").stdout
        return [line.split("|") for line in out.splitlines()]
    wait_for(lambda: reloads(), 10, "the reload's audit record")
    [reload] = reloads()
    assert reload[1] == "(signal)" and reload[2].startswith("SIGHUP")
    assert reload[5].startswith("refused:") and "private_acounting" in reload[5]
    write(c, "tenants.toml", good)
    # others' entries are not an ordinary user's to read; their own are
    denied = c.run("rsacct", "audit", "-a", user="rmsbob")
    assert denied.returncode == 1 and "operators and admins" in denied.stderr
    own = c.run("rsacct", "audit", "-P", "-n", user="rmsbob", check=True).stdout.splitlines()
    assert [line.split("|")[3] for line in own] == ["cancel"]
    # likewise reports: an ordinary user's covers their own jobs (bob has none)
    c.run("rcontrol", "release", str(job), check=True)
    c.wait_ended(job)
    mine = json.loads(c.run("rsacct", "report", "--json", user="rmsbob", check=True).stdout)
    assert mine["rows"] == []
    everyone = json.loads(c.run("rsacct", "report", "--by", "user", "--json",
                                check=True).stdout)
    assert [r["user"] for r in everyone["rows"]] == ["rmsalice"]
    assert c.run("rsacct", "report", "-u", "rmsalice", user="rmsbob").returncode == 1


def test_archive_then_purge_keeps_the_totals_across_spool_and_archives(new_cluster):
    now = time.time()

    def setup(c):
        with open(os.path.join(c.dir, "cluster.toml"), "a") as fh:
            fh.write("\n[accounting]\narchive_after = 365\n")
        fill(spool_file(c), 3000, ended_before=now - 400 * DAY, span=60 * DAY)
        fill(spool_file(c), 1000, first_id=3001, ended_before=now, span=30 * DAY, seed=2)
    c = new_cluster(gpus=0, before_start=setup)
    window = dict(start=now - 500 * DAY, end=now)
    from rmsbatch.acct.store import Store

    def totals(paths):
        out = {}
        for path in paths:
            store = Store(path, archive=path != spool_file(c))
            for row in store.report(["tenant"], window["start"], window["end"], {}, now):
                key = row["tenant"]
                out[key] = out.get(key, 0.0) + row["gpu_hours"]
            store.close()
        return out

    def spool_jobs():
        db = sqlite3.connect(spool_file(c))
        try:
            return db.execute("SELECT COUNT(*) FROM jobs WHERE id <= 4000").fetchone()[0]
        finally:
            db.close()
    wait_for(lambda: spool_jobs() == 1000, 60, "the old records purged from the spool")
    archives = sorted(glob.glob(os.path.join(c.dir, "spool", "archive", "rmsbatch-*.db")))
    assert len(archives) >= 2          # one file per month of the 60 days archived
    assert totals([spool_file(c), *archives]) == pytest.approx(_expected(now, window),
                                                               rel=1e-9)
    listed = c.run("rsacct", "--archive", archives[0], "-a", "-S", "2000-01-01", "-X", "-n",
                   "-P", "-o", "JobID,State", check=True).stdout.split()
    db = sqlite3.connect(archives[0])
    assert len(listed) == db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] > 0
    db.close()
    bad = c.run("rsacct", "--archive", os.path.join(c.dir, "cluster.toml"), "-a")
    assert bad.returncode == 1 and "not an rmsbatch spool or archive" in bad.stderr


def _expected(now, window):
    """The same synthetic rows in a spool of their own, summed directly: what the totals
    over the cluster's spool and archives must be."""
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        from rmsbatch.ctld.spool import Spool
        Spool(d).close()
        f = os.path.join(d, "rmsbatch.db")
        fill(f, 3000, ended_before=now - 400 * DAY, span=60 * DAY)
        fill(f, 1000, first_id=3001, ended_before=now, span=30 * DAY, seed=2)
        return sql_gpu_hours(f, window["start"], window["end"])


# -- the report's arithmetic, on a few jobs worked out by hand --------------------------------
def _store_with(tmp_path, rows):
    from rmsbatch.acct.store import Store
    from rmsbatch.ctld.spool import Spool
    Spool(str(tmp_path)).close()
    path = os.path.join(str(tmp_path), "rmsbatch.db")
    db = sqlite3.connect(path)
    for i, r in enumerate(rows, 1):
        row = {"id": i, "name": "j", "user": "u", "uid": 0, "gid": 0, "account": "a",
               "partition": "p", "qos": "normal", "state": "COMPLETED", "nodes": 1,
               "ntasks": 1, "cpus_per_task": 1, "req_cpus": 1, "req_mem_mb": 1,
               "req_gpus": 0, **r}
        db.execute(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                   tuple(row.values()))
    db.commit()
    db.close()
    return Store(path)


def test_a_report_counts_only_what_ran_inside_its_window(tmp_path):
    store = _store_with(tmp_path, [
        # across the window's start: 500 of its 1000 s count; started before: no wait
        dict(submit_time=400, start_time=500, end_time=1500, alloc_gpus=2, alloc_cpus=4,
             billing=10.0, gpu_util=50.0, gpu_idle_s=100.0),
        # still running: counts to the window's end; waited from its --begin
        dict(state="RUNNING", submit_time=1100, begin_time=1150, start_time=1200,
             alloc_gpus=1, alloc_cpus=1),
        dict(submit_time=1000, start_time=1900, end_time=1950, alloc_gpus=0, alloc_cpus=1),
        # outside the window: nothing
        dict(submit_time=0, start_time=10, end_time=900, alloc_gpus=8, alloc_cpus=8),
    ])
    [row] = store.report([], 1000, 2000, {}, now=2500)
    assert row["jobs"] == 3
    assert row["gpu_hours"] == pytest.approx((2 * 500 + 800) / 3600)
    assert row["cpu_hours"] == pytest.approx((4 * 500 + 800 + 50) / 3600)
    assert row["billing"] == pytest.approx(10 * 500 / 3600)
    assert row["gpu_eff"] == pytest.approx(0.5)          # only where measured
    assert row["idle_gpu_hours"] == pytest.approx(100 * 2 * 0.5 / 3600)
    assert row["wait_mean_s"] == pytest.approx((50 + 900) / 2)
    assert row["wait_p95_s"] == 900


def test_a_daily_series_splits_a_run_at_midnight(tmp_path):
    midnight = time.mktime((2026, 11, 3, 0, 0, 0, 0, 0, -1))
    store = _store_with(tmp_path, [dict(submit_time=midnight - 7200, start_time=midnight - 3600,
                                        end_time=midnight + 7200, alloc_gpus=4, alloc_cpus=1)])
    rows = store.report(["day", "account"], midnight - DAY, midnight + DAY, {},
                        now=midnight + 2 * DAY)
    assert [(r["day"], r["gpu_hours"]) for r in rows] == [("2026-11-02", pytest.approx(4.0)),
                                                          ("2026-11-03", pytest.approx(8.0))]


def test_the_fast_listing_writes_what_the_ordinary_one_does(tmp_path):
    """rsacct -X -P of a million jobs has its lines built by SQLite (rmsbatch.acct.lines):
    every field it offers must read exactly as the Python layout writes it."""
    from rmsbatch.acct.lines import SQL_FIELDS
    from rmsbatch.cli.arrayids import fold_pending
    from rmsbatch.cli.jobfields import sacct_layout
    from rmsbatch.ctld.spool import JOB_COLUMNS
    now = 2_000_000.5
    store = _store_with(tmp_path, [
        dict(submit_time=10, start_time=100.7, end_time=3800.2, alloc_cpus=4, alloc_gpus=2,
             exit_code=3, exit_signal=0, time_limit=3600, nodelist="gpu[01-02]", nodes=2,
             tenant_path="nlp/nlp-translation", alloc_gpu_type="a100", restart_count=2),
        dict(state="RUNNING", submit_time=10, start_time=now - 200_000.9, alloc_cpus=1,
             time_limit=3 * DAY + 5, nodelist="gpu03"),
        dict(state="CANCELLED", submit_time=10, end_time=20, exit_signal=15),
        dict(state="PENDING", submit_time=10, name="o'neil|x", time_limit=0),
        dict(submit_time=10, start_time=50, end_time=50, array_job_id=7, array_task_id=3,
             alloc_cpus=0, uid=1234, exit_code=None),
    ])
    names = list(SQL_FIELDS)
    fast, nxt, pending = store.lines_page({}, names, "|", True, now)
    assert nxt is None and not pending
    cur = store.db.execute(f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs ORDER BY id")
    records = fold_pending([dict(zip(JOB_COLUMNS, r)) for r in cur])
    slow = sacct_layout(",".join(names)).parsable(records, now, header=False,
                                                  trailing=True).splitlines()
    assert fast == slow
    # a pending array task makes the client take the ordinary path, which folds it
    store = _store_with(tmp_path / "b", [dict(state="PENDING", submit_time=1, array_job_id=1,
                                              array_task_id=0)])
    assert store.lines_page({}, ["JobID"], "|", False, now)[2] is True
