"""`rcontrol update` for jobs, as `scontrol update JobId=...`: the words of the command
line turned into the fields of one "update_job" request.

    rcontrol update JobId=42 TimeLimit=1:00:00 Nice=100
    rcontrol update job 42,43 Partition=gpu QOS=high

Keys are case-insensitive; values as scontrol takes them (times as rsub --time:
`30`, `1:00:00`, `2-00:00:00`, `UNLIMITED`; `+30` or `-1:00:00` changes the limit
the job has; `Priority=N` pins the priority at N, `Priority=reset` returns it to its
factors). Which changes a user may make is the controller's to say
(rmsbatch.ctld.ops.control).
"""
from __future__ import annotations

import argparse

from rmsbatch.cli.arguments import job_id_list
from rmsbatch.core.units import UnitError, parse_time

# scontrol's key (lower-cased) -> the request field it sets
KEYS = {"timelimit": "time_limit", "partition": "partition", "qos": "qos",
        "account": "account", "priority": "priority", "nice": "nice"}
SHOWN = "TimeLimit, Partition, QOS, Account, Priority or Nice"


def is_job_update(items: list[str]) -> bool:
    """`update job 42 ...`, `update JobId=42 ...`: a job's update, not a node's."""
    if items and items[0].lower() in ("job", "jobid") and "=" not in items[0]:
        return True
    return any(item.partition("=")[0].strip().lower() == "jobid" for item in items)


def parse_job_update(items: list[str]) -> dict:
    """The request fields (`ids` and the changes). Raises ValueError with the message
    for a usage error."""
    items = list(items)
    ids_text = None
    if items and items[0].lower() in ("job", "jobid") and "=" not in items[0]:
        if len(items) < 2:
            raise ValueError("update job needs a job id: rcontrol update job 42 TimeLimit=30")
        ids_text, items = items[1], items[2:]
    fields: dict = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if not eq:
            raise ValueError(f"expected KEY=VALUE, got {item!r} (e.g. TimeLimit=1:00:00)")
        if key == "jobid":
            ids_text = value
            continue
        if key not in KEYS:
            raise ValueError(f"cannot update {key!r} of a job: use {SHOWN}")
        field, value, written = KEYS[key], value.strip(), item.partition("=")[0].strip()
        if field == "time_limit" and value[:1] in "+-":
            fields["time_limit_change"] = _change(written, value)
            continue
        fields[field] = _value(field, written, value)
    if not ids_text:
        raise ValueError("update needs the job: JobId=42")
    try:
        fields["ids"] = job_id_list(ids_text)
    except argparse.ArgumentTypeError as exc:
        raise ValueError(str(exc)) from None
    if len(fields) == 1:
        raise ValueError(f"nothing to update for job {ids_text}: give {SHOWN}, "
                         "e.g. TimeLimit=1:00:00")
    return fields


def _change(key: str, value: str) -> int:
    """TimeLimit=+30, TimeLimit=-1:00:00: seconds to add or take away."""
    try:
        seconds = parse_time(value[1:])
    except UnitError as exc:
        raise ValueError(f"{key}={value}: {exc}") from None
    if seconds == 0:
        raise ValueError(f"{key}={value}: a change must be a time such as +30 or -1:00:00")
    return seconds if value[0] == "+" else -seconds


def _value(field: str, key: str, value: str):
    if field == "time_limit":
        try:
            return parse_time(value)
        except UnitError as exc:
            raise ValueError(f"{key}={value}: {exc}") from None
    if field == "priority" and value.lower() == "reset":
        return "reset"          # unpinned: the job follows its factors again
    if field in ("priority", "nice"):
        text = value[1:] if value[:1] in "+-" and field == "nice" else value
        if not text.isascii() or not text.isdigit() or len(text) > 9:
            what = ("a whole number of 0 or more, or reset" if field == "priority"
                    else "a whole number")
            raise ValueError(f"{key}={value}: must be {what}")
        return int(value)
    if not value or any(c.isspace() for c in value):
        raise ValueError(f"{key}={value!r}: expected a name without spaces")
    return value
