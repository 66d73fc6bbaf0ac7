"""Where rsacct reads: the controller's accounting workers, or an archive file.

Both answer the same requests (acct_jobs, acct_steps, acct_report, acct_audit): the
controller through its API, an archive (`rsacct --archive FILE`, a file written by
retention) through the same queries run here on a read-only connection. Listings come
page by page and are put together here.
"""
from __future__ import annotations

import os
import time

STEP_CHUNK = 20_000


class ArchiveSource:
    """An archive file answering like the controller. Whoever can read the file can
    read all of it: the file's permissions are its access control."""

    def __init__(self, path: str):
        from rmsbatch.acct.store import Store
        if not os.path.isfile(path):
            raise FileNotFoundError(2, "no such archive file", path)
        self.store = Store(path, archive=True)
        self.user = _me()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()

    def call(self, op: str, **fields) -> dict:
        from rmsbatch.acct.store import StoreError
        from rmsbatch.acct.worker import answer
        query = _query(op, fields, self.user)
        try:
            return answer(self.store, query)
        except StoreError as exc:
            raise ValueError(str(exc)) from None


def _me() -> str:
    from rmsbatch.cli.optiontypes import current_user
    return current_user()


_FILTERS = ("ids", "array_tasks", "users", "accounts", "partitions", "states", "names", "qos",
            "nodes")


def _query(op: str, fields: dict, me: str) -> dict:
    filters = {k: fields[k] for k in _FILTERS if fields.get(k)}
    if "states" in filters:
        from rmsbatch.core.states import parse_state
        filters["states"] = [parse_state(s).value for s in filters["states"]]
    if "array_tasks" in filters:
        filters["array_tasks"] = [list(t) for t in filters["array_tasks"]]
    if not filters.get("users") and not fields.get("all_users") and op != "acct_report" \
            and not filters.get("ids") and not filters.get("array_tasks"):
        filters["users"] = [me]
    if op == "acct_jobs":
        for key in ("start_after", "end_before"):
            if fields.get(key) is not None:
                filters[key] = fields[key]
        return {"kind": "jobs", "filters": filters, "columns": list(fields["fields"]),
                "after": fields.get("after", 0), "limit": fields.get("limit", 20_000)}
    if op == "acct_lines":
        for key in ("start_after", "end_before"):
            if fields.get(key) is not None:
                filters[key] = fields[key]
        return {"kind": "lines", "filters": filters, "show": list(fields["show"]),
                "sep": fields.get("sep", "|"), "trailing": bool(fields.get("trailing")),
                "now": time.time(), "after": fields.get("after", 0),
                "before": fields.get("before"), "limit": fields.get("limit", 20_000)}
    if op == "acct_steps":
        return {"kind": "steps", "job_ids": list(fields.get("job_ids") or [])}
    if op == "acct_report":
        return {"kind": "report", "group_by": list(fields.get("group_by") or []),
                "start": fields["start"], "end": fields["end"], "filters": filters,
                "now": time.time()}
    if op == "acct_audit":
        return {"kind": "audit", "filters": {k: fields.get(k) for k in
                                             ("users", "ops", "target", "start", "end",
                                              "failed")},
                "after": fields.get("after", 0), "limit": fields.get("limit", 20_000)}
    raise ValueError(f"an archive cannot answer {op!r}")


def open_source(archive: str | None):
    """A connection-like object: the controller, or the archive file."""
    if archive:
        return ArchiveSource(archive)
    from rmsbatch.net import client
    return client.Client()


def pages(conn, op: str, **fields) -> tuple[list[str], list[list]]:
    """Every page of a paged listing: its columns and all its rows."""
    rows: list[list] = []
    after = 0
    while True:
        reply = conn.call(op, after=after, **fields)
        rows.extend(reply["rows"])
        if reply.get("next") is None:
            return reply["columns"], rows
        after = reply["next"]


def fast_lines(opener, show: list[str], sep: str, trailing: bool,
               **filters) -> list[str] | None:
    """The lines of a parsable listing built by the workers (rmsbatch.acct.lines); None
    where a pending array task needs the ordinary path's folding.

    The controller has two accounting workers and the machine more than one core: the
    id range is read as two halves at once, each on a connection of its own (`opener()`
    makes one), and the halves are joined in id order."""
    with opener() as conn:         # where the matching ids start, and the last id
        probe = conn.call("acct_lines", show=show, sep=sep, trailing=trailing, after=0,
                          limit=1, **filters)
    if probe.get("pending_tasks"):
        return None
    if probe.get("next") is None:
        return probe["lines"]
    low, top = probe["first_id"], probe["max_id"]
    mid = low + (top - low) // 2
    halves: list = [None, None]

    def read(k: int, after: int, before: int | None) -> None:
        halves[k] = _stream(opener, show, sep, trailing, filters, after, before)
    import threading
    other = threading.Thread(target=read, args=(1, mid, None))
    other.start()
    try:
        read(0, low - 1, mid + 1)
    finally:
        other.join()
    if halves[0] is None or halves[1] is None:
        return None
    return halves[0] + halves[1]


def _stream(opener, show, sep, trailing, filters, after: int, before: int | None):
    """Every page of lines with ids in (after, before), or None (a pending task)."""
    out: list[str] = []
    with opener() as conn:
        while True:
            reply = conn.call("acct_lines", show=show, sep=sep, trailing=trailing,
                              after=after, **({"before": before} if before else {}),
                              **filters)
            if reply.get("pending_tasks"):
                return None
            out.extend(reply["lines"])
            if reply.get("next") is None:
                return out
            after = reply["next"]


def job_records(conn, fields: list[str], **filters) -> list[dict]:
    columns, rows = pages(conn, "acct_jobs", fields=fields, **filters)
    return [dict(zip(columns, r)) for r in rows]


def steps_of(conn, job_ids: list[int]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for i in range(0, len(job_ids), STEP_CHUNK):
        for st in conn.call("acct_steps", job_ids=job_ids[i:i + STEP_CHUNK])["steps"]:
            out.setdefault(st["job_id"], []).append(st)
    return out
