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

from tests.bench import figures, report, scale, util  # noqa: E402
from tests.bench.figures import Context, Sizes  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
BUSY = 0.25          # fraction of all CPUs busy while the harness idles: someone else is working

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


def wait_for_calm(what: str, processes: util.Processes) -> dict:
    """How busy the machine is while we idle, split into our daemons and everyone else;
    waits up to a minute for someone else's work to end."""
    def sample():
        total, ours = util.cpu_busy(1.0, processes.pids())
        return {"cpu_busy": total, "cpu_busy_ours": ours, "cpu_busy_others": total - ours}
    busy = sample()
    deadline = time.monotonic() + 60
    while busy["cpu_busy_others"] > BUSY and time.monotonic() < deadline:
        util.log(f"WARNING: {busy['cpu_busy_others']:.0%} of the CPUs busy with someone "
                 f"else's work before {what!r}: waiting")
        time.sleep(4)
        busy = sample()
    if busy["cpu_busy_ours"] > BUSY:
        util.log(f"note: our own daemons use {busy['cpu_busy_ours']:.0%} of the CPUs "
                 f"while idle, before {what!r}")
    if busy["cpu_busy_others"] > BUSY:
        util.log(f"WARNING: {what!r} is measured on a busy machine "
                 f"({busy['cpu_busy_others']:.0%} busy with other work)")
    return busy


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    load = util.loadavg()
    notes: list[str] = []
    util.log(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    busy, _ = util.cpu_busy(2.0)
    if busy > BUSY or load[0] > 0.5 * (os.cpu_count() or 1):
        notes.append(f"machine busy at the start: load {load[0]:.2f}, {busy:.0%} CPU busy")
        util.log(f"WARNING: {notes[-1]}: figures will be disturbed")

    def on_term(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)

    root = tempfile.mkdtemp(prefix="rms-bench-")
    processes = util.Processes()
    rms = slurm = None
    steps = []
    ctx = None
    started = time.strftime("%Y%m%dT%H%M%S")
    try:
        from tests.bench.rms import Rms
        rms = Rms(os.path.join(root, "rms"), processes)
        rms.start()
        if args.no_slurm:
            notes.append("Slurm not measured (--no-slurm)")
        elif os.geteuid() != 0:
            notes.append("Slurm not measured: the harness needs root to install and run it")
        else:
            slurm, why = start_slurm(root, processes)
            if why:
                notes.append(f"Slurm not measured: {why}")
        for n in notes:
            util.log(n)
        ctx = Context(rms, slurm, sizes)
        figures.python_floor(ctx)
        for name, what, step in PLAN:
            if args.only and name != args.only:
                continue
            calm = wait_for_calm(what, processes)
            began = time.monotonic()
            util.log(f"--- {what}")
            try:
                step(ctx)
            except Exception as exc:  # noqa: BLE001 - the figure's own rows carry errors
                util.log(f"{what}: FAILED: {exc}")
                notes.append(f"{what}: failed: {exc}")
            steps.append({"step": what, **calm, "loadavg_before": util.loadavg(),
                          "seconds": time.monotonic() - began})
    except KeyboardInterrupt:
        notes.append("interrupted")
        util.log("interrupted: stopping the daemons")
    finally:
        for system in (slurm, rms):
            if system is not None:
                try:
                    system.stop()
                except Exception as exc:  # noqa: BLE001
                    util.log(f"stopping {system.label}: {exc}")
        processes.stop_all()

    rows = ctx.rows if ctx else []
    floor = ctx.floor.get("python3 -c pass") if ctx else None
    errors = any(isinstance(c, str) and c.startswith("error") for r in rows for c in r.cells.values())
    if args.keep or errors:
        notes.append(f"logs and state kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    print_report(rows, ctx, load, notes, slurm)
    document = {
        "started": started, "args": vars(args), "host": platform.node(),
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "rmsbatch_git": git_revision(),
        "slurm_version": slurm.version() if slurm and shutil.which("sbatch") else None,
        "loadavg_at_start": load, "cpu_busy_at_start": busy, "sizes": vars(sizes),
        "floor": {k: m.to_json() for k, m in (ctx.floor.items() if ctx else [])},
        "steps": steps, "notes": notes,
        "rows": [r.to_json(floor.median if floor else None) for r in rows],
    }
    path = os.path.join(RESULTS, f"{started}.json")
    report.write_json(path, document)
    print(f"\nresults: {path}")
    return 1 if "interrupted" in notes else 0


def print_report(rows, ctx, load, notes, slurm) -> None:
    print()
    print(f"rmsbatch vs Slurm on {platform.node()} ({os.cpu_count()} CPUs), "
          f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if slurm is not None:
        print(f"Slurm: {slurm.version()}; 'Slurm bsd0' = SchedulerParameters=batch_sched_delay=0;"
              " ratios use Slurm's best setting")
    if ctx and ctx.floor:
        print("floor: " + "; ".join(f"{k}: {m.median * 1e3:.1f} ms ({m.low * 1e3:.1f}–"
                                    f"{m.high * 1e3:.1f})" for k, m in ctx.floor.items()))
    print("cells: median (min–max) unless marked p90/p99\n")
    floor = ctx.floor.get("python3 -c pass") if ctx else None
    print(report.table(rows, floor.median if floor else None))
    for n in notes:
        print(f"note: {n}")


if __name__ == "__main__":
    sys.exit(main())
