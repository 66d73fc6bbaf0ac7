"""rsacct audit: the requests that changed something, who sent them, from where, and
what came of them (rmsbatch.ctld.audit). Operators and admins read everyone's; other
users their own."""
from __future__ import annotations

import json
import time

from rmsbatch.cli import acctsource
from rmsbatch.cli.arguments import CommandParser, comma_list
from rmsbatch.cli.common import UsageError, emit

PROG = "rsacct audit"

EXAMPLES = """
  rsacct audit                         your requests since midnight
  rsacct audit -a -S now-7days --op drain,resume,reconfigure
  rsacct audit -a --failed             refused requests (permission denied, bad input)
  rsacct audit -a --target 'node gpu003'
  rsacct audit -a -P                   '|'-separated, for scripts
"""

HEADERS = ("Time", "User", "Origin", "Op", "Target", "Result")


def build_parser() -> CommandParser:
    from rmsbatch.cli.rsacct import TIME_FORMS
    parser = CommandParser(prog=PROG, examples=EXAMPLES,
                           description="Show the audit trail of requests that change state.")
    parser.add_argument("-S", "--starttime", metavar="TIME",
                        help=f"since (default: 00:00 today): {TIME_FORMS}")
    parser.add_argument("-E", "--endtime", metavar="TIME", help="until")
    parser.add_argument("-u", "--user", dest="users", action="extend", type=comma_list,
                        metavar="USER[,...]")
    parser.add_argument("-a", "--allusers", action="store_true", help="every user's requests")
    parser.add_argument("--op", dest="ops", action="extend", type=comma_list,
                        metavar="OP[,...]", help="submit, cancel, hold, release, requeue, "
                        "update_job, drain, resume, reconfigure, *_reservation")
    parser.add_argument("--target", metavar="WHAT", help="e.g. 'job 42', 'node gpu003'")
    parser.add_argument("--failed", action="store_true", help="refused requests only")
    parser.add_argument("-n", "--noheader", action="store_true")
    style = parser.add_mutually_exclusive_group()
    style.add_argument("-P", "--parsable2", action="store_true")
    style.add_argument("--json", action="store_true")
    parser.add_argument("--archive", metavar="FILE", help="read an archive file")
    return parser


def body(argv: list[str]) -> int:
    from rmsbatch.cli.rsacct import parse_when, start_of_day
    args = build_parser().parse_args(argv)
    now = time.time()
    try:
        start = parse_when(args.starttime, now) if args.starttime else start_of_day(now)
        end = parse_when(args.endtime, now) if args.endtime else None
    except ValueError as exc:
        raise UsageError(f"-S/-E: {exc}") from None
    fields = {"start": start, "end": end, "all_users": args.allusers, "failed": args.failed}
    for key in ("users", "ops", "target"):
        if getattr(args, key):
            fields[key] = getattr(args, key)
    with acctsource.open_source(args.archive) as conn:
        columns, rows = acctsource.pages(conn, "acct_audit", **fields)
    records = [dict(zip(columns, r)) for r in rows]
    if args.json:
        return emit(json.dumps({"audit": records}, indent=1))
    lines = [_line(r) for r in records]
    if args.parsable2:
        out = ([] if args.noheader else ["|".join(HEADERS)]) + ["|".join(c) for c in lines]
        return emit("\n".join(out))
    table = ([] if args.noheader else [list(HEADERS)]) + lines
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS) - 1)] if table else []
    return emit("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1]
                          for r in table).rstrip())


def _line(r: dict) -> list[str]:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(r["time"]))
    result = "ok" if r["ok"] else f"refused: {r['result']}"
    if r["ok"] and r["result"] not in ("", "{}"):
        result = f"ok {r['result']}"
    return [stamp, r["user"], r["origin"], r["op"], r["target"] or "-",
            result.replace("\n", " ")]
