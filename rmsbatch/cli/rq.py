"""rq: show pending and running jobs, like squeue.

One "jobs" request with the filters (the controller filters), then a table.
`build_parser`, `parse_args`, `request` and `render` need no controller.
"""
from __future__ import annotations

import sys
import time

from rmsbatch.net import client
from rmsbatch.cli import optiontypes, quickargs
from rmsbatch.cli.optiontypes import id_fields
from rmsbatch.cli.quickargs import Option
from rmsbatch.cli.arrayids import ARRAY_KEYS, fold_pending, label_tasks
from rmsbatch.cli.jobfields import JOB_ALIASES, JOB_FIELDS, job_format_help, job_layout
from rmsbatch.cli.layout import FormatError, field_layout, render_json
from rmsbatch.cli.common import emit, exit_with, job_filters

PROG = "rq"

def projection(layout) -> list[str]:
    """The record keys the layout shows (and those that name array tasks): rq asks the
    controller for just those, so a listing of 10,000 jobs travels as compact rows of
    a few fields."""
    return sorted(set(layout.reads()) | set(ARRAY_KEYS))


EXAMPLES = """
  rq                            pending and running jobs of every user
  rq --me                       your jobs
  rq -u alice,bob -p gpu        jobs of two users in partition gpu
  rq -t PD                      pending jobs and the reason each waits
  rq -t all -j 41,42            jobs 41 and 42, whatever their state
  rq -j 12 -r                   array 12, one line per task (pending ones folded without -r)
  rq -l                         adds the time limit, node count and full state
  rq --start --me               when your pending jobs should start, and why they wait
  rq -o "%.10i %.2t %.8u %j"    squeue format codes (rq -o help lists them)
  rq -o jobid,state,name:30     field names, :WIDTH fixes a width, :.WIDTH aligns right
  rq -o jobid,user,gpus,nodelist_reason,idle_since
                                jobs whose GPUs sit idle show (IdleGPU), and since when
  rq -h -o %i -u $USER          job ids only, for scripts
  rq --json | jq '.jobs[].id'
  rq --me --watch               redraw every 2 s until none of your jobs is left waiting
                                or running
  rq -j 42 -i 10                print job 42's line every 10 s while it pends or runs
  rq --priority                 each pending job's priority: age, fair-share, QoS, ...
"""


def _hostlist_arg(text: str) -> list[str]:
    import argparse
    from rmsbatch.core.hostlist import HostlistError, expand    # only for -w: not every rq
    try:
        names = expand(text)
    except HostlistError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not names:
        raise argparse.ArgumentTypeError("expected a host list such as gpu[001-004]")
    return names


def build_parser():
    from rmsbatch.cli.arguments import (
        CommandParser, add_output_options, comma_list, job_ref_list, job_state_list,
    )
    parser = CommandParser(
        prog=PROG, short_help=False, examples=EXAMPLES,
        description="Show pending and running jobs (like squeue).\n"
                    "Options take comma-separated lists; different options combine with AND.")
    sel = parser.add_argument_group("which jobs")
    sel.add_argument("-u", "--user", dest="users", action="extend", type=comma_list,
                     metavar="USER[,...]", help="jobs of these users")
    sel.add_argument("--me", action="store_true", help="your own jobs (same as -u $USER)")
    sel.add_argument("-A", "--account", dest="accounts", action="extend", type=comma_list,
                     metavar="ACCOUNT[,...]", help="jobs charged to these accounts")
    sel.add_argument("-p", "--partition", dest="partitions", action="extend",
                     type=comma_list, metavar="PARTITION[,...]",
                     help="jobs in these partitions")
    sel.add_argument("-t", "--states", dest="states", action="extend", type=job_state_list,
                     metavar="STATE[,...]",
                     help="jobs in these states, by name or code (PENDING or PD, "
                          "RUNNING or R, CD, F, CA, TO, ...); 'all' for every state. "
                          "Default: PENDING, RUNNING and COMPLETING")
    sel.add_argument("-j", "--jobs", dest="ids", action="extend", type=job_ref_list,
                     metavar="ID[,...]", help="these jobs only (an array's id: all its tasks; "
                                              "ID_TASK: one task)")
    sel.add_argument("-n", "--name", dest="names", action="extend", type=comma_list,
                     metavar="NAME[,...]", help="jobs with these names")
    sel.add_argument("-w", "--nodelist", dest="nodes", action="extend", type=_hostlist_arg,
                     metavar="HOSTLIST", help="jobs running on these nodes, e.g. gpu[001-004]")
    out = parser.add_argument_group("output")
    out.add_argument("-o", "--format", metavar="FORMAT",
                     help="squeue %%-codes ('%%.10i %%j') or field names "
                          "('jobid,name:30'); 'help' lists both")
    out.add_argument("-O", "--Format", dest="Format", metavar="FIELDS",
                     help="field names as squeue --Format: 'JobID,Name:30,State'")
    out.add_argument("-r", "--array", action="store_true",
                     help="one line per array task (by default the pending tasks of an "
                          "array share one line, 12_[5-99%%10])")
    out.add_argument("-l", "--long", action="store_true",
                     help="add TIME_LIMIT and NODES, and show STATE in full")
    out.add_argument("--start", action="store_true",
                     help="pending jobs only, with the start the scheduler expects for each "
                          "(Unknown when its plan has none) and every reason each waits for")
    out.add_argument("--priority", action="store_true",
                     help="pending jobs' priority and what makes it up (like sprio): "
                          "age, fair-share, QoS, partition, job size, nice")
    add_output_options(out)
    add_watch_options(out)
    return parser


# What `rq` lines scripts and people type most, read without argparse
# (rmsbatch.cli.quickargs); the defaults are those argparse gives.
QUICK = [
    Option(("-u", "--user"), "users", optiontypes.comma_list, extend=True),
    Option(("--me",), "me"),
    Option(("-A", "--account"), "accounts", optiontypes.comma_list, extend=True),
    Option(("-p", "--partition"), "partitions", optiontypes.comma_list, extend=True),
    Option(("-j", "--jobs"), "ids", optiontypes.job_ref_list, extend=True),
    Option(("-n", "--name"), "names", optiontypes.comma_list, extend=True),
    Option(("-o", "--format"), "format", str),
    Option(("-r", "--array"), "array"),
    Option(("-l", "--long"), "long"),
    Option(("--start",), "start"),
    Option(("-h", "--noheader"), "noheader"),
    Option(("--json",), "json"),
]
QUICK_DEFAULTS = {"users": None, "me": False, "accounts": None, "partitions": None,
                  "states": None, "ids": None, "names": None, "nodes": None, "format": None,
                  "Format": None, "array": False, "long": False, "start": False,
                  "priority": False, "noheader": False, "json": False, "watch": None}


def parse_args(argv: list[str]):
    """Parse and check the command line; usage errors raise UsageError."""
    try:
        return _checked(quickargs.read(argv, QUICK, QUICK_DEFAULTS), _unread)
    except quickargs.Unread:
        pass
    parser = build_parser()
    return _checked(parser.parse_args(argv), parser.error)


def _unread(message: str):
    raise quickargs.Unread(message)


def _checked(args, error):
    """What the options make together: the layout, or `error(message)`."""
    if args.format and args.Format:
        error("use -o/--format or -O/--Format, not both")
    if args.start and args.priority:
        error("use --start or --priority, not both")
    text = args.format or args.Format
    args.format_help = bool(text) and text.strip().lower() == "help"
    args.layout = None
    if not args.json and not args.format_help:
        try:
            if args.Format:
                args.layout = field_layout(args.Format, JOB_FIELDS, JOB_ALIASES)
            else:
                args.layout = job_layout(args.format, long=args.long, start=args.start)
        except FormatError as exc:
            error(f"argument {'-O/--Format' if args.Format else '-o/--format'}: {exc}")
    return args


def request(args) -> dict:
    """The fields of the one "jobs" request this command sends."""
    fields = job_filters(args, ("accounts", "partitions", "names", "nodes"))
    fields.update(id_fields(args.ids))
    states = args.states or (["PENDING"] if getattr(args, "start", False) else [])
    if not states:
        fields["active"] = True
    elif "all" not in states:
        fields["states"] = list(dict.fromkeys(states))
    return fields


def render(records: list[dict], args, now: float | None = None) -> str:
    """The text rq prints for these job records ("" for none and no header)."""
    if args.json:
        return render_json("jobs", records)
    layout = getattr(args, "layout", None) or job_layout(
        args.format, long=args.long, start=getattr(args, "start", False))
    return layout.render(listing(records, getattr(args, "array", False)), now,
                         header=not args.noheader)


def listing(records: list[dict], unfold: bool = False) -> list[dict]:
    """The rows of the table: array tasks as `12_7`, and unless `unfold`, the pending
    tasks of an array on one line."""
    return label_tasks(records) if unfold else fold_pending(records)


def body(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.format_help:
        print(job_format_help())
        return 0
    fields = request(args)
    if args.priority:
        from rmsbatch.cli.priorities import render_priorities
        fields = {k: v for k, v in fields.items() if k in ("ids", "users", "accounts",
                                                            "partitions", "array_tasks")}
        return emit(render_priorities(client.call("priorities", **fields), args))
    if args.layout is not None and "nodes" not in fields:
        fields["fields"] = projection(args.layout)
    if args.watch is not None:
        return watch(args, fields)
    reply = client.call("jobs", **fields)
    for line in reply.get("warnings") or ():    # budgets nearly or wholly spent
        print(f"rq: warning: {line}", file=sys.stderr)
    return emit(render(client.records(reply), args))


# -- --watch / --iterate --------------------------------------------------------------
DEFAULT_WATCH_S = 2.0
CLEAR = "\x1b[H\x1b[2J"        # cursor home, clear the screen


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:
        import argparse
        raise argparse.ArgumentTypeError(f"invalid interval {text!r}: expected seconds, "
                                         "more than 0, such as 5")
    return value


def add_watch_options(group) -> None:
    group.add_argument("--watch", nargs="?", const=DEFAULT_WATCH_S, type=_seconds,
                       metavar="SECONDS",
                       help="list again every SECONDS (default 2) until none of the jobs "
                            "listed is pending or running; redrawn in place on a terminal")
    group.add_argument("-i", "--iterate", dest="watch", type=_seconds, metavar="SECONDS",
                       help="as --watch=SECONDS (squeue's --iterate)")


def watch(args, fields: dict) -> int:
    """The listing again every interval; stops by itself once none of the jobs it lists
    is pending or running any more (an empty listing included), and quietly on Ctrl-C."""
    if "fields" in fields and "state" not in fields["fields"]:
        fields = dict(fields, fields=[*fields["fields"], "state"])   # to know when to stop
    tty = sys.stdout.isatty()
    try:
        while True:
            records = client.records(client.call("jobs", **fields))
            text = render(records, args)
            stamp = time.strftime("%a %b %d %H:%M:%S %Y")
            sys.stdout.write((CLEAR if tty else "") + stamp + "\n" + (text + "\n" if text else ""))
            if not tty:
                sys.stdout.write("\n")
            sys.stdout.flush()
            if not any(r.get("state") in ("PENDING", "RUNNING", "COMPLETING") for r in records):
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        if tty:
            sys.stdout.write("\n")
        return 0


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
