"""Workload trace readers for the trace simulator (rms-sim).

    trace = read_trace("HPC2N-2002-2.2-cln.swf.gz")      # format from name/header
    part = window(trace, 1000, 500)                      # 500 jobs, first submitted at 0

Every format becomes a `Trace` of `TraceJob`s sorted by (submit, id). Rows that
cannot be replayed are counted in `Trace.skipped` by reason instead of kept; a
row that cannot be read at all raises `TraceError` naming the file and line.
Gzipped files (any format) are read transparently. Standard library only, and
plain `str.split` for SWF: a 450k-job log must load in seconds.

Formats (`FORMATS`):

swf -- Standard Workload Format (Parallel Workloads Archive), 18 whitespace-
    separated fields, `;` header lines (`; MaxProcs: 240`). Fields used:
    1 id, 2 submit, 4 run, 5 allocated procs, 8 requested procs, 9 requested
    time, 10 requested memory (KB per processor), 11 status, 12 user,
    13 group (-> tenant), 15 queue. -1 means unknown: user/tenant/queue become
    "", status None. Extra trailing fields are ignored (the ALCF Mira/Theta
    conversions append a 19th). mem_mb is the job's total: field 10 times
    procs, in MB rounded up; 0 when unknown.

    Which jobs are kept, and their procs and requested time, follow
    RLScheduler (DIR-LAB/deep-batch-scheduler, job.py) so that FIFO numbers
    computed here can be checked against that project's:
    - procs = max(allocated procs, requested procs)  [job.py, Job.__init__:
      "using a larger one will be sufficient"].
    - requested time = field 9, or the run time when field 9 is -1  [job.py,
      Job.__init__]. We take any negative value as unknown, and apply the
      fallback after the run-time fix below (Job.__init__ runs before it, so
      a job with both -1 gets request_time -1 there; no shipped log has one).
    - run time < 0 becomes 10 s and the job is kept; run time 0 is dropped
      [job.py, Workloads.__init__: "filter those illegal data whose
      runtime < 0"] -> skipped "run time 0".
    - Our own rule: procs <= 0 is dropped ("no processors"); RLScheduler keeps
      such jobs, but no PWA/Lublin log we have read has one.
    - RLScheduler orders jobs by job id (Workloads.__init__); we order by
      (submit, id): the same order wherever ids follow submit times (PWA, Lublin).
    - max_procs/max_nodes are the header's (leading integer, so "338 (batch
      partition; 512 total)" reads as 338); None when absent. RLScheduler
      uses MaxNodes when MaxProcs is missing (Workloads.__init__); we leave
      that choice to the simulator and report what the header says.
    Submit times are kept as written (the log's own zero, as RLScheduler
    does) unless the earliest is a Unix timestamp (>= 1e8 s, i.e. after 1973),
    as in the ALCF conversions, whose lines are also unsorted: then all are
    shifted so the earliest kept job is submitted at 0.

philly -- Philly 2017 job CSV as shipped with Pollux (adaptdl):
    timestamp,duration,num_gpus,gpu_time,cluster. id = row number, submit =
    timestamp minus the earliest kept one, tenant = cluster (virtual cluster).

philly_rfold -- Philly 2017 job CSV from RFold: '#job id','arrival time (sec)',
    topology,shape,size,'duration (sec)'. gpus = size. `shape` records where
    the job ran, not what it asked for, so nodes stays 0.

itp -- Microsoft ITP CSV (ElasticFlow): job_id (a UUID, so id = row number),
    submission_time, duration, num_gpu; extra columns (ElasticFlow's
    generated deadlines etc.) are ignored.

openb -- Alibaba GPU v2023 pod list: name,cpu_milli,memory_mib,num_gpu,
    gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,
    scheduled_time. submit = creation_time, run = deletion_time -
    scheduled_time, procs = cpu_milli/1000 rounded up, mem_mb = memory_mib,
    gpu_milli = the share of each GPU for fractional pods (1..999), queue =
    qos, status = 1 Succeeded / 0 Failed (SWF codes) / None otherwise, id =
    the pod name's number. Pods without scheduled_time never ran (Pending):
    skipped. The resampled multigpuXX lists have no time columns at all, so
    nothing in them can be replayed over time: every row is skipped.
GPU traces have no requested time (None) and, but for openb, no CPU count (0).
"""
from __future__ import annotations

import csv
import gc
import gzip
import itertools
import logging
import math
import operator
import os
import re
import sys
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

log = logging.getLogger("rmsbatch.sim")

FORMATS: tuple[str, ...] = ("swf", "philly", "philly_rfold", "itp", "openb")


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: int                 # the trace's job number (or 1-based row number when the trace has none / UUIDs)
    submit: float           # seconds, relative to the trace's own zero
    run: float              # actual run time, seconds (> 0 for kept jobs)
    requested: float | None  # requested wall time, seconds; None when the trace has none
    procs: int              # processors (SWF) / CPUs requested in total; 0 if unknown
    nodes: int              # nodes requested; 0 if the trace does not say
    gpus: int               # GPUs in total (0 for CPU traces)
    gpu_milli: int = 1000   # share of each GPU (Alibaba openb fractional pods: 1..999); 1000 whole
    mem_mb: int = 0
    user: str = ""
    tenant: str = ""        # SWF group id, Philly virtual cluster, ... (as str)
    queue: str = ""         # SWF queue number / openb qos, as str
    status: int | None = None  # SWF status field when given


@dataclass
class Trace:
    name: str               # file name without extensions
    format: str             # one of FORMATS
    jobs: list[TraceJob]    # sorted by (submit, id)
    max_procs: int | None   # SWF header MaxProcs
    max_nodes: int | None   # SWF header MaxNodes
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> rows not kept
    header: dict[str, str] = field(default_factory=dict)   # SWF header key -> value


class TraceError(Exception):
    """A trace file cannot be read; str() names the file and, where one is to
    blame, the line."""


# -- entry points --------------------------------------------------------------

def read_trace(path: str, fmt: str | None = None) -> Trace:
    """The trace in `path`; `fmt` None detects the format (.swf/.swf.gz or a
    `;` header -> swf, CSVs by their header columns)."""
    fname = os.path.basename(path)
    if fmt is not None and fmt not in FORMATS:
        raise TraceError(f"{fname}: unknown trace format {fmt!r} (known: {', '.join(FORMATS)})")
    # Half a million new objects would run the cyclic collector over them again and
    # again; none of them can form a cycle.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with _open_text(path) as fh:
            # Blank lines before the first one are counted so line numbers stay true.
            lineno, first = 0, ""
            for first in fh:
                lineno += 1
                if first.strip():
                    break
            lines = itertools.chain([first], fh)
            if fmt is None:
                fmt = _detect(fname, first, lineno)
            if not first.strip():
                return Trace(_trace_name(fname), fmt, [], None, None)
            if fmt == "swf":
                trace = _read_swf(fname, lines, lineno)
            else:
                trace = _read_csv(fname, fmt, lines, lineno)
    except (OSError, EOFError, zlib.error) as e:
        # gzip reports a damaged file as OSError/EOFError; a missing one is OSError too.
        raise TraceError(f"{fname}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    finally:
        if collecting:
            gc.enable()
    trace.jobs.sort(key=_order)
    return trace


def window(trace: Trace, start: int, count: int | None) -> Trace:
    """jobs[start:start+count] (to the end when count is None), shifted so the
    first is submitted at 0: the slice replayed on an empty machine. Header,
    limits and skipped counts (which describe the whole file) are copied."""
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"window: start {start} and count {count} must not be negative")
    jobs = trace.jobs[start:None if count is None else start + count]
    if jobs and jobs[0].submit:
        jobs = _shifted(jobs, jobs[0].submit)
    return Trace(trace.name, trace.format, list(jobs), trace.max_procs, trace.max_nodes,
                 dict(trace.skipped), dict(trace.header))


# -- shared helpers --------------------------------------------------------------

# C-level key: sorting half a million jobs by a Python function costs a second.
_order = operator.attrgetter("submit", "id")


def _shifted(jobs: list[TraceJob], shift: float) -> list[TraceJob]:
    """The jobs submitted `shift` seconds earlier."""
    # Spelled out: dataclasses.replace() looks the fields up per call, 5x slower.
    return [TraceJob(j.id, j.submit - shift, j.run, j.requested, j.procs, j.nodes, j.gpus,
                     j.gpu_milli, j.mem_mb, j.user, j.tenant, j.queue, j.status) for j in jobs]


def _open_text(path: str):
    # By content, not name: a gzipped log renamed without .gz must still read.
    with open(path, "rb") as f:
        magic = f.read(2)
    # Latin-1 never fails to decode: headers of old logs hold odd bytes in names.
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="latin-1", newline="")
    return open(path, encoding="latin-1", newline="")


def _trace_name(fname: str) -> str:
    # Only known extensions: "CTC-SP2-1996-3.1-cln" keeps its dots.
    name = fname
    for ext in (".gz", ".swf", ".csv", ".txt"):
        if name.lower().endswith(ext):
            name = name[:-len(ext)]
    return name


_CSV_COLUMNS = {
    "philly": ("timestamp", "duration", "num_gpus", "cluster"),
    "philly_rfold": ("#job id", "arrival time (sec)", "size", "duration (sec)"),
    "itp": ("job_id", "submission_time", "duration", "num_gpu"),
    "openb": ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli"),
}
_SWF_LINE = re.compile(r"\s*(-?[\d.]+\s+){17}")
_NOT_TRACES = {
    ("sn", "cpu_milli", "memory_mib", "gpu", "model"): "an openb node list (the cluster), not a job trace",
    ("vc", "node num"): "a virtual-cluster size table, not a job trace",
}


def _detect(fname: str, first: str, lineno: int) -> str:
    low = fname.lower()
    if low.endswith((".swf", ".swf.gz")) or first.lstrip().startswith(";"):
        return "swf"
    if "," in first:
        cols = {c.strip() for c in next(csv.reader([first]))}
        for fmt, need in _CSV_COLUMNS.items():
            if cols.issuperset(need):
                return fmt
        for need, what in _NOT_TRACES.items():
            if cols.issuperset(need):
                raise TraceError(f"{fname}: {what}")
        raise TraceError(f"{fname} line {lineno}: CSV columns {sorted(cols)} match no known trace format")
    if len(first.split()) >= 18 and _SWF_LINE.match(first):
        return "swf"
    if not first.strip():
        raise TraceError(f"{fname}: empty file: cannot tell its format, name one")
    raise TraceError(f"{fname} line {lineno}: neither SWF nor a known CSV trace")


def _count(skipped: dict[str, int], reason: str) -> None:
    skipped[reason] = skipped.get(reason, 0) + 1


# -- SWF ----------------------------------------------------------------------------

_SWF_FIELD_NAMES = {1: "job number", 2: "submit time", 4: "run time", 5: "allocated processors",
                    8: "requested processors", 9: "requested time", 10: "requested memory",
                    11: "status"}
_HEADER_RE = re.compile(r";\s*([A-Za-z][\w ]*?)\s*:(?!//)\s*(.*?)\s*$")
_EPOCH_LIKE = 1e8   # s: a log's own zero is its start; an earliest submit past 1973 is Unix time
_RLSCHED_NEG_RUN = 10.0  # RLScheduler's stand-in for a negative run time


def _read_swf(fname: str, lines: Iterable[str], lineno0: int) -> Trace:
    header: dict[str, str] = {}
    last_key = None
    jobs: list[TraceJob] = []
    skipped: dict[str, int] = {}
    fixed_runs = 0
    intern = sys.intern
    append = jobs.append
    for lineno, line in enumerate(lines, lineno0):
        f = line.split()
        if not f:
            continue
        if f[0][0] == ";":
            m = _HEADER_RE.match(line.strip())
            if m:
                key, value = m.groups()
                header[key] = f"{header[key]}\n{value}" if key in header else value
                last_key = key
            elif last_key and line.strip(";").strip():
                # an indented continuation of the previous key (a second URL, filter lines)
                header[last_key] += "\n" + line.strip(";").strip()
            continue
        if len(f) < 18:
            raise TraceError(f"{fname} line {lineno}: {len(f)} fields, SWF has 18")
        try:
            jid, submit, run = int(f[0]), float(f[1]), float(f[3])
            procs = max(int(f[4]), int(f[7]))
            req, mem, status = float(f[8]), float(f[9]), int(f[10])
        except ValueError:
            jid, submit, run, procs, req, mem, status = _swf_slow(fname, lineno, f)
        # NaN and infinities pass float(); no comparison with them is true.
        if not (-1e15 < submit < 1e15 and -1e15 < run < 1e15 and -1e15 < req < 1e15
                and -1e15 < mem < 1e15):
            raise TraceError(_swf_bad_field(fname, lineno, f))
        if run < 0:
            run = _RLSCHED_NEG_RUN
            fixed_runs += 1
        elif run == 0:
            _count(skipped, "run time 0")
            continue
        if procs <= 0:
            _count(skipped, "no processors")
            continue
        user, group, queue = f[11], f[12], f[14]
        append(TraceJob(
            jid, submit, run, req if req >= 0 else run, procs, 0, 0, 1000,
            math.ceil(mem * procs / 1024) if mem > 0 else 0,
            "" if user == "-1" else intern(user),
            "" if group == "-1" else intern(group),
            "" if queue == "-1" else intern(queue),
            None if status == -1 else status))
    if fixed_runs:
        log.info("%s: %d jobs with a negative run time given %g s (as RLScheduler does)",
                 fname, fixed_runs, _RLSCHED_NEG_RUN)
    if jobs:
        first = min(j.submit for j in jobs)
        if first >= _EPOCH_LIKE:
            jobs = _shifted(jobs, first)
    return Trace(_trace_name(fname), "swf", jobs, _header_int(header, "MaxProcs", fname),
                 _header_int(header, "MaxNodes", fname), skipped, header)


def _swf_slow(fname: str, lineno: int, f: list[str]) -> tuple:
    """The fields _read_swf wants, from a line with integers written as "12.00"
    (some logs do), or TraceError."""
    def whole(s: str) -> int:
        v = float(s)
        if v != int(v):
            raise ValueError(s)
        return int(v)
    try:
        return (whole(f[0]), float(f[1]), float(f[3]), max(whole(f[4]), whole(f[7])),
                float(f[8]), float(f[9]), whole(f[10]))
    except (ValueError, OverflowError):
        raise TraceError(_swf_bad_field(fname, lineno, f)) from None


def _swf_bad_field(fname: str, lineno: int, f: list[str]) -> str:
    for i in (1, 2, 4, 5, 8, 9, 10, 11):
        what = "a whole number" if i in (1, 5, 8, 11) else "a number"
        try:
            v = float(f[i - 1])
            if not -1e15 < v < 1e15 or (i in (1, 5, 8, 11) and v != int(v)):
                raise ValueError
        except ValueError:
            return f"{fname} line {lineno}: field {i} ({_SWF_FIELD_NAMES[i]}) is {f[i - 1]!r}, not {what}"
    return f"{fname} line {lineno}: unreadable SWF line"


def _header_int(header: dict[str, str], key: str, fname: str) -> int | None:
    value = header.get(key)
    if value is None:
        return None
    m = re.match(r"\d+", value)
    if not m:
        raise TraceError(f"{fname}: header {key}: {value!r} is not a number")
    return int(m.group())


# -- CSV traces ----------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1)


def _read_csv(fname: str, fmt: str, lines: Iterator[str], lineno0: int) -> Trace:
    reader = csv.reader(lines)
    # csv counts the lines it has read from us; the blank ones before are ours.
    where = lambda: f"{fname} line {reader.line_num + lineno0 - 1}"  # noqa: E731
    try:
        head = [c.strip() for c in next(reader, [])]
        col = {c: i for i, c in enumerate(head)}
        missing = [c for c in _CSV_COLUMNS[fmt] if c not in col]
        if missing:
            raise TraceError(f"{where()}: header lacks the {fmt} column(s) {', '.join(map(repr, missing))}")
        jobs, skipped = _CSV_ROWS[fmt](reader, col, where)
    except csv.Error as e:
        raise TraceError(f"{where()}: {e}") from None
    return Trace(_trace_name(fname), fmt, jobs, None, None, skipped, {})


def _cells(reader, col: dict[str, int], names: tuple[str, ...], where):
    """(row number, cells of `names`) per data row; blank lines ignored."""
    idx = [col[n] for n in names]
    width = len(col)
    rowno = 0
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        rowno += 1
        if len(row) < width:
            raise TraceError(f"{where()}: {len(row)} columns, the header has {width}")
        yield rowno, [row[i].strip() for i in idx]


def _number(value: str, what: str, where, integer: bool = False) -> float:
    try:
        v = float(value)
    except ValueError:
        raise TraceError(f"{where()}: {what} is {value!r}, not a number") from None
    if not -1e15 < v < 1e15 or (integer and v != int(v)):
        raise TraceError(f"{where()}: {what} is {value!r}, not {'an integer' if integer else 'a number'}")
    return int(v) if integer else v


def _gpu_job(skipped, jid, submit, run, gpus, tenant=""):
    if run <= 0:
        _count(skipped, "run time <= 0")
    elif gpus <= 0:
        _count(skipped, "no GPUs")
    else:
        return TraceJob(jid, submit, run, None, 0, 0, gpus, tenant=tenant)
    return None


def _philly_rows(reader, col, where):
    jobs, skipped = [], {}
    names = ("timestamp", "duration", "num_gpus", "cluster")
    for rowno, (ts, dur, gpus, vc) in _cells(reader, col, names, where):
        try:
            t = datetime.fromisoformat(ts)
        except ValueError:
            raise TraceError(f"{where()}: timestamp {ts!r} is not a date and time") from None
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
        # Naive differences: no local time zone or DST shifts creep in.
        job = _gpu_job(skipped, rowno, (t - _EPOCH).total_seconds(),
                       _number(dur, "duration", where), _number(gpus, "num_gpus", where, True),
                       sys.intern(vc))
        if job:
            jobs.append(job)
    if jobs:
        # The trace's zero is its earliest job, as for ALCF's absolute times.
        jobs = _shifted(jobs, min(j.submit for j in jobs))
    return jobs, skipped


def _rfold_rows(reader, col, where):
    jobs, skipped = [], {}
    names = ("#job id", "arrival time (sec)", "duration (sec)", "size")
    for _, (jid, arrival, dur, size) in _cells(reader, col, names, where):
        job = _gpu_job(skipped, _number(jid, "job id", where, True), _number(arrival, "arrival time", where),
                       _number(dur, "duration", where), _number(size, "size", where, True))
        if job:
            jobs.append(job)
    return jobs, skipped


def _itp_rows(reader, col, where):
    jobs, skipped = [], {}
    names = ("submission_time", "duration", "num_gpu")
    for rowno, (sub, dur, gpus) in _cells(reader, col, names, where):
        job = _gpu_job(skipped, rowno, _number(sub, "submission_time", where),
                       _number(dur, "duration", where), _number(gpus, "num_gpu", where, True))
        if job:
            jobs.append(job)
    return jobs, skipped


_OPENB_TIMES = ("creation_time", "deletion_time", "scheduled_time")
_OPENB_STATUS = {"Succeeded": 1, "Failed": 0}


def _openb_rows(reader, col, where):
    jobs, skipped = [], {}
    timed = all(c in col for c in _OPENB_TIMES)
    names = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
    if timed:
        names += ("qos", "pod_phase") + _OPENB_TIMES
    for rowno, cells in _cells(reader, col, names, where):
        if not timed:
            _count(skipped, "no creation/deletion/scheduled times in this pod list")
            continue
        name, cpu, mem, gpus, milli, qos, phase, created, deleted, scheduled = cells
        cpu = _number(cpu, "cpu_milli", where, True)
        mem = _number(mem, "memory_mib", where)
        gpus = _number(gpus, "num_gpu", where, True)
        milli = _number(milli or "0", "gpu_milli", where, True)
        if not 0 <= milli <= 1000:
            raise TraceError(f"{where()}: gpu_milli {milli} is not within 0..1000")
        submit = _number(created, "creation_time", where)
        if not scheduled:
            _count(skipped, "never scheduled (no scheduled_time)")
            continue
        if not deleted:
            _count(skipped, "no deletion_time")
            continue
        run = _number(deleted, "deletion_time", where) - _number(scheduled, "scheduled_time", where)
        if run <= 0:
            _count(skipped, "run time <= 0")
            continue
        if cpu <= 0 and gpus <= 0:
            _count(skipped, "no CPUs or GPUs")
            continue
        m = re.search(r"(\d+)$", name)
        jobs.append(TraceJob(
            int(m.group(1)) if m else rowno, submit, run, None, -(-cpu // 1000), 0, gpus,
            milli if gpus > 0 and 0 < milli < 1000 else 1000, math.ceil(mem),
            queue=sys.intern(qos), status=_OPENB_STATUS.get(phase)))
    return jobs, skipped


_CSV_ROWS = {"philly": _philly_rows, "philly_rfold": _rfold_rows, "itp": _itp_rows, "openb": _openb_rows}
