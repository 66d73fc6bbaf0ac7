"""rmsctld over TCP, for other hosts: addresses, and the MUNGE handshake.

A TCP connection is nobody until its first line, `{"op": "auth", "cred": ...}`, carries
a MUNGE credential that the controller's munged opens (rmsbatch.net.munge); from then
on the connection is the credential's uid and gid, exactly as a Unix socket connection
is its peer's, and the same op table decides what it may do. The controller answers
the handshake with `{"ok": true, "uid": ..., "gid": ...}`, or with the reason it was
refused before it hangs up.

Which way a command or node daemon goes: `RMS_CONTROLLER=HOST:PORT` in its environment
sends it over TCP; otherwise the local Unix socket when it is there (the controller's
own host), else cluster.toml's `[controller] address`.
"""
from __future__ import annotations

import json
import os

from rmsbatch.net import munge

PURPOSE = "api"
AUTH_OP = "auth"
ENV = "RMS_CONTROLLER"
# munged's socket on this host when it is not where cluster.toml says (a test that
# runs a munged per network namespace; a host with munged installed elsewhere)
MUNGE_ENV = "RMS_MUNGE_SOCKET"


def munged_socket(configured: str | None) -> str | None:
    return os.environ.get(MUNGE_ENV) or configured


class AddressError(ValueError):
    pass


def parse_address(text: str) -> tuple[str, int]:
    """`ctl1:6817`, `10.0.0.5:6817`, `[fd00::5]:6817` -> (host, port)."""
    text = (text or "").strip()
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{text!r} is not HOST:PORT (e.g. ctl1:6817, with a port from 1 "
                           "to 65535)")
    return host, int(port)


def from_environment() -> tuple[str, int] | None:
    text = os.environ.get(ENV)
    if not text:
        return None
    try:
        return parse_address(text)
    except AddressError as exc:
        from rmsbatch.net.client import ControllerUnavailable
        raise ControllerUnavailable(f"{ENV}={text}: {exc}") from None


def connect(address: tuple[str, int], cluster: str, munge_socket: str | None = None,
            timeout: float | None = 60.0):
    """A connection to rmsctld at `address` on which it knows who we are."""
    import socket

    from rmsbatch.net.client import ControllerUnavailable, RequestRejected
    where = f"rmsctld at {address[0]}:{address[1]}"
    try:
        cred = munge.encode(munge.payload_for(cluster, PURPOSE), munged_socket(munge_socket))
    except munge.MungeError as exc:
        raise ControllerUnavailable(f"cannot prove who you are to {where}: {exc}") from None
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError:
        raise ControllerUnavailable(f"{where} did not take the connection in time",
                                    timed_out=True) from None
    except OSError as exc:
        raise ControllerUnavailable(
            f"cannot reach {where}: {exc.strerror or exc} (is rmsctld running and "
            "listening there, and the port open in the firewall?)", down=True) from None
    try:
        sock.sendall(json.dumps({"op": AUTH_OP, "cred": cred}).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    except OSError as exc:
        sock.close()
        raise ControllerUnavailable(f"{where} dropped the connection: {exc}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        sock.close()
        raise ControllerUnavailable(f"{where} hung up before it took our credential "
                                    "(an older rmsctld, or not rmsctld on that port?)") from None
    if not answer.get("ok"):
        sock.close()
        raise RequestRejected(answer.get("error") or f"{where} refused our credential")
    return sock


def daemon_socket(cfg, timeout: float = 10.0):
    """A node daemon's connection to rmsctld (rmsd, rms-fleet), and how it goes: its
    Unix socket on the controller's host (via None), else TCP with a MUNGE credential
    (via "tcp:HOST:PORT"): RMS_CONTROLLER, or cluster.toml's [controller] address when
    the socket is not on this host."""
    import socket

    from rmsbatch.net.client import connect_unix
    address = from_environment()
    if address is None and not os.path.exists(cfg.socket):
        address = cfg.tcp_address
    if address is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            connect_unix(sock, cfg.socket)
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"{cfg.socket}: {exc.strerror}") from None
        return sock, None
    ctl = cfg.cluster.controller
    sock = connect(address, cfg.cluster.name, ctl.munge_socket, timeout=timeout)
    sock.settimeout(None)
    return sock, f"tcp:{address[0]}:{address[1]}"


class Authenticator:
    """The controller's side of the handshake: a credential in, (uid, gid, host) out,
    or MungeError saying why not."""

    def __init__(self, cluster: str, munge_socket: str | None = None):
        self.expect = munge.payload_for(cluster, PURPOSE)
        self.munge_socket = munged_socket(munge_socket)

    def __call__(self, message: dict) -> munge.Identity:
        if message.get("op") != AUTH_OP:
            raise munge.MungeError("authenticate first: a TCP connection's first request "
                                   "must be auth with a MUNGE credential")
        return munge.decode(message.get("cred"), self.expect, self.munge_socket)
