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

# Elapsed seconds, whole (as the Python path truncates them). Inline in the line's
# expression: a subquery computing it once per row measured slower than evaluating it
# in each branch of the clock.
_ELAPSED = ("CAST(CASE WHEN start_time IS NULL OR start_time = 0 OR state = 'PENDING' "
            "THEN 0 ELSE MAX(0, COALESCE(NULLIF(end_time, 0), :now) - start_time) END "
            "AS INTEGER)")


def _clock(e: str) -> str:
    """rmsbatch.cli.layout.clock in SQL: HH:MM:SS, or D-HH:MM:SS from a day on. SQLite's
    time() pads as clock does, and is one call where printf was four divisions: the
    seconds expression may be evaluated once per use."""
    return (f"CASE WHEN {e} < 86400 THEN time({e}, 'unixepoch') "
            f"ELSE ({e} / 86400) || '-' || time({e} % 86400, 'unixepoch') END")


def _plain(column: str) -> str:
    # NOT NULL in the spool (and so in its archives): no conversion needed per row
    return column


SQL_FIELDS: dict[str, str] = {
    "JobID": ("CASE WHEN array_job_id IS NOT NULL AND array_task_id IS NOT NULL "
              "THEN array_job_id || '_' || array_task_id ELSE CAST(id AS TEXT) END"),
    "JobName": _plain("name"),
    "User": _plain("user"),
    "UID": _plain("uid"),
    "Account": _plain("account"),
    "Partition": _plain("partition"),
    "QOS": _plain("qos"),
    "State": _plain("state"),
    "ExitCode": "COALESCE(NULLIF(exit_code, 0), 0) || ':' || COALESCE(NULLIF(exit_signal, 0), 0)",
    "Elapsed": _clock(f"({_ELAPSED})"),
    "Timelimit": f"CASE WHEN COALESCE(time_limit, 0) = 0 THEN 'UNLIMITED' ELSE "
                 f"{_clock('CAST(time_limit AS INTEGER)')} END",
    "NNodes": _plain("nodes"),
    "AllocCPUS": _plain("alloc_cpus"),
    "ReqCPUS": _plain("req_cpus"),
    "AllocGPUs": _plain("alloc_gpus"),
    "ReqGPUs": _plain("req_gpus"),
    "NodeList": "CASE WHEN COALESCE(nodelist, '') = '' THEN 'None assigned' ELSE nodelist END",
    "Tenant": "COALESCE(NULLIF(tenant_path, ''), account, '')",
    "Restarts": _plain("restart_count"),
    "GPUType": "COALESCE(alloc_gpu_type, '')",
}


def supported(names: list[str]) -> bool:
    return bool(names) and all(n in SQL_FIELDS for n in names)


def line_expression(names: list[str], trailing: bool) -> str:
    """The SQL text of one output line for these fields (all `supported`); the
    separator is the parameter :sep, the time for running jobs' Elapsed :now."""
    expr = " || :sep || ".join(f"({SQL_FIELDS[n]})" for n in names)
    return expr + (" || :sep" if trailing else "")

