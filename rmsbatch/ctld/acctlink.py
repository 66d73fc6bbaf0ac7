"""rmsctld's side of its accounting workers (rmsbatch.acct.worker).

An accounting request is checked and turned into a query on the controller's thread
(cheap: who may see what), then queued here; each worker runs one query at a time and
its reply goes back to the client as the worker encoded it. The scheduling thread only
moves bytes, so a long query costs it nothing but the copy.

A worker that dies (killed, out of memory) fails the query it held with a message and
is started again for the next one; queries wait in order meanwhile. Without an event
loop (the controller inside tests or tools), queries run inline on a store of its own.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections import deque

from rmsbatch.ctld.listings import Encoded

log = logging.getLogger("rmsbatch.acctlink")

WORKERS = 2
RESTART_AFTER_S = 1.0       # a worker that keeps dying is not respawned in a tight loop
MAX_QUEUED = 1000
QUERY_LIMIT_S = 900.0       # a query still running after this is stopped (and said so)


class Raw(Encoded):
    """A reply line a worker already encoded (its "ok" read for the dispatcher)."""

    def __init__(self, data: bytes):
        dict.__init__(self, ok=data.startswith(b'{"ok":true'))
        self.data = data


class _Worker:
    def __init__(self, spool_file: str):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rmsbatch.acct.worker", str(theirs.fileno()), spool_file],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd="/",
                close_fds=True)
        finally:
            theirs.close()
        self.sock = mine
        self.sock.setblocking(False)
        self.buf = bytearray()
        self.busy: tuple[int, object] | None = None      # (tag, client connection)
        self.since = 0.0                                 # when it took its query

    def close(self) -> None:
        try:
            self.sock.close()
        finally:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class AcctLink:
    def __init__(self, spool_file: str, loop=None):
        self.spool_file = spool_file
        self.loop = loop
        self.queue: deque = deque()
        self.workers: list[_Worker] = []
        self.tag = 0
        self.failed_at = -1e9
        self.served = 0
        self.store = None       # inline mode only

    # -- what the ops call ------------------------------------------------------------
    def ask(self, conn, query: dict) -> dict | None:
        """The reply now (inline), or None: it goes to `conn` when a worker has it."""
        if self.loop is None:
            return self._inline(query)
        if len(self.queue) >= MAX_QUEUED:
            return {"ok": False, "error": f"rmsctld has {MAX_QUEUED} accounting queries "
                                          "waiting already: try again in a minute"}
        self.queue.append((conn, query))
        self._dispatch()
        return None

    def ask_internal(self, query: dict, callback) -> None:
        """A query of the controller's own (retention): `callback(reply)` gets the
        decoded reply, on the controller's thread, when a worker has answered."""
        if self.loop is None:
            callback(self._inline(query))
            return
        self.queue.append((callback, query))
        self._dispatch()

    def _inline(self, query: dict) -> dict:
        from rmsbatch.acct.store import Store, StoreError
        from rmsbatch.acct.worker import answer
        try:
            if self.store is None:
                self.store = Store(self.spool_file)
            return answer(self.store, query)
        except StoreError as exc:
            return {"ok": False, "error": str(exc)}

    # -- workers ---------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while self.queue:
            worker = next((w for w in self.workers if w.busy is None), None)
            if worker is None:
                if len(self.workers) >= WORKERS:
                    return
                if not self._start():
                    if not self.workers:    # nobody will answer: say so now
                        self._fail_queue()
                    return
                continue
            conn, query = self.queue.popleft()
            if getattr(conn, "closed", False):
                continue        # the client gave up waiting
            self.tag += 1
            line = json.dumps({"tag": self.tag, "q": query}, separators=(",", ":")).encode()
            try:
                worker.sock.setblocking(True)       # a query is small; the worker reads it
                worker.sock.sendall(line + b"\n")
                worker.sock.setblocking(False)
            except OSError:
                self.queue.appendleft((conn, query))
                self._lost(worker)
                continue
            worker.busy = (self.tag, conn)
            worker.since = time.monotonic()

    def _start(self) -> bool:
        now = time.monotonic()
        if now - self.failed_at < RESTART_AFTER_S and self.workers:
            return False
        try:
            worker = _Worker(self.spool_file)
        except OSError as exc:
            log.error("accounting worker: cannot start (%s): queries wait", exc)
            self.failed_at = now
            return False
        self.workers.append(worker)
        self.loop.add_reader(worker.sock, lambda w=worker: self._readable(w))
        log.info("accounting worker %d: started", worker.proc.pid)
        return True

    def _readable(self, worker: _Worker) -> None:
        try:
            while True:
                chunk = worker.sock.recv(1 << 20)
                if not chunk:
                    self._lost(worker)
                    return
                worker.buf += chunk
        except BlockingIOError:
            pass
        except OSError:
            self._lost(worker)
            return
        while True:
            end = worker.buf.find(b"\n")
            if end < 0:
                break
            line = bytes(worker.buf[:end + 1])
            del worker.buf[:end + 1]
            space = line.find(b" ")
            tag = int(line[:space]) if space > 0 and line[:space].isdigit() else None
            if worker.busy is None or tag != worker.busy[0]:
                log.error("accounting worker %d: reply out of turn: restarting it",
                          worker.proc.pid)
                self._lost(worker)
                return
            conn = worker.busy[1]
            worker.busy = None
            self.served += 1
            self._deliver(conn, Raw(line[space + 1:]))
        self._dispatch()

    def tick(self) -> None:
        """Stop queries that run past QUERY_LIMIT_S (a runaway report should not hold a
        worker for good); called every second by rmsctld's loop."""
        now = time.monotonic()
        for worker in list(self.workers):
            if worker.busy is not None and now - worker.since > QUERY_LIMIT_S:
                self._lost(worker, f"this query ran longer than {QUERY_LIMIT_S:.0f} s and "
                                   "was stopped: narrow it (-S/-E, -u, -A)")

    def _lost(self, worker: _Worker, why: str | None = None) -> None:
        if worker not in self.workers:
            return
        self.workers.remove(worker)
        self.loop.remove_reader(worker.sock)
        code = worker.proc.poll()
        log.error("accounting worker %d: %s%s", worker.proc.pid,
                  why or f"gone (exit {code})", ": its query failed" if worker.busy else "")
        if worker.busy is not None:
            self._deliver(worker.busy[1], {
                "ok": False, "error": why or "rmsctld's accounting worker ended during this "
                                             "query (see rmsctld's log); try again"})
        self.failed_at = time.monotonic()
        try:
            worker.proc.kill()
        except OSError:
            pass
        worker.close()
        self._dispatch()

    def _fail_queue(self) -> None:
        queued, self.queue = self.queue, deque()
        for to, _ in queued:
            self._deliver(to, {"ok": False, "error": "rmsctld cannot start its accounting "
                                                     "worker (see its log); try again later"})

    def _deliver(self, to, reply) -> None:
        if callable(to):
            data = getattr(reply, "data", None)
            try:
                to(json.loads(data) if data is not None else reply)
            except Exception:   # noqa: BLE001 - the controller's own query: log, go on
                log.exception("accounting worker: handling a reply failed")
        else:
            self.loop.send(to, reply)

    def stats(self) -> dict:
        return {"acct_workers": len(self.workers), "acct_queued": len(self.queue),
                "acct_served": self.served}

    def stop(self) -> None:
        for worker in list(self.workers):
            if self.loop is not None:
                self.loop.remove_reader(worker.sock)
            worker.close()
        self.workers.clear()
        if self.store is not None:
            self.store.close()
