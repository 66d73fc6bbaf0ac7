"""The audit trail: who asked for which change, from where, and what came of it.

Every request of an op registered with `audit=True` (submissions, cancellations,
holds, job updates, node drains, reservations, reconfiguration, ...) leaves one row in
the spool's audit table, refused ones included: a denied `rcontrol drain` is exactly
what an admin reading the trail looks for. The row is written in the request's own
transaction, so a change and its record are committed together or not at all.
`rsacct audit` reads them (through the accounting workers); retention archives them
with the jobs (rmsbatch.acct.archive).
"""
from __future__ import annotations

import json

MAX_REQUEST = 2000       # characters of the request kept
MAX_RESULT = 500
# Parts of a request not worth keeping (a job script) or not ours to keep (its env).
DROPPED = {"script", "env", "environment", "argv", "op", "auth", "credential"}


def origin(conn) -> str:
    host = conn.meta.get("host") or conn.meta.get("peer")
    if host:
        return f"{host} (MUNGE)"
    return f"local pid {conn.pid}" if conn.pid > 0 else "local"


def target(msg: dict, reply: dict) -> str:
    """What the request acted on, as people name it."""
    if isinstance(reply.get("job_id"), int):
        return f"job {reply['job_id']}"
    ids = msg.get("ids")
    if isinstance(ids, list) and ids:
        shown = ",".join(str(i) for i in ids[:20]) + (",..." if len(ids) > 20 else "")
        return f"job {shown}"
    if msg.get("array_tasks"):
        return "job " + ",".join(f"{a}_{t}" for a, t in msg["array_tasks"][:20])
    if isinstance(msg.get("nodes"), str):
        return f"node {msg['nodes']}"
    if isinstance(msg.get("name"), str):
        return f"reservation {msg['name']}"
    return ""


def _kept(value):
    if isinstance(value, dict):
        return {k: _kept(v) for k, v in value.items() if k not in DROPPED}
    return value


def _result(reply: dict) -> str:
    if not reply.get("ok", True):
        return str(reply.get("error", ""))[:MAX_RESULT]
    if refused(reply):
        return "; ".join(map(str, reply["errors"]))[:MAX_RESULT]
    shown = {k: v for k, v in reply.items() if k != "ok" and not isinstance(v, (list, dict))}
    for key, value in reply.items():
        if isinstance(value, list):
            shown[key] = len(value) if len(value) > 10 else value
    return json.dumps(shown, separators=(",", ":"), default=str)[:MAX_RESULT]


def refused(reply: dict) -> bool:
    """Refused outright, or (cancel, hold, ...) every job named answered with an error
    and nothing done."""
    if not reply.get("ok", True):
        return True
    errors = reply.get("errors")
    done = [v for k, v in reply.items() if k not in ("errors", "ok") and isinstance(v, list)]
    return bool(errors) and bool(done) and not any(done)


def record(ctl, conn, name: str, msg: dict, reply: dict, user: str) -> None:
    text = json.dumps(_kept(msg), separators=(",", ":"), default=str)
    if len(text) > MAX_REQUEST:
        text = text[:MAX_REQUEST - 3] + "..."
    ctl.spool.add_audit(time=ctl.clock(), user=user, uid=conn.uid if conn.uid >= 0 else None,
                        origin=origin(conn), op=name, target=target(msg, reply)[:500],
                        request=text, ok=0 if refused(reply) else 1,
                        result=_result(reply))


def record_reload(ctl, ok: bool, result: str) -> None:
    """A reload on SIGHUP: no request, and the kernel does not say who sent the signal;
    the change to nodes, partitions, tenants and limits is recorded all the same."""
    import os
    ctl.spool.add_audit(time=ctl.clock(), user="(signal)", uid=None,
                        origin=f"SIGHUP to rmsctld pid {os.getpid()}", op="reconfigure",
                        target="", request="{}", ok=1 if ok else 0, result=result[:MAX_RESULT])
