"""rcancel: cancel jobs, or send them a signal, like scancel.

One "cancel" request; silent on success, `rcancel: error: ...` per failure.
"""
from __future__ import annotations

import argparse
import signal
import sys

from rmsbatch.net import client
from rmsbatch.cli.arguments import (
    CommandParser, comma_list, id_fields, job_ref_list, job_state_list,
)
from rmsbatch.cli.common import exit_with, job_filters

PROG = "rcancel"

EXAMPLES = """
  rcancel 42                    cancel job 42
  rcancel 42 43,44              cancel three jobs
  rcancel 12                    cancel array 12, all its tasks
  rcancel 12_7 12_[1-3]         cancel tasks 7 and 1 to 3 of array 12
  rcancel --me -t PD            cancel all your pending jobs
  rcancel -u $USER -n sweep     cancel your jobs named "sweep"
  rcancel -s USR1 42            send SIGUSR1 to job 42's processes but not to its
                                batch shell: the job keeps running
  rcancel -b -s USR1 42         send SIGUSR1 to the batch shell only (it may trap it)
  rcancel -f -s TERM 42         send SIGTERM to the batch shell and all its processes
"""


def parse_signal(text: str) -> str:
    """`USR1`, `SIGUSR1`, `usr1` or `10` -> "SIGUSR1"."""
    key = text.strip().upper()
    try:
        if key.isdigit():
            return signal.Signals(int(key)).name
        return signal.Signals[key if key.startswith("SIG") else "SIG" + key].name
    except (KeyError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown signal {text!r}: use a name such as USR1, TERM or KILL, or a number") from None


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROG, examples=EXAMPLES,
        description="Cancel jobs, or signal them (like scancel).\n"
                    "Give job ids, filters, or both: filters narrow down the ids, and\n"
                    "alone select every job they match.")
    parser.add_argument("job_ids", nargs="*", type=job_ref_list, metavar="JOBID",
                        help="job ids (space- or comma-separated); an array's id for the "
                             "whole array, ID_TASK or ID_[TASKS] for some of its tasks")
    sel = parser.add_argument_group("filters (comma-separated lists)")
    sel.add_argument("-u", "--user", dest="users", action="extend", type=comma_list,
                     metavar="USER[,...]", help="jobs of these users")
    sel.add_argument("--me", action="store_true", help="your own jobs")
    sel.add_argument("-A", "--account", dest="accounts", action="extend", type=comma_list,
                     metavar="ACCOUNT[,...]")
    sel.add_argument("-p", "--partition", dest="partitions", action="extend",
                     type=comma_list, metavar="PARTITION[,...]")
    sel.add_argument("-t", "--state", "--states", dest="states", action="extend",
                     type=job_state_list, metavar="STATE[,...]",
                     help="jobs in these states (PENDING/PD, RUNNING/R, ...)")
    sel.add_argument("-n", "--name", "--jobname", dest="names", action="extend",
                     type=comma_list, metavar="NAME[,...]")
    act = parser.add_argument_group("what to do")
    act.add_argument("-s", "--signal", type=parse_signal, metavar="SIGNAL",
                     help="send this signal (name or number) instead of cancelling; it goes "
                          "to the job's processes but not to its batch shell, unless -b or -f")
    who = act.add_mutually_exclusive_group()
    who.add_argument("-b", "--batch", action="store_true",
                     help="with --signal: signal the batch shell only")
    who.add_argument("-f", "--full", action="store_true",
                     help="with --signal: signal the batch shell and all the job's processes")
    talk = act.add_mutually_exclusive_group()
    talk.add_argument("-q", "--quiet", action="store_true",
                      help="do not print errors (the exit status still reports them)")
    talk.add_argument("-v", "--verbose", action="store_true",
                      help="say which jobs were cancelled or signalled")
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.ids = [i for group in args.job_ids for i in group]
    if args.states and "all" in args.states:
        args.states = None
    if not (args.ids or args.users or args.me or args.accounts or args.partitions
            or args.states or args.names):
        parser.error("name the jobs to cancel: job ids, or filters such as --me or -u USER")
    if (args.batch or args.full) and not args.signal:
        parser.error(f"{'-b/--batch' if args.batch else '-f/--full'} says who gets a signal: "
                     "give the signal with -s/--signal")
    return args


def request(args: argparse.Namespace) -> dict:
    fields = job_filters(args, ("accounts", "partitions", "states", "names"))
    fields.update(id_fields(args.ids))
    if args.signal:
        fields["signal"] = args.signal
        fields["scope"] = "batch" if args.batch else "full" if args.full else "children"
    return fields


def body(argv: list[str]) -> int:
    args = parse_args(argv)
    reply = client.call("cancel", **request(args))
    if args.verbose:
        for job_id in reply.get("cancelled") or []:
            print(f"{PROG}: cancelled job {job_id}", file=sys.stderr)
        for job_id in reply.get("signalled") or []:
            print(f"{PROG}: sent {args.signal} to job {job_id}", file=sys.stderr)
    errors = reply.get("errors") or []
    if not args.quiet:
        for text in errors:
            print(f"{PROG}: error: {text}", file=sys.stderr)
    return 1 if errors else 0


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
