"""A small single-threaded event loop for newline-delimited JSON over Unix sockets
(and TCP, for other hosts: rmsbatch.net.tcp).

Both daemons use it: rmsctld to serve the API, rmsd to talk to rmsctld and to
hear from its job supervisors. One thread, non-blocking sockets and a
selector: no locks around the spool, and a burst of requests that arrives
together is handled together (one transaction, one fsync).

What one user may hold in the server is bounded (`Limits`): open connections,
the size of one request, the bytes of unfinished requests across their
connections, and the time a request may take to arrive once begun. A caller
past a limit gets {"ok": false, "error": ...} naming the limit, then the
connection is closed.

A TCP connection is nobody (uid -1) until its first request authenticates it
(`listen_tcp`'s `authenticate`, a MUNGE credential in rmsctld); until then it may send
nothing else, and nothing larger than MAX_AUTH_REQUEST.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import selectors
import socket
import struct
import time

from rmsbatch.core.jobspec import MAX_ENV_BYTES, MAX_SCRIPT_BYTES
from rmsbatch.net.client import unix_address

log = logging.getLogger("rmsbatch.server")

MiB = 1024 * 1024
# The largest request a job submission needs: its script and environment with every
# non-ASCII character escaped by JSON (\uXXXX: at most 3 bytes on the wire per byte of
# UTF-8), plus room for the other fields.
MAX_SUBMIT_REQUEST = 3 * (MAX_SCRIPT_BYTES + MAX_ENV_BYTES) + MiB

# A TCP connection's first request: a MUNGE credential is well under 1 KiB.
MAX_AUTH_REQUEST = 64 * 1024
NOBODY = -1         # the uid of a TCP connection that has not authenticated yet

# Only the start of an unfinished request is looked at for its op: clients send "op" first.
_OP = re.compile(rb'\s*\{\s*"op"\s*:\s*"([A-Za-z_]{1,40})"')


class Limits:
    """What one uid may hold in a server. `trusted` uids (root and the daemon's
    own: node daemons, supervisors, the GPU monitor) are not counted per user and
    may send any request up to `max_large_request` (a node's inventory), but are
    held to that size and to the deadline like everyone."""

    def __init__(self, max_connections: int = 256, max_buffered: int = 32 * MiB,
                 max_request: int = 4 * MiB, max_large_request: int = MAX_SUBMIT_REQUEST,
                 request_timeout: float = 30.0, server: str = "rmsctld",
                 where: str | None = "cluster.toml [controller]",
                 trusted: tuple[int, ...] | None = None):
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.max_request = max_request
        self.max_large_request = max(max_large_request, max_request)
        self.request_timeout = request_timeout
        self.server = server
        self.where = where
        self.trusted = frozenset(trusted if trusted is not None else (0, os.geteuid()))

    def key(self, name: str) -> str:
        """How a user reads which knob this is, and where an admin turns it."""
        return f"{name} in {self.where}" if self.where else f"a fixed limit of {self.server}"


def _size(n: int) -> str:
    return f"{n // MiB} MiB" if n >= MiB and n % MiB == 0 else f"{n} bytes"


def _user(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


class Conn:
    """One connection; `meta` is free for the owner (e.g. a node's name)."""

    def __init__(self, sock: socket.socket, listener: str | None, authenticate=None):
        self.sock = sock
        self.listener = listener
        self.authenticate = authenticate    # set until a TCP connection has authenticated
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.closed = False
        self.meta: dict = {}
        self.pid = self.uid = self.gid = -1
        self.counted = False          # in its uid's connection count
        self.pending = 0              # bytes of the unfinished request, in its uid's total
        self.began: float | None = None   # when the unfinished request's first byte came
        if sock.family == socket.AF_UNIX and listener is not None:
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self.pid, self.uid, self.gid = struct.unpack("3i", creds)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<conn pid={self.pid} uid={self.uid} {self.meta}>"


class Loop:
    def __init__(self, limits: Limits | None = None):
        self.sel = selectors.DefaultSelector()
        self.listeners: dict[socket.socket, str] = {}
        self.authenticators: dict[socket.socket, object] = {}
        self.closed: list[Conn] = []
        self.limits = limits or Limits()
        self.open_by_uid: dict[int, int] = {}
        self.buffered_by_uid: dict[int, int] = {}
        self.unfinished: set[Conn] = set()      # connections in the middle of a request
        self._warned: dict[tuple[int, str], float] = {}

    # -- sockets ------------------------------------------------------------
    def listen(self, path: str, name: str, mode: int = 0o666) -> None:
        try:
            os.unlink(path)       # a symlink planted here goes, not what it points to
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The mode comes from the umask at bind: chmod on the path afterwards would
        # follow a symlink swapped in meanwhile.
        old = os.umask(0o777 & ~mode)
        try:
            with unix_address(path) as address:
                sock.bind(address)
        finally:
            os.umask(old)
        sock.listen(512)
        sock.setblocking(False)
        self.listeners[sock] = name
        self.sel.register(sock, selectors.EVENT_READ, None)

    def listen_tcp(self, host: str, port: int, name: str, authenticate) -> None:
        """Also take TCP connections on host:port; `authenticate(first request)` returns
        who the connection is (`.uid`, `.gid`, `.addr`) or raises with the reason."""
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        sock.listen(512)
        sock.setblocking(False)
        self.listeners[sock] = name
        self.authenticators[sock] = authenticate
        self.sel.register(sock, selectors.EVENT_READ, None)

    def add_waker(self, sock: socket.socket) -> None:
        """A socket whose only job is to wake poll() (signal wakeup fd)."""
        self.sel.register(sock, selectors.EVENT_READ, "waker")

    def add_reader(self, sock: socket.socket, callback) -> None:
        """Call `callback()` whenever `sock` is readable (a helper process's socket)."""
        self.sel.register(sock, selectors.EVENT_READ, callback)

    def remove_reader(self, sock: socket.socket) -> None:
        try:
            self.sel.unregister(sock)
        except (KeyError, ValueError):
            pass

    def add(self, sock: socket.socket, meta: dict | None = None) -> Conn:
        """Adopt an outgoing connection (already connected)."""
        sock.setblocking(False)
        conn = Conn(sock, None)
        conn.meta.update(meta or {})
        self.sel.register(sock, selectors.EVENT_READ, conn)
        return conn

    def close(self, conn: Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._account(conn, 0)
        self._uncount(conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        self.closed.append(conn)

    def shutdown(self) -> None:
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()
        self.sel.close()

    # -- I/O ------------------------------------------------------------------
    def send(self, conn: Conn, message: dict) -> None:
        if conn.closed:
            return
        data = getattr(message, "data", None)      # rmsbatch.ctld.listings.Encoded
        conn.outbuf += data if data is not None else \
            json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self._flush(conn)

    def _flush(self, conn: Conn) -> None:
        while conn.outbuf:
            try:
                sent = conn.sock.send(conn.outbuf)
            except BlockingIOError:
                break
            except OSError:
                self.close(conn)
                return
            del conn.outbuf[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.outbuf else 0)
        try:
            self.sel.modify(conn.sock, events, conn)
        except (KeyError, ValueError):
            pass

    def poll(self, timeout: float | None) -> list[tuple[Conn, dict]]:
        """Wait up to `timeout`, then read everything available. Returns the
        complete messages received, in order, with their connections."""
        messages: list[tuple[Conn, dict]] = []
        if self.unfinished:
            # Wake for the first request deadline, whatever the caller asked.
            due = min(c.began for c in self.unfinished) + self.limits.request_timeout
            left = max(0.0, due - time.monotonic())
            timeout = left if timeout is None else min(timeout, left)
        for key, events in self.sel.select(timeout):
            if key.data is None:
                self._accept(key.fileobj)
                continue
            if key.data == "waker":
                try:
                    while key.fileobj.recv(4096):
                        pass
                except OSError:
                    pass
                continue
            if callable(key.data):
                key.data()
                continue
            conn: Conn = key.data
            if events & selectors.EVENT_WRITE:
                self._flush(conn)
            if events & selectors.EVENT_READ and not conn.closed:
                self._read(conn, messages)
        if self.unfinished:
            self._expire()
        return messages

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("out of file descriptors: %s", exc)
                return
            sock.setblocking(False)
            conn = Conn(sock, self.listeners[lsock], self.authenticators.get(lsock))
            if conn.authenticate is not None:
                conn.uid = conn.gid = NOBODY
                try:
                    conn.meta["peer"] = "%s:%s" % sock.getpeername()[:2]
                except OSError:
                    pass
                # it has request_timeout to authenticate, or an idle one holds a slot
                conn.began = time.monotonic()
                self.unfinished.add(conn)
            over = self._count(conn)
            if over:
                self._refuse_now(conn, "connection refused", "connections", over)
                continue
            self.sel.register(sock, selectors.EVENT_READ, conn)

    def _count(self, conn: Conn) -> str | None:
        """Count the connection against its uid's; why not, when that is one too many."""
        if conn.uid in self.limits.trusted:
            return None
        have = self.open_by_uid.get(conn.uid, 0)
        if have >= self.limits.max_connections:
            return (f"{_user(conn.uid)} already has {have} open "
                    f"({self.limits.key('max_connections_per_user')}); close some, or ask "
                    "an admin to raise the limit")
        self.open_by_uid[conn.uid] = have + 1
        conn.counted = True
        return None

    def _uncount(self, conn: Conn) -> None:
        if conn.counted:
            left = self.open_by_uid.get(conn.uid, 1) - 1
            if left > 0:
                self.open_by_uid[conn.uid] = left
            else:
                self.open_by_uid.pop(conn.uid, None)
            conn.counted = False

    def _read(self, conn: Conn, out: list) -> None:
        while True:
            try:
                chunk = conn.sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            if not chunk:
                # What came before the end is still delivered (a supervisor sends and hangs up).
                self._lines(conn, out)
                self.close(conn)
                return
            conn.inbuf += chunk
            fresh = self._lines(conn, out)
            if conn.closed or not self._within_limits(conn, fresh=fresh):
                return
            if len(chunk) < (1 << 20):
                break

    def _lines(self, conn: Conn, out: list) -> bool:
        """Take the complete lines off conn's buffer; False if there were none."""
        end = conn.inbuf.rfind(b"\n")
        if end < 0:
            return False
        lines = conn.inbuf[:end].split(b"\n")
        del conn.inbuf[:end + 1]
        for line in lines:
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                if conn.authenticate is not None:
                    self._refuse(conn, "connection refused", "auth", "authenticate first: "
                                 "a TCP connection's first request is auth")
                    return True
                self.send(conn, {"ok": False, "error": "malformed request (expected one JSON object per line)"})
                continue
            if conn.authenticate is not None:
                if not self._authenticated(conn, message):
                    return True
                continue
            out.append((conn, message))
        return True

    def _authenticated(self, conn: Conn, message: dict) -> bool:
        """A TCP connection's first request: who it is, or refused and closed."""
        try:
            who = conn.authenticate(message)
        except Exception as exc:  # noqa: BLE001 - any failure refuses the connection
            self._refuse(conn, "connection refused", "auth",
                         f"{exc} (from {conn.meta.get('peer', 'a TCP peer')})")
            return False
        conn.authenticate = None
        conn.began = None
        self.unfinished.discard(conn)
        self._account(conn, 0)
        self._uncount(conn)         # counted as nobody until now
        conn.uid, conn.gid = who.uid, who.gid
        conn.meta["host"] = who.addr
        over = self._count(conn)
        if over:
            self._refuse(conn, "connection refused", "connections", over)
            return False
        self.send(conn, {"ok": True, "uid": conn.uid, "gid": conn.gid})
        return True

    # -- limits ---------------------------------------------------------------
    def _account(self, conn: Conn, pending: int, fresh: bool = False) -> None:
        """Set conn's unfinished bytes (in its uid's total) to `pending`; `fresh`:
        they belong to a request begun since the last call."""
        if conn.counted and pending != conn.pending:
            total = self.buffered_by_uid.get(conn.uid, 0) + pending - conn.pending
            if total > 0:
                self.buffered_by_uid[conn.uid] = total
            else:
                self.buffered_by_uid.pop(conn.uid, None)
        conn.pending = pending
        if conn.authenticate is not None:
            return      # its deadline runs from the connection's opening, whatever it sends
        if not pending:
            conn.began = None
            self.unfinished.discard(conn)
        elif conn.began is None or fresh:
            conn.began = time.monotonic()
            self.unfinished.add(conn)

    def _within_limits(self, conn: Conn, fresh: bool) -> bool:
        if conn.listener is None:
            return True       # an outgoing connection: the peer is the daemon we chose
        size = len(conn.inbuf)
        self._account(conn, size, fresh)
        lim = self.limits
        if conn.authenticate is not None and size > MAX_AUTH_REQUEST:
            self._refuse(conn, "connection refused", "auth", "authenticate first: a TCP "
                         f"connection's first request is auth, well under {_size(MAX_AUTH_REQUEST)}")
            return False
        if size > lim.max_request:
            cap = lim.max_large_request if self._large(conn) else lim.max_request
            if size > cap:
                also = "" if cap == lim.max_large_request else \
                    f"; a job submission may be up to {_size(lim.max_large_request)}"
                self._refuse(conn, "request refused", "size",
                             f"larger than {_size(cap)} ({lim.key('max_request')}{also}); "
                             "send less, or ask an admin to raise the limit")
                return False
        if conn.counted and self.buffered_by_uid.get(conn.uid, 0) > lim.max_buffered:
            self._refuse(conn, "request refused", "buffered",
                         f"{_user(conn.uid)} has more than {_size(lim.max_buffered)} in "
                         f"unfinished requests ({lim.key('max_buffered_per_user')}); finish "
                         "or close the other connections, or ask an admin to raise the limit")
            return False
        return True

    def _large(self, conn: Conn) -> bool:
        """May this request grow past max_request? Job submissions (a script and an
        environment), and anything from a trusted uid (a node's inventory)."""
        if conn.authenticate is not None:
            return False
        if conn.uid in self.limits.trusted:
            return True
        match = _OP.match(conn.inbuf, 0, 64)
        return bool(match and match.group(1) == b"submit")

    def _expire(self) -> None:
        timeout = self.limits.request_timeout
        late = time.monotonic() - timeout
        for conn in [c for c in self.unfinished if c.began is not None and c.began <= late]:
            if conn.authenticate is not None:
                self._refuse(conn, "connection dropped", "auth",
                             f"not authenticated {timeout:g} s after it was opened "
                             f"({self.limits.key('request_timeout')})")
                continue
            self._refuse(conn, "request dropped", "timeout",
                         f"not finished {timeout:g} s after its first byte "
                         f"({self.limits.key('request_timeout')}); send each request whole, "
                         "or ask an admin to raise the limit")

    def _refuse(self, conn: Conn, what: str, kind: str, why: str) -> None:
        error = f"{what} on {self.limits.server}: {why}"
        self._warn(conn, kind, error)
        self.send(conn, {"ok": False, "error": error})
        self.close(conn)

    def _refuse_now(self, conn: Conn, what: str, kind: str, why: str) -> None:
        """Refuse a connection not yet registered with the selector."""
        error = f"{what} on {self.limits.server}: {why}"
        self._warn(conn, kind, error)
        try:
            conn.sock.send(json.dumps({"ok": False, "error": error}).encode() + b"\n")
        except OSError:
            pass
        conn.sock.close()

    def _warn(self, conn: Conn, kind: str, error: str) -> None:
        # One line per uid and limit a minute: an attack must not fill the disk with logs.
        now = time.monotonic()
        if now - self._warned.get((conn.uid, kind), -1e9) >= 60:
            self._warned[(conn.uid, kind)] = now
            log.warning("uid %d (pid %d): %s", conn.uid, conn.pid, error)
