"""How records become text: values, fields, columns and layouts.

Records arrive from the controller as plain dicts (see rmsbatch.net.client). A
`Field` says how one value of a record reads (its header, a getter, the record
keys it needs); a `Layout` places fields in columns and renders records as

- tables whose columns fit their contents (`field_layout`: `jobid,name:30`),
- columns of fixed width with literal text between them (squeue's `%` formats,
  parsed in rmsbatch.cli.jobfields),
- `|`-separated text for scripts (`Layout.parsable`), and JSON (`render_json`).

The values themselves read the way Slurm prints them: durations (`squeue_time`,
`clock`), time limits, timestamps, sizes, energy. Which fields a command offers
lives with the command's records: rmsbatch.cli.jobfields (rq, rsacct),
rmsbatch.cli.nodetables (rinfo), rmsbatch.cli.details (rcontrol show).

Rendering is plain string work over precomputed columns: no regular
expressions per row, one pass per column. Nothing here talks to the
controller, so every output can be tested from fixed records. Only light
standard-library modules are imported: every query command loads this file.
"""
from __future__ import annotations

import time

from rmsbatch.core.units import format_kb, format_memory, format_time

TYPE_CHECKING = False   # importing `typing` costs every command ~4 ms
if TYPE_CHECKING:
    from typing import Callable

UNLIMITED = "UNLIMITED"
UNKNOWN = "Unknown"
NULL = "(null)"


class FormatError(ValueError):
    """An output format names an unknown field or has a bad width."""


# -- values -------------------------------------------------------------------
# squeue's durations and Slurm's sizes come from rmsbatch.core.units; sacct's and
# scontrol's zero-padded durations and the timestamps are rendered here.

def squeue_time(seconds: float) -> str:
    """squeue's TIME: `M:SS`, `H:MM:SS`, `D-HH:MM:SS` (negative reads 0:00)."""
    return format_time(int(seconds) if seconds and seconds > 0 else 0)


def clock(seconds: float) -> str:
    """sacct's and scontrol's durations: `HH:MM:SS`, `D-HH:MM:SS`."""
    s = int(seconds) if seconds and seconds > 0 else 0
    minutes, s = divmod(s, 60)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours:02d}:{minutes:02d}:{s:02d}"
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02d}:{minutes:02d}:{s:02d}"


def time_limit(seconds, render=squeue_time) -> str:
    """A time limit: 0 (or null) is UNLIMITED."""
    return render(seconds) if seconds else UNLIMITED


def timestamp(epoch) -> str:
    """Local time as `YYYY-MM-DDTHH:MM:SS`; `Unknown` when null."""
    if epoch is None:
        return UNKNOWN
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def memory(mb) -> str:
    """Megabytes the Slurm way: `512M`, `16G`, `2T`, `0` (all of a node); "" if null."""
    return "" if mb is None else format_memory(max(0, int(mb)))


def rss(kb) -> str:
    """sacct's MaxRSS: `1234K`; empty while unknown."""
    return "" if kb is None else format_kb(max(0, int(kb)))


def count(value) -> str:
    return str(value or 0)


def percent(value) -> str:
    return "" if value is None else f"{value:.0f}%"


def energy(joules) -> str:
    """Joules as sacct shows energy: 512, 12.34K, 3.21M."""
    if joules is None:
        return ""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if joules >= size:
            return f"{joules / size:.2f}{unit}"
    return f"{joules:.0f}"


def cpu_time(seconds) -> str:
    """sacct's TotalCPU: `MM:SS.mmm` below an hour, else `HH:MM:SS`."""
    if seconds is None:
        return ""
    if seconds < 3600:
        minutes, s = divmod(max(0.0, float(seconds)), 60)
        return f"{int(minutes):02d}:{s:06.3f}"
    return clock(seconds)


# -- getters: how a field reads its value from a record --------------------

def getter(key: str) -> Callable[[dict, float], str]:
    def get(record, now, key=key):
        value = record.get(key)
        return "" if value is None else str(value)
    get.key = key               # lets a layout fill the column without a call per cell
    get.reads = (key,)
    return get


def shown(key: str, render) -> Callable[[dict, float], str]:
    """A getter that shows one record key through `render`, and says it reads it."""
    def get(record, now, key=key):
        return render(record.get(key))
    get.reads = (key,)
    return get


# -- columns and layouts ------------------------------------------------------

class Field:
    """A value a command can show: its header, how to get it from a record, and the
    record keys it reads (commands ask the controller for just those: a listing of
    thousands of jobs travels as rows of a few columns)."""
    __slots__ = ("header", "get", "right", "reads")

    def __init__(self, header: str, get: Callable[[dict, float], str], right: bool = False,
                 reads: tuple[str, ...] | None = None):
        self.header = header
        self.get = get
        self.right = right          # numbers align right
        self.reads = reads if reads is not None else getattr(get, "reads", ())

    def __repr__(self) -> str:
        return f"Field({self.header!r})"


class Column:
    """A field placed in a layout: width None means sized to fit (or natural)."""
    __slots__ = ("header", "get", "width", "right", "mark", "name", "reads")

    def __init__(self, header: str, get, width: int | None = None, right: bool = False,
                 mark: str = "", name: str = "", reads: tuple[str, ...] = ()):
        self.name = name            # the field's name in its table
        self.reads = reads          # the record keys it needs
        self.header = header
        self.get = get
        self.width = width
        self.right = right
        self.mark = mark            # appended where a value was cut (sacct's "+")

    @classmethod
    def of(cls, field: Field, width: int | None = None, right: bool | None = None,
           mark: str = "", name: str = "") -> "Column":
        return cls(field.header, field.get, width, field.right if right is None else right,
                   mark, name, field.reads)

    def __repr__(self) -> str:
        return f"Column({self.header!r}, width={self.width}, right={self.right})"


def _cells(get, records: list[dict], now: float) -> list[str]:
    key = getattr(get, "key", None)
    if key is None:
        return [get(r, now) for r in records]
    return ["" if (v := r.get(key)) is None else v if v.__class__ is str else str(v)
            for r in records]


def _cut(value: str, width: int, mark: str) -> str:
    if len(value) <= width:
        return value
    if mark and width > len(mark):
        return value[:width - len(mark)] + mark
    return value[:width]


class Layout:
    """An output format: columns, and the literal text around and between them.

    With auto=True (field lists, default tables) a column without a width is
    as wide as its longest value; with auto=False (squeue `%` formats) such a
    column is printed as is, unpadded, as squeue does.
    """

    def __init__(self, columns: list[Column], literals: list[str] | None = None,
                 auto: bool = True, dashes: bool = False):
        self.columns = list(columns)
        if literals is None:
            literals = [""] + [" "] * (len(self.columns) - 1) + [""] if self.columns else ["", ""]
        if len(literals) != len(self.columns) + 1:
            raise ValueError("a layout needs one more literal than columns")
        self.literals = literals
        self.auto = auto
        self.dashes = dashes        # sacct's "------ ---" line under the header

    def reads(self) -> list[str]:
        """The record keys this layout needs (always the job id, which orders rows)."""
        keys = {"id"}
        for col in self.columns:
            keys.update(col.reads)
        return sorted(keys)

    def _column_cells(self, records, now, header: bool) -> list[list[str]]:
        out = []
        last = len(self.columns) - 1
        for index, col in enumerate(self.columns):
            values = _cells(col.get, records, now)
            width = col.width
            head = col.header
            if width is None:
                if not self.auto:
                    out.append([head, *values] if header else values)
                    continue
                width = max(max(map(len, values), default=0), len(head) if header else 0)
            else:
                if any(len(v) > width for v in values):
                    values = [_cut(v, width, col.mark) for v in values]
                head = head[:width]
            cells = [head, *values] if header else values
            if self.dashes and header:
                cells.insert(1, "-" * width)
            if index == last and not col.right and col.width is None and not self.literals[-1]:
                pass                 # no trailing blanks after the last column
            elif col.right:
                cells = [v.rjust(width) for v in cells]
            else:
                cells = [v.ljust(width) for v in cells]
            out.append(cells)
        return out

    def _join(self, columns: list[list[str]], rows: int) -> list[str]:
        lits = self.literals
        if not columns:
            return [lits[0] + lits[-1]] * rows
        if not lits[0] and not lits[-1] and all(lit == lits[1] for lit in lits[1:-1]):
            sep = lits[1] if len(lits) > 2 else ""
            return [sep.join(row) for row in zip(*columns)]
        inner = lits[1:]
        head = lits[0]
        return [head + "".join([v + lit for v, lit in zip(row, inner)]) for row in zip(*columns)]

    def render(self, records: list[dict], now: float | None = None, header: bool = True) -> str:
        """The table as text, without a final newline ("" for no rows, no header)."""
        now = time.time() if now is None else now
        columns = self._column_cells(records, now, header)
        rows = len(records) + (1 if header else 0)   # used only when there are no columns
        lines = self._join(columns, rows)
        if self.auto and not self.literals[-1]:
            lines = [line.rstrip(" ") for line in lines]
        return "\n".join(lines)

    def parsable(self, records: list[dict], now: float | None = None, header: bool = True,
                 trailing: bool = False, sep: str = "|") -> str:
        """`a|b|c` lines (sacct -P; with trailing=True, sacct -p's `a|b|c|`)."""
        now = time.time() if now is None else now
        columns = [_cells(c.get, records, now) for c in self.columns]
        end = sep if trailing else ""
        lines = [sep.join(row) + end for row in zip(*columns)] if columns else [end] * len(records)
        if header:
            lines.insert(0, sep.join(c.header for c in self.columns) + end)
        return "\n".join(lines)


def _field_lookup(fields: dict[str, Field], aliases: dict[str, str]) -> dict[str, str]:
    lookup = {_norm(name): name for name in fields}
    lookup.update({_norm(alias): name for alias, name in aliases.items()})
    return lookup


def _norm(name: str) -> str:
    return name.strip().lower().replace("_", "").replace("-", "")


def _parse_width(spec: str, item: str) -> tuple[int | None, bool | None]:
    """`30` -> (30, None); `.30` -> (30, True: right); `-30` -> (30, False)."""
    right = None
    if spec[:1] == ".":
        right, spec = True, spec[1:]
    elif spec[:1] == "-":
        right, spec = False, spec[1:]
    if not spec:
        return None, right
    if not spec.isdigit() or int(spec) == 0:
        raise FormatError(f"bad width {spec!r} in {item!r}: use a positive number")
    return int(spec), right


def field_layout(text: str, fields: dict[str, Field], aliases: dict[str, str] | None = None,
                 width_sep: str = ":", mark: str = "", dashes: bool = False,
                 what: str = "field") -> Layout:
    """`jobid,state,name:30` -> a Layout (case-insensitive names, `_` optional).

    A width after width_sep (`:` for rq, `%` for rsacct) fixes the column and
    cuts longer values; `:.30` aligns right, `:-30` left.
    """
    lookup = _field_lookup(fields, aliases or {})
    columns = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, _, spec = item.partition(width_sep)
        key = lookup.get(_norm(name))
        if key is None:
            known = ", ".join(fields)
            raise FormatError(f"unknown {what} {name!r} (known: {known})")
        width, right = _parse_width(spec, item) if spec else (None, None)
        columns.append(Column.of(fields[key], width, right, mark, key))
    if not columns:
        raise FormatError(f"empty format: name at least one {what}")
    return Layout(columns, dashes=dashes)


def render_json(key: str, records: list, **extra) -> str:
    """`{"<key>": [records...]}` with 2-space indentation."""
    import json             # only for --json: json brings `re` and ~2 ms to every start
    doc = {key: records}
    doc.update(extra)
    return json.dumps(doc, indent=2)

