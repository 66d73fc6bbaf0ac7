"""Advance reservations made at run time: `rcontrol create|update|delete reservation`
(operators and admins), `rcontrol show reservation` and `rinfo -T` (anyone).

Those of cluster.toml (`[[reservations]]`) are read-only here: they change with the
file. Runtime ones live in the spool (table `reservations`) and in the controller's
memory (`ctl.reservations`, rebuilt from the spool with everything else), so they
survive a restart or a kill -9 of rmsctld. A runtime reservation is dropped once its
end has passed (as Slurm does); one of cluster.toml is listed as ENDED until it is
taken out of the file.

A change re-places every pending job (its own reservation, and the others whose nodes
it stays off: rmsbatch.sched.jobrequest.place) and asks for a scheduling pass;
`tick`, from the controller's periodic check, asks for one whenever a reservation
starts or ends, and drops the ended ones.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
import pwd
import re
from typing import Annotated, Literal

from pydantic import Field

from rmsbatch.core import hostlist
from rmsbatch.core.units import format_time
from rmsbatch.ctld.ops import OPERATOR, USER, op
from rmsbatch.ctld.records import batch_node
from rmsbatch.ctld.requests import Epoch, Name, Names, Request, RequestError
from rmsbatch.sched import jobrequest
from rmsbatch.sched.jobrequest import FLAGS, IGNORE_JOBS, Window

log = logging.getLogger("rmsbatch.controller")

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# An explicit start a second in the past is "now" given to the second
PAST_SLACK_S = 1.0
Seconds = Annotated[int, Field(strict=True, ge=0, le=1 << 40)]


class ReservationFields(Request):
    """What create and update carry; None: not given (update keeps the old value)."""
    name: Name
    nodes: Name | None = None
    users: Names | None = None
    accounts: Names | None = None
    start: Epoch | Literal["now"] | None = None
    end: Epoch | None = None
    duration: Seconds | None = None     # 0: UNLIMITED
    flags: Names | None = None
    # instead of nodes: how many, or how many GPUs, the controller picks the nodes
    node_count: Annotated[int, Field(strict=True, ge=1, le=1 << 20)] | None = None
    gpus: Annotated[int, Field(strict=True, ge=1, le=1 << 24)] | None = None
    gpu_type: Name | None = None
    partition: Name | None = None


class ReservationName(Request):
    name: Name


class ShowReservations(Request):
    name: Name | None = None


# -- the controller's side ------------------------------------------------------------
def window_of(row: dict) -> Window:
    def split(text: str) -> frozenset:
        return frozenset(t for t in (text or "").split(",") if t)
    return Window(row["name"], frozenset(hostlist.expand(row["nodes"])), split(row["users"]),
                  split(row["accounts"]), row["start_time"], row["end_time"],
                  split(row["flags"]), runtime=True)


def load(spool) -> dict[str, Window]:
    """The runtime reservations the spool keeps, by name."""
    return {row["name"]: window_of(row) for row in spool.reservations()}


def refresh(ctl) -> None:
    """Reservations changed: every pending job's view of them, and a pass."""
    every = ctl.windows()
    for job in ctl.pending.values():
        jobrequest.place(job, every)
    ctl.changes += 1
    ctl.dirty = True


def tick(ctl, now: float) -> None:
    """From the periodic check: a pass when a reservation has started or ended since
    the last tick (jobs waiting for it may start, or those kept off its nodes); the
    runtime ones that have ended are dropped."""
    last = getattr(ctl, "reservations_seen", None)
    ctl.reservations_seen = now
    if last is None:        # the first tick: whatever began since the start-up pass
        ctl.dirty = True
        last = now
    for w in ctl.windows():
        if any(t is not None and last < t <= now for t in (w.start, w.end)):
            ctl.dirty = True
    ended = [w for w in ctl.reservations.values() if w.end is not None and w.end <= now]
    for w in ended:
        ctl.spool.delete_reservation(w.name)
        del ctl.reservations[w.name]
        log.info("reservation %s: ended at %s: dropped", w.name, _when(w.end))
    if ended:
        refresh(ctl)


def time_limit(ctl, limit: int, reservation: str | None, start: float) -> int:
    """A job's time limit as its node applies it (seconds, 0: none): a job running in
    a reservation that ends also ends then, as in Slurm (ResvOverRun=0), with the
    state TIMEOUT. The job's own limit stays what it asked for."""
    window = next((w for w in ctl.windows() if w.name == reservation), None) \
        if reservation else None
    if window is None or window.end is None:
        return limit
    left = max(1, math.ceil(window.end - start))
    return min(limit, left) if limit else left


def retime(ctl, name: str) -> None:
    """The reservation NAME moved its end, or is gone: its running jobs' nodes hear the
    limit that applies now, and backfill plans with it."""
    for job_id, alloc in list(ctl.running.items()):
        row = ctl.spool.job(job_id)
        if row is None or row["reservation"] != name:
            continue
        start = row["start_time"] or ctl.clock()
        seconds = time_limit(ctl, row["time_limit"], name, start)
        ctl.set_end(job_id, start, seconds)
        node = batch_node(alloc)
        if node is not None:
            ctl.to_node(node, {"op": "time_limit", "job_id": job_id,
                               "run": row["restart_count"], "seconds": seconds})
        log.info("job %d: time limit on its node now %s (reservation %s)", job_id,
                 format_time(seconds) if seconds else "UNLIMITED", name)


def record(w: Window, now: float, created_by: str = "", config=None) -> dict:
    """A reservation as `show` and `rinfo -T` get it."""
    if w.end is not None and w.end <= now:
        state = "ENDED"
    else:
        state = "ACTIVE" if w.active(now) else "INACTIVE"
    return {
        "name": w.name, "nodes": hostlist.compress(sorted(w.nodes)), "node_count": len(w.nodes),
        "users": sorted(w.users), "accounts": sorted(w.accounts), "start": w.start,
        "end": w.end, "duration": None if w.end is None or w.start is None else w.end - w.start,
        "flags": [f for f in FLAGS if f in w.flags], "state": state,
        "source": "rcontrol" if w.runtime else "cluster.toml", "created_by": created_by,
        **({} if config is None else {
            "cpus": sum(config.nodes[n].cpus for n in w.nodes if n in config.nodes),
            "gpus": sum(len(config.nodes[n].gpus) for n in w.nodes if n in config.nodes)}),
    }


# -- ops ---------------------------------------------------------------------------------
@op("reservations", model=ShowReservations, role=USER)
def show(ctl, conn, req: ShowReservations) -> dict:
    now = ctl.clock()
    every = ctl.windows()
    if req.name is not None:
        every = tuple(w for w in every if w.name == req.name)
        if not every:
            raise RequestError(_not_found(ctl, req.name))
    makers = {r["name"]: r["created_by"] for r in ctl.spool.reservations()}
    return {"reservations": [record(w, now, makers.get(w.name, ""), ctl.config)
                             for w in every]}


@op("create_reservation", model=ReservationFields, role=OPERATOR, audit=True)
def create(ctl, conn, req: ReservationFields) -> dict:
    now = ctl.clock()
    name = req.name
    if not NAME.match(name):
        raise RequestError(f"invalid reservation name {name!r}: use letters, digits, '_', "
                           "'.' and '-' (at most 64), starting with a letter or digit")
    if any(w.name == name for w in ctl.windows()):
        where = "cluster.toml" if name not in ctl.reservations else "rcontrol"
        raise RequestError(f"reservation {name} already exists (made in {where}): pick "
                           "another ReservationName, or update that one")
    if not _counted(name, req) and req.nodes is None:
        raise RequestError(f"no nodes for reservation {name}: give Nodes=HOSTLIST "
                           "(e.g. Nodes=gpu[001-004], or Nodes=ALL), NodeCnt=N or "
                           "TRES=gres/gpu=N")
    start = now if req.start in (None, "now") else req.start
    if req.start not in (None, "now"):
        _not_past(name, start, now)
    if req.end is None and req.duration is None:
        raise RequestError(f"no end for reservation {name}: give Duration=TIME, EndTime=TIME "
                           "or Duration=UNLIMITED")
    window = Window(name, frozenset(), _users(name, req.users or ()),
                    _accounts(ctl, name, req.accounts or ()), start,
                    _end(name, start, req.end, req.duration), _flags(name, req.flags or ()),
                    runtime=True)
    window = replace(window, nodes=_nodes(ctl, name, req.nodes) if req.nodes is not None
                     else _pick(ctl, window, req, now))
    _check(ctl, window, now)
    user = ctl.user_name(conn.uid)
    _store(ctl, window, user, now)
    log.info("reservation %s: created by %s: %s", name, user, _summary(window))
    return {"reservation": record(window, now, user, ctl.config)}


@op("update_reservation", model=ReservationFields, role=OPERATOR, audit=True)
def update(ctl, conn, req: ReservationFields) -> dict:
    now = ctl.clock()
    old = _runtime(ctl, req.name, "update")
    name = old.name
    start = old.start
    if req.start is not None:
        start = now if req.start == "now" else req.start
        if req.start != "now":
            _not_past(name, start, now)
    if req.end is not None or req.duration is not None:
        end = _end(name, start, req.end, req.duration)
    elif old.end is None:
        end = None
    else:       # a new start moves the whole reservation: its duration stays
        end = start + (old.end - old.start)
    window = Window(
        name, old.nodes if req.nodes is None else _nodes(ctl, name, req.nodes),
        old.users if req.users is None else _users(name, req.users),
        old.accounts if req.accounts is None else _accounts(ctl, name, req.accounts),
        start, end, old.flags if req.flags is None else _flags(name, req.flags), runtime=True)
    if _counted(name, req):
        window = replace(window, nodes=_pick(ctl, window, req, now))
    _check(ctl, window, now)
    user = ctl.user_name(conn.uid)
    stored = next(r for r in ctl.spool.reservations() if r["name"] == name)
    _store(ctl, window, stored["created_by"], stored["created_time"])
    log.info("reservation %s: updated by %s: %s", name, user, _summary(window))
    if window.end != old.end:
        retime(ctl, name)
    return {"reservation": record(window, now, config=ctl.config)}


@op("delete_reservation", model=ReservationName, role=OPERATOR, audit=True)
def delete(ctl, conn, req: ReservationName) -> dict:
    window = _runtime(ctl, req.name, "delete")
    ctl.spool.delete_reservation(window.name)
    del ctl.reservations[window.name]
    refresh(ctl)
    retime(ctl, window.name)        # its running jobs keep their own limits
    waiting = sorted(j.id for j in ctl.pending.values() if j.reservation == window.name)
    log.info("reservation %s: deleted by %s%s", window.name, ctl.user_name(conn.uid),
             f" (jobs {_ids(waiting)} still ask for it)" if waiting else "")
    return {"deleted": window.name, "waiting_jobs": waiting}


# -- checks ---------------------------------------------------------------------------------
def _runtime(ctl, name: str, verb: str) -> Window:
    if name in ctl.reservations:
        return ctl.reservations[name]
    if any(w.name == name for w in ctl.windows()):
        raise RequestError(f"cannot {verb} reservation {name}: it is defined in cluster.toml: "
                           "change it there (then rcontrol reconfigure)")
    raise RequestError(_not_found(ctl, name))


def _not_found(ctl, name: str) -> str:
    known = ", ".join(w.name for w in ctl.windows()) or "none"
    return f"reservation {name} not found (reservations: {known})"


def _not_past(name: str, start: float, now: float) -> None:
    if start < now - PAST_SLACK_S:
        raise RequestError(f"StartTime={_when(start)} on reservation {name} is in the past: "
                           "give StartTime=now or a later time")


def _end(name: str, start: float, end: float | None, duration: int | None) -> float | None:
    if end is not None and duration is not None:
        raise RequestError(f"both EndTime and Duration on reservation {name}: give one")
    if duration is not None:
        return None if duration == 0 else start + duration
    if end <= start:
        raise RequestError(f"EndTime={_when(end)} on reservation {name} is not after its "
                           f"StartTime={_when(start)}: give a later EndTime, or Duration=TIME")
    return end


def _nodes(ctl, name: str, text: str) -> frozenset:
    if text.strip().upper() == "ALL":
        return frozenset(ctl.config.nodes)
    try:
        names = hostlist.expand(text)
    except ValueError as exc:
        raise RequestError(f"Nodes={text} on reservation {name}: {exc}") from None
    unknown = [n for n in names if n not in ctl.config.nodes]
    if unknown or not names:
        raise RequestError(f"Nodes={text} on reservation {name}: no node named "
                           f"{unknown[0] if unknown else text!r} in this cluster: use nodes "
                           f"of {hostlist.compress(list(ctl.config.nodes))}")
    return frozenset(names)


def _counted(name: str, req: ReservationFields) -> bool:
    """Whether the request asks for a count of nodes or GPUs rather than named nodes."""
    counted = req.node_count is not None or req.gpus is not None
    if counted and req.nodes is not None:
        raise RequestError(f"both Nodes= and a count (NodeCnt= or TRES=) on reservation "
                           f"{name}: name the nodes, or give the count")
    if req.node_count is not None and req.gpus is not None:
        raise RequestError(f"both NodeCnt= and TRES=gres/gpu= on reservation {name}: give "
                           "one (the GPUs' nodes are reserved whole)")
    if not counted and (req.gpu_type is not None or req.partition is not None):
        raise RequestError(f"PartitionName= or a GPU type on reservation {name} without a "
                           "count: add NodeCnt=N or TRES=gres/gpu=N")
    return counted


def _pick(ctl, w: Window, req: ReservationFields, now: float) -> frozenset:
    """The nodes for a reservation of NodeCnt=N or TRES=gres/gpu[:TYPE]=N, as Slurm picks
    them: up and undrained, of the partition if one is given, reserved by no other
    reservation over the same time, and (unless IGNORE_JOBS) free of running jobs that
    may run past its start. Whole nodes: for GPUs, those with the most of them first
    (the fewest nodes), then the smallest node that still makes up the count last."""
    part = req.partition
    if part is not None and part not in ctl.config.partition_nodes:
        raise RequestError(f"PartitionName={part} on reservation {w.name}: no such partition "
                           f"(partitions: {', '.join(ctl.config.partition_nodes)})")
    names = ctl.config.partition_nodes[part] if part is not None else list(ctl.config.nodes)
    taken = set()
    for other in ctl.windows():
        if other.name != w.name and (other.end is None or other.end > now) and \
                w.overlaps(other.start if other.start is not None else -math.inf, other.end):
            taken |= other.nodes
    busy = set() if IGNORE_JOBS in w.flags else {
        n for job_id in _late_jobs(ctl, w, names) for n in ctl.running[job_id]}
    free = [n for n in sorted(names) if n not in taken and n not in busy
            and n in ctl.node_status and ctl.node_status[n].usable]
    where = f" in partition {part}" if part is not None else ""
    if req.node_count is not None:
        if len(free) < req.node_count:
            raise RequestError(
                f"NodeCnt={req.node_count} on reservation {w.name}: only {len(free)} node(s)"
                f"{where} are up and free of other reservations and of running jobs then: "
                "ask for fewer, another time, or give Flags=IGNORE_JOBS")
        return frozenset(free[:req.node_count])
    kind = req.gpu_type

    def gpus(n: str) -> int:
        return sum(1 for g in ctl.config.nodes[n].gpus if kind is None or g.type == kind)

    having = sorted((n for n in free if gpus(n)), key=lambda n: (-gpus(n), n))
    chosen, total = [], 0
    for n in having:
        if total >= req.gpus:
            break
        chosen.append(n)
        total += gpus(n)
    what = f"{kind} GPUs" if kind else "GPUs"
    if total < req.gpus:
        raise RequestError(
            f"TRES=gres/gpu{':' + kind if kind else ''}={req.gpus} on reservation {w.name}: "
            f"only {total} {what}{where} are on nodes up and free of other reservations and "
            "of running jobs then: ask for fewer, another time, or give Flags=IGNORE_JOBS")
    short = req.gpus - (total - gpus(chosen[-1]))
    smaller = [n for n in having if n not in chosen and short <= gpus(n) < gpus(chosen[-1])]
    if smaller:
        chosen[-1] = min(smaller, key=lambda n: (gpus(n), n))
    return frozenset(chosen)


def _users(name: str, users) -> frozenset:
    for user in users:
        if user == "*":
            continue
        try:
            pwd.getpwnam(user)
        except KeyError:
            raise RequestError(f"Users={','.join(users)} on reservation {name}: no user named "
                               f"{user} on the controller host: check the spelling") from None
    return frozenset(users)


def _accounts(ctl, name: str, accounts) -> frozenset:
    for account in accounts:
        if ctl.config.account_named(account) is None:
            raise RequestError(f"Accounts={','.join(accounts)} on reservation {name}: no "
                               f"account named {account} in tenants.toml")
    return frozenset(accounts)


def _flags(name: str, flags) -> frozenset:
    wanted = {f.strip().upper() for f in flags if f.strip()}
    unknown = sorted(wanted - set(FLAGS))
    if unknown:
        raise RequestError(f"Flags={','.join(flags)} on reservation {name}: unknown flag "
                           f"{unknown[0]} (flags: {', '.join(FLAGS)})")
    return frozenset(wanted)


def _check(ctl, w: Window, now: float) -> None:
    """What a new or changed reservation must not do: belong to nobody, share a node
    with another reservation at the same time, or (unless IGNORE_JOBS) start while
    running jobs still hold its nodes."""
    if not w.users and not w.accounts:
        raise RequestError(f"no users or accounts on reservation {w.name}: give "
                           "Users=NAME[,...] or Accounts=NAME[,...]")
    for other in ctl.windows():
        if other.name == w.name or not (other.nodes & w.nodes):
            continue
        if other.end is not None and other.end <= now:
            continue
        if w.overlaps(other.start if other.start is not None else -math.inf, other.end):
            shared = hostlist.compress(sorted(other.nodes & w.nodes))
            raise RequestError(f"Nodes={shared} on reservation {w.name}: already reserved by "
                               f"{other.name} ({_span(other)}): pick other nodes or times")
    if IGNORE_JOBS in w.flags:
        return
    late = _late_jobs(ctl, w, w.nodes)
    if late:
        raise RequestError(f"reservation {w.name}: running job(s) {_ids(late)} on its nodes "
                           f"may run past its start ({_when(w.start)}): start it later, wait "
                           "for them, or give Flags=IGNORE_JOBS")


def _late_jobs(ctl, w: Window, nodes) -> list[int]:
    """Running jobs on these nodes, not of the reservation, that may run past its start."""
    nodes = set(nodes)
    late = []
    for job_id, alloc in sorted(ctl.running.items()):
        if not nodes.intersection(alloc):
            continue
        row = ctl.spool.job(job_id)
        if row is None or row["reservation"] == w.name:
            continue
        ends = row["start_time"] + row["time_limit"] if row["time_limit"] else math.inf
        if ends > w.start:
            late.append(job_id)
    return late


def _store(ctl, w: Window, created_by: str, created_time: float) -> None:
    ctl.spool.put_reservation({
        "name": w.name, "nodes": hostlist.compress(sorted(w.nodes)),
        "users": ",".join(sorted(w.users)), "accounts": ",".join(sorted(w.accounts)),
        "start_time": w.start, "end_time": w.end, "flags": ",".join(sorted(w.flags)),
        "created_by": created_by, "created_time": created_time})
    ctl.reservations[w.name] = w
    refresh(ctl)


# -- words --------------------------------------------------------------------------------
def _when(epoch: float | None) -> str:
    import time
    return "never" if epoch is None else time.strftime("%Y-%m-%dT%H:%M:%S",
                                                       time.localtime(epoch))


def _span(w: Window) -> str:
    return f"{_when(w.start) if w.start is not None else 'now'} to " + (
        _when(w.end) if w.end is not None else "no end")


def _summary(w: Window) -> str:
    length = "UNLIMITED" if w.end is None else format_time(int(w.end - w.start))
    who = ",".join(sorted(w.users)) or "-"
    return (f"Nodes={hostlist.compress(sorted(w.nodes))} {_span(w)} (Duration={length}) "
            f"Users={who} Accounts={','.join(sorted(w.accounts)) or '-'} "
            f"Flags={','.join(sorted(w.flags)) or '-'}")


def _ids(ids: list[int]) -> str:
    shown = ",".join(map(str, ids[:10]))
    return shown + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
