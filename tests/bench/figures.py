"""Figures 1-9: the same measurement on rmsbatch and on Slurm, one after the other.

Each figure function takes the Context, sets the stage on every system (a queue of
N held jobs, an empty queue, ...), measures, and appends Rows. A failure on one
system becomes an error cell; the figure and the run go on.
"""
from __future__ import annotations

import os
import random
import threading
import time
import traceback
from dataclasses import dataclass

from tests.bench import synthetic, util
from tests.bench.report import Row, Target
from tests.bench.system import System
from tests.bench.util import Measurement

MS = 1e-3
PAIRED = "python3 -c pass, alternating with rsub"


@dataclass
class Sizes:
    seq_submits: int = 1000
    block: int = 100                 # sequential throughput is per block of this many calls
    clients: int = 8
    per_client: int = 125
    concurrent_reps: int = 3
    small_queue: int = 1000
    big_queue: int = 10000
    query_reps: int = 20
    warmup: int = 3
    e2e_jobs: int = 500
    e2e_reps: int = 3
    start_reps: int = 20
    acct_records: int = 1_000_000   # synthetic finished jobs in figure 8 (never committed)
    acct_reps: int = 3
    rollup_timeout: float = 3600     # slurmdbd rolling 30 days of them up for sreport
    burst: int = 20                  # jobs submitted while the listing runs
    floor_reps: int = 30

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(seq_submits=200, block=50, per_client=25, concurrent_reps=2, query_reps=10,
                   warmup=2, e2e_jobs=200, e2e_reps=1, start_reps=10, acct_records=50_000,
                   floor_reps=10)


class Context:
    def __init__(self, rms, slurm, sizes: Sizes):
        self.rms = rms
        self.slurm = slurm
        self.sizes = sizes
        self.rows: list[Row] = []
        self.floor: dict[str, Measurement] = {}
        self.acct_setup: dict | None = None     # figure 8's window and synthetic jobs
        from tests.bench.rms import command
        self.python_pass: list[str] = [command("python3"), "-c", "pass"]

    def floor_seconds(self) -> float | None:
        """The `python3 -c pass` median a floor target falls back on where its figure
        did not time one call for call beside its own (a cell's extra "floor"): the one
        taken beside rsub when there is one (same conditions)."""
        m = self.floor.get(PAIRED) or self.floor.get("python3 -c pass")
        return m.median if m else None

    def systems(self) -> list[System]:
        return [s for s in (self.rms, self.slurm) if s is not None]

    def variants(self):
        """rmsbatch, then Slurm in each scheduler setting, starting with the current one."""
        if self.rms:
            yield self.rms
        if self.slurm:
            from tests.bench.slurm import VARIANTS
            order = sorted(VARIANTS, key=lambda v: v != self.slurm.variant)
            for v in order:
                try:
                    self.slurm.set_variant(v)
                except Exception as exc:  # noqa: BLE001
                    util.log(f"could not switch Slurm to {v}: {exc}")
                    continue
                yield self.slurm

    def row(self, *args, **kwargs) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row

    def measure(self, system: System, rows: list[Row], fn) -> None:
        """cells = fn(); fn returns one Measurement per row (or raises: error cells)."""
        column = system.label
        try:
            results = fn()
        except Exception as exc:  # noqa: BLE001 - one failure must not stop the run
            util.log(f"{column}: {rows[0].label}: FAILED: {exc}")
            if os.environ.get("RMS_BENCH_DEBUG"):
                traceback.print_exc()
            for r in rows:
                r.cells[column] = f"error: {exc}"
            return
        for r, m in zip(rows, results):
            r.cells[column] = m
            if isinstance(m, Measurement) and m.samples:
                util.log(f"{column}: {r.label}: median {m.median:.4g} (n={len(m.samples)})")


# -- the floor ---------------------------------------------------------------------------
def python_floor(ctx: Context) -> None:
    from tests.bench.rms import command
    py = command("python3")
    env = ctx.rms.env if ctx.rms else None
    for key, argv in (("python3 -c pass", ctx.python_pass),
                      ("python3 -S -c pass", [py, "-S", "-c", "pass"])):
        ctx.floor[key] = Measurement(util.repeat(argv, ctx.sizes.floor_reps, 3, env))


# -- 1, 2: submit ------------------------------------------------------------------------
def submit_sequential(ctx: Context) -> None:
    n = ctx.sizes.seq_submits
    p50 = ctx.row("submit", f"1 submit latency, {n:,} sequential held", "ms",
                  target=Target("floor_max", 15 * MS, "≤ python floor + 15 ms"))
    p90 = ctx.row("submit", f"1 submit latency, {n:,} sequential held", "ms", stat="p90")
    rate = ctx.row("submit", "2 submit throughput, sequential", "jobs/s", higher_better=True)
    for system in ctx.systems():
        def run(system=system):
            system.empty_queue()
            argv = system.submit_held()
            for _ in range(ctx.sizes.warmup):
                system.timed(argv)
            calls, floor = [], []
            paired = system.family == "rmsbatch"
            for _ in range(n):
                calls.append(system.timed(argv)[0])
                if paired:
                    floor.append(util.timed(ctx.python_pass, system.env)[0])
            extra = {}
            if paired:
                ctx.floor[PAIRED] = Measurement(floor)
                extra["floor"] = util.percentile(floor, 50)     # what the target reads
            blocks = [ctx.sizes.block / sum(calls[i:i + ctx.sizes.block])
                      for i in range(0, n - ctx.sizes.block + 1, ctx.sizes.block)]
            return Measurement(calls, extra=extra), Measurement(calls), Measurement(blocks)
        ctx.measure(system, [p50, p90, rate], run)


def submit_concurrent(ctx: Context) -> None:
    s = ctx.sizes
    rate = ctx.row("concurrent", f"2 submit throughput, {s.clients} concurrent clients",
                   "jobs/s", higher_better=True, target=Target("ratio_min", 3, "≥ 3"))
    for system in ctx.systems():
        def run(system=system):
            argv = system.submit_held()
            for _ in range(s.warmup):
                system.timed(argv)
            rates = []
            for _ in range(s.concurrent_reps):
                start = time.perf_counter()
                util.parallel(s.clients, list(range(s.clients)),
                              lambda _: [system.timed(argv) for _ in range(s.per_client)])
                rates.append(s.clients * s.per_client / (time.perf_counter() - start))
            return [Measurement(rates)]
        ctx.measure(system, [rate], run)


# -- 3, 4: queries -------------------------------------------------------------------------
def queue_query(ctx: Context, size: int) -> None:
    s = ctx.sizes
    target = Target("ratio_max", 1, "≤ 1") if size >= 10000 else None
    plain = ctx.row("query", f"3 queue query at {size:,} held, default format", "ms",
                    target=target)
    short = ctx.row("query", f"3 queue query at {size:,} held, -h -o '%i %t'", "ms",
                    target=target)
    for system in ctx.systems():
        def run(system=system):
            system.ensure_queued(size)
            out = []
            for argv in (system.queue_default(), system.queue_format()):
                lines = len(system.timed(argv)[1].splitlines())
                m = Measurement(util.repeat(argv, s.query_reps, s.warmup, system.env,
                                            system.workdir), extra={"lines": lines})
                out.append(m)
            return out
        ctx.measure(system, [plain, short], run)


def one_job_query(ctx: Context) -> None:
    s = ctx.sizes
    # Squeue is a C client (about 5 ms); no Python command starts that fast, so the
    # issue holds `rq -j N` to the interpreter's own start instead.
    row = ctx.row("query-one", f"4 one-job query (-j N) at {s.big_queue:,} held", "ms",
                  target=Target("floor_max", 10 * MS, "≤ python floor + 10 ms"))
    for system in ctx.systems():
        def run(system=system):
            system.ensure_queued(s.big_queue)
            ids = sorted(system.active_ids())
            argv = system.queue_one(ids[len(ids) // 2])
            if system.family != "rmsbatch":
                return [Measurement(util.repeat(argv, s.query_reps, s.warmup, system.env,
                                                system.workdir))]
            # The target is relative to the interpreter's start, and this VM's speed
            # wanders between minutes: time `python3 -c pass` alternately with rq.
            for _ in range(s.warmup):
                system.timed(argv)
            calls, floor = [], []
            for _ in range(s.query_reps):
                calls.append(system.timed(argv)[0])
                floor.append(util.timed(ctx.python_pass, system.env)[0])
            util.log(f"rmsbatch: python3 -c pass alternating with rq -j: median "
                     f"{util.percentile(floor, 50) * 1000:.1f} ms")
            return [Measurement(calls, extra={"floor": util.percentile(floor, 50)})]
        ctx.measure(system, [row], run)


# -- 5: cancel -----------------------------------------------------------------------------
def cancel(ctx: Context) -> None:
    n = ctx.sizes.big_queue
    row = ctx.row("cancel", f"5 cancel {n:,} held (-u USER) until the queue is empty", "s")
    for system in ctx.systems():
        def run(system=system):
            system.ensure_queued(n)
            start = time.time()
            took, _ = system.timed(system.cancel_all())
            empty = system.wait_empty(600)
            return [Measurement([empty - start], note="one run", extra={"command_s": took})]
        ctx.measure(system, [row], run)


# -- 6, 7: running jobs --------------------------------------------------------------------
JOB = ("-c", "1", "--mem=100M")


def end_to_end(ctx: Context) -> None:
    s = ctx.sizes
    n = s.e2e_jobs
    row = ctx.row("e2e", f"6 end to end, {n} one-CPU jobs, first submit to last end",
                  "jobs/s", higher_better=True, target=Target("ratio_min", 3, "≥ 3"))
    sub = ctx.row("e2e", f"6   of which the {n} sequential submit calls", "s")
    arr = ctx.row("e2e", f"6 end to end, one {n}-task array", "jobs/s", higher_better=True,
                  target=Target("ratio_min", 3, "≥ 3"))
    api = ctx.row("e2e", f"6 end to end, {n} jobs submitted on one library connection",
                  "jobs/s", higher_better=True)
    for system in ctx.variants():
        def run(system=system):
            system.empty_queue()
            argv = system.submit(*JOB, "--wrap", "true")
            system.timed(argv)                       # warm-up job, excluded
            system.wait_empty(120)
            rates, submits, states = [], [], {}
            for _ in range(s.e2e_reps):
                start = time.time()
                ids = [system.parse_job_id(system.timed(argv)[1]) for _ in range(n)]
                submitted = time.time()
                end = system.wait_empty(900)
                rates.append(n / (end - start))
                submits.append(submitted - start)
                states = job_states(system, ids)
            extra = {"states_of_last_rep": states}
            return Measurement(rates, extra=extra), Measurement(submits)
        ctx.measure(system, [row, sub], run)
        def run_array(system=system):
            system.empty_queue()
            rates, states = [], {}
            for _ in range(s.e2e_reps):
                start = time.time()
                _, out = system.timed(system.submit(*JOB, f"--array=1-{n}", "--wrap", "true"))
                rates.append(n / (system.wait_empty(900) - start))
                states = array_states(system, system.parse_job_id(out))
            return [Measurement(rates, extra={"states_of_last_rep": states})]
        ctx.measure(system, [arr], run_array)
        if system.family != "Slurm":
            ctx.measure(system, [api], lambda system=system: [end_to_end_api(system, s)])
    for column in ("Slurm", "Slurm bsd0"):
        if ctx.slurm:
            api.cells[column] = "n/a"


def end_to_end_api(system, s: Sizes) -> Measurement:
    """rmsbatch only: the pipeline behind rsub (controller, rmsd, supervisors) without
    the cost of starting a Python command per job."""
    spec = system.spec(*JOB, "--wrap", "true")
    system.empty_queue()
    rates, ids = [], []
    for _ in range(s.e2e_reps):
        start = time.time()
        ids = [system.call("submit", spec=spec)["job_id"] for _ in range(s.e2e_jobs)]
        rates.append(s.e2e_jobs / (system.wait_empty(900) - start))
    return Measurement(rates, extra={"states_of_last_rep": job_states(system, ids)})


def array_states(system: System, array_id: int) -> dict[str, int]:
    """How an array's tasks ended (rmsbatch: the id names them all)."""
    if system.family != "rmsbatch":
        return job_states(system, [array_id])
    counts: dict[str, int] = {}
    for (state,) in system.call("jobs", ids=[array_id], fields=["state"])["rows"]:
        counts[state] = counts.get(state, 0) + 1
    return counts


def job_states(system: System, ids: list[int]) -> dict[str, int]:
    """How the jobs ended (a run of failing jobs would look fast)."""
    counts: dict[str, int] = {}
    if system.family == "rmsbatch":
        for job in system.call("jobs", ids=ids)["jobs"]:
            counts[job["state"]] = counts.get(job["state"], 0) + 1
    elif getattr(system, "accounting", False):
        system.wait_accounting()
        out = util.run([system.bin("sacct"), "-X", "-n", "-P", "-o", "state", "-j",
                        ",".join(map(str, ids))], env=system.env).stdout
        for state in out.split():
            counts[state] = counts.get(state, 0) + 1
    return counts


def submit_to_start(ctx: Context) -> None:
    reps = ctx.sizes.start_reps
    row = ctx.row("start", f"7 submit to start, idle cluster ({reps} jobs)", "ms",
                  target=Target("ratio_max", 0.05, "≤ 0.05"))
    for system in ctx.variants():
        def run(system=system):
            system.empty_queue()
            delays = []
            # A random pause before each submission, so that it lands at a random phase
            # of a periodic scheduler (Slurm's batch_sched_delay is 3 s) instead of
            # always just after the previous job ended.
            pause = random.Random(1)
            for i in range(reps + 1):                # the first is a warm-up
                stamp = os.path.join(system.workdir, f"start-{time.time_ns()}")
                argv = system.submit(*JOB, "--wrap", f"date +%s.%N > {stamp}.tmp && "
                                                     f"mv {stamp}.tmp {stamp}")
                time.sleep(pause.uniform(0, 3.0))
                began = time.time()
                system.timed(argv)
                util.wait_until(lambda: os.path.exists(stamp), 60, interval=0.002,
                                what="job start stamp")
                with open(stamp) as fh:
                    started = float(fh.read())
                if i:
                    delays.append(started - began)
                system.wait_empty(60)
            return [Measurement(delays)]
        ctx.measure(system, [row], run)


# -- 8: accounting ---------------------------------------------------------------------------
def accounting(ctx: Context) -> None:
    """A listing and a usage report over `acct_records` synthetic finished jobs of the last
    30 days (tests.bench.synthetic) plus the real ones of the run, on both systems; then,
    on rmsbatch, a burst of jobs and the scheduler's passes while that listing runs."""
    s = ctx.sizes
    n = s.acct_records
    listing = ctx.row("acct", f"8 accounting: list {n:,} finished jobs (30 days, 6 fields)",
                      "s", target=Target("ratio_max", 0.25, "≤ 0.25"))
    report = ctx.row("acct", "8 accounting: usage per account and user (rsacct report / "
                             "sreport)", "s")
    systems = ctx.systems()
    setup = ctx.acct_setup
    if setup is None:                    # once, also when the figure is measured again
        now = time.time()
        start = synthetic.window_start(now)
        # -E: the window ends now, so that jobs run later (the burst below, on a second
        # measurement of the figure) leave the listing as it is
        setup = ctx.acct_setup = {"now": now, "start": start, "since": synthetic.when(start),
                                  "until": synthetic.when(now + 1), "real": {}, "added": {}}
    since, until = setup["since"], setup["until"]
    for system in systems:               # the run's own jobs that the listing finds
        if system.label in setup["real"]:
            continue
        try:
            system.empty_queue()
            if system.family == "Slurm":
                system.wait_accounting()
            setup["real"][system.label] = len(system.timed(system.acct_list(since, until))[1]
                                              .splitlines())
        except Exception as exc:  # noqa: BLE001
            util.log(f"{system.label}: {listing.label}: FAILED: {exc}")
            listing.cells[system.label] = report.cells[system.label] = f"error: {exc}"
    most = max(setup["real"].values(), default=0)
    for system in systems:
        if system.label not in setup["real"]:
            continue

        def run(system=system):
            real = setup["real"][system.label]
            if system.label not in setup["added"]:
                # as many synthetic jobs as make both list the same number of lines
                count = n + most - real
                info = system.add_finished(count, setup["start"], setup["now"])
                setup["added"][system.label] = {"synthetic": count, "real": real, **info}
            argv = system.acct_list(since, until)
            took, out = system.timed(argv)          # the first call: a warm-up
            lines = len(out.splitlines())
            if lines != n + most:
                util.log(f"{system.label}: the listing has {lines:,} lines, not {n + most:,}")
            pid = system.controller_pid()
            cpu = util.cpu_seconds(pid)
            samples = util.repeat(argv, s.acct_reps, 0, system.env, system.workdir)
            # rmsctld forwards the pages its accounting workers write; slurmctld has no
            # part in sacct (slurmdbd answers)
            cpu = (util.cpu_seconds(pid) - cpu) / s.acct_reps
            return [Measurement(samples, note=f"{lines:,} jobs listed",
                                extra={"lines": lines, "first_call_s": took,
                                       "controller_cpu_s_per_call": cpu,
                                       **setup["added"][system.label]})]
        ctx.measure(system, [listing], run)
        if not isinstance(listing.cells.get(system.label), Measurement):
            continue

        def run_report(system=system):
            extra = {}
            if system.family == "Slurm":
                # sreport reads slurmdbd's hourly rollups: make it roll the window up (once)
                if "rollup_s" not in setup:
                    setup["rollup_s"] = system.rollup(setup["start"], s.rollup_timeout)
                    util.log(f"Slurm: usage rolled up over 30 days in {setup['rollup_s']:.0f} s")
                extra["rollup_s"] = setup["rollup_s"]
            argv = system.acct_report(since, until)
            lines = len(system.timed(argv)[1].splitlines())
            extra["lines"] = lines
            return [Measurement(util.repeat(argv, s.acct_reps, 0, system.env, system.workdir),
                                note=f"{lines:,} lines", extra=extra)]
        ctx.measure(system, [report], run_report)
    if ctx.rms and isinstance(listing.cells.get("rmsbatch"), Measurement):
        scheduling_during_query(ctx, (since, until))


def scheduling_during_query(ctx: Context, window: tuple[str, str]) -> None:
    """rmsbatch only: `burst` one-CPU jobs submitted one after the other (rsub), each
    job's start minus the time before its submit call, and the controller's scheduling
    passes meanwhile (the `stats` request: pass_s_last sampled every 20 ms, pass count
    and total for the exact mean); with no query, then while the figure's listing runs
    back to back (rsacct through rmsctld's accounting workers)."""
    s, n, system = ctx.sizes, ctx.sizes.acct_records, ctx.rms
    rows = {}
    for key, what in (("idle", "no query"), ("busy", f"while the {n:,}-job listing runs")):
        rows[key] = (
            ctx.row("acct", f"8 submit to start, burst of {s.burst} jobs, {what}", "ms"),
            ctx.row("acct", f"8 scheduling pass, burst of {s.burst} jobs, {what}", "ms"))
    for key, (start_row, pass_row) in rows.items():
        ctx.measure(system, [start_row, pass_row],
                    lambda busy=(key == "busy"): burst(ctx, system, window if busy else None))
        for r in (start_row, pass_row):
            if ctx.slurm:
                r.cells[ctx.slurm.label] = "n/a"


def burst(ctx: Context, system, window: tuple[str, str] | None) -> list[Measurement]:
    s = ctx.sizes
    system.empty_queue()
    stop = threading.Event()
    queries: list[float] = []
    query_error: list[str] = []

    def query_loop():
        argv = system.acct_list(*window)
        while not stop.is_set():
            try:
                queries.append(system.timed(argv)[0])
            except Exception as exc:  # noqa: BLE001 - reported with the figure
                query_error.append(str(exc))
                return
    looper = None
    if window is not None:
        looper = threading.Thread(target=query_loop, daemon=True)
        looper.start()
        time.sleep(1.0)                      # the first query is under way
    poller = system.stats_poller()
    stamps, began = [], []
    try:
        for i in range(s.burst):
            stamp = os.path.join(system.workdir, f"burst-{time.time_ns()}-{i}")
            argv = system.submit(*JOB, "--wrap", f"date +%s.%N > {stamp}.tmp && "
                                                 f"mv {stamp}.tmp {stamp}")
            began.append(time.time())
            system.timed(argv)
            stamps.append(stamp)
        util.wait_until(lambda: all(os.path.exists(p) for p in stamps), 300,
                        interval=0.01, what="the burst's jobs starting")
        covered = looper is None or looper.is_alive()
    finally:
        passes = poller.stop()
        stop.set()
        if looper is not None:
            looper.join()
    if query_error:
        raise RuntimeError(f"the listing failed during the burst: {query_error[0]}")
    delays = []
    for stamp, t in zip(stamps, began):
        with open(stamp) as fh:
            delays.append(float(fh.read()) - t)
    system.wait_empty(120)
    extra = {"queries_during": len(queries), "query_s": queries,
             "query_ran_throughout": covered} if window is not None else {}
    if window is not None and not covered:
        util.log("rmsbatch: the listing loop ended before the burst's jobs started")
    return [Measurement(delays, extra=extra),
            Measurement(passes["sampled"] or [0.0], note=f"{passes['passes']} passes",
                        extra={**passes, "sampled": len(passes["sampled"])})]


# -- 9: controller memory ------------------------------------------------------------------
def memory_idle(ctx: Context) -> None:
    rss = ctx.row("memory", "9 controller RSS, idle", "MiB")
    for system in ctx.systems():
        ctx.measure(system, [rss], lambda system=system: [
            Measurement([util.memory_kib(system.controller_pid())["VmRSS"] / 1024])])


def memory_pending(ctx: Context) -> None:
    n = ctx.sizes.big_queue
    rss = ctx.row("memory", f"9 controller RSS, {n:,} pending", "MiB",
                  target=Target("ratio_max", 1, "≤ 1"))
    hwm = ctx.row("memory", f"9 controller peak RSS (VmHWM) so far, {n:,} pending", "MiB")
    for system in ctx.systems():
        def run(system=system):
            system.ensure_queued(n)
            time.sleep(2)
            mem = util.memory_kib(system.controller_pid())
            return Measurement([mem["VmRSS"] / 1024]), Measurement([mem["VmHWM"] / 1024])
        ctx.measure(system, [rss, hwm], run)
