"""rmsctld's accounting worker: answers accounting queries in a process of its own.

rmsctld starts two of these (rmsbatch.ctld.acctlink) and hands each one query at a
time, so a listing of a million records or a year's report runs beside the scheduler
instead of inside it: another process, its own read-only connection to the spool, a
lower CPU priority (nice), and no lock the controller would wait for.

On its socket (rmsctld's end of a socketpair), a request is one JSON line,
`{"tag": N, "q": {...}}`; the reply is `N ` and the reply's JSON on one line, which
rmsctld forwards to the client without decoding it. The worker exits when rmsctld
closes the socket (or dies).

    python -m rmsbatch.acct.worker FD SPOOL_FILE
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import sys

from rmsbatch.acct.store import AUDIT_COLUMNS, Store, StoreError

NICE = 10


def answer(store: Store, q: dict) -> dict:
    """One query (a dict rmsbatch.ctld.ops.acct built and checked) -> its reply."""
    kind = q.get("kind")
    if kind == "jobs":
        rows, nxt = store.jobs_page(q["filters"], q["columns"], q.get("after", 0),
                                    q.get("limit") or 20_000)
        return {"ok": True, "columns": q["columns"], "rows": rows, "next": nxt}
    if kind == "lines":
        text, nxt, folded, first = store.lines_page(
            q["filters"], q["show"], q["sep"], q["trailing"], q["now"], q.get("after", 0),
            q.get("limit") or 20_000, q.get("before"))
        return {"ok": True, "lines": text, "next": nxt, "pending_tasks": folded,
                "first_id": first, "max_id": store.max_id()}
    if kind == "steps":
        return {"ok": True, "steps": store.steps(q["job_ids"], q.get("users"))}
    if kind == "report":
        return {"ok": True, "rows": store.report(q["group_by"], q["start"], q["end"],
                                                 q["filters"], q.get("now"))}
    if kind == "audit":
        rows, nxt = store.audit_page(q["filters"], q.get("after", 0), q.get("limit") or 20_000)
        return {"ok": True, "columns": list(AUDIT_COLUMNS), "rows": rows, "next": nxt}
    if kind == "archive":
        from rmsbatch.acct.archive import archive
        return {"ok": True, **archive(store, q["archive_dir"], q["before"],
                                      q.get("limit") or 200_000)}
    raise StoreError(f"unknown accounting query {kind!r}")


def reply_line(tag: int, reply: dict) -> bytes:
    return f"{tag} ".encode() + json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def serve(sock: socket.socket, spool_file: str) -> None:
    store: Store | None = None
    reader = sock.makefile("rb")
    for line in reader:
        try:
            msg = json.loads(line)
            tag, q = int(msg["tag"]), msg["q"]
        except (ValueError, KeyError, TypeError):
            print("rmsbatch accounting worker: malformed request from rmsctld", file=sys.stderr)
            return
        try:
            if store is None:
                store = Store(spool_file)
            reply = answer(store, q)
        except StoreError as exc:
            reply = {"ok": False, "error": str(exc)}
        except sqlite3.Error as exc:
            # a locked or damaged spool: a fresh connection for the next query
            reply = {"ok": False, "error": f"accounting query failed on spool {spool_file}: "
                                           f"{exc}; try again"}
            store = None
        except Exception as exc:    # noqa: BLE001 - a bug: answer, keep serving
            print(f"rmsbatch accounting worker: query {q!r:.200} failed: {exc!r}",
                  file=sys.stderr)
            reply = {"ok": False, "error": "internal error in rmsctld's accounting worker "
                                           "(see rmsctld's standard error)"}
        sock.sendall(reply_line(tag, reply))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[0].isdigit():
        print("usage: python -m rmsbatch.acct.worker FD SPOOL_FILE", file=sys.stderr)
        return 2
    try:
        os.nice(NICE)
    except OSError:
        pass
    sock = socket.socket(fileno=int(argv[0]))
    try:
        serve(sock, argv[1])
    except (BrokenPipeError, ConnectionResetError):
        pass            # rmsctld went away mid-reply
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
