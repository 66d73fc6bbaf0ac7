"""Accounting ops: job records page by page, steps, reports, the audit trail, budgets.

Each is checked here, on the controller's thread (who may see what, which fields),
and answered by an accounting worker (rmsbatch.ctld.acctlink): the scheduler never
waits for a query. Visibility follows tenants.toml: with private_accounting, ordinary
users see their own jobs and their own audit entries only.
"""
from __future__ import annotations

from rmsbatch.acct.store import GROUP_KEYS, TIME_KEYS
from rmsbatch.ctld import requests
from rmsbatch.ctld.ops import USER, op
from rmsbatch.ctld.ops.jobs import _states
from rmsbatch.ctld.records import PROJECTABLE
from rmsbatch.ctld.requests import RequestError


def accounting_users(ctl, conn, users: list[str], all_users: bool, named: bool) -> list[str]:
    """Whose jobs an accounting query covers: the caller's own unless it names users,
    jobs (`named`) or asks for all; refused where tenants.toml keeps accounting private
    and the caller is neither operator nor admin."""
    caller = ctl.user_name(conn.uid)
    users = list(users)
    if not all_users and not users and not named:
        users = [caller]
    if ctl.config.tenants.private_accounting and not ctl.is_privileged(conn):
        if all_users or set(users) - {caller}:
            raise RequestError("only operators and admins may see other users' jobs "
                               "(tenants.toml: private_accounting)")
        return [caller]
    return users


def _filters(ctl, conn, req: requests.AcctFilter, named: bool) -> dict:
    filters = {"users": accounting_users(ctl, conn, req.users, req.all_users, named),
               "accounts": list(req.accounts), "partitions": list(req.partitions),
               "states": _states(req.states), "names": list(req.names), "qos": list(req.qos),
               "ids": list(req.ids), "array_tasks": [list(t) for t in req.array_tasks]}
    if req.nodes:
        filters["nodes"] = list(req.nodes)
    return {k: v for k, v in filters.items() if v}


@op("acct_jobs", model=requests.AcctJobs, role=USER)
def acct_jobs(ctl, conn, req: requests.AcctJobs) -> dict | None:
    unknown = [f for f in req.fields if f not in PROJECTABLE]
    if unknown:
        raise RequestError(f"unknown job field(s): {', '.join(unknown)}")
    filters = _filters(ctl, conn, req, bool(req.ids or req.array_tasks))
    if req.start_after is not None:
        filters["start_after"] = req.start_after
    if req.end_before is not None:
        filters["end_before"] = req.end_before
    return ctl.acct.ask(conn, {"kind": "jobs", "filters": filters, "columns": list(req.fields),
                               "after": req.after, "limit": req.limit})


@op("acct_lines", model=requests.AcctLines, role=USER)
def acct_lines(ctl, conn, req: requests.AcctLines) -> dict | None:
    from rmsbatch.acct import lines
    if not lines.supported(list(req.show)) or req.nodes:
        raise RequestError(f"these fields are not on the fast path: use acct_jobs "
                           f"(fast: {', '.join(lines.SQL_FIELDS)})")
    filters = _filters(ctl, conn, req, bool(req.ids or req.array_tasks))
    for key in ("start_after", "end_before"):
        if getattr(req, key) is not None:
            filters[key] = getattr(req, key)
    return ctl.acct.ask(conn, {"kind": "lines", "filters": filters, "show": list(req.show),
                               "sep": req.sep, "trailing": req.trailing, "now": ctl.clock(),
                               "after": req.after, "before": req.before,
                               "limit": req.limit})


@op("acct_steps", model=requests.AcctSteps, role=USER)
def acct_steps(ctl, conn, req: requests.AcctSteps) -> dict | None:
    query = {"kind": "steps", "job_ids": list(req.job_ids)}
    if ctl.config.tenants.private_accounting and not ctl.is_privileged(conn):
        query["users"] = [ctl.user_name(conn.uid)]
    return ctl.acct.ask(conn, query)


@op("acct_report", model=requests.AcctReport, role=USER)
def acct_report(ctl, conn, req: requests.AcctReport) -> dict | None:
    bad = [k for k in req.group_by if k not in GROUP_KEYS and k not in TIME_KEYS]
    if bad:
        raise RequestError(f"cannot group by {', '.join(bad)} (use "
                           f"{', '.join([*GROUP_KEYS, *TIME_KEYS])})")
    if req.end <= req.start:
        raise RequestError("the report's end must be after its start")
    if ctl.config.tenants.private_accounting and not ctl.is_privileged(conn):
        # the caller's own jobs; naming someone else is refused
        filters = _filters(ctl, conn, req.model_copy(update={"all_users": False}), False)
    else:   # everyone's unless narrowed
        filters = _filters(ctl, conn, req.model_copy(update={"all_users": not req.users}),
                           True)
    return ctl.acct.ask(conn, {"kind": "report", "group_by": list(req.group_by),
                               "start": req.start, "end": req.end, "filters": filters,
                               "now": ctl.clock()})


@op("acct_audit", model=requests.AcctAudit, role=USER)
def acct_audit(ctl, conn, req: requests.AcctAudit) -> dict | None:
    users = list(req.users)
    if not ctl.is_privileged(conn):
        caller = ctl.user_name(conn.uid)
        if req.all_users or set(users) - {caller}:
            raise RequestError("only operators and admins may read other users' audit "
                               "records")
        users = [caller]
    filters = {"users": users, "ops": list(req.ops), "target": req.target,
               "start": req.start, "end": req.end, "failed": req.failed}
    return ctl.acct.ask(conn, {"kind": "audit", "filters": filters, "after": req.after,
                               "limit": req.limit})


@op("budgets", model=requests.Budgets, role=USER)
def budgets(ctl, conn, req: requests.Budgets) -> dict:
    """Each budgeted account's budget, use so far this period and state (rsacct report,
    rq's warnings): budgets are not secret to the account's users, and operators see all."""
    now = ctl.clock()
    rows = ctl.budgets.status(now, list(req.accounts) or None)
    if not ctl.is_privileged(conn):
        caller = ctl.user_name(conn.uid)
        mine = ctl.budgets.accounts_of(caller)
        rows = [r for r in rows if r["account"] in mine]
    return {"budgets": rows}
