"""How accounting reports read: `rsacct report` rows rendered for people and programs.

A report is a list of row dicts: group keys (GROUP_HEADERS; an account may arrive as
`tenant`) and measures (MEASURES), any of which may be None where unknown. Account rows
may carry a `budget`: {"limit", "used", "unit": "gpu_hours"|"billing", "period", "warn"}.

`render` turns rows into one of FORMATS; `statement` writes a tenant's monthly statement.
Nothing here talks to the controller, so every output is testable from fixed rows.
rsacct is a client that must start fast: json, csv, rich and tabulate are imported only
by the formats that need them.
"""
from __future__ import annotations

import math
import sys

from rmsbatch.core.units import format_time

FORMATS = ("table", "plain", "csv", "json", "markdown", "html")

GROUP_HEADERS = {"account": "Account", "user": "User", "gpu_type": "GPUType",
                 "partition": "Partition", "qos": "QOS", "day": "Day", "month": "Month"}
# The server may call accounts by their tenant path; both name the same column.
GROUP_ALIASES = {"tenant": "account"}

# (key, header, kind): the kind decides how a value reads for people and for programs.
MEASURES = (
    ("jobs", "Jobs", "count"), ("gpu_hours", "GPUHours", "hours"),
    ("cpu_hours", "CPUHours", "hours"), ("billing", "Billing", "hours"),
    ("wait_mean_s", "WaitMean", "seconds"), ("wait_p95_s", "WaitP95", "seconds"),
    ("gpu_eff", "GPUEff", "fraction"), ("idle_gpu_hours", "IdleGPUHours", "hours"),
)
SUMMED = ("jobs", "gpu_hours", "cpu_hours", "billing", "idle_gpu_hours")

BUDGET_UNITS = {"gpu_hours": ("GPU-h", "GPU-hour"), "billing": ("billing", "billing")}
DEFAULT_WARN = 0.8


class Column:
    """One report column: the row key it reads, its header, and the kind of value
    (`text`, `count`, `hours`, `seconds`, `fraction`)."""

    __slots__ = ("key", "header", "kind")

    def __init__(self, key: str, header: str, kind: str):
        self.key, self.header, self.kind = key, header, kind

    @property
    def numeric(self) -> bool:
        return self.kind != "text"

    def __repr__(self) -> str:
        return f"Column({self.key!r}, {self.header!r}, {self.kind!r})"


# -- columns and values -----------------------------------------------------------

def group_keys(group_by) -> list[str]:
    """The canonical group keys for `group_by`; ValueError names a bad or repeated key."""
    keys: list[str] = []
    for name in group_by:
        key = GROUP_ALIASES.get(name, name)
        if key not in GROUP_HEADERS:
            choices = ", ".join([*GROUP_HEADERS, *GROUP_ALIASES])
            raise ValueError(f"unknown group key {name!r} (choose from {choices})")
        if key in keys:
            raise ValueError(f"group key {name!r} given twice")
        keys.append(key)
    return keys


def columns(group_by) -> list[Column]:
    """The default columns: the group keys in the order given, then every measure."""
    groups = [Column(k, GROUP_HEADERS[k], "text") for k in group_keys(group_by)]
    return groups + [Column(k, h, kind) for k, h, kind in MEASURES]


def value(row: dict, key: str):
    """A row's value for `key` (an account may be given as `tenant`)."""
    if key == "account" and row.get("account") is None:
        return row.get("tenant")
    return row.get(key)


def human(v, kind: str, *, grouping: bool = True) -> str:
    """A value as people read it; None is blank. `grouping` adds thousands separators."""
    if v is None:
        return ""
    if kind == "count":
        return f"{int(v):,}" if grouping else str(int(v))
    if kind == "hours":
        return f"{v:,.1f}" if grouping else f"{v:.1f}"
    if kind == "seconds":
        return format_time(max(0, round(v)))
    if kind == "fraction":
        return f"{v * 100:.0f}%"
    return str(v)


def machine(v, kind: str):
    """A value for programs: counts as ints, hours and seconds to 3 decimals, eff as a
    fraction; rounding keeps float noise out of CSV and JSON without losing meaning."""
    if v is None or kind == "text":
        return v
    if kind == "count":
        return int(v)
    if kind == "fraction":
        return round(float(v), 4)
    return round(v, 3) if isinstance(v, float) else v


def sum_rows(rows) -> dict:
    """Totals over rows for every measure.

    Counts and hours are sums. The mean wait is the mean weighted by jobs, which is the
    true mean over all jobs. GPU efficiency is weighted by GPU-hours: it is used/allocated
    and GPU-hours are the allocation, so the weighted mean is exact. The p95 wait cannot be
    derived from per-row percentiles and stays None.
    """
    rows = list(rows)
    out = {key: _sum(rows, key) for key in SUMMED}
    out["wait_mean_s"] = _weighted(rows, "wait_mean_s", "jobs")
    out["wait_p95_s"] = None
    out["gpu_eff"] = _weighted(rows, "gpu_eff", "gpu_hours")
    return out


def _sum(rows: list[dict], key: str):
    known = [r[key] for r in rows if r.get(key) is not None]
    return sum(known) if known else None


def _weighted(rows: list[dict], key: str, weight: str):
    pairs = [(r[weight], r[key]) for r in rows
             if r.get(key) is not None and r.get(weight)]
    total = sum(w for w, _ in pairs)
    return sum(w * v for w, v in pairs) / total if total else None


# -- budgets ----------------------------------------------------------------------

def _used_fraction(budget: dict):
    limit, used = budget.get("limit"), budget.get("used")
    if not limit or limit <= 0 or used is None:
        return None
    return used / limit


def _percent(fraction: float) -> int:
    # Rounded down, so a budget at 99.7% never reads "100%" without being over it.
    return math.floor(fraction * 100 + 1e-9)


def budget_cell(budget) -> str:
    """`850/1,000 GPU-h (85%)`; blank without a budget or a limit."""
    fraction = _used_fraction(budget) if budget else None
    if fraction is None:
        return ""
    short = BUDGET_UNITS.get(budget.get("unit"), ("", ""))[0]
    return (f"{budget['used']:,.0f}/{budget['limit']:,.0f} {short}".rstrip()
            + f" ({_percent(fraction)}%)")


def budget_warning(account: str, budget: dict) -> str | None:
    """The warning line for an account at or over its warn fraction, or None."""
    fraction = _used_fraction(budget)
    warn = budget.get("warn")
    warn = DEFAULT_WARN if warn is None else warn
    if fraction is None or fraction < warn:
        return None
    noun = BUDGET_UNITS.get(budget.get("unit"), ("", "usage"))[1]
    period = f" for {budget['period']}" if budget.get("period") else ""
    share = (f"{_percent(fraction)}% of its {noun} budget{period} "
             f"({budget['used']:.1f} of {budget['limit']:.1f})")
    if fraction >= 1:
        return f"warning: account {account} is over budget: used {share}"
    return f"warning: account {account} has used {share}"


def budget_warnings(rows) -> list[str]:
    """One warning per account (and budget) at or over its warn fraction, in row order."""
    lines: list[str] = []
    for row in rows:
        budget = row.get("budget")
        if budget:
            line = budget_warning(value(row, "account") or "?", budget)
            if line and line not in lines:
                lines.append(line)
    return lines


# -- rendering --------------------------------------------------------------------

def render(rows, group_by, fmt: str, *, title: str | None = None, totals: bool = True,
           stream_is_tty: bool | None = None, width: int | None = None) -> str:
    """A report as text in `fmt` (one of FORMATS), without a trailing newline.

    "table" is a rich table on a terminal (`stream_is_tty`, default: is stdout one) and
    "plain" otherwise; `width` is the terminal width for it (default: the terminal's).
    Human formats add a TOTAL row when `totals` and when there are group columns to
    label it (with none, each row is already a total). ValueError for an unknown format
    or group key.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown report format {fmt!r} (choose from {', '.join(FORMATS)})")
    cols = columns(group_by)
    rows = list(rows)
    if fmt == "json":
        return _json(rows, cols)
    if fmt == "csv":
        return _csv(rows, cols)
    if fmt == "table":
        if stream_is_tty is None:
            stream_is_tty = sys.stdout.isatty()
        import importlib.util
        fmt = "table" if stream_is_tty and importlib.util.find_spec("rich") else "plain"
    with_total = bool(totals and rows and cols[0].kind == "text")
    headers, body, total, right = _human_table(rows, cols, with_total, grouping=fmt != "plain")
    warnings = budget_warnings(rows)
    if fmt == "table":
        return _rich(headers, body, total, right, title, warnings, width)
    if fmt == "plain":
        return _plain(headers, body, total, right, title, warnings)
    return _tabulated(headers, body + ([total] if total else []), right, title, warnings,
                      "github" if fmt == "markdown" else "html")


def _human_table(rows, cols, with_total, *, grouping):
    """Headers, body cells, the TOTAL row (or None) and which columns align right."""
    has_budget = any(r.get("budget") for r in rows)
    headers = [c.header for c in cols] + (["Budget"] if has_budget else [])
    right = [c.numeric for c in cols] + ([True] if has_budget else [])
    body = [[human(value(r, c.key), c.kind, grouping=grouping) for c in cols]
            + ([budget_cell(r.get("budget"))] if has_budget else []) for r in rows]
    total = None
    if with_total:
        sums = sum_rows(rows)
        total = [human(sums.get(c.key), c.kind, grouping=grouping) for c in cols]
        total = [cell if c.numeric else "" for c, cell in zip(cols, total)]
        total[0] = "TOTAL"
        total += [""] if has_budget else []
    return headers, body, total, right


def _plain(headers, body, total, right, title, warnings) -> str:
    """sacct's look: padded columns, a dashes line under the header and above TOTAL."""
    table = [headers] + body + ([total] if total else [])
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]

    def line(cells):
        return " ".join(c.rjust(w) if r else c.ljust(w)
                        for c, w, r in zip(cells, widths, right))

    dashes = " ".join("-" * w for w in widths)
    lines = ([title, ""] if title else []) + [line(headers), dashes]
    lines += [line(r) for r in body]
    if total:
        lines += [dashes, line(total)]
    return "\n".join(lines + warnings)


def _rich(headers, body, total, right, title, warnings, width) -> str:
    import io
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # No vertical rules: a wide report still fits a terminal, and it reads like sacct.
    table = Table(title=title, header_style="bold", box=box.SIMPLE_HEAD, show_edge=False)
    for header, is_right in zip(headers, right):
        # fold, not ellipsis: on a narrow terminal a cut account name or number misleads.
        table.add_column(header, justify="right" if is_right else "left", overflow="fold")
    for i, cells in enumerate(body):
        # Text, not str: names like "[lab]" must not be read as rich markup.
        table.add_row(*map(Text, cells), end_section=total is not None and i == len(body) - 1)
    if total:
        table.add_row(*map(Text, total), style="bold")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, highlight=False,
                      width=width or shutil.get_terminal_size().columns)
    console.print(table)
    for warning in warnings:
        console.print(Text(warning, style="bold yellow"))
    return out.getvalue().rstrip("\n")


def _tabulated(headers, table, right, title, warnings, tablefmt) -> str:
    try:
        from tabulate import tabulate
    except ImportError:
        kind = "Markdown" if tablefmt == "github" else "HTML"
        raise ValueError(f"{kind} reports need tabulate (pip install tabulate)") from None
    align = ["right" if r else "left" for r in right]
    if tablefmt == "github":
        # A "|" in a name would end its cell early.
        table = [[cell.replace("|", "\\|") for cell in row] for row in table]
    # disable_numparse: cells are already formatted ("1,234.5", "73%"), keep them as is.
    text = tabulate(table, headers, tablefmt=tablefmt, colalign=align, disable_numparse=True)
    if tablefmt == "html":
        from html import escape
        head = [f"<h3>{escape(title)}</h3>"] if title else []
        tail = [f'<p class="warning">{escape(w)}</p>' for w in warnings]
        return "\n".join(head + [text] + tail)
    head = [f"### {title}", ""] if title else []
    return "\n".join(head + [text] + ([""] + warnings if warnings else []))


def _machine_rows(rows, cols) -> list[dict]:
    return [{c.key: machine(value(r, c.key), c.kind) for c in cols} for r in rows]


def _json(rows, cols) -> str:
    import json
    out = _machine_rows(rows, cols)
    for row, source in zip(out, rows):
        if source.get("budget"):
            row["budget"] = source["budget"]
    sums = sum_rows(rows)
    doc = {"group_by": [c.key for c in cols if c.kind == "text"], "rows": out,
           "totals": {k: machine(sums[k], kind) for k, _, kind in MEASURES}}
    return json.dumps(doc, indent=2)


# CSV has no nesting: a budget becomes four flat columns (column: budget key).
BUDGET_CSV = {"budget_used": "used", "budget_limit": "limit", "budget_unit": "unit",
              "budget_period": "period"}


def _csv(rows, cols) -> str:
    import csv
    import io

    out = _machine_rows(rows, cols)
    fields = [c.key for c in cols]
    if any(r.get("budget") for r in rows):
        fields += BUDGET_CSV
        for row, source in zip(out, rows):
            budget = source.get("budget") or {}
            row.update({col: budget.get(key) for col, key in BUDGET_CSV.items()})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(out)
    return buf.getvalue().rstrip("\n")


# -- statements -------------------------------------------------------------------

STATEMENT_MEASURES = (("jobs", "Jobs", "count"), ("gpu_hours", "GPU-hours", "hours"),
                      ("cpu_hours", "CPU-hours", "hours"), ("billing", "Billing", "hours"))


def statement(account: str, period_label: str, rows_by_user, totals=None, *,
              budget: dict | None = None, cluster: str = "cluster", generated=None,
              rows_by_gpu_type=None) -> str:
    """A tenant's usage statement for one period, ready to send by email.

    Markdown that reads as plain text: a header (cluster, account, period, when it was
    generated), a table per user (rows with `user` and the measures jobs, gpu_hours,
    cpu_hours, billing) ending in a TOTAL row, the same per GPU type when
    `rows_by_gpu_type` (rows with `gpu_type`) is given, and the budget line (with a
    warning at or over its warn fraction) when `budget` is given.

    `totals` holds the period's totals (as `sum_rows` returns them); None sums the user
    rows. `generated` is epoch seconds, a datetime, or text; None means now.
    """
    rows_by_user = list(rows_by_user)
    if totals is None:
        totals = sum_rows(rows_by_user)
    lines = [f"# Usage statement: {account}, {period_label}", "",
             f"Cluster:    {cluster}", f"Account:    {account}",
             f"Period:     {period_label}", f"Generated:  {_when(generated)}", ""]
    lines += ["## Usage by user", ""] + _statement_table("User", "user", rows_by_user, totals)
    if rows_by_gpu_type:
        lines += ["", "## Usage by GPU type", ""]
        lines += _statement_table("GPU type", "gpu_type", list(rows_by_gpu_type), totals)
    if budget:
        cell = budget_cell(budget) or "no limit"
        period = f" for {budget['period']}" if budget.get("period") else ""
        lines += ["", f"Budget{period}: {cell}"]
        warning = budget_warning(account, budget)
        lines += [warning] if warning else []
    return "\n".join(lines)


def _when(generated) -> str:
    import time
    if generated is None:
        generated = time.time()
    if isinstance(generated, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(generated))
    if hasattr(generated, "strftime"):
        return generated.strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()
    return str(generated)


def _statement_table(label: str, key: str, rows: list[dict], total) -> list[str]:
    """A Markdown pipe table padded so the columns also line up as plain text."""
    headers = [label] + [h for _, h, _ in STATEMENT_MEASURES]
    table = [[str(value(r, key) or "-")] + [human(r.get(k), kind) for k, _, kind in
                                             STATEMENT_MEASURES] for r in rows]
    if total is not None:
        table.append(["TOTAL"] + [human(total.get(k), kind) for k, _, kind in
                                  STATEMENT_MEASURES])
    widths = [max(len(headers[i]), *(len(r[i]) for r in table), 3)
              for i in range(len(headers))]

    def line(cells):
        padded = [c.ljust(w) if i == 0 else c.rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if i else ("-" * (w + 2))
                          for i, w in enumerate(widths)) + "|"
    return [line(headers), rule] + [line(r) for r in table]
