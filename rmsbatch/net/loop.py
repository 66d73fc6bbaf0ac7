"""A small single-threaded event loop for newline-delimited JSON over Unix sockets.

Both daemons use it: rmsctld to serve the API, rmsd to talk to rmsctld and to
hear from its job supervisors. One thread, non-blocking sockets and a
selector: no locks around the spool, and a burst of requests that arrives
together is handled together (one transaction, one fsync).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import struct

log = logging.getLogger("rmsbatch.server")

MAX_REQUEST = 16 * 1024 * 1024   # a request larger than this closes the connection


class Conn:
    """One connection; `meta` is free for the owner (e.g. a node's name)."""

    def __init__(self, sock: socket.socket, listener: str | None):
        self.sock = sock
        self.listener = listener
        self.inbuf = b""
        self.outbuf = bytearray()
        self.closed = False
        self.meta: dict = {}
        self.pid = self.uid = self.gid = -1
        if sock.family == socket.AF_UNIX and listener is not None:
            try:
                creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
                self.pid, self.uid, self.gid = struct.unpack("3i", creds)
            except OSError:
                pass

    def __repr__(self) -> str:
        return f"<conn pid={self.pid} uid={self.uid} {self.meta}>"


class Loop:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.listeners: dict[socket.socket, str] = {}
        self.closed: list[Conn] = []

    # -- sockets ------------------------------------------------------------
    def listen(self, path: str, name: str, mode: int = 0o666) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path), exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(512)
        sock.setblocking(False)
        self.listeners[sock] = name
        self.sel.register(sock, selectors.EVENT_READ, None)

    def add_waker(self, sock: socket.socket) -> None:
        """A socket whose only job is to wake poll() (signal wakeup fd)."""
        self.sel.register(sock, selectors.EVENT_READ, "waker")

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
        conn.outbuf += json.dumps(message, separators=(",", ":")).encode() + b"\n"
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
            conn: Conn = key.data
            if events & selectors.EVENT_WRITE:
                self._flush(conn)
            if events & selectors.EVENT_READ and not conn.closed:
                self._read(conn, messages)
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
            conn = Conn(sock, self.listeners[lsock])
            self.sel.register(sock, selectors.EVENT_READ, conn)

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
                self.close(conn)
                break
            conn.inbuf += chunk
            if len(chunk) < (1 << 20):
                break
        while b"\n" in conn.inbuf:
            line, _, conn.inbuf = conn.inbuf.partition(b"\n")
            if not line.strip():
                continue
            try:
                message = json.loads(line)
                if not isinstance(message, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.send(conn, {"ok": False, "error": "malformed request (expected one JSON object per line)"})
                continue
            out.append((conn, message))
        if len(conn.inbuf) > MAX_REQUEST:
            log.warning("closing connection from pid %s: request larger than %d bytes",
                        conn.pid, MAX_REQUEST)
            self.send(conn, {"ok": False, "error": f"request larger than {MAX_REQUEST} bytes"})
            self.close(conn)
