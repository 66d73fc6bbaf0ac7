"""Ops on jobs: submit, list, wait for, cancel or signal, hold and release."""
from __future__ import annotations

import logging

from rmsbatch.core import arrayspec, hostlist
from rmsbatch.core import dependency as deps
from rmsbatch.core.jobspec import JobSpec
from rmsbatch.core.states import FINISHED, JobState, parse_state
from rmsbatch.ctld import requests
from rmsbatch.ctld.requests import RequestError
from rmsbatch.ctld.ops import USER, op
from rmsbatch.ctld.listings import Encoded
from rmsbatch.ctld.records import PROJECTABLE, job_record
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.admission import account_chain, admit, check_submit_count

log = logging.getLogger("rmsbatch.controller")

SELECTED = ["id", "user", "state", "hold", "restart_count", "alloc", "array_job_id",
            "array_task_id"]
ACTIVE_STATES = [JobState.PENDING.value, JobState.RUNNING.value, JobState.COMPLETING.value]
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15,
           "CONT": 18, "STOP": 19, "TSTP": 20, "ALRM": 14}


def _error(text: str) -> RequestError:
    return RequestError(text)


def tenant_path(cfg, account: str) -> str:
    """The account and its parents, top first ("nlp/nlp-translation"): kept with the
    job, so reports group by tenant as it was when the job was submitted."""
    acct = cfg.account_named(account)
    if acct is None:
        return account
    return "/".join(a.name for a in reversed(account_chain(cfg, acct)))


def _states(names: list[str]) -> list[str]:
    try:
        return [parse_state(s).value for s in names]
    except ValueError as exc:
        raise _error(str(exc)) from None


# -- submit -----------------------------------------------------------------------------
@op("submit", model=requests.Submit, role=USER, audit=True)
def submit(ctl, conn, req: requests.Submit) -> dict:
    user = ctl.user_name(conn.uid)
    spec = JobSpec.from_dict(req.spec)
    cc = ctl.config.cluster.controller
    if spec.nice < 0 and not ctl.is_privileged(conn):
        raise _error(f"--nice={spec.nice}: only operators and admins may raise a job's "
                     "priority; use a value of 0 or more")
    row = admit(spec, user, conn.uid, conn.gid, ctl.config, ctl.nodes, ctl.clock(),
                ctl.windows())
    owner = _single_user_owner(ctl, row["partition"])
    if owner is not None and owner != conn.uid:
        who = _name_or_uid(ctl, owner)
        raise _error(f"partition {row['partition']} runs jobs only as {who} (its node daemons "
                     f"run unprivileged, in single-user mode): submit as {who}, or ask an "
                     "admin to run rmsd as root")
    task_ids, throttle = _array_tasks(spec, cc)
    if len(ctl.pending) + len(ctl.running) + max(1, len(task_ids)) > cc.max_jobs:
        more = f" for {len(task_ids)} more" if task_ids else ""
        raise _error(f"the queue is full ({cc.max_jobs} active jobs{more}): try again later")
    _check_submit_limits(ctl, row, max(1, len(task_ids)))
    row.update(dependency=_checked_dependency(ctl, conn, spec), begin_time=spec.begin,
               array_spec=spec.array, array_throttle=throttle,
               tenant_path=tenant_path(ctl.config, row["account"]))
    if not task_ids:
        job_id = ctl.spool.insert_job(row, spec.to_dict())
        row["id"] = job_id
        ctl.add_pending(row)
        ctl.limit_charges.submitted(ctl, row, 1)
        if not spec.hold:
            ctl.fresh.append(job_id)
        log.info("job %d: submitted by %s (%s, partition %s)", job_id, user, row["name"],
                 row["partition"])
        return {"job_id": job_id}
    ids = ctl.spool.insert_array(row, spec.to_dict(), task_ids)
    ctl.add_array(row, ids, task_ids)
    ctl.limit_charges.submitted(ctl, row, len(ids))
    if not spec.hold:
        ctl.fresh.extend(ids)
    log.info("job %d: array of %d tasks (%s) submitted by %s (%s, partition %s)", ids[0],
             len(ids), spec.array, user, row["name"], row["partition"])
    return {"job_id": ids[0], "tasks": len(ids)}


def _check_submit_limits(ctl, row: dict, adding: int) -> None:
    """max_submit_per_user (QoS) and max_submit (account): counted only where set."""
    qos, acct = ctl.config.qos_named(row["qos"]), ctl.config.account_named(row["account"])
    if qos.max_submit_per_user is None and acct.max_submit is None:
        return
    mine, account = ctl.limit_charges.active_counts(ctl, row["user"], row["qos"], row["account"])
    check_submit_count(qos, acct, row["user"], mine, account, adding)


def _array_tasks(spec: JobSpec, cc) -> tuple[list[int], int]:
    if spec.array is None:
        return [], 0
    try:
        return arrayspec.parse(spec.array, cc.max_array_size)
    except arrayspec.ArraySpecError as exc:
        raise _error(f"--array={spec.array}: {exc}") from None


def _checked_dependency(ctl, conn, spec: JobSpec) -> str | None:
    """The dependency as stored; refused if it names a job that does not exist, or one
    the submitter may not see."""
    if spec.dependency is None:
        return None
    try:
        dep = deps.parse(spec.dependency)
    except deps.DependencyError as exc:
        raise _error(f"--dependency={spec.dependency}: {exc}") from None
    ids = sorted(dep.job_ids())
    if not ids:
        return dep.text()
    rows = ctl.spool.jobs(ids=ids, columns=["id", "user", "array_job_id", "array_task_id"])
    caller = ctl.user_name(conn.uid)
    hidden = ctl.config.tenants.private_jobs and not ctl.is_privileged(conn)
    jobs = {r[0]: r for r in rows if not (hidden and r[1] != caller)}
    masters = {r[2] for r in jobs.values() if r[2] is not None}
    tasks = {(r[2], r[3]) for r in jobs.values() if r[2] is not None}
    for _, targets in dep.clauses:
        for t in targets:
            known = (t.job_id in jobs or t.job_id in masters) if t.task is None \
                else (t.job_id, t.task) in tasks
            if not known:
                raise _error(f"--dependency={spec.dependency}: job {t.text().split('+')[0]} "
                             "does not exist (or is not yours to see): check the id with "
                             "rq -t all or rsacct")
    return dep.text()


def _single_user_owner(ctl, partition: str) -> int | None:
    """The uid every node of the partition runs jobs as, when all of them run their
    node daemon unprivileged (so no other user's job could start there)."""
    owners = set()
    for name in ctl.config.partition_nodes[partition]:
        inv = ctl.node_status[name].inventory
        uid = inv.get("single_user_uid") if isinstance(inv, dict) else None
        if not isinstance(uid, int):
            return None          # root, or not registered yet: anyone may wait for it
        owners.add(uid)
    return owners.pop() if len(owners) == 1 else None


def _name_or_uid(ctl, uid: int) -> str:
    try:
        return ctl.user_name(uid)
    except Exception:   # noqa: BLE001 - only for a message
        return f"uid {uid}"


# -- queries ------------------------------------------------------------------------
@op("jobs", model=requests.Jobs, role=USER)
def jobs(ctl, conn, req: requests.Jobs) -> dict:
    users, ids = list(req.users), list(req.ids)
    own_only = False
    if req.all_users is not None:   # accounting-style query: own jobs unless asked
        from rmsbatch.ctld.ops.acct import accounting_users
        users = accounting_users(ctl, conn, users, req.all_users, bool(ids or req.array_tasks))
    elif ctl.config.tenants.private_jobs and not ctl.is_privileged(conn):
        own_only = True
    states = _states(req.states)
    if req.active and not states:
        states = ACTIVE_STATES
    if req.finished and not states:
        states = [s.value for s in FINISHED]
    query = dict(ids=ids, array_tasks=req.array_tasks,
                 users=[ctl.user_name(conn.uid)] if own_only else users, accounts=req.accounts,
                 partitions=req.partitions, states=states, names=req.names,
                 start_after=req.start_after, end_before=req.end_before)
    if req.fields and not req.nodes:
        # Listings of thousands of jobs: only the columns asked for, as rows.
        unknown = [f for f in req.fields if f not in PROJECTABLE and f not in PLANNED]
        if unknown:
            raise _error(f"unknown job field(s): {', '.join(unknown)}")
        planned = [f for f in req.fields if f in PLANNED]
        if not planned:
            return _warned(ctl, conn, req, ctl.listings.reply(query, list(req.fields)))
        stored = [f for f in req.fields if f not in PLANNED]
        rows = ctl.spool.jobs(**query, columns=["id"] + stored)
        rows = [list(r[1:]) + [_planned(ctl, r[0], f) for f in planned] for r in rows]
        return {"columns": stored + planned, "rows": rows}
    rows = ctl.spool.jobs(**query)
    if req.nodes:
        try:
            wanted = {n for spec in req.nodes for n in hostlist.expand(spec)}
        except ValueError as exc:
            raise _error(f"nodes: {exc}") from None
        rows = [r for r in rows if set(hostlist.expand(r["nodelist"])) & wanted]
    records = [job_record(r) for r in rows]
    for rec in records:
        for name in PLANNED:
            rec[name] = _planned(ctl, rec["id"], name)
    return {"jobs": records}


def _warned(ctl, conn, req, reply):
    """rq's listing, with a line per budget of the caller's accounts at or past its
    warning mark (rmsbatch.ctld.budgets). The listing may be a cached encoded reply,
    shared by every caller: the warnings go after it, not into it."""
    if not ctl.budgets.active or req.all_users is not None:
        return reply
    lines = ctl.budgets.warnings(ctl.user_name(conn.uid), ctl.clock(), ctl.running)
    if not lines:
        return reply
    data = getattr(reply, "data", None)
    if data is None:
        return {**reply, "warnings": lines}
    return Encoded.spliced(reply, {"warnings": lines})


# What the last scheduling pass planned for a waiting job, beside its stored fields:
# its expected start (None: unknown) and every reason it waits for (its first one is
# the stored `reason`).
PLANNED = ("est_start", "reasons")


def _planned(ctl, job_id: int, name: str):
    if job_id not in ctl.pending:
        return None
    if name == "est_start":
        return ctl.est_start.get(job_id)
    first = ctl.reasons.get(job_id)
    return [first] + ctl.more_reasons.get(job_id, []) if first else []


@op("wait", model=requests.Wait, role=USER)
def wait(ctl, conn, req: requests.Wait) -> dict | None:
    row = ctl.spool.job(req.job_id)
    if row is None:
        raise _error(f"job {req.job_id} not found")
    if JobState(row["state"]).is_finished:
        return {"job": job_record(row)}
    ctl.waiters.setdefault(req.job_id, []).append(conn)
    return None


# -- cancel, hold, release ---------------------------------------------------------------
def _select(ctl, conn, req: requests.JobFilter, verb: str) -> tuple[list[dict], list[str]]:
    filters = {"users": req.users, "accounts": req.accounts, "partitions": req.partitions,
               "names": req.names}
    states = _states(req.states)
    if not req.ids and not req.array_tasks and not any(filters.values()) and not states:
        raise _error(f"{verb}: name job ids or a filter")
    caller = ctl.user_name(conn.uid)
    privileged = ctl.is_privileged(conn)
    others = sorted(set(req.users) - {caller})
    if others and not privileged:
        raise _error(f"{verb}: permission denied for the jobs of {', '.join(others)} (you may "
                     f"{verb} only your own jobs)")
    # only what acting on them needs: a whole array is 10,000s of rows
    rows = [dict(zip(SELECTED, r)) for r in ctl.spool.jobs(
        ids=req.ids, array_tasks=req.array_tasks, states=states or ACTIVE_STATES,
        columns=SELECTED, **filters)]
    errors = _not_found(ctl, req, rows)
    mine = []
    for r in rows:
        if r["user"] != caller and not privileged:
            if req.ids or req.array_tasks:  # only complain about jobs named explicitly
                errors.append(f"{verb} job {r['id']}: permission denied (job belongs to "
                              f"{r['user']}; you may {verb} only your own jobs)")
            continue
        mine.append(r)
    return mine, errors


def _not_found(ctl, req: requests.JobFilter, rows: list[dict]) -> list[str]:
    """Errors for the ids and array tasks named that matched no active job."""
    found = {r["id"] for r in rows} | {r["array_job_id"] for r in rows}
    tasks = {(r["array_job_id"], r["array_task_id"]) for r in rows}
    errors = []
    for i in req.ids:
        if i not in found:
            row = ctl.spool.job(i)
            errors.append(f"job {i} not found" if row is None
                          else f"job {i} has already finished ({row['state']})")
    for array_id, task in req.array_tasks:
        if (array_id, task) not in tasks:
            known = ctl.spool.jobs(array_tasks=[(array_id, task)], columns=["state"])
            errors.append(f"job {array_id}_{task} not found" if not known
                          else f"job {array_id}_{task} has already finished ({known[0][0]})")
    return errors


def _signal_number(sig) -> int:
    if isinstance(sig, int) and not isinstance(sig, bool):
        if 1 <= sig <= 64:
            return sig
    elif isinstance(sig, str):
        name = sig.upper().removeprefix("SIG")
        if name.isdigit() and 1 <= int(name) <= 64:
            return int(name)
        if name in SIGNALS:
            return SIGNALS[name]
    raise _error(f"invalid signal {sig!r} (use a name such as USR1 or a number)")


@op("cancel", model=requests.Cancel, role=USER, audit=True)
def cancel(ctl, conn, req: requests.Cancel) -> dict:
    signum = _signal_number(req.signal) if req.signal not in (None, "") else None
    rows, errors = _select(ctl, conn, req, "cancel")
    now = ctl.clock()
    cancelled, signalled, pending = [], [], []
    for row in rows:
        job_id = row["id"]
        state = JobState(row["state"])
        if signum is not None:
            if state is JobState.PENDING:
                errors.append(f"job {job_id} is pending: it has no processes to signal")
                continue
            message = {"op": "signal", "job_id": job_id, "run": row["restart_count"],
                       "signal": signum, "scope": req.scope}
            for name in (ctl.running.get(job_id) or {}):
                ctl.to_node(name, message)
            signalled.append(job_id)
            continue
        if state is JobState.PENDING:
            pending.append(job_id)      # all at once below: arrays run to 10,000s
        elif state is JobState.RUNNING:
            if ctl.spool.transition(job_id, JobState.COMPLETING, cancel_requested=1):
                ctl.changes += 1
                ctl.stop_run(row)
                cancelled.append(job_id)
        else:
            cancelled.append(job_id)  # already completing
    if pending:
        cancelled += ctl.finish_pending(pending, JobState.CANCELLED, end_time=now,
                                        reason="None", end_reason="cancelled while pending")
        cancelled.sort()
    if cancelled:
        log.info("jobs %s: cancelled by uid %d", arrayspec.fold(cancelled), conn.uid)
    ctl.dirty = True
    return {"cancelled": cancelled, "signalled": signalled, "errors": errors}


def _set_hold(ctl, conn, req: requests.JobFilter, hold: bool) -> dict:
    verb = "hold" if hold else "release"
    rows, errors = _select(ctl, conn, req, verb)
    caller = ctl.user_name(conn.uid)
    admin = ctl.is_privileged(conn)
    changed = []
    for row in rows:
        if row["state"] != JobState.PENDING.value:
            errors.append(f"job {row['id']} is not pending ({row['state']})")
            continue
        if not hold and row["hold"] == 2 and not admin:
            errors.append(f"job {row['id']} was held by an administrator: ask one to release it")
            continue
        value = (2 if admin and row["user"] != caller else 1) if hold else 0
        reason = {0: "None", 1: scheduler.HELD_USER, 2: scheduler.HELD_ADMIN}[value]
        ctl.spool.update_job(row["id"], hold=value, reason=reason)
        ctl.pending[row["id"]].hold = value
        ctl.reasons[row["id"]] = reason
        ctl.changes += 1
        changed.append(row["id"])
    ctl.dirty = True
    return {"changed": changed, "errors": errors}


@op("hold", model=requests.JobFilter, role=USER, audit=True)
def hold(ctl, conn, req) -> dict:
    return _set_hold(ctl, conn, req, True)


@op("release", model=requests.JobFilter, role=USER, audit=True)
def release(ctl, conn, req) -> dict:
    return _set_hold(ctl, conn, req, False)
