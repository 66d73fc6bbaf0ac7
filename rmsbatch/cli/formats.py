"""Rendering records as text: what rq, rsacct, rinfo and rcontrol print.

Records arrive from the controller as plain dicts (see client.py). This module
turns them into

- tables whose columns fit their contents (`Layout`, `field_layout`),
- squeue-style `%` formats with Slurm's width rules (`squeue_layout`):
  `%.18i` right-aligned in 18, `%-10j` or `%10j` left-aligned in 10 (values
  longer than the width are cut), `%j` as long as the value,
- `|`-separated text for scripts (`Layout.parsable`) and JSON (`render_json`),
- scontrol-style `Key=Value` records (`job_detail`, `node_detail`, ...),
- sinfo-style summaries of nodes per partition and state (`partition_rows`).

Rendering is plain string work over precomputed columns: no regular
expressions per row, one pass per column. Nothing here talks to the
controller, so every output can be tested from fixed records. Only light
standard-library modules are imported: every command loads this file.
"""
from __future__ import annotations

import argparse
import os
import time

from rmsbatch import __version__
from rmsbatch.cli.common import UsageError
from rmsbatch.core.hostlist import compress, expand, natural_key
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

def _squeue_time(seconds: float) -> str:
    """squeue's TIME: `M:SS`, `H:MM:SS`, `D-HH:MM:SS` (negative reads 0:00)."""
    return format_time(int(seconds) if seconds and seconds > 0 else 0)


def _job_time(job: dict, now: float) -> str:
    # Most of a long queue is pending: no start, "0:00", without the arithmetic.
    start = job.get("start_time")
    if not start or job.get("state") == "PENDING":
        return "0:00"
    return _squeue_time(_elapsed(job, now))


def _clock(seconds: float) -> str:
    """sacct's and scontrol's durations: `HH:MM:SS`, `D-HH:MM:SS`."""
    s = int(seconds) if seconds and seconds > 0 else 0
    minutes, s = divmod(s, 60)
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours:02d}:{minutes:02d}:{s:02d}"
    days, hours = divmod(hours, 24)
    return f"{days}-{hours:02d}:{minutes:02d}:{s:02d}"


def _limit(seconds, render=_squeue_time) -> str:
    """A time limit: 0 (or null) is UNLIMITED."""
    return render(seconds) if seconds else UNLIMITED


def _timestamp(epoch) -> str:
    """Local time as `YYYY-MM-DDTHH:MM:SS`; `Unknown` when null."""
    if epoch is None:
        return UNKNOWN
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


def _memory(mb) -> str:
    """Megabytes the Slurm way: `512M`, `16G`, `2T`, `0` (all of a node); "" if null."""
    return "" if mb is None else format_memory(max(0, int(mb)))


def _rss(kb) -> str:
    """sacct's MaxRSS: `1234K`; empty while unknown."""
    return "" if kb is None else format_kb(max(0, int(kb)))


def _percent(value) -> str:
    return "" if value is None else f"{value:.0f}%"


def _energy(joules) -> str:
    """Joules as sacct shows energy: 512, 12.34K, 3.21M."""
    if joules is None:
        return ""
    for unit, size in (("M", 1e6), ("K", 1e3)):
        if joules >= size:
            return f"{joules / size:.2f}{unit}"
    return f"{joules:.0f}"


def _cpu_time(seconds) -> str:
    """sacct's TotalCPU: `MM:SS.mmm` below an hour, else `HH:MM:SS`."""
    if seconds is None:
        return ""
    if seconds < 3600:
        minutes, s = divmod(max(0.0, float(seconds)), 60)
        return f"{int(minutes):02d}:{s:06.3f}"
    return _clock(seconds)


def _elapsed(job: dict, now: float) -> float:
    """Seconds a job has run: to its end, or to now while it runs."""
    start = job.get("start_time")
    if not start or job.get("state") == "PENDING":
        return 0
    end = job.get("end_time") or now
    return max(0, end - start)


# -- job values, shared by the commands ---------------------------------------

_SHORT_STATE = {
    "PENDING": "PD", "RUNNING": "R", "COMPLETING": "CG", "COMPLETED": "CD",
    "FAILED": "F", "CANCELLED": "CA", "TIMEOUT": "TO", "OUT_OF_MEMORY": "OOM",
    "NODE_FAIL": "NF", "PREEMPTED": "PR",
}


def _getter(key: str) -> Callable[[dict, float], str]:
    def get(record, now, key=key):
        value = record.get(key)
        return "" if value is None else str(value)
    get.key = key               # lets a layout fill the column without a call per cell
    get.reads = (key,)
    return get


def _shown(key: str, render) -> Callable[[dict, float], str]:
    """A getter that shows one record key through `render`, and says it reads it."""
    def get(record, now, key=key):
        return render(record.get(key))
    get.reads = (key,)
    return get


def _count(value) -> str:
    return str(value or 0)


def _cells(get, records: list[dict], now: float) -> list[str]:
    key = getattr(get, "key", None)
    if key is None:
        return [get(r, now) for r in records]
    return ["" if (v := r.get(key)) is None else v if v.__class__ is str else str(v)
            for r in records]


def _job_short_state(job, now):
    state = job.get("state") or ""
    return _SHORT_STATE.get(state, state)


def _job_cpus(job, now):
    return str(job.get("alloc_cpus") or job.get("req_cpus") or 0)


def _job_nodelist_reason(job, now):
    nodelist = job.get("nodelist")
    if nodelist and job.get("state") != "PENDING":
        return nodelist
    return f"({job.get('reason') or 'None'})"


def _job_exit_code(job, now):
    return f"{job.get('exit_code') or 0}:{job.get('exit_signal') or 0}"


def _time_of(key):
    return _shown(key, _timestamp)


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


# -- rq (squeue) --------------------------------------------------------------

JOB_FIELDS: dict[str, Field] = {
    "jobid": Field("JOBID", _getter("id"), True),
    "partition": Field("PARTITION", _getter("partition")),
    "name": Field("NAME", _getter("name")),
    "user": Field("USER", _getter("user")),
    "uid": Field("UID", _getter("uid"), True),
    "account": Field("ACCOUNT", _getter("account")),
    "qos": Field("QOS", _getter("qos")),
    "st": Field("ST", _job_short_state, reads=("state",)),
    "state": Field("STATE", _getter("state")),
    "time": Field("TIME", _job_time, True, reads=("start_time", "end_time", "state")),
    "time_limit": Field("TIME_LIMIT", _shown("time_limit", _limit), True),
    "nodes": Field("NODES", _getter("nodes"), True),
    "cpus": Field("CPUS", _job_cpus, True, reads=("alloc_cpus", "req_cpus")),
    "gpus": Field("GPUS", _shown("req_gpus", _count), True),
    "gpu_type": Field("GPU_TYPE", _shown("gpu_type", lambda v: v or "")),
    "min_memory": Field("MIN_MEMORY", _shown("req_mem_mb", _memory), True),
    "nodelist_reason": Field("NODELIST(REASON)", _job_nodelist_reason,
                             reads=("nodelist", "state", "reason")),
    "nodelist": Field("NODELIST", _getter("nodelist")),
    "reason": Field("REASON", _getter("reason")),
    "submit_time": Field("SUBMIT_TIME", _time_of("submit_time")),
    "start_time": Field("START_TIME", _time_of("start_time")),
    "end_time": Field("END_TIME", _time_of("end_time")),
    "priority": Field("PRIORITY", _getter("priority"), True),
    "exit_code": Field("EXIT_CODE", _job_exit_code, reads=("exit_code", "exit_signal")),
    "work_dir": Field("WORK_DIR", _getter("workdir")),
    "command": Field("COMMAND", _getter("command")),
}

# squeue --Format names and other spellings people type.
JOB_ALIASES = {
    "id": "jobid", "jobname": "name", "username": "user", "statecompact": "st",
    "statelong": "state", "timeused": "time", "elapsed": "time", "timelimit": "time_limit",
    "numnodes": "nodes", "numcpus": "cpus", "reasonlist": "nodelist_reason",
    "nodelist(reason)": "nodelist_reason", "minmemory": "min_memory", "memory": "min_memory",
    "submit": "submit_time", "start": "start_time", "end": "end_time", "workdir": "work_dir",
    "gres": "gpus", "tresperjob": "gpus", "exitcode": "exit_code",
}

# squeue -o letters.
PERCENT_CODES = {
    "i": "jobid", "t": "st", "T": "state", "j": "name", "u": "user", "U": "uid",
    "a": "account", "P": "partition", "q": "qos", "M": "time", "l": "time_limit",
    "D": "nodes", "C": "cpus", "R": "nodelist_reason", "r": "reason", "N": "nodelist",
    "b": "gpus", "V": "submit_time", "S": "start_time", "e": "end_time", "Q": "priority",
    "m": "min_memory", "Z": "work_dir", "o": "command",
}

RQ_DEFAULT = "jobid,partition,name,user,account,st,time,gpus,nodelist_reason"
RQ_LONG = ("jobid,partition,name,user,account,state,time,time_limit,nodes,gpus,"
           "nodelist_reason")


def squeue_layout(text: str, fields: dict[str, Field] = JOB_FIELDS,
                  codes: dict[str, str] = PERCENT_CODES) -> Layout:
    """Parse an squeue `-o` format: `%[.|-][width]<letter>` codes among literal text."""
    columns: list[Column] = []
    literals: list[str] = []
    buf: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "%":
            buf.append(ch)
            i += 1
            continue
        j = i + 1
        if j < n and text[j] == "%":
            buf.append("%")
            i = j + 1
            continue
        right = False
        if j < n and text[j] in ".-":
            right = text[j] == "."
            j += 1
        k = j
        while k < n and text[k].isdigit():
            k += 1
        if k >= n:
            raise FormatError(f"format {text!r} ends inside a % code")
        letter = text[k]
        if letter not in codes:
            known = " ".join("%" + c for c in codes)
            raise FormatError(f"unknown format code %{letter} in {text!r} (known: {known} %%)")
        width = int(text[j:k]) if k > j else None
        if width == 0:
            width = None
        if right and width is None:
            raise FormatError(f"%.{letter} in {text!r} needs a width to align right, e.g. %.10{letter}")
        literals.append("".join(buf))
        buf = []
        columns.append(Column.of(fields[codes[letter]], width, right, name=codes[letter]))
        i = k + 1
    literals.append("".join(buf))
    return Layout(columns, literals, auto=False)


def job_layout(text: str | None = None, long: bool = False) -> Layout:
    """The layout for rq: a `%` format, a field list, or the default columns."""
    if text is None:
        text = RQ_LONG if long else RQ_DEFAULT
    if "%" in text:
        return squeue_layout(text)
    return field_layout(text, JOB_FIELDS, JOB_ALIASES)


def job_format_help() -> str:
    """What `rq -o help` prints."""
    by_field = {v: k for k, v in PERCENT_CODES.items()}
    lines = ["Fields (rq -o NAME[:WIDTH],...; :.WIDTH aligns right) and squeue codes (-o '%.10i'):"]
    for name, field in JOB_FIELDS.items():
        code = f"%{by_field[name]}" if name in by_field else ""
        lines.append(f"  {name:<16} {code:<4} {field.header}")
    lines.append("  %% is a literal percent sign.")
    return "\n".join(lines)


def render_json(key: str, records: list, **extra) -> str:
    """`{"<key>": [records...]}` with 2-space indentation."""
    import json             # only for --json: json brings `re` and ~2 ms to every start
    doc = {key: records}
    doc.update(extra)
    return json.dumps(doc, indent=2)


# -- rsacct (sacct) -----------------------------------------------------------

SACCT_FIELDS: dict[str, Field] = {
    "JobID": Field("JobID", _getter("id")),
    "JobName": Field("JobName", _getter("name")),
    "User": Field("User", _getter("user")),
    "UID": Field("UID", _getter("uid"), True),
    "Account": Field("Account", _getter("account")),
    "Partition": Field("Partition", _getter("partition")),
    "QOS": Field("QOS", _getter("qos")),
    "State": Field("State", _getter("state")),
    "Reason": Field("Reason", _getter("reason")),
    "ExitCode": Field("ExitCode", _job_exit_code, True, reads=("exit_code", "exit_signal")),
    "Submit": Field("Submit", _time_of("submit_time")),
    "Start": Field("Start", _time_of("start_time")),
    "End": Field("End", _time_of("end_time")),
    "Elapsed": Field("Elapsed", lambda j, now: _clock(_elapsed(j, now)), True,
                     reads=("start_time", "end_time", "state")),
    "Timelimit": Field("Timelimit", _shown("time_limit", lambda v: _limit(v, _clock)), True),
    "NNodes": Field("NNodes", _getter("nodes"), True),
    "AllocCPUS": Field("AllocCPUS", _shown("alloc_cpus", _count), True),
    "ReqCPUS": Field("ReqCPUS", _shown("req_cpus", _count), True),
    "ReqMem": Field("ReqMem", _shown("req_mem_mb", _memory), True),
    "AllocGPUs": Field("AllocGPUs", _shown("alloc_gpus", _count), True),
    "ReqGPUs": Field("ReqGPUs", _shown("req_gpus", _count), True),
    "NodeList": Field("NodeList", _shown("nodelist", lambda v: v or "None assigned")),
    "MaxRSS": Field("MaxRSS", _shown("max_rss_kb", _rss), True),
    "TotalCPU": Field("TotalCPU", _shown("total_cpu_s", _cpu_time), True),
    "GPUUtil": Field("GPUUtil", _shown("gpu_util", _percent), True),
    "MaxGPUMem": Field("MaxGPUMem", _shown("gpu_mem_peak_mb", _memory), True),
    "GPUEnergy": Field("GPUEnergy", _shown("gpu_energy_j", _energy), True),
    "ReqGPUMem": Field("ReqGPUMem", _shown("gpu_mem_mb", _memory), True),
    "Priority": Field("Priority", _getter("priority"), True),
    "WorkDir": Field("WorkDir", _getter("workdir")),
}
SACCT_ALIASES = {"QoS": "QOS", "NodeName": "NodeList", "JobIDRaw": "JobID"}
SACCT_DEFAULT = "JobID,JobName,Partition,Account,AllocCPUS,AllocGPUs,State,ExitCode"


def sacct_layout(text: str | None = None) -> Layout:
    """`JobID,JobName%30,...`: sacct's field names, any case; `%N` fixes a width."""
    return field_layout(text or SACCT_DEFAULT, SACCT_FIELDS, SACCT_ALIASES, width_sep="%",
                        mark="+", dashes=True)


def sacct_format_help() -> str:
    """What `rsacct -e` prints: the field names, several per line."""
    names = list(SACCT_FIELDS)
    return "\n".join(" ".join(f"{n:<12}" for n in names[i:i + 6]).rstrip()
                     for i in range(0, len(names), 6))


# -- rinfo (sinfo) ------------------------------------------------------------

NODE_STATE_SHORT = {
    "IDLE": "idle", "MIXED": "mix", "ALLOCATED": "alloc",
    "DOWN": "down", "DRAIN": "drain", "DRAINING": "drng",
}
_STATE_ORDER = {name: i for i, name in enumerate(NODE_STATE_SHORT)}
UNUSABLE = ("DOWN", "DRAIN", "DRAINING")


def node_state_short(node: dict) -> str:
    state = (node.get("state") or "").upper()
    return NODE_STATE_SHORT.get(state, state.lower())


def parse_node_state(text: str) -> str:
    """`idle`, `IDLE`, `mix`, `drng`... -> the full upper-case name."""
    key = text.strip().lower()
    for full, short in NODE_STATE_SHORT.items():
        if key in (full.lower(), short):
            return full
    if key in ("drained",):
        return "DRAIN"
    names = ", ".join(NODE_STATE_SHORT.values())
    raise ValueError(f"unknown node state {text!r} (use one of {names})")


def _job_reason(job: dict) -> str:
    """Why a job waits, or, once it has ended, what ended it (when known)."""
    if job.get("state") != "PENDING" and job.get("end_reason"):
        return job["end_reason"]
    return job.get("reason") or "None"


def _gres(node: dict) -> str:
    gpus = node.get("gpus") or 0
    if not gpus:
        return "none"
    # "gpu:a100:1,gpu:1g.10gb:2", as Slurm's Gres; "gpu" is the type of GPUs declared
    # without a model: no need to say it twice
    counts = node.get("gpu_counts") or {node.get("gpu_type") or "gpu": gpus}
    return ",".join(f"gpu:{t}:{n}" if t != "gpu" else f"gpu:{n}"
                    for t, n in sorted(counts.items()))


def _gpu_counts(node: dict) -> str:
    """Allocated/total, and how many are drained: "2/8", "2/8(1 drained)"."""
    text = f"{node.get('alloc_gpus') or 0}/{node.get('gpus') or 0}"
    if node.get("gpus_drained"):
        text += f"({node['gpus_drained']} drained)"
    return text


def _row_layout(spec: list[tuple[str, str, bool]]) -> Layout:
    return Layout([Column(header, _getter(key), None, right) for header, key, right in spec])


_PARTITION_COLUMNS = [
    ("PARTITION", "partition", False), ("AVAIL", "avail", False),
    ("TIMELIMIT", "timelimit", True), ("NODES", "nodes", True), ("STATE", "state", False),
    ("GPUS", "gres", False), ("NODELIST", "nodelist", False),
]
_PARTITION_LONG_COLUMNS = [
    ("PARTITION", "partition", False), ("AVAIL", "avail", False),
    ("TIMELIMIT", "timelimit", True), ("DEFAULTTIME", "defaulttime", True),
    ("NODES", "nodes", True), ("STATE", "state", False), ("CPUS(A/T)", "cpus", True),
    ("GPUS(A/T)", "gpus", True), ("GPUS", "gres", False), ("NODELIST", "nodelist", False),
]
_NODE_COLUMNS = [
    ("NODELIST", "nodelist", False), ("NODES", "nodes", True),
    ("PARTITION", "partition", False), ("STATE", "state", False),
    ("CPUS(A/T)", "cpus", True), ("MEMORY", "memory", True), ("GPUS(A/T)", "gpus", True),
    ("REASON", "reason", False),
]
_NODE_LONG_COLUMNS = _NODE_COLUMNS[:6] + [
    ("ALLOCMEM", "allocmem", True), ("GPUS(A/T)", "gpus", True), ("GRES", "gres", False),
    ("FEATURES", "features", False), ("PROTECTIONS", "protections", False),
    ("REASON", "reason", False),
]
_REASON_COLUMNS = [
    ("REASON", "reason", False), ("NODES", "nodes", True), ("STATE", "state", False),
    ("NODELIST", "nodelist", False),
]


def _partition_label(part: dict) -> str:
    return part["name"] + ("*" if part.get("default") else "")


def _members(part: dict) -> list[str]:
    names = part.get("node_names")
    if names is None:
        names = expand(part.get("nodes") or "")
    return names


def partition_rows(nodes: list[dict], partitions: list[dict]) -> list[dict]:
    """sinfo's summary: one row per partition and (node state, GPUs per node)."""
    by_name = {n["name"]: n for n in nodes}
    rows = []
    for part in partitions:
        names = _members(part)
        base = {
            "partition": _partition_label(part),
            "avail": (part.get("state") or "UP").lower(),
            "timelimit": _limit(part.get("max_time")),
            "defaulttime": _limit(part.get("default_time")),
        }
        if not names:
            rows.append({**base, "nodes": "0", "state": "n/a", "cpus": "0/0", "gpus": "0/0",
                         "gres": "none", "nodelist": ""})
            continue
        groups: dict[tuple[str, str], list[dict]] = {}
        for name in names:
            node = by_name.get(name)
            if node is not None:
                groups.setdefault(((node.get("state") or "").upper(), _gres(node)), []).append(node)
        for state, gres in sorted(groups, key=lambda k: (_STATE_ORDER.get(k[0], 99), k)):
            members = groups[(state, gres)]
            rows.append({
                **base,
                "nodes": str(len(members)),
                "state": NODE_STATE_SHORT.get(state, state.lower()),
                "cpus": f"{sum(n.get('alloc_cpus') or 0 for n in members)}/"
                        f"{sum(n.get('cpus') or 0 for n in members)}",
                "gpus": f"{sum(n.get('alloc_gpus') or 0 for n in members)}/"
                        f"{sum(n.get('gpus') or 0 for n in members)}",
                "gres": gres,
                "nodelist": compress(n["name"] for n in members),
            })
    return rows


def node_rows(nodes: list[dict], partitions: list[dict]) -> list[dict]:
    """sinfo -N: one row per node and listed partition, nodes in natural order."""
    labels = {p["name"]: _partition_label(p) for p in partitions}
    rows = []
    for node in sorted(nodes, key=lambda n: natural_key(n["name"])):
        common = {
            "nodelist": node["name"], "nodes": "1", "state": node_state_short(node),
            "cpus": f"{node.get('alloc_cpus') or 0}/{node.get('cpus') or 0}",
            "memory": str(node.get("mem_mb") or 0),
            "allocmem": str(node.get("alloc_mem_mb") or 0),
            "gpus": _gpu_counts(node),
            "gres": _gres(node),
            "features": ",".join(node.get("features") or []) or "none",
            "protections": node.get("protections") or "none",
            "reason": node.get("reason") or "none",
        }
        mine = node.get("partitions") or []
        if not mine:
            rows.append({**common, "partition": "n/a"})
        for part in mine:
            if part in labels:          # partitions not listed were filtered out
                rows.append({**common, "partition": labels[part]})
    return rows


def reason_rows(nodes: list[dict]) -> list[dict]:
    """sinfo -R: down and drained nodes, grouped by reason and state."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        state = (node.get("state") or "").upper()
        if state in UNUSABLE:
            groups.setdefault((node.get("reason") or "none", state), []).append(node["name"])
        if node.get("gpu_reason"):      # devices out of service on a node still in use
            groups.setdefault((node["gpu_reason"], "gpu-drain"), []).append(node["name"])
    rows = []
    for (reason, state), names in sorted(groups.items(),
                                          key=lambda kv: natural_key(min(kv[1], key=natural_key))):
        rows.append({"reason": reason, "nodes": str(len(names)),
                     "state": NODE_STATE_SHORT.get(state, state.lower()),
                     "nodelist": compress(names)})
    return rows


def render_partitions(rows: list[dict], long: bool = False, header: bool = True) -> str:
    return _row_layout(_PARTITION_LONG_COLUMNS if long else _PARTITION_COLUMNS).render(
        rows, 0, header)


def render_node_rows(rows: list[dict], long: bool = False, header: bool = True) -> str:
    return _row_layout(_NODE_LONG_COLUMNS if long else _NODE_COLUMNS).render(rows, 0, header)


def render_reasons(rows: list[dict], header: bool = True) -> str:
    return _row_layout(_REASON_COLUMNS).render(rows, 0, header)


# -- rcontrol (scontrol show) -------------------------------------------------

def _or_null(value) -> str:
    return NULL if value is None or value == "" else str(value)


def _yes_no(value) -> str:
    return "YES" if value else "NO"


def job_detail(job: dict, now: float | None = None) -> list[str]:
    """scontrol show job: the first line, then indented `Key=Value` lines."""
    now = time.time() if now is None else now
    limit = job.get("time_limit") or 0
    end = job.get("end_time")
    if end is None and job.get("start_time") and limit and job.get("state") in (
            "RUNNING", "COMPLETING"):
        end = job["start_time"] + limit          # the latest it will end, as scontrol shows
    indices = job.get("gpu_indices") or []
    constraint = job.get("constraint", job.get("constraint_expr"))
    return [
        f"JobId={job.get('id')} JobName={_or_null(job.get('name'))}",
        f"UserId={job.get('user')}({job.get('uid')}) Account={_or_null(job.get('account'))} "
        f"QOS={_or_null(job.get('qos'))}",
        f"Priority={job.get('priority') or 0} Nice={job.get('nice') or 0} "
        f"Hold={_yes_no(job.get('hold'))}",
        f"JobState={job.get('state')} Reason={_job_reason(job)} "
        f"ExitCode={_job_exit_code(job, now)}",
        f"RunTime={_clock(_elapsed(job, now))} TimeLimit={_limit(limit, _clock)}",
        f"SubmitTime={_timestamp(job.get('submit_time'))} "
        f"StartTime={_timestamp(job.get('start_time'))} EndTime={_timestamp(end)}",
        f"Partition={_or_null(job.get('partition'))} NodeList={_or_null(job.get('nodelist'))}",
        f"NumNodes={job.get('nodes') or 0} NumCPUs={_job_cpus(job, now)} "
        f"NumTasks={job.get('ntasks') or 0} CPUs/Task={job.get('cpus_per_task') or 0}",
        f"ReqMem={_memory(job.get('req_mem_mb')) or NULL} GPUs={job.get('req_gpus') or 0} "
        f"GPUType={_or_null(job.get('gpu_type'))} "
        + (f"GPUMem={_memory(job['gpu_mem_mb'])} " if job.get("gpu_mem_mb") else "") +
        f"GPUIndices={','.join(str(i) for i in indices) or NULL}",
        f"Features={_or_null(constraint)} Exclusive={_yes_no(job.get('exclusive'))} "
        f"Requeue={1 if job.get('requeue') else 0} Restarts={job.get('restart_count') or 0}",
        f"SubmitHost={_or_null(job.get('submit_host'))} Command={_or_null(job.get('command'))}",
        f"WorkDir={_or_null(job.get('workdir'))}",
        f"StdOut={_or_null(job.get('stdout'))}",
        f"StdErr={_or_null(job.get('stderr'))}",
        f"Protections={job.get('protections') or 'none'}",
    ] + ([f"GPUUtil={_percent(job.get('gpu_util')) or NULL} "
          f"MaxGPUMem={_memory(job.get('gpu_mem_peak_mb')) or NULL} "
          f"GPUEnergy={_energy(job.get('gpu_energy_j')) or NULL}"]
         if any(job.get(k) is not None for k in ("gpu_util", "gpu_mem_peak_mb", "gpu_energy_j"))
         else [])


def node_detail(node: dict) -> list[str]:
    """scontrol show node."""
    lines = [
        f"NodeName={node['name']} State={node.get('state')}",
        f"CPUAlloc={node.get('alloc_cpus') or 0} CPUTot={node.get('cpus') or 0}",
        f"RealMemory={node.get('mem_mb') or 0} AllocMem={node.get('alloc_mem_mb') or 0}",
        f"Gres={_gres(node)} GPUsAlloc={node.get('alloc_gpus') or 0} "
        f"GPUTot={node.get('gpus') or 0} GPUsDrained={node.get('gpus_drained') or 0} "
        f"GPUDetect={node.get('gpu_mode') or 'static'}",
        f"Features={','.join(node.get('features') or []) or NULL} "
        f"Partitions={','.join(node.get('partitions') or []) or NULL}",
        f"LastHeartbeat={_timestamp(node.get('last_heartbeat'))} "
        f"Jobs={','.join(str(j) for j in node.get('jobs') or []) or NULL}",
        f"Protections={node.get('protections') or 'none'}",
    ]
    if node.get("reason"):
        lines.append(f"Reason={node['reason']}")
    for index, why in (node.get("gpu_drain") or {}).items():
        lines.append(f"GPU{index}=DRAIN Reason={why}")
    if node.get("gpu_mode") in ("auto", "check") and node.get("gpu_backends"):
        lines.append("GPUBackends=" + "; ".join(f"{k}: {v}" for k, v in node["gpu_backends"].items()))
    for note in node.get("gpu_notes") or []:
        lines.append(f"GPUNote={note}")
    for dev in node.get("devices") or []:
        lines.append(device_line(dev))
    return lines


def device_line(dev: dict) -> str:
    """scontrol show node -d: one line per accelerator."""
    parts = [f"GPU{dev.get('index')}={dev.get('type')}", f"Model={_or_null(dev.get('model'))}",
             f"Memory={_memory(dev.get('mem_mb') or None) or NULL}", f"State={dev.get('state')}"]
    if dev.get("job") is not None:
        parts.append(f"Job={dev['job']}")
    for key, label in (("uuid", "UUID"), ("bdf", "PCI"), ("numa_node", "NUMA"),
                       ("profile", "Profile")):
        if dev.get(key) is not None:
            parts.append(f"{label}={dev[key]}")
    for key, label, unit in (("util_pct", "Util", "%"), ("mem_used_mb", "MemUsed", "M"),
                             ("temp_c", "Temp", "C"), ("power_w", "Power", "W")):
        if dev.get(key) is not None:
            parts.append(f"{label}={dev[key]}{unit}")
    if dev.get("health") and dev["health"] != "ok":
        parts.append(f"Health={dev['health']}")
    return " ".join(parts)


# -- rinfo --gpus: one row per accelerator -------------------------------------
_GPU_COLUMNS = [
    ("NODE", "node", False), ("GPU", "index", True), ("TYPE", "type", False),
    ("MEMORY", "memory", True), ("STATE", "state", False), ("JOBID", "job", True),
    ("UTIL", "util", True), ("MEMUSED", "memused", True), ("TEMP", "temp", True),
    ("POWER", "power", True), ("HEALTH", "health", False),
]
_GPU_LONG_COLUMNS = _GPU_COLUMNS[:3] + [("MODEL", "model", False)] + _GPU_COLUMNS[3:-1] + [
    ("NUMA", "numa", True), ("ID", "id", False), ("HEALTH", "health", False)]


def _reading(value, unit: str = "") -> str:
    """A telemetry value with its unit, "-" where the device does not report it."""
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def gpu_rows(nodes: list[dict]) -> list[dict]:
    rows = []
    for node in sorted(nodes, key=lambda n: natural_key(n["name"])):
        for dev in node.get("devices") or []:
            def num(key, unit="", dev=dev):
                return _reading(dev.get(key), unit)
            rows.append({
                "node": node["name"], "index": str(dev.get("index")), "type": dev.get("type") or "",
                "model": dev.get("model") or "", "memory": _memory(dev.get("mem_mb") or None) or "-",     # 0: unknown
                "state": dev.get("state") or "", "job": "-" if dev.get("job") is None else str(dev["job"]),
                "util": num("util_pct", "%"), "memused": num("mem_used_mb", "M"),
                "temp": num("temp_c", "C"), "power": num("power_w", "W"),
                "numa": num("numa_node"), "id": dev.get("uuid") or dev.get("bdf") or "-",
                "health": dev.get("health") or "ok",
            })
    return rows


def render_gpus(rows: list[dict], long: bool = False, header: bool = True) -> str:
    return _row_layout(_GPU_LONG_COLUMNS if long else _GPU_COLUMNS).render(rows, 0, header)


def partition_detail(part: dict, nodes: list[dict]) -> list[str]:
    """scontrol show partition; totals over the nodes given that belong to it."""
    names = set(_members(part))
    members = [n for n in nodes if n["name"] in names]
    return [
        f"PartitionName={part['name']}",
        f"Default={_yes_no(part.get('default'))} State={part.get('state') or 'UP'}",
        f"DefaultTime={_limit(part.get('default_time'), _clock)} "
        f"MaxTime={_limit(part.get('max_time'), _clock)}",
        f"Nodes={part.get('nodes') or compress(names) or NULL}",
        f"TotalNodes={len(names)} TotalCPUs={sum(n.get('cpus') or 0 for n in members)} "
        f"TotalGPUs={sum(n.get('gpus') or 0 for n in members)}",
    ]


def render_details(blocks: list[list[str]], oneliner: bool = False) -> str:
    """Records separated by blank lines, continuation lines indented (or one line each)."""
    if oneliner:
        return "\n".join(" ".join(lines) for lines in blocks)
    return "\n\n".join("\n   ".join(lines) for lines in blocks)


# -- command-line helpers shared by the query commands ------------------------

class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The terminal's width from os, not shutil: argparse builds a formatter for
    every add_argument, and `import shutil` costs every command ~4 ms."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS") or os.get_terminal_size(1).columns)
            except (ValueError, OSError):
                width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class CommandParser(argparse.ArgumentParser):
    """argparse with the project's conventions.

    Usage errors raise UsageError, which `rmsbatch.cli.common.run_main` prints
    as one `prog: error: ...` line plus a hint, with exit status 2. `--help`
    is always there; `-h` too unless the command uses it for --noheader, as
    squeue and sinfo do. The epilog (an `Examples:` block) keeps its layout.
    """

    def __init__(self, *args, examples: str | None = None, short_help: bool = True,
                 version: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs["add_help"] = False
        if examples:
            kwargs["epilog"] = "Examples:\n" + examples.strip("\n")
        super().__init__(*args, **kwargs)
        flags = ["-h", "--help"] if short_help else ["--help"]
        self.add_argument(*flags, action="help", help="show this help and exit")
        if version:
            self.add_argument("--version", action="version",
                              version=f"%(prog)s (rmsbatch) {__version__}")

    def error(self, message: str):
        raise UsageError(" ".join(message.split("\n")))


def comma_list(text: str) -> list[str]:
    """`a,b,,c` -> ["a", "b", "c"]: the value of options like -u and -p."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def job_id_list(text: str) -> list[int]:
    """`12,13` -> [12, 13]; anything else is a usage error naming the bad id."""
    ids = []
    for item in comma_list(text):
        if not item.isdigit() or int(item) == 0:
            raise argparse.ArgumentTypeError(f"invalid job id {item!r}: expected a number such as 42")
        ids.append(int(item))
    return ids


def job_state_list(text: str) -> list[str]:
    """`PD,running` -> ["PENDING", "RUNNING"]; `all` -> ["all"]."""
    from rmsbatch.core.states import parse_state
    states = []
    for item in comma_list(text):
        if item.lower() == "all":
            states.append("all")
            continue
        try:
            states.append(parse_state(item).value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return states


def add_output_options(parser: argparse.ArgumentParser, noheader_flags=("-h", "--noheader")):
    """--json and --noheader, the same in every query command."""
    parser.add_argument(*noheader_flags, dest="noheader", action="store_true",
                        help="do not print the header line")
    parser.add_argument("--json", action="store_true",
                        help="print the records as JSON instead of a table")


def current_user() -> str:
    import pwd
    import os
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
