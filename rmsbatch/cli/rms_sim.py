"""rms-sim: replay a workload trace through the scheduler core with a virtual clock.

    rms-sim lublin_256.swf --jobs 0:1000 --policy fifo
    rms-sim philly.csv --nodes 64 --gpus-per-node 8 --policy default --json out.json

Reads the trace (rmsbatch.sim.traces), replays it (rmsbatch.sim.replay) and prints
the figures (rmsbatch.sim.metrics); `--json` writes them too.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from rmsbatch.cli.arguments import CommandParser
from rmsbatch.cli.common import CommandError, UsageError, exit_with

PROG = "rms-sim"
POLICIES = ("fifo", "fifo-backfill", "default")

EXAMPLES = """
  rms-sim lublin_256.swf                         the whole trace, FIFO with backfill
  rms-sim lublin_256.swf --jobs 0:1000 --policy fifo
                                                 its first 1,000 jobs, strict FIFO
  rms-sim HPC2N-2002-2.2-cln.swf.gz --estimate actual
                                                 backfill with perfect run-time estimates
  rms-sim philly.csv --nodes 64 --gpus-per-node 8 --json philly.json
  rms-sim trace.swf --config /etc/rmsbatch       the policy and shares of a configuration
"""


def _window(text: str) -> tuple[int, int | None]:
    start, sep, count = text.partition(":")
    try:
        first = int(start) if start else 0
        many = int(count) if count else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected START:COUNT, e.g. 0:1000 (COUNT may be left out)") from None
    if first < 0 or (many is not None and many < 1) or not sep and not start:
        raise argparse.ArgumentTypeError(f"{text!r}: START must be 0 or more and COUNT at "
                                         "least 1")
    return first, many


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return value


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROG, examples=EXAMPLES,
        description="Replay a workload trace (SWF, Philly, ITP, Alibaba openb) through "
                    "rmsbatch's scheduler with a virtual clock, and report waits, "
                    "slowdowns and utilization.")
    parser.add_argument("trace", help="the trace file (.swf, .swf.gz, .csv)")
    parser.add_argument("--format", dest="fmt", help="the trace's format when its name and "
                        "header do not tell (swf, philly, itp, openb)")
    parser.add_argument("--jobs", type=_window, metavar="START:COUNT",
                        help="replay COUNT jobs from the START-th (0-based), on an empty "
                             "machine from the first one's submit time")
    shape = parser.add_argument_group("the simulated cluster (default: from the SWF header)")
    shape.add_argument("--nodes", type=_positive, help="number of nodes")
    shape.add_argument("--cpus-per-node", type=_positive, help="processors per node")
    shape.add_argument("--gpus-per-node", type=_positive, help="GPUs per node (GPU traces: 8)")
    pol = parser.add_argument_group("policy")
    pol.add_argument("--policy", choices=POLICIES,
                     help="fifo: strict submit order; fifo-backfill: submit order with EASY "
                          "backfill; default: rmsctld's (priority order, backfill). "
                          "Default: fifo-backfill, or the configuration's with --config")
    pol.add_argument("--config", metavar="DIR",
                     help="take the policy ([scheduler]) and tenants' shares from the "
                          "configuration in DIR (cluster.toml, tenants.toml)")
    pol.add_argument("--estimate", choices=("requested", "actual"), default="requested",
                     help="what backfill takes for a job's run time: its requested time "
                          "(where the trace has none, its actual one) or its actual run time")
    pol.add_argument("--depth", type=_positive,
                     help="waiting jobs each pass plans for (default 500)")
    out = parser.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="also write the figures as JSON to FILE "
                     "('-': print JSON instead of the table)")
    out.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a progress bar on standard error (default: when it is a terminal)")
    return parser


def _shape(args, trace):
    from rmsbatch.sim.replay import Shape
    gpu_trace = any(j.gpus for j in trace.jobs)
    if gpu_trace:
        nodes = args.nodes or 64
        gpus = args.gpus_per_node or 8
        cpus = args.cpus_per_node or 64
        return Shape(nodes, cpus, gpus)
    nodes = args.nodes or trace.max_nodes or trace.max_procs
    if not nodes:
        raise UsageError(f"{args.trace}: the trace's header gives neither MaxNodes nor "
                         "MaxProcs: give --nodes (and --cpus-per-node)")
    if args.cpus_per_node:
        cpus = args.cpus_per_node
    elif trace.max_procs and trace.max_nodes and not args.nodes:
        cpus = max(1, trace.max_procs // trace.max_nodes)
    else:
        cpus = 1
    return Shape(nodes, cpus, args.gpus_per_node or 0)


def _policy(args):
    from rmsbatch.sched.plan import Policy
    name, shares, config = args.policy, None, None
    if args.config:
        from rmsbatch.config.load import ConfigError, load
        try:
            config = load(args.config)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        sc = config.cluster.scheduler
        name = name or ("default" if sc.backfill else "fifo")
        shares = {a.name: a.shares for a in config.tenants.accounts}
    name = name or "fifo-backfill"
    depth = args.depth or (config.cluster.scheduler.backfill_depth if config else 500)
    return name, Policy(backfill=name != "fifo", depth=depth, estimates=False,
                        reasons=False), shares, config


def _priority(name, shape, config):
    """rmsctld's priority for `--policy default`: its weights, half-life, billing and
    tenant tree when a configuration is given."""
    from rmsbatch.sim.priorities import ReplayPriority
    if config is None:
        return ReplayPriority(shape.cpus, shape.gpus)
    from rmsbatch.sched import fairshare, priority
    p = config.cluster.priority
    return ReplayPriority(shape.cpus, shape.gpus, fairshare.accounts_of(config.tenants),
                          priority.Weights.of(p), float(p.half_life), p.billing_cpu,
                          p.billing_gpu)


def body(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from rmsbatch.sim import traces
    from rmsbatch.sim.metrics import summarize
    from rmsbatch.sim.replay import Replay, ReplayError
    try:
        trace = traces.read_trace(args.trace, args.fmt)
    except traces.TraceError as exc:
        raise CommandError(str(exc)) from None
    whole = len(trace.jobs)
    if args.jobs:
        start, count = args.jobs
        if start >= whole:
            raise UsageError(f"--jobs {start}:{count or ''}: the trace has {whole} jobs "
                             f"(numbered from 0)")
        trace = traces.window(trace, start, count)
    if not trace.jobs:
        raise CommandError(f"{args.trace}: no job to replay ({_skipped(trace)})")
    shape = _shape(args, trace)
    name, policy, shares, config = _policy(args)
    replay = Replay(trace.jobs, shape, policy, args.estimate,
                    _priority(name, shape, config) if name == "default" else None)
    show = sys.stderr.isatty() if args.progress is None else args.progress
    began = time.process_time()
    try:
        if show:
            outcomes = _with_progress(replay, len(trace.jobs))
        else:
            outcomes = replay.run()
    except ReplayError as exc:
        raise CommandError(f"{args.trace}: {exc}") from None
    figures = summarize(outcomes, shape, shares)
    result = {
        "trace": trace.name, "format": trace.format, "jobs_in_trace": whole,
        "window": {"start": args.jobs[0] if args.jobs else 0, "count": len(trace.jobs)},
        "skipped": trace.skipped,
        "cluster": {"nodes": shape.nodes, "cpus_per_node": shape.cpus_per_node,
                    "gpus_per_node": shape.gpus_per_node},
        "policy": name, "estimate": args.estimate, "backfill_depth": policy.depth,
        **figures,
    }
    replay_s = time.process_time() - began
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
            fh.write("\n")
    print(render(result, replay.passes, replay_s))
    return 0


def _skipped(trace) -> str:
    if not trace.skipped:
        return "it is empty"
    return "skipped: " + ", ".join(f"{n} {why}" for why, n in trace.skipped.items())


def _with_progress(replay, total: int):
    from rich.progress import Progress
    with Progress(transient=True, console=None) as bar:
        task = bar.add_task("replaying", total=total)
        return replay.run(progress=lambda done, _: bar.update(task, completed=done))


def render(r: dict, passes: int, cpu_s: float) -> str:
    c = r["cluster"]
    gpus = f" x {c['gpus_per_node']} GPUs" if c["gpus_per_node"] else ""
    lines = [
        f"trace {r['trace']} ({r['format']}): jobs {r['window']['start']}.."
        f"{r['window']['start'] + r['window']['count'] - 1} of {r['jobs_in_trace']}",
        f"cluster {c['nodes']} nodes x {c['cpus_per_node']} CPUs{gpus}; policy {r['policy']}, "
        f"run-time estimate {r['estimate']}",
        "",
        f"  jobs                    {r['jobs']}",
        f"  mean wait               {r['mean_wait_s']:.1f} s",
        f"  p95 wait                {r['p95_wait_s']:.1f} s",
        f"  mean bounded slowdown   {r['mean_bounded_slowdown']:.3f}",
        f"  mean JCT                {r['mean_jct_s']:.1f} s",
        f"  utilization             {100 * r['utilization']:.2f} %",
        f"  span                    {r['span_s']:.0f} s",
        "",
        "  tenant                 jobs   usage   share   mean wait",
    ]
    for name, t in r["tenants"].items():
        share = f"{100 * t['share']:5.1f}%" if "share" in t else "    -"
        lines.append(f"  {name[:20]:<20} {t['jobs']:>6}  {100 * t['usage_share']:5.1f}%  "
                     f"{share}  {t['mean_wait_s']:>9.1f} s")
    lines.append("")
    lines.append(f"{passes} scheduling passes in {cpu_s:.1f} s of CPU")
    return "\n".join(lines)


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
