"""Read-only ops on priority and fair-share: `shares` (rshare) and `priorities`
(rq --priority, rcontrol show job). Both compute from the controller's usage as it is
now, so what they show is what the next pass would use."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from rmsbatch.ctld import requests
from rmsbatch.ctld.ops import USER, op
from rmsbatch.ctld.requests import RequestError
from rmsbatch.sched import fairshare, priority

Shares = Annotated[int, Field(strict=True, ge=0, le=1 << 31)]


class SharesRequest(requests.Request):
    accounts: requests.Names = []
    users: requests.Names = []
    all_users: bool = False
    what_if: Annotated[dict[requests.Name, Shares], Field(max_length=10_000)] = {}


class PrioritiesRequest(requests.JobFilter):
    pass


def _subtree(rows: list, wanted: set[str]) -> set[str]:
    """The accounts named and every account below them (rows are depth first)."""
    keep, inside = set(), None
    for r in rows:
        if r.user is not None:
            continue
        if inside is not None and r.depth <= inside:
            inside = None
        if inside is None and r.account in wanted:
            inside = r.depth
        if inside is not None:
            keep.add(r.account)
    return keep


@op("shares", model=SharesRequest, role=USER)
def shares(ctl, conn, req: SharesRequest) -> dict:
    caller = ctl.user_name(conn.uid)
    known = {a.name for a in ctl.config.tenants.accounts}
    for name in list(req.accounts) + list(req.what_if):
        if name not in known:
            raise RequestError(f"no account {name!r} in tenants.toml (accounts: "
                               f"{', '.join(sorted(known))})")
    now = ctl.clock()
    extra = {(j.account, j.user) for j in ctl.pending.values()}
    try:
        rows = ctl.usage.shares(now, dict(req.what_if), extra)
    except fairshare.UnknownAccount as exc:
        raise RequestError(f"no account {exc} in tenants.toml") from None
    private = ctl.config.tenants.private_accounting and not ctl.is_privileged(conn)
    users = set(req.users)
    if private and (req.all_users or users - {caller}):
        raise RequestError("only operators and admins may see other users' usage "
                           "(tenants.toml: private_accounting)")
    keep = _subtree(rows, set(req.accounts)) if req.accounts else None
    out = []
    for r in rows:
        if keep is not None and r.account not in keep:
            continue
        if r.user is not None and not req.all_users and r.user not in (users or {caller}):
            continue
        out.append(r.as_dict())
    return {"rows": out, "what_if": dict(req.what_if),
            "half_life": ctl.usage.half_life, "now": now}


@op("priorities", model=PrioritiesRequest, role=USER)
def priorities(ctl, conn, req: PrioritiesRequest) -> dict:
    caller = ctl.user_name(conn.uid)
    own_only = ctl.config.tenants.private_jobs and not ctl.is_privileged(conn)
    ids, users = set(req.ids), set(req.users)
    tasks = {tuple(t) for t in req.array_tasks}
    accounts, parts = set(req.accounts), set(req.partitions)
    chosen = [j for j in ctl.pending.values()
              if ((not ids and not tasks) or j.id in ids or j.array_job_id in ids
                  or (j.array_job_id, j.array_task_id) in tasks)
              and (not users or j.user in users) and (not accounts or j.account in accounts)
              and (not parts or j.partition in parts) and (not own_only or j.user == caller)]
    now = ctl.clock()
    ctx = ctl.usage.context(now, ctl.pending.values())
    w = ctx.weights
    out = []
    for job in sorted(chosen, key=lambda j: j.id):
        shown = priority.explain(job, now, ctx)
        shown.update(id=job.id, user=job.user, account=job.account, partition=job.partition,
                     qos=job.qos, pending_s=max(0.0, now - job.submit_time),
                     array_job_id=job.array_job_id, array_task_id=job.array_task_id)
        out.append(shown)
    return {"jobs": out, "weights": {n: w.weight(n) for n in priority.NAMES},
            "max_age": w.max_age, "favor_small": w.favor_small}
