"""Talking to rmsctld: the wire format and the blocking client the commands use.

The API is newline-delimited JSON over a Unix stream socket. A request is one
object with an "op" key; the reply is one object with "ok": true plus the
op's fields, or "ok": false and "error": a message fit for the user. The
server learns who the caller is from the kernel (SO_PEERCRED), never from
the request. Requests send "op" first. What one user may hold in rmsctld is
bounded (connections, request size, unfinished bytes, time to send a request:
rmsbatch.net.loop.Limits); past a limit the server answers ok false with an
error naming it, and closes the connection, possibly before reading the
whole request: the client still shows that error.

Ops (request fields -> reply fields):
  ping        {}                                   -> version, cluster, uid
  submit      spec                                 -> job_id
  jobs        ids, users, accounts, partitions, states, names, nodes,
              active (bool: only PENDING/RUNNING/COMPLETING),
              finished (bool), start_after, end_before (epoch floats),
              all_users (bool; rsacct -a)         -> jobs: [job record]
  cancel      ids, users, accounts, partitions, states, names, signal
                                                   -> cancelled: [id], signalled: [id], errors: [str]
  wait        job_id                               -> job: job record, once it has ended
  hold/release ids                                 -> changed: [id], errors: [str]
  nodes       names (hostlist string or None)      -> nodes: [node record], partitions: [partition record]
  drain       nodes (hostlist), reason            -> nodes: [name]
  resume      nodes (hostlist)                     -> nodes: [name]
  reconfigure {}                                   -> {}

This module is imported by every command: standard library only, and little of it.
`socket` costs a command ~5 ms of imports (enum, selectors) and `json` brings `re`
(~4 ms more): the client uses the C modules underneath them, `_socket` and `_json`,
which speak the same protocol byte for byte (tests/test_client.py checks the JSON
against the json module).
"""
from __future__ import annotations

import os

try:
    import _socket as socket
except ImportError:  # an interpreter without the C module
    import socket

MAX_LINE = 64 * 1024 * 1024


class ClientError(Exception):
    """A request could not be completed; str() is the message for the user."""


class ControllerUnavailable(ClientError):
    """rmsctld could not be asked. `down`: its socket refused the connection or is not
    there (rmsctld is not running); `timed_out`: it took the request and did not answer."""

    def __init__(self, message: str, *, down: bool = False, timed_out: bool = False):
        super().__init__(message)
        self.down = down
        self.timed_out = timed_out


UNIX_PATH_MAX = 107         # sun_path holds 108 bytes with the terminating NUL


class unix_address:
    """What bind() and connect() accept for the socket file `path`: the path itself, or,
    when it is too long for a socket address (a deep state or config directory), the
    same file reached through an open descriptor of its directory
    (/proc/self/fd/N/name). A context manager: the descriptor lives as long as it."""

    def __init__(self, path: str):
        self.path = path
        self.fd = None

    def __enter__(self) -> str:
        if len(self.path.encode()) <= UNIX_PATH_MAX:
            return self.path
        self.fd = os.open(os.path.dirname(self.path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        return f"/proc/self/fd/{self.fd}/{os.path.basename(self.path)}"

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)


def connect_unix(sock, path: str) -> None:
    with unix_address(path) as address:
        sock.connect(address)


class RequestRejected(ClientError):
    pass


try:
    from _json import encode_basestring_ascii as _quote
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # no C accelerator: the json module it is
    _quote = _make_encoder = _make_scanner = None


class _Decoding:
    """What _json's scanner reads from a json.JSONDecoder: the defaults of json.loads."""
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan = _make_scanner(_Decoding()) if _make_scanner else None


def _unencodable(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# json.dumps(obj, separators=(",", ":")) is this C encoder, set up as json.encoder would
# (no check for cycles: requests are trees); importing json itself costs `re`.
_encoder = _make_encoder(None, _unencodable, _quote, None, ":", ",", False, False, False) \
    if _make_encoder else None


def encode(message: dict) -> bytes:
    if _encoder is None:
        import json
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"
    return "".join(_encoder(message, 0)).encode() + b"\n"


def decode(line: bytes):
    """json.loads for one line of the protocol; ValueError if it is not JSON."""
    text = line.decode("utf-8").strip(" \t\r\n")
    if _scan is None:
        import json
        return json.loads(text)
    try:
        value, end = _scan(text, 0)
    except StopIteration as exc:
        raise ValueError(f"not JSON at character {exc.value}") from None
    if end != len(text):
        raise ValueError(f"extra data at character {end}")
    return value


def conf_dir() -> str:
    """The configuration directory every command and daemon uses.

    RMS_CONF_DIR wins; then, for ordinary users, their own config dir if they
    set one up (a single-user install); otherwise the system's /etc/rmsbatch.
    """
    env = os.environ.get("RMS_CONF_DIR")
    if env:
        return os.path.abspath(env)
    if os.geteuid() != 0:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        user_dir = os.path.join(base, "rmsbatch")
        if os.path.exists(os.path.join(user_dir, "cluster.toml")):
            return user_dir
    return "/etc/rmsbatch"


def socket_path(directory: str | None = None) -> str:
    """Read only the controller socket path from cluster.toml (cheaply)."""
    directory = directory or conf_dir()
    path = os.path.join(directory, "cluster.toml")
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ControllerUnavailable(
            f"no cluster configuration at {path}: set RMS_CONF_DIR, or start a "
            "single-host cluster with 'rms-local up --dir DIR'") from None
    except OSError as exc:
        raise ControllerUnavailable(f"cannot read {path}: {exc.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ControllerUnavailable(f"{path}: not valid TOML (not UTF-8)") from None
    sock = _scan_socket(text)
    if sock is None:
        # Not the plain `[controller]` / `socket = "..."` layout: parse properly.
        # (A full TOML parse costs every command ~5 ms, so it is the fallback.)
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        try:
            doc = tomllib.loads(text)
        except ValueError as exc:
            raise ControllerUnavailable(f"{path}: not valid TOML: {exc}") from None
        sock = (doc.get("controller") or {}).get("socket") or DEFAULT_SOCKET
    return os.path.join(directory, sock)


DEFAULT_SOCKET = "/run/rmsbatch/rmsctld.sock"


def tcp_settings(directory: str) -> dict:
    """What reaching rmsctld over TCP takes, from cluster.toml: its address (None: not
    configured), the cluster's name (credentials name it) and munged's socket."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    path = os.path.join(directory, "cluster.toml")
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise ControllerUnavailable(f"cannot read {path}: {exc}") from None
    ctl = doc.get("controller") or {}
    address = None
    if ctl.get("address"):
        from rmsbatch.net.tcp import AddressError, parse_address
        try:
            address = parse_address(str(ctl["address"]))
        except AddressError as exc:
            raise ControllerUnavailable(f"{path}: [controller] address: {exc}") from None
    return {"address": address, "cluster": str(doc.get("name", "cluster")),
            "munge_socket": ctl.get("munge_socket")}


def _scan_socket(text: str) -> str | None:
    """`socket` under `[controller]`, read line by line; None when unsure."""
    table = ""
    found = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            table = line.split("#")[0].strip().strip("[]").strip()
            continue
        if table != "controller" or not line.startswith("socket"):
            if line.startswith("controller") and table == "":
                return None          # an inline table: leave it to the parser
            continue
        key, eq, value = line.partition("=")
        if key.strip() != "socket" or not eq:
            continue
        value = value.strip()
        if len(value) < 2 or value[0] not in "\"'" or value[0] not in value[1:]:
            return None
        end = value.index(value[0], 1)
        found = value[1:end]
        if "\\" in found or value[end + 1:].strip()[:1] not in ("", "#"):
            return None
    if found is None and "socket" in text:
        return None
    return found or DEFAULT_SOCKET


class Client:
    """One connection to rmsctld; several calls may share it."""

    def __init__(self, path: str | None = None, timeout: float | None = 60.0,
                 conf: str | None = None):
        """`path`: the controller's socket, or "tcp:HOST:PORT" (with `conf`, the
        configuration directory that says the cluster and munged); None: as the
        configuration and RMS_CONTROLLER say."""
        self.directory = conf if path else conf_dir()
        self.explicit = bool(path)
        self.tcp = None
        if path and path.startswith("tcp:"):
            self.tcp = path[4:]
        elif not path and os.environ.get("RMS_CONTROLLER"):
            self.tcp = "env"
        self.path = path or (socket_path(self.directory) if self.tcp is None else "")
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = b""

    def _connect_tcp(self, address=None) -> "Client":
        """Over TCP with a MUNGE credential: RMS_CONTROLLER, or cluster.toml's address
        on a host without the controller's socket (rmsbatch.net.tcp)."""
        from rmsbatch.net import tcp
        settings = tcp_settings(self.directory or conf_dir())
        if address is None and self.tcp not in (None, "env"):
            try:
                address = tcp.parse_address(self.tcp)
            except tcp.AddressError as exc:
                raise ControllerUnavailable(f"controller address: {exc}") from None
        address = address or tcp.from_environment() or settings["address"]
        self._sock = tcp.connect(address, settings["cluster"], settings["munge_socket"],
                                 self.timeout)
        return self

    def connect(self) -> "Client":
        if self.tcp is not None:
            return self._connect_tcp()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            connect_unix(sock, self.path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            sock.close()
            if isinstance(exc, FileNotFoundError) and self.explicit is False:
                address = tcp_settings(self.directory)["address"]
                if address is not None:     # not the controller's host: over the network
                    return self._connect_tcp(address)
            raise ControllerUnavailable(
                f"cannot reach rmsctld at {self.path}: is the controller running? "
                "(start it with 'rms-local up --dir DIR' or your service manager)",
                down=True) from None
        except TimeoutError:
            sock.close()
            raise ControllerUnavailable(f"rmsctld at {self.path} did not take the connection "
                                        "in time", timed_out=True) from None
        except PermissionError:
            sock.close()
            raise ControllerUnavailable(
                f"permission denied on {self.path}: ask an admin to make the socket "
                "reachable for your user") from None
        except OSError as exc:
            sock.close()
            raise ControllerUnavailable(f"cannot reach rmsctld at {self.path}: {exc}") from None
        self._sock = sock
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Client":
        return self.connect() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, op: str, **fields) -> None:
        if self._sock is None:
            self.connect()
        # "op" first: the server sizes an unfinished request by its op (a job
        # submission may be larger than other requests).
        try:
            self._sock.sendall(encode({"op": op, **fields}))
        except TimeoutError:
            raise ControllerUnavailable("rmsctld did not take the request in time") from None
        except OSError as exc:
            # The server may have refused us (too many connections, too large) and
            # said why before closing: that is the message for the user.
            try:
                self.receive()
            except RequestRejected:
                raise
            except ClientError:
                pass
            raise ControllerUnavailable(f"lost the connection to rmsctld: {exc}") from None

    def receive(self) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                raise ControllerUnavailable("rmsctld did not answer in time",
                                            timed_out=True) from None
            except OSError as exc:
                raise ControllerUnavailable(f"lost the connection to rmsctld: {exc}") from None
            if not chunk:
                raise ControllerUnavailable("rmsctld closed the connection (restarting?)")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise ClientError("reply from rmsctld is too large")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            reply = decode(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ClientError(f"garbled reply from rmsctld: {exc}") from None
        if not isinstance(reply, dict):
            raise ClientError("garbled reply from rmsctld: not an object")
        if not reply.get("ok"):
            raise RequestRejected(reply.get("error") or "request rejected")
        return reply

    def call(self, op: str, **fields) -> dict:
        self.send(op, **fields)
        return self.receive()


def records(reply: dict, key: str = "jobs") -> list[dict]:
    """The records of a listing reply, whether sent as objects or as rows."""
    if "rows" in reply:
        columns = reply["columns"]
        return [dict(zip(columns, row)) for row in reply["rows"]]
    return reply.get(key) or []


def call(op: str, **fields) -> dict:
    """One request on a fresh connection."""
    with Client() as client:
        return client.call(op, **fields)
