"""`rsacct -X -P` lines written by SQLite: the fast path for listings of a million jobs.

Formatting a million records in Python (a dict each, a call per cell) took longer than
reading them; the same text built by SQLite's own string functions costs a fraction.
Only fields whose text SQL can reproduce exactly are here, and only for parsable
output without step lines; anything else takes the ordinary path (rmsbatch.cli.layout),
and a test holds the two to the same output, field by field. Timestamps are not here:
the controller's time zone need not be the user's.

Pending array tasks fold into one line (`12_[5-99]`) in the ordinary path; a page that
holds one says so and the client starts over on the ordinary path.
"""
from __future__ import annotations

# Elapsed and time-limit seconds, whole (as the Python path truncates them), computed
# once per row in the inner query.
_ELAPSED = ("CAST(CASE WHEN start_time IS NULL OR start_time = 0 OR state = 'PENDING' "
            "THEN 0 ELSE MAX(0, COALESCE(NULLIF(end_time, 0), :now) - start_time) END "
            "AS INTEGER)")


def _clock(e: str) -> str:
    """rmsbatch.cli.layout.clock in SQL: HH:MM:SS, or D-HH:MM:SS from a day on."""
    return (f"CASE WHEN {e} < 86400 THEN printf('%02d:%02d:%02d', {e} / 3600, "
            f"{e} % 3600 / 60, {e} % 60) ELSE printf('%d-%02d:%02d:%02d', {e} / 86400, "
            f"{e} % 86400 / 3600, {e} % 3600 / 60, {e} % 60) END")


def _text(column: str) -> str:
    return f"COALESCE(CAST({column} AS TEXT), '')"


def _count(column: str) -> str:
    return f"CAST(COALESCE(NULLIF({column}, 0), 0) AS TEXT)"


SQL_FIELDS: dict[str, str] = {
    "JobID": ("CASE WHEN array_job_id IS NOT NULL AND array_task_id IS NOT NULL "
              "THEN array_job_id || '_' || array_task_id ELSE CAST(id AS TEXT) END"),
    "JobName": _text("name"),
    "User": _text("user"),
    "UID": _text("uid"),
    "Account": _text("account"),
    "Partition": _text("partition"),
    "QOS": _text("qos"),
    "State": _text("state"),
    "ExitCode": "COALESCE(NULLIF(exit_code, 0), 0) || ':' || COALESCE(NULLIF(exit_signal, 0), 0)",
    "Elapsed": _clock("_elapsed"),
    "Timelimit": f"CASE WHEN COALESCE(time_limit, 0) = 0 THEN 'UNLIMITED' ELSE "
                 f"{_clock('CAST(time_limit AS INTEGER)')} END",
    "NNodes": _text("nodes"),
    "AllocCPUS": _count("alloc_cpus"),
    "ReqCPUS": _count("req_cpus"),
    "AllocGPUs": _count("alloc_gpus"),
    "ReqGPUs": _count("req_gpus"),
    "NodeList": "CASE WHEN COALESCE(nodelist, '') = '' THEN 'None assigned' ELSE nodelist END",
    "Tenant": "COALESCE(NULLIF(tenant_path, ''), account, '')",
    "Restarts": _text("restart_count"),
    "GPUType": "COALESCE(alloc_gpu_type, '')",
}


# The columns each field reads, for the narrow inner query (job rows are wide).
READS: dict[str, tuple[str, ...]] = {
    "JobID": ("id", "array_job_id", "array_task_id"), "JobName": ("name",),
    "User": ("user",), "UID": ("uid",), "Account": ("account",),
    "Partition": ("partition",), "QOS": ("qos",), "State": ("state",),
    "ExitCode": ("exit_code", "exit_signal"), "Elapsed": ("_elapsed",),
    "Timelimit": ("time_limit",), "NNodes": ("nodes",), "AllocCPUS": ("alloc_cpus",),
    "ReqCPUS": ("req_cpus",), "AllocGPUs": ("alloc_gpus",), "ReqGPUs": ("req_gpus",),
    "NodeList": ("nodelist",), "Tenant": ("tenant_path", "account"),
    "Restarts": ("restart_count",), "GPUType": ("alloc_gpu_type",),
}


def inner_columns(names: list[str]) -> list[str]:
    """What the inner query selects: the fields' columns, and what the paging and the
    pending-task check read."""
    cols = {"id": None, "array_task_id": None, "state": None}
    for n in names:
        cols.update(dict.fromkeys(c for c in READS[n] if c != "_elapsed"))
    return list(cols)


def supported(names: list[str]) -> bool:
    return bool(names) and all(n in SQL_FIELDS for n in names)


def line_expression(names: list[str], trailing: bool) -> str:
    """The SQL text of one output line for these fields (all `supported`); the
    separator is the parameter :sep, the time for running jobs' Elapsed :now."""
    expr = " || :sep || ".join(f"({SQL_FIELDS[n]})" for n in names)
    return expr + (" || :sep" if trailing else "")


ELAPSED = _ELAPSED
