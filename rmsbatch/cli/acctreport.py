"""rsacct report: usage per tenant, user, GPU type, partition or QoS over a window.

GPU-hours, CPU-hours and billing of the jobs that ran in the window (only their part
inside it), mean and 95th-percentile wait of those that started in it, GPU efficiency
and idle GPU-hours; budgets and their warnings beside the accounts. Tables for people,
CSV/JSON/Markdown/HTML for chargeback, a chart of GPU-hours per tenant per day in the
terminal or in a file, and a monthly statement per tenant.
"""
from __future__ import annotations

import argparse
import sys
import time

from rmsbatch.cli import acctsource
from rmsbatch.cli.arguments import CommandParser, comma_list
from rmsbatch.cli.common import UsageError, emit

PROG = "rsacct report"
KEYS = ("tenant", "account", "user", "gpu_type", "partition", "qos", "day", "month")
FORMATS = ("table", "plain", "csv", "json", "markdown", "html")

EXAMPLES = """
  rsacct report                        this month, per tenant (account and its parents)
  rsacct report --by tenant,user -S now-7days
  rsacct report --month 2026-11 --csv > 2026-11.csv      chargeback for November
  rsacct report --by gpu_type,partition --format markdown
  rsacct report --chart                GPU-hours per tenant per day, in the terminal
  rsacct report --plot usage.svg       the same chart as a file (.svg, or .png with matplotlib)
  rsacct report --statement vision --month 2026-11       a statement to send to a tenant
  rsacct report --archive /var/spool/rmsbatch/archive/rmsbatch-2025-01.db
"""


def build_parser() -> CommandParser:
    from rmsbatch.cli.rsacct import TIME_FORMS
    parser = CommandParser(
        prog=PROG, examples=EXAMPLES,
        description="Sum accounting records per tenant, user, GPU type, partition or QoS "
                    "over a window (default: this month so far).")
    when = parser.add_argument_group("window")
    when.add_argument("-S", "--starttime", metavar="TIME", help=f"from: {TIME_FORMS}")
    when.add_argument("-E", "--endtime", metavar="TIME", help="until (default now)")
    when.add_argument("--month", metavar="YYYY-MM", help="that calendar month")
    what = parser.add_argument_group("what")
    what.add_argument("-g", "--by", type=comma_list, metavar="KEY[,...]",
                      help=f"group by these, in order: {', '.join(KEYS)} (default tenant)")
    what.add_argument("-u", "--user", dest="users", action="extend", type=comma_list,
                      metavar="USER[,...]")
    what.add_argument("-A", "--accounts", dest="accounts", action="extend", type=comma_list,
                      metavar="ACCOUNT[,...]")
    what.add_argument("-r", "--partition", dest="partitions", action="extend",
                      type=comma_list, metavar="PARTITION[,...]")
    what.add_argument("-q", "--qos", dest="qos", action="extend", type=comma_list,
                      metavar="QOS[,...]")
    out = parser.add_argument_group("output")
    style = out.add_mutually_exclusive_group()
    style.add_argument("--format", choices=FORMATS, help="table on a terminal, else plain")
    style.add_argument("--csv", action="store_const", const="csv", dest="format")
    style.add_argument("--json", action="store_const", const="json", dest="format")
    style.add_argument("--chart", action="store_true",
                       help="GPU-hours per tenant per day as a bar chart")
    style.add_argument("--statement", metavar="ACCOUNT",
                       help="a usage statement for this account, ready to send")
    out.add_argument("--plot", metavar="FILE", help="write the per-day chart to FILE "
                                                    "(.svg; .png needs matplotlib)")
    out.add_argument("--archive", metavar="FILE", help="report from an archive file")
    return parser


def window(args: argparse.Namespace, now: float) -> tuple[float, float, str]:
    from rmsbatch.cli.rsacct import parse_when
    from rmsbatch.ctld.budgets import period_bounds
    if args.month:
        try:
            year, month = (int(p) for p in args.month.split("-"))
            if not (1 <= month <= 12 and 1970 <= year <= 9999):
                raise ValueError
            start = time.mktime((year, month, 1, 0, 0, 0, 0, 0, -1))
        except (ValueError, OverflowError):
            raise UsageError(f"--month {args.month}: use YYYY-MM, e.g. 2026-11") from None
        return start, time.mktime((year, month + 1, 1, 0, 0, 0, 0, 0, -1)), args.month
    label, start, _ = period_bounds("month", now)
    try:
        if args.starttime:
            start, label = parse_when(args.starttime, now), args.starttime
        end = parse_when(args.endtime, now) if args.endtime else now
    except ValueError as exc:
        raise UsageError(f"-S/-E: {exc}") from None
    if end <= start:
        raise UsageError("the window is empty: -E must be after -S")
    return start, end, label


def _ask(conn, args, group_by, start, end) -> list[dict]:
    fields = {k: getattr(args, k) for k in ("users", "accounts", "partitions", "qos")
              if getattr(args, k)}
    return conn.call("acct_report", group_by=group_by, start=start, end=end,
                     **fields)["rows"]


def _with_budgets(conn, rows: list[dict], archive: bool) -> list[dict]:
    if archive or not rows or not any(k in rows[0] for k in ("tenant", "account")):
        return rows
    budgets = {b["account"]: b for b in conn.call("budgets")["budgets"]}
    for row in rows:
        name = (row.get("account") or row.get("tenant") or "").rsplit("/", 1)[-1]
        if name in budgets:
            b = budgets[name]
            row["budget"] = {k: b[k] for k in ("limit", "used", "unit", "period", "warn")}
    return rows


def body(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    now = time.time()
    start, end, label = window(args, now)
    group_by = args.by or ["tenant"]
    bad = [k for k in group_by if k not in KEYS]
    if bad:
        raise UsageError(f"--by {','.join(bad)}: group by {', '.join(KEYS)}")
    tty = sys.stdout.isatty()
    with acctsource.open_source(args.archive) as conn:
        if args.statement:
            return emit(_statement(conn, args, start, end, label))
        if args.chart or args.plot:
            from rmsbatch.acct import chart
            series = _ask(conn, args, ["day", "tenant"], start, end)
            for row in series:
                row["account"] = row.pop("tenant")
            if args.plot:
                chart.write(series, args.plot, title=f"GPU-hours per tenant per day, {label}")
                print(f"rsacct: chart written to {args.plot}", file=sys.stderr)
            if args.chart:
                return emit(chart.terminal(series, stream_is_tty=tty))
            if not args.format:
                return 0
        rows = _with_budgets(conn, _ask(conn, args, group_by, start, end), bool(args.archive))
    from rmsbatch.acct import render
    title = f"Usage {time.strftime('%Y-%m-%d %H:%M', time.localtime(start))} to " \
            f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(end))}"
    return emit(render.render(rows, group_by, args.format or "table", title=title,
                              stream_is_tty=tty))


def _statement(conn, args, start, end, label) -> str:
    from rmsbatch.acct import render
    account = args.statement
    args.accounts = [account]
    by_user = _ask(conn, args, ["user"], start, end)
    by_type = _ask(conn, args, ["gpu_type"], start, end)
    for row in by_type:
        row["gpu_type"] = row["gpu_type"] or "(no GPU)"
    budget = None
    if not args.archive:
        found = [b for b in conn.call("budgets", accounts=[account])["budgets"]]
        if found:
            budget = {k: found[0][k] for k in ("limit", "used", "unit", "period", "warn")}
    cluster = "cluster"
    try:
        from rmsbatch import config as configmod
        from rmsbatch.net import client
        cluster = configmod.load(client.conf_dir()).cluster.name
    except Exception:   # noqa: BLE001 - the name is a nicety on the statement
        pass
    return render.statement(account, label, by_user, budget=budget, cluster=cluster,
                            generated=time.time(), rows_by_gpu_type=by_type)
