"""MUNGE credentials: who is on the other end of a TCP connection.

Over a Unix socket the kernel says who the peer is (SO_PEERCRED). Over TCP nothing
does, so a client or node daemon on another host sends a MUNGE credential first:
its local munged vouches for the caller's uid and gid, sealed with the key every
host of the cluster shares, and the controller's munged opens it. munged also makes
a credential good for one use within its time to live (replayed or expired ones are
refused), which is what keeps a credential seen on the wire from being used again.

This is libmunge through ctypes, loaded on first use: the hot commands that talk to a
local controller never load it. A credential's payload names its purpose and cluster
(`rmsbatch:<cluster>:<purpose>`), so one made for another service, or for another
cluster sharing the key, is refused here even though munged accepts it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import socket
import struct
from dataclasses import dataclass

# munge.h (0.5.x): munge_opt_t and munge_err_t
_OPT_TTL = 4
_OPT_ADDR4 = 5
_OPT_SOCKET = 8
_ERRORS = {
    1: "internal error", 2: "bad argument", 3: "bad length", 4: "buffer overflow",
    5: "out of memory", 6: "munged is not answering on its socket", 7: "munged timed out",
    8: "not a credential", 9: "unknown credential version", 10: "unknown cipher",
    11: "unknown MAC", 12: "unknown compression", 13: "unknown security realm",
    14: "credential invalid (made with another key?)", 15: "credential expired",
    16: "credential from the future (clocks apart?)", 17: "credential replayed",
    18: "credential not for this user",
}
EXPIRED, REWOUND, REPLAYED, INVALID = 15, 16, 17, 14


class MungeError(Exception):
    """A credential could not be made or was refused; `code` is munge's error."""

    def __init__(self, message: str, code: int = 0):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Identity:
    """Who made a credential, as its munged vouched."""
    uid: int
    gid: int
    addr: str           # the origin host's IPv4 address, as munged saw it


_lib = None


def _libmunge():
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("munge") or "libmunge.so.2"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise MungeError("the MUNGE library (libmunge) is not installed on this host: "
                             "install munge (Debian: apt install munge)") from None
        lib.munge_ctx_create.restype = ctypes.c_void_p
        lib.munge_ctx_destroy.argtypes = [ctypes.c_void_p]
        lib.munge_ctx_strerror.restype = ctypes.c_char_p
        lib.munge_ctx_strerror.argtypes = [ctypes.c_void_p]
        lib.munge_encode.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p,
                                     ctypes.c_char_p, ctypes.c_int]
        lib.munge_decode.argtypes = [ctypes.c_char_p, ctypes.c_void_p,
                                     ctypes.POINTER(ctypes.c_void_p),
                                     ctypes.POINTER(ctypes.c_int),
                                     ctypes.POINTER(ctypes.c_uint32),
                                     ctypes.POINTER(ctypes.c_uint32)]
        _lib = lib
    return _lib


class _Context:
    """A munge_ctx_t on the given munged socket (None: munge's default)."""

    def __init__(self, socket_path: str | None, ttl: int | None = None):
        self.lib = _libmunge()
        self.ctx = ctypes.c_void_p(self.lib.munge_ctx_create())
        if not self.ctx:
            raise MungeError("cannot create a MUNGE context (out of memory)")
        if socket_path is not None:
            self._set(_OPT_SOCKET, ctypes.c_char_p(socket_path.encode()))
            # the option numbers are munge 0.5's: check that this library agrees
            got = ctypes.c_char_p()
            self.lib.munge_ctx_get(self.ctx, ctypes.c_int(_OPT_SOCKET), ctypes.byref(got))
            if got.value != socket_path.encode():
                self.close()
                raise MungeError("this libmunge's options differ from munge 0.5's: "
                                 "install munge 0.5 or later")
        if ttl is not None:
            self._set(_OPT_TTL, ctypes.c_int(ttl))

    def _set(self, opt: int, value) -> None:
        err = self.lib.munge_ctx_set(self.ctx, ctypes.c_int(opt), value)
        if err:
            raise MungeError(f"cannot set a MUNGE option: {self.why(err)}", err)

    def why(self, err: int) -> str:
        detail = self.lib.munge_ctx_strerror(self.ctx)
        return detail.decode(errors="replace") if detail else _ERRORS.get(err, f"error {err}")

    def close(self) -> None:
        if self.ctx:
            self.lib.munge_ctx_destroy(self.ctx)
            self.ctx = ctypes.c_void_p()


def _libc_free(pointer) -> None:
    """free() what libmunge allocated (the credential, the payload)."""
    _libmunge().free(pointer)       # libmunge links libc: its free is libc's


def payload_for(cluster: str, purpose: str) -> bytes:
    return f"rmsbatch:{cluster}:{purpose}".encode()


def encode(payload: bytes, socket_path: str | None = None, ttl: int | None = None) -> str:
    """A credential for the calling process's uid and gid carrying `payload`."""
    ctx = _Context(socket_path, ttl)
    try:
        cred = ctypes.c_char_p()
        err = ctx.lib.munge_encode(ctypes.byref(cred), ctx.ctx, payload, len(payload))
        if err:
            raise MungeError(f"cannot get a MUNGE credential from munged"
                             f"{' at ' + socket_path if socket_path else ''}: "
                             f"{ctx.why(err)}; is munged running?", err)
        try:
            return cred.value.decode()
        finally:
            _libc_free(ctypes.cast(cred, ctypes.c_void_p))
    finally:
        ctx.close()


def decode(cred: str, expect: bytes, socket_path: str | None = None) -> Identity:
    """Who made `cred`, if munged accepts it (once) and it carries `expect`."""
    if not isinstance(cred, str) or not cred.startswith("MUNGE:") or len(cred) > 65536:
        raise MungeError("not a MUNGE credential", 8)
    ctx = _Context(socket_path)
    try:
        buf = ctypes.c_void_p()
        length = ctypes.c_int()
        uid = ctypes.c_uint32()
        gid = ctypes.c_uint32()
        err = ctx.lib.munge_decode(cred.encode(), ctx.ctx, ctypes.byref(buf),
                                   ctypes.byref(length), ctypes.byref(uid), ctypes.byref(gid))
        try:
            payload = ctypes.string_at(buf, length.value) if buf else b""
        finally:
            if buf:
                _libc_free(buf)
        if err:
            raise MungeError(ctx.why(err) if err not in (EXPIRED, REWOUND, REPLAYED, INVALID)
                             else _ERRORS[err], err)
        if payload != expect:
            raise MungeError("credential made for another purpose or cluster", INVALID)
        addr = ctypes.c_uint32()
        ctx.lib.munge_ctx_get(ctx.ctx, ctypes.c_int(_OPT_ADDR4), ctypes.byref(addr))
        return Identity(uid.value, gid.value,
                        socket.inet_ntoa(struct.pack("=I", addr.value)))
    finally:
        ctx.close()
