"""Advance reservations on the command line: scontrol's `create|update|delete reservation`
and `show reservation` (rcontrol), and sinfo's `-T` table (rinfo).

Keys are scontrol's, case-insensitive: ReservationName (or Name), StartTime (now,
now+1hour, 2026-12-24T08:00:00: as rsub --begin reads them), EndTime, Duration
(minutes, HH:MM:SS, D-HH:MM:SS or UNLIMITED), Nodes (a host list, or ALL), or instead
NodeCnt=N or TRES=gres/gpu[:TYPE]=N (the controller picks whole nodes, of PartitionName
if given), Users, Accounts, Flags (MAINT, IGNORE_JOBS). Times are read on this host's clock and sent as
seconds since the epoch; `now` is sent as such, for the controller's clock.
"""
from __future__ import annotations

from rmsbatch.cli.details import render_details
from rmsbatch.cli.layout import Column, Layout, clock, getter, render_json, timestamp

KEYS = {"reservationname": "name", "reservation": "name", "name": "name",
        "starttime": "start", "endtime": "end", "duration": "duration", "nodes": "nodes",
        "nodelist": "nodes", "users": "users", "user": "users", "accounts": "accounts",
        "account": "accounts", "flags": "flags", "flag": "flags", "nodecnt": "node_count",
        "tres": "tres", "partitionname": "partition", "partition": "partition"}
NOT_YET = {
    "corecnt": "reserving cores (CoreCnt=) is not supported: reserve whole nodes with "
               "Nodes=HOSTLIST, NodeCnt=N or TRES=gres/gpu=N",
}
WORDS = ("reservation", "reservations", "res", "reservationname")


class ReservationArgError(ValueError):
    """A reservation's KEY=VALUE list that cannot be sent; the message says which."""


def is_reservation(settings: list[str]) -> bool:
    """`update reservation ...` or `update ReservationName=X ...`?"""
    return bool(settings) and settings[0].split("=", 1)[0].strip().lower() in WORDS


def parse(settings: list[str], verb: str, now: float | None = None) -> dict:
    """["ReservationName=maint", "Nodes=gpu01", ...] -> the request's fields."""
    import time

    from rmsbatch.core import begintime
    from rmsbatch.core.units import UnitError, parse_time
    now = time.time() if now is None else now
    items = list(settings)
    if items and items[0].lower() in ("reservation", "reservations", "res"):
        items = items[1:]
    fields: dict = {}
    for item in items:
        given, eq, value = item.partition("=")
        given = given.strip()
        key = given.lower()
        if not eq:
            raise ReservationArgError(f"{item!r} on {verb} reservation: expected KEY=VALUE "
                                      "(e.g. ReservationName=maint Nodes=gpu01)")
        if key in NOT_YET:
            raise ReservationArgError(f"{item} on {verb} reservation: {NOT_YET[key]}")
        if key not in KEYS:
            raise ReservationArgError(
                f"unknown key {given!r} on {verb} reservation: use ReservationName, StartTime, "
                "EndTime, Duration, Nodes (or NodeCnt, TRES, PartitionName), Users, Accounts "
                "or Flags")
        name = KEYS[key]
        if name in fields:
            raise ReservationArgError(f"{given} given twice on {verb} reservation: give it "
                                      "once")
        value = value.strip()
        try:
            if name == "start":
                fields[name] = "now" if value.lower() == "now" else begintime.parse(value, now)
            elif name == "end":
                fields[name] = begintime.parse(value, now)
            elif name == "duration":
                fields[name] = _duration(value, parse_time)
            elif name in ("users", "accounts", "flags"):
                fields[name] = [v.strip() for v in value.split(",") if v.strip()]
            elif name == "node_count":
                fields[name] = _count(value)
            elif name == "tres":
                fields.update(_tres(value))
            else:
                fields[name] = value
        except (ValueError, UnitError) as exc:
            raise ReservationArgError(f"{given}={value} on {verb} reservation: {exc}") from None
        if not value:
            raise ReservationArgError(f"{given}= on {verb} reservation is empty: give a value")
    if "name" not in fields:
        raise ReservationArgError(f"{verb} reservation needs ReservationName=NAME")
    return fields


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise ValueError("expected a count such as 4")
    return int(text)


def _tres(text: str) -> dict:
    """`gres/gpu=16`, `gres/gpu:h100=8`, `node=2` (scontrol's TRES=) -> request fields."""
    fields: dict = {}
    for item in (i.strip() for i in text.split(",") if i.strip()):
        kind, eq, count = item.partition("=")
        kind = kind.strip().lower()
        if not eq:
            raise ValueError(f"{item!r}: expected gres/gpu=COUNT, gres/gpu:TYPE=COUNT or "
                             "node=COUNT")
        if kind == "node":
            fields["node_count"] = _count(count.strip())
        elif kind == "gres/gpu" or kind.startswith("gres/gpu:"):
            fields["gpus"] = _count(count.strip())
            gpu_type = item.partition("=")[0].strip()[len("gres/gpu:"):]
            if gpu_type:
                fields["gpu_type"] = gpu_type
        else:
            raise ValueError(f"reserving {kind} is not supported: reserve GPUs "
                             "(gres/gpu=N) or nodes (node=N); nodes are reserved whole")
    return fields


def _duration(text: str, parse_time) -> int:
    seconds = parse_time(text)
    if seconds == 0 and text.strip().lower() not in ("unlimited", "infinite"):
        raise ValueError("a reservation lasts more than 0: give a time, or UNLIMITED")
    return seconds


# -- show ------------------------------------------------------------------------------
def _or_null(items) -> str:
    return ",".join(items) or "(null)"


def detail(r: dict) -> list[str]:
    """scontrol show reservation's block."""
    duration = _duration_text(r)
    end = "Unlimited" if r.get("end") is None else timestamp(r["end"])
    return [
        f"ReservationName={r['name']} StartTime={timestamp(r.get('start'))} EndTime={end} "
        f"Duration={duration}",
        f"Nodes={r['nodes']} NodeCnt={r['node_count']} Flags={_or_null(r.get('flags') or [])}"
        + (f" TRES=cpu={r['cpus']}" + (f",gres/gpu={r['gpus']}" if r["gpus"] else "")
           if "cpus" in r else ""),
        f"Users={_or_null(r.get('users') or [])} Accounts={_or_null(r.get('accounts') or [])} "
        f"State={r['state']}",
        f"Source={r.get('source')}" + (f" CreatedBy={r['created_by']}"
                                       if r.get("created_by") else ""),
    ]


def render_show(reservations: list[dict], as_json: bool = False,
                oneliner: bool = False) -> str:
    if as_json:
        return render_json("reservations", reservations)
    if not reservations:
        return "No reservations in the system"
    return render_details([detail(r) for r in reservations], oneliner)


def _duration_text(r: dict) -> str:
    if r.get("end") is None:
        return "UNLIMITED"
    # one of cluster.toml without a start has been active as long as the file said so
    return "n/a" if r.get("duration") is None else clock(r["duration"])


# -- rinfo -T ----------------------------------------------------------------------------
def _row(r: dict) -> dict:
    return {"name": r["name"], "state": r["state"], "start": timestamp(r.get("start")),
            "end": "Unlimited" if r.get("end") is None else timestamp(r["end"]),
            "duration": _duration_text(r),
            "nodes": r["nodes"]}


_TABLE = [("RESV_NAME", "name", False), ("STATE", "state", False),
          ("START_TIME", "start", True), ("END_TIME", "end", True),
          ("DURATION", "duration", True), ("NODELIST", "nodes", False)]


def render_table(reservations: list[dict], header: bool = True) -> str:
    if not reservations:
        return "No reservations in the system" if header else ""
    layout = Layout([Column(h, getter(k), None, right) for h, k, right in _TABLE])
    return layout.render([_row(r) for r in reservations], 0, header)


def maint_nodes(reservations: list[dict]) -> set[str]:
    """The nodes of active MAINT reservations: rinfo shows them as `maint`."""
    from rmsbatch.core.hostlist import expand
    out: set[str] = set()
    for r in reservations:
        if r.get("state") == "ACTIVE" and "MAINT" in (r.get("flags") or []):
            out.update(expand(r["nodes"]))
    return out
