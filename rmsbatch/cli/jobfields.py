"""The job fields of rq and rsacct, and their format strings.

- rq (squeue): `JOB_FIELDS` by name (`rq -o jobid,name:30`, `-O JobID,Name:30`) and
  squeue's `%` codes (`rq -o "%.18i %j"`, `squeue_layout`) with Slurm's width rules:
  `%.18i` right-aligned in 18, `%-10j` or `%10j` left-aligned in 10 (values longer
  than the width are cut), `%j` as long as the value;
- rsacct (sacct): `SACCT_FIELDS` (`JobID,JobName%30`; `+` marks a cut value).

The job values that several outputs share (elapsed time, CPUs, exit code, reason)
are here too; rmsbatch.cli.details shows them in `rcontrol show job`.
"""
from __future__ import annotations

from rmsbatch.cli.layout import (
    Column, Field, FormatError, Layout, clock, count, cpu_time, energy, field_layout, getter,
    memory, percent, rss, shown, squeue_time, time_limit, timestamp,
)


# -- job values ---------------------------------------------------------------

def _job_time(job: dict, now: float) -> str:
    # Most of a long queue is pending: no start, "0:00", without the arithmetic.
    start = job.get("start_time")
    if not start or job.get("state") == "PENDING":
        return "0:00"
    return squeue_time(elapsed(job, now))


def elapsed(job: dict, now: float) -> float:
    """Seconds a job has run: to its end, or to now while it runs."""
    start = job.get("start_time")
    if not start or job.get("state") == "PENDING":
        return 0
    end = job.get("end_time") or now
    return max(0, end - start)


_SHORT_STATE = {
    "PENDING": "PD", "RUNNING": "R", "COMPLETING": "CG", "COMPLETED": "CD",
    "FAILED": "F", "CANCELLED": "CA", "TIMEOUT": "TO", "OUT_OF_MEMORY": "OOM",
    "NODE_FAIL": "NF", "PREEMPTED": "PR",
}


def _job_short_state(job, now):
    state = job.get("state") or ""
    return _SHORT_STATE.get(state, state)


def job_cpus(job, now):
    return str(job.get("alloc_cpus") or job.get("req_cpus") or 0)


# A running job whose GPUs have sat idle long enough to be flagged (rmsbatch.ctld.idlegpu)
IDLE_GPU = "IdleGPU"


def _idle_flagged(job) -> bool:
    return job.get("state") == "RUNNING" and job.get("idle_since") is not None


def _job_nodelist_reason(job, now):
    nodelist = job.get("nodelist")
    if nodelist and job.get("state") != "PENDING":
        if job.get("end_reason") and job.get("state") not in ("RUNNING", "COMPLETING"):
            return f"{nodelist} ({job['end_reason']})"    # what ended it
        if _idle_flagged(job):
            return f"{nodelist} ({IDLE_GPU})"
        return nodelist
    return f"({_pending_reason(job)})"


def _pending_reason(job) -> str:
    reason = job.get("reason") or "None"
    if job.get("state") == "PENDING" and job.get("end_reason"):
        return f"{reason}; requeued: {job['end_reason']}"   # why its last run ended
    return reason


def job_exit_code(job, now):
    return f"{job.get('exit_code') or 0}:{job.get('exit_signal') or 0}"


def _time_of(key):
    return shown(key, timestamp)


def job_reason(job: dict) -> str:
    """Why a job waits, or, once it has ended, what ended it (when known)."""
    if job.get("state") != "PENDING" and job.get("end_reason"):
        return job["end_reason"]
    if _idle_flagged(job):
        return IDLE_GPU
    return _pending_reason(job)


def _job_reason_cell(job, now):
    return job_reason(job)


def _job_start(job, now):
    """When it started, or for a waiting job when the scheduler's plan expects it to
    (Unknown: the plan has no start for it, as squeue --start shows N/A)."""
    if job.get("state") == "PENDING":
        return timestamp(job.get("est_start"))
    return timestamp(job.get("start_time"))


def _job_reasons(job, now):
    """Every reason a waiting job waits for, the first as in REASON."""
    if job.get("state") == "PENDING" and job.get("reasons"):
        return ",".join(job["reasons"])
    return job_reason(job)


# -- rq (squeue) --------------------------------------------------------------

JOB_FIELDS: dict[str, Field] = {
    "jobid": Field("JOBID", getter("id"), True),
    "partition": Field("PARTITION", getter("partition")),
    "name": Field("NAME", getter("name")),
    "user": Field("USER", getter("user")),
    "uid": Field("UID", getter("uid"), True),
    "account": Field("ACCOUNT", getter("account")),
    "qos": Field("QOS", getter("qos")),
    "st": Field("ST", _job_short_state, reads=("state",)),
    "state": Field("STATE", getter("state")),
    "time": Field("TIME", _job_time, True, reads=("start_time", "end_time", "state")),
    "time_limit": Field("TIME_LIMIT", shown("time_limit", time_limit), True),
    "nodes": Field("NODES", getter("nodes"), True),
    "cpus": Field("CPUS", job_cpus, True, reads=("alloc_cpus", "req_cpus")),
    "gpus": Field("GPUS", shown("req_gpus", count), True),
    "gpu_type": Field("GPU_TYPE", shown("gpu_type", lambda v: v or "")),
    # since when a flagged job's GPUs are idle (rmsbatch.ctld.idlegpu); blank otherwise
    "idle_since": Field("IDLE_SINCE", shown("idle_since", lambda v: "" if v is None
                                            else timestamp(v))),
    "min_memory": Field("MIN_MEMORY", shown("req_mem_mb", memory), True),
    "nodelist_reason": Field("NODELIST(REASON)", _job_nodelist_reason,
                             reads=("nodelist", "state", "reason", "end_reason", "idle_since")),
    "nodelist": Field("NODELIST", getter("nodelist")),
    "reason": Field("REASON", _job_reason_cell,
                    reads=("state", "reason", "end_reason", "idle_since")),
    "reasons": Field("REASONS", _job_reasons,
                     reads=("state", "reason", "end_reason", "reasons", "idle_since")),
    "submit_time": Field("SUBMIT_TIME", _time_of("submit_time")),
    "start_time": Field("START_TIME", _job_start, reads=("start_time", "state", "est_start")),
    "end_time": Field("END_TIME", _time_of("end_time")),
    "priority": Field("PRIORITY", getter("priority"), True),
    "exit_code": Field("EXIT_CODE", job_exit_code, reads=("exit_code", "exit_signal")),
    "work_dir": Field("WORK_DIR", getter("workdir")),
    "command": Field("COMMAND", getter("command")),
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
# rq --start, as squeue --start: when each waiting job should start, and why it waits
RQ_START = "jobid,partition,name,user,account,st,start_time,nodes,gpus,reasons"
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


def job_layout(text: str | None = None, long: bool = False, start: bool = False) -> Layout:
    """The layout for rq: a `%` format, a field list, or the default columns."""
    if text is None:
        text = RQ_START if start else RQ_LONG if long else RQ_DEFAULT
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


# -- rsacct (sacct) -----------------------------------------------------------

def _idle_gpu_hours(job, now):
    seconds = job.get("gpu_idle_s")
    if seconds is None:
        return ""
    return f"{seconds * (job.get('alloc_gpus') or 0) / 3600:.2f}"


_HELD_READS = ("start_time", "end_time", "state")


def _held(job, now, key: str) -> float:
    """Unit-seconds of what the job holds per unit (CPUs, GPUs, billing per hour)."""
    return (job.get(key) or 0) * elapsed(job, now)


def _hours(unit_seconds: float) -> str:
    return f"{unit_seconds / 3600:.2f}"


def _waited(job, now) -> str:
    """Time from eligible (submitted, or its --begin) to start; still growing while
    it waits (sacct's Planned, formerly Reserved)."""
    if not job.get("submit_time"):
        return ""
    eligible = max(job["submit_time"], job.get("begin_time") or 0)
    start = job.get("start_time") if job.get("state") != "PENDING" else None
    return clock(max(0, (start or now) - eligible))


SACCT_FIELDS: dict[str, Field] = {
    "JobID": Field("JobID", getter("id")),
    "JobName": Field("JobName", getter("name")),
    "User": Field("User", getter("user")),
    "UID": Field("UID", getter("uid"), True),
    "Account": Field("Account", getter("account")),
    "Partition": Field("Partition", getter("partition")),
    "QOS": Field("QOS", getter("qos")),
    "State": Field("State", getter("state")),
    "Reason": Field("Reason", _job_reason_cell,
                    reads=("state", "reason", "end_reason", "idle_since")),
    "ExitCode": Field("ExitCode", job_exit_code, True, reads=("exit_code", "exit_signal")),
    "Submit": Field("Submit", _time_of("submit_time")),
    "Start": Field("Start", _time_of("start_time")),
    "End": Field("End", _time_of("end_time")),
    "Elapsed": Field("Elapsed", lambda j, now: clock(elapsed(j, now)), True,
                     reads=("start_time", "end_time", "state")),
    "Timelimit": Field("Timelimit", shown("time_limit", lambda v: time_limit(v, clock)), True),
    "NNodes": Field("NNodes", getter("nodes"), True),
    "AllocCPUS": Field("AllocCPUS", shown("alloc_cpus", count), True),
    "ReqCPUS": Field("ReqCPUS", shown("req_cpus", count), True),
    "ReqMem": Field("ReqMem", shown("req_mem_mb", memory), True),
    "AllocGPUs": Field("AllocGPUs", shown("alloc_gpus", count), True),
    "ReqGPUs": Field("ReqGPUs", shown("req_gpus", count), True),
    "NodeList": Field("NodeList", shown("nodelist", lambda v: v or "None assigned")),
    "MaxRSS": Field("MaxRSS", shown("max_rss_kb", rss), True),
    "TotalCPU": Field("TotalCPU", shown("total_cpu_s", cpu_time), True),
    "GPUUtil": Field("GPUUtil", shown("gpu_util", percent), True),
    "MaxGPUMem": Field("MaxGPUMem", shown("gpu_mem_peak_mb", memory), True),
    "GPUEnergy": Field("GPUEnergy", shown("gpu_energy_j", energy), True),
    # how long the job's GPUs sat idle (rmsbatch.ctld.idlegpu), and the GPU-hours that is
    "GPUIdle": Field("GPUIdle", shown("gpu_idle_s", lambda v: "" if v is None else clock(v)),
                     True),
    "IdleGPUHours": Field("IdleGPUHours", _idle_gpu_hours, True,
                          reads=("gpu_idle_s", "alloc_gpus")),
    "ReqGPUMem": Field("ReqGPUMem", shown("gpu_mem_mb", memory), True),
    "Priority": Field("Priority", getter("priority"), True),
    "WorkDir": Field("WorkDir", getter("workdir")),
    # what a job cost (rmsbatch.acct): billing units per hour and GPU types are fixed
    # when it starts; the rest grows with its elapsed time while it runs
    "CPUTime": Field("CPUTime", lambda j, now: clock(_held(j, now, "alloc_cpus")), True,
                     reads=_HELD_READS + ("alloc_cpus",)),
    "CPUTimeRAW": Field("CPUTimeRAW", lambda j, now: str(int(_held(j, now, "alloc_cpus"))),
                        True, reads=_HELD_READS + ("alloc_cpus",)),
    "GPUHours": Field("GPUHours", lambda j, now: _hours(_held(j, now, "alloc_gpus")), True,
                      reads=_HELD_READS + ("alloc_gpus",)),
    "Billing": Field("Billing", lambda j, now: _hours(_held(j, now, "billing")), True,
                     reads=_HELD_READS + ("billing",)),
    "Planned": Field("Planned", lambda j, now: _waited(j, now), True,
                     reads=("submit_time", "begin_time", "start_time", "state")),
    "Restarts": Field("Restarts", getter("restart_count"), True),
    "GPUType": Field("GPUType", shown("alloc_gpu_type", lambda v: v or "")),
    "Tenant": Field("Tenant", lambda j, now: j.get("tenant_path") or j.get("account") or "",
                    reads=("tenant_path", "account")),
}
SACCT_ALIASES = {"QoS": "QOS", "NodeName": "NodeList", "JobIDRaw": "JobID",
                 "Reserved": "Planned", "Wait": "Planned"}
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

