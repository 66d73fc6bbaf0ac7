"""rsacct: accounting for jobs, finished and running, like sacct.

One "jobs" request for the time window and filters; rows sorted by job id.
"""
from __future__ import annotations

import argparse
import time

from rmsbatch.cli import acctsource
from rmsbatch.cli.arrayids import ARRAY_KEYS, fold_pending
from rmsbatch.cli.arguments import (
    CommandParser, add_output_options, comma_list, id_fields, job_ref_list, job_state_list,
)
from rmsbatch.cli.jobfields import SACCT_DEFAULT, sacct_format_help, sacct_layout
from rmsbatch.cli.layout import FormatError, render_json
from rmsbatch.cli.common import emit, exit_with

PROG = "rsacct"

EXAMPLES = """
  rsacct                          your jobs since midnight
  rsacct -j 42 -o JobID,State,Elapsed,MaxRSS,NodeList
  rsacct -S 2024-05-01 -E now -s FAILED,TIMEOUT
  rsacct -S now-2hours -a         every user's jobs of the last two hours
  rsacct -P -n -o JobID,ExitCode  machine-readable: "42|0:0"
  rsacct -o JobID,JobName%30      a fixed width (longer values end in "+")
  rsacct -o JobID,AllocGPUs,GPUUtil,GPUIdle,IdleGPUHours
                                  how long each job's GPUs sat idle, and the GPU-hours
  rsacct -e                       list the fields
"""

TIME_FORMS = "YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS], now, or now-N{minutes,hours,days}"

_UNITS = {
    "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "week": 604800, "weeks": 604800,
}

def parse_when(text: str, now: float | None = None) -> float:
    """A -S/-E value -> epoch seconds (local time); ValueError names the accepted forms."""
    now = time.time() if now is None else now
    value = text.strip()
    lowered = value.lower()
    if lowered.startswith("now"):
        rest = lowered[3:]
        if not rest:
            return now
        sign = rest[0]
        digits = rest[1:]
        number = ""
        while digits and digits[0].isdigit():
            number, digits = number + digits[0], digits[1:]
        if sign in "+-" and number and digits in _UNITS:
            delta = int(number) * _UNITS[digits]
            return now - delta if sign == "-" else now + delta
    else:
        for pattern in ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"):
            try:
                parsed = time.strptime(value, pattern)
            except ValueError:
                continue
            return time.mktime(parsed)
    raise ValueError(f"invalid time {text!r}: use {TIME_FORMS}")


def start_of_day(now: float) -> float:
    local = time.localtime(now)
    return time.mktime((local.tm_year, local.tm_mon, local.tm_mday, 0, 0, 0, 0, 0, -1))


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROG, examples=EXAMPLES,
        description="Show accounting data for jobs, running and finished (like sacct).\n"
                    "Without -j or -S: jobs since 00:00 today.")
    sel = parser.add_argument_group("which jobs")
    sel.add_argument("-j", "--jobs", dest="ids", action="extend", type=job_ref_list,
                     metavar="ID[,...]", help="these jobs (no time window unless -S is given); "
                                              "an array's id: all its tasks; ID_TASK: one task")
    sel.add_argument("-u", "--user", dest="users", action="extend", type=comma_list,
                     metavar="USER[,...]", help="jobs of these users")
    sel.add_argument("-a", "--allusers", action="store_true", help="jobs of every user")
    sel.add_argument("-A", "--accounts", dest="accounts", action="extend",
                     type=comma_list, metavar="ACCOUNT[,...]")
    sel.add_argument("-r", "--partition", dest="partitions", action="extend",
                     type=comma_list, metavar="PARTITION[,...]")
    sel.add_argument("-s", "--state", dest="states", action="extend", type=job_state_list,
                     metavar="STATE[,...]", help="jobs in these states (COMPLETED/CD, FAILED/F, ...)")
    sel.add_argument("-q", "--qos", dest="qos", action="extend", type=comma_list,
                     metavar="QOS[,...]", help="jobs of these QoS levels")
    sel.add_argument("-N", "--nodelist", dest="nodes", action="extend", type=comma_list,
                     metavar="NODES", help="jobs that ran on any of these nodes (gpu[01-04])")
    sel.add_argument("--name", dest="names", action="extend", type=comma_list,
                     metavar="NAME[,...]", help="jobs with these names")
    sel.add_argument("-S", "--starttime", metavar="TIME",
                     help=f"jobs in the system after this time: {TIME_FORMS}")
    sel.add_argument("-E", "--endtime", metavar="TIME", help="jobs submitted before this time")
    sel.add_argument("-X", "--allocations", action="store_true",
                     help="jobs only, without the lines of their steps (ID.batch, ID.0, ...)")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--format", metavar="FIELDS",
                     help=f"comma-separated fields, any case, NAME%%WIDTH for a fixed width "
                          f"(default {SACCT_DEFAULT})")
    out.add_argument("-e", "--helpformat", action="store_true", help="list the fields")
    add_output_options(out, noheader_flags=("-n", "--noheader"))
    style = out.add_mutually_exclusive_group()
    style.add_argument("-P", "--parsable2", action="store_true",
                       help="'|'-separated fields, no trailing '|'")
    style.add_argument("-p", "--parsable", action="store_true",
                       help="'|'-separated fields with a trailing '|'")
    style.add_argument("--csv", action="store_true",
                       help="comma-separated values with a header (RFC 4180 quoting)")
    parser.add_argument("--archive", metavar="FILE",
                        help="read an archive file written by retention instead of the "
                             "controller (any SQLite tool opens it too)")
    return parser


def parse_args(argv: list[str], now: float | None = None) -> argparse.Namespace:
    """Parse and check; also turns -S/-E into epoch seconds (start_after, end_before)."""
    now = time.time() if now is None else now
    parser = build_parser()
    args = parser.parse_args(argv)
    args.start_after = args.end_before = None
    try:
        if args.starttime:
            args.start_after = parse_when(args.starttime, now)
        elif not args.ids:
            args.start_after = start_of_day(now)
    except ValueError as exc:
        parser.error(f"argument -S/--starttime: {exc}")
    try:
        if args.endtime:
            args.end_before = parse_when(args.endtime, now)
    except ValueError as exc:
        parser.error(f"argument -E/--endtime: {exc}")
    if args.states and "all" in args.states:
        args.states = None
    args.layout = None
    if not args.json and not args.helpformat:
        try:
            args.layout = sacct_layout(args.format)
        except FormatError as exc:
            parser.error(f"argument -o/--format: {exc}")
    return args


def request(args: argparse.Namespace) -> dict:
    fields: dict = {}
    for key in ("users", "accounts", "partitions", "states", "names", "qos", "nodes"):
        value = getattr(args, key)
        if value:
            fields[key] = value
    fields.update(id_fields(args.ids))
    if args.start_after is not None:
        fields["start_after"] = args.start_after
    if args.end_before is not None:
        fields["end_before"] = args.end_before
    fields["all_users"] = bool(args.allusers)
    return fields


def step_rows(job: dict, steps: list[dict]) -> list[dict]:
    """The lines under a job that ran steps (rrun), as sacct: ID.batch, the batch
    script on the first node with the job's own usage, then ID.0, ID.1, ..."""
    if not steps:
        return []
    from rmsbatch.core.hostlist import expand
    nodelist = job.get("nodelist") or ""
    first = expand(nodelist)[0] if nodelist else ""
    batch = {**job, "id": f"{job['id']}.batch", "name": "batch", "nodelist": first,
             "nodes": 1}
    rows = [batch]
    for st in steps:
        rows.append({**job, "id": f"{job['id']}.{st['step_id']}", "name": st["name"],
                     "state": st["state"], "start_time": st["start_time"],
                     "end_time": st["end_time"], "exit_code": st["exit_code"],
                     "exit_signal": st["exit_signal"], "nodelist": st["nodelist"],
                     "ntasks": st["ntasks"], "max_rss_kb": st["max_rss_kb"],
                     "total_cpu_s": st["total_cpu_s"], "reason": "None", "end_reason": "",
                     "gpu_util": None, "gpu_mem_peak_mb": None, "gpu_energy_j": None,
                     "gpu_idle_s": None,
                     "nodes": len(expand(st["nodelist"])) if st["nodelist"] else 0})
    return rows


def render(records: list[dict], args: argparse.Namespace, now: float | None = None,
           steps: dict[int, list[dict]] | None = None) -> str:
    records = sorted(records, key=lambda job: job.get("id") or 0)
    if steps:
        if args.json:
            records = [{**job, "steps": steps.get(job.get("id"), [])} for job in records]
        else:
            records = [row for job in records
                       for row in [job, *step_rows(job, steps.get(job.get("id"), []))]]
    if args.json:
        return render_json("jobs", records)
    layout = getattr(args, "layout", None) or sacct_layout(args.format)
    records = fold_pending(records)     # array tasks as 12_7, pending ones as 12_[1-9]
    header = not args.noheader
    if getattr(args, "csv", False):
        return _csv(layout.parsable(records, now, header=header, trailing=False))
    if args.parsable2 or args.parsable:
        return layout.parsable(records, now, header=header, trailing=args.parsable)
    return layout.render(records, now, header=header)


def _csv(parsable: str) -> str:
    """sacct's |-separated lines as CSV: the fields never hold a '|' of their own
    (names and paths with one are cut there by sacct too), so the split is exact."""
    import csv
    import io
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for line in parsable.splitlines():
        writer.writerow(line.split("|"))
    return out.getvalue().rstrip("\n")


def body(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        import importlib
        return importlib.import_module(SUBCOMMANDS[argv[0]]).body(argv[1:])
    args = parse_args(argv)
    if args.helpformat:
        print(sacct_format_help())
        return 0
    fields = request(args)
    if _fast(args):
        sep = "|"
        lines = acctsource.fast_lines(lambda: acctsource.open_source(args.archive),
                                      [c.name for c in args.layout.columns], sep,
                                      args.parsable, **{k: v for k, v in fields.items()
                                                       if k != "all_users" or v})
        if lines is not None:
            if not args.noheader:
                end = sep if args.parsable else ""
                lines.insert(0, sep.join(c.header for c in args.layout.columns) + end)
            return emit("\n".join(lines))
    # only the columns the layout shows: listings run to a million records
    if args.json:
        from rmsbatch.ctld.records import PROJECTABLE
        wanted = set(PROJECTABLE)
    else:
        wanted = set(args.layout.reads()) | set(ARRAY_KEYS)
    fields["fields"] = sorted(wanted | {"id"})
    with acctsource.open_source(args.archive) as conn:
        records = acctsource.job_records(conn, **fields)
        steps: dict[int, list[dict]] = {}
        if not args.allocations and records:
            steps = acctsource.steps_of(conn, [r["id"] for r in records])
    return emit(render(records, args, steps=steps))


def _fast(args) -> bool:
    """-X -P/-p of fields SQLite can write (rmsbatch.acct.lines): a million lines in
    seconds. Widths are ignored by parsable output either way."""
    if not args.allocations or not (args.parsable2 or args.parsable) or args.json \
            or args.csv or args.nodes:
        return False
    from rmsbatch.acct import lines
    return lines.supported([c.name for c in args.layout.columns])


# `rsacct report ...`, `rsacct audit ...`: modules of their own, loaded when used
SUBCOMMANDS = {"report": "rmsbatch.cli.acctreport", "audit": "rmsbatch.cli.acctaudit"}


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
