"""rmsbatch vs Slurm, side by side in one run.

    python -m tests.bench [--quick] [--only NAME] [--no-slurm] [--keep]

Starts a single-host rmsbatch cluster and (as root) a Slurm 22.05 cluster of the same
shape, measures the figures of the issue on both, stops every daemon it started by
PID, prints a table and writes tests/bench/results/<timestamp>.json.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

if __package__ in (None, ""):      # `python tests/bench/run.py`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.bench import figures, fleet, isolation, report, scale, util  # noqa: E402
from tests.bench.figures import Context, Sizes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CPUS = os.cpu_count() or 1
BUSY = 0.25          # others' share of all CPUs at which a figure waits before it starts
DISTURBED = 0.10     # others' share during a figure at which it is run once more

# In this order: each step sets up the queue it needs, and the order keeps it cheap
# (1,000 held jobs from the submit figure are reused by the first query, and so on).
PLAN = [
    ("memory", "9 controller memory, idle", figures.memory_idle),
    ("submit", "1-2 sequential submit", figures.submit_sequential),
    ("query", "3 queue query, small queue", lambda c: figures.queue_query(c, c.sizes.small_queue)),
    ("concurrent", "2 concurrent submit", figures.submit_concurrent),
    ("query", "3 queue query, big queue", lambda c: figures.queue_query(c, c.sizes.big_queue)),
    ("query-one", "4 one-job query", figures.one_job_query),
    ("memory", "9 controller memory, pending", figures.memory_pending),
    ("cancel", "5 cancel", figures.cancel),
    ("e2e", "6 end to end", figures.end_to_end),
    ("start", "7 submit to start", figures.submit_to_start),
    ("acct", "8 accounting query", figures.accounting),
    ("sched", "10 scheduler at scale", scale.scheduler_at_scale),
    ("isolation", "11 isolation cost per launch", isolation.isolation_cost),
    ("fleet", "12 many nodes on one controller", fleet.many_nodes),
]
NAMES = list(dict.fromkeys(name for name, _, _ in PLAN))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="figures: " + ", ".join(NAMES))
    p.add_argument("--only", choices=NAMES, metavar="NAME", help="run one figure: " + ", ".join(NAMES))
    p.add_argument("--quick", action="store_true", help="fewer calls and repetitions (minutes)")
    p.add_argument("--no-slurm", action="store_true", help="measure rmsbatch alone")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    return p


def busy(watcher: util.Watcher, seconds: float = 2.0) -> tuple[float, float]:
    """Fractions of all CPUs used over `seconds` while the harness idles: by everything
    (our idle daemons included), and by other people's processes."""
    before, (busy0, total0) = watcher.cpu_seconds(True), util.cpu_busy_total()
    time.sleep(seconds)
    busy1, total1 = util.cpu_busy_total()
    everything = (busy1 - busy0) / max(1, total1 - total0)
    return everything, (watcher.cpu_seconds(True) - before) / (seconds * CPUS)


def wait_for_calm(what: str, watcher: util.Watcher) -> float:
    """Waits up to two minutes while someone else keeps the CPUs busy, and up to 30 s
    while our own daemons are still busy (starting, purging jobs); others' share."""
    start = time.monotonic()
    total, others = busy(watcher)
    while time.monotonic() - start < 120 and (
            others > BUSY or (total > BUSY and time.monotonic() - start < 30)):
        who = "someone else's work" if others > BUSY else "our own daemons"
        util.log(f"waiting before {what!r}: {total:.0%} of the CPUs busy ({who})")
        total, others = busy(watcher, 3.0)
    if others > BUSY:
        util.log(f"WARNING: {what!r} starts on a busy machine ({others:.0%} other work)")
    return others


def run_step(ctx: Context, what: str, step, watcher: util.Watcher) -> dict:
    """One step of the plan; run again once if someone else's work disturbed it."""
    for attempt in (1, 2):
        calm = wait_for_calm(what, watcher)
        first_row = len(ctx.rows)
        cpu0, names0, began = watcher.cpu_seconds(True), watcher.snapshot(), time.monotonic()
        util.log(f"--- {what}" + (" (again)" if attempt > 1 else ""))
        try:
            step(ctx)
            error = None
        except Exception as exc:  # noqa: BLE001 - the figure's own rows carry errors
            error = str(exc)
            util.log(f"{what}: FAILED: {exc}")
        seconds = time.monotonic() - began
        others = (watcher.cpu_seconds(True) - cpu0) / (seconds * CPUS)
        for row in ctx.rows[first_row:]:
            row.others = others
        record = {"step": what, "attempt": attempt, "others_cpu_before": calm,
                  "others_cpu_during": others, "others_top": watcher.top(names0),
                  "seconds": seconds, "error": error}
        if others <= DISTURBED or attempt == 2:
            return record
        util.log(f"{what}: disturbed ({others:.0%} of the CPUs used by other work: "
                 f"{record['others_top']}): measuring it again")
        del ctx.rows[first_row:]
    return record


def start_slurm(root: str, processes: util.Processes):
    """A running Slurm, or (None, why not)."""
    from tests.bench import slurm
    why = slurm.install()
    if why:
        return None, why
    system = slurm.Slurm(os.path.join(root, "slurm"), processes)
    try:
        system.start()
    except Exception as exc:  # noqa: BLE001 - measure rmsbatch alone
        system.stop()
        return None, f"Slurm did not start: {exc} (logs in {system.path('log')})"
    return system, None


def git_revision() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, text=True,
                             capture_output=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, text=True, capture_output=True).stdout.strip()
        return rev + ("+local changes" if dirty else "")
    except OSError:
        return "?"


def start_systems(args, root: str, processes: util.Processes, notes: list[str]):
    from tests.bench.rms import Rms
    rms = Rms(os.path.join(root, "rms"), processes)
    rms.start()
    slurm = None
    if args.no_slurm:
        notes.append("Slurm not measured (--no-slurm)")
    elif os.geteuid() != 0:
        notes.append("Slurm not measured: the harness needs root to install and run it")
    else:
        slurm, why = start_slurm(root, processes)
        if why:
            notes.append(f"Slurm not measured: {why}")
    return rms, slurm


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    util.mark_environment()
    watcher = util.Watcher()
    load, (_, busy_start) = util.loadavg(), busy(watcher)
    notes: list[str] = []
    util.log(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {CPUS} CPUs; "
             f"other work uses {busy_start:.0%} of them")
    if busy_start > BUSY or load[0] > CPUS:
        notes.append(f"machine busy at the start: load average {load[0]:.2f}, "
                     f"{busy_start:.0%} of the CPUs used by other work")
        util.log(f"WARNING: {notes[-1]}: figures may be disturbed")

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    # Ctrl-C, a kill, a closed terminal: all end in the finally that stops the daemons
    # (SIGINT explicitly too: a shell starts background jobs with it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    root = tempfile.mkdtemp(prefix="rms-bench-")
    processes = util.Processes()
    rms = slurm = ctx = None
    steps: list[dict] = []
    started = time.strftime("%Y%m%dT%H%M%S")
    try:
        rms, slurm = start_systems(args, root, processes, notes)
        for n in notes:
            util.log(n)
        ctx = Context(rms, slurm, sizes)
        for name, what, step in PLAN:
            if not args.only or name == args.only:
                steps.append(run_step(ctx, what, step, watcher))
        # Last, on a quiet machine (just after the daemons start it reads high).
        steps.append(run_step(ctx, "python3 -c pass floor", figures.python_floor, watcher))
    except KeyboardInterrupt:
        notes.append("interrupted")
        util.log("interrupted: stopping the daemons")
    finally:
        slurm_version = slurm.version() if slurm else None
        for system in (slurm, rms):
            if system is not None:
                try:
                    system.stop()
                except Exception as exc:  # noqa: BLE001
                    util.log(f"stopping {system.label}: {exc}")
        processes.stop_all()
        watcher.stop()

    rows = ctx.rows if ctx else []
    floor = ctx.floor_seconds() if ctx else None
    errors = any(isinstance(c, str) and c.startswith("error") for r in rows for c in r.cells.values())
    if args.keep or errors:
        notes.append(f"logs and state kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print_report(rows, ctx, load, busy_start, notes, slurm_version)
    document = {
        "started": started, "args": vars(args), "host": platform.node(), "cpus": CPUS,
        "python": sys.version.split()[0], "rmsbatch_git": git_revision(),
        "slurm_version": slurm_version, "loadavg_at_start": load,
        "others_cpu_at_start": busy_start, "sizes": vars(sizes),
        "floor": {k: m.to_json() for k, m in (ctx.floor.items() if ctx else [])},
        "steps": steps, "notes": notes,
        "rows": [r.to_json(floor) for r in rows],
    }
    path = os.path.join(RESULTS, f"{started}.json")
    report.write_json(path, document)
    print(f"\nresults: {path}")
    return 1 if "interrupted" in notes else 0


def print_report(rows, ctx, load, busy, notes, slurm_version) -> None:
    print()
    print(f"rmsbatch vs Slurm on {platform.node()} ({CPUS} CPUs); at the start: load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, other work {busy:.0%} of the CPUs")
    if slurm_version:
        print(f"Slurm: {slurm_version}; 'Slurm bsd0' = SchedulerParameters=batch_sched_delay=0;"
              " ratios use Slurm's best setting")
    if ctx and ctx.floor:
        print("floor: " + "; ".join(f"{k}: {m.median * 1e3:.1f} ms ({m.low * 1e3:.1f}–"
                                    f"{m.high * 1e3:.1f})" for k, m in ctx.floor.items()))
    print("cells: median (min–max) unless marked p90/p99; 'other' = share of the CPUs that "
          "other people's processes used during the figure\n")
    print(report.table(rows, ctx.floor_seconds() if ctx else None))
    for row in rows:
        for column, cell in row.cells.items():
            if isinstance(cell, str) and cell.startswith("error"):
                print(f"{column}: {row.label}: {cell}")
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    sys.exit(main())
