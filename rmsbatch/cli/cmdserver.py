"""The command server: one per user (and per installation, Python environment and
group set), holding Python and the modules of `rsub`, `rq` and `rcancel` already
loaded, so that each call of those is a fork instead of an interpreter start.

The installed `rsub`, `rq` and `rcancel` are small C programs (cmdclient.c). Each
connects to the server's socket in a directory only its user can enter, sends its
arguments, environment, umask, resource limits and descriptors (stdin, stdout,
stderr, working directory), and waits. The server checks who is calling
(SO_PEERCRED, SO_PEERGROUPS), forks, and the child becomes the command: it takes the
caller's descriptors, directory, umask, limits and environment, then runs the
command's `main` exactly as `rms-client COMMAND` would. The server tells the caller the
child's pid (so that Ctrl-C reaches it) and then how it ended, which the caller
repeats as its own exit.

Anything the child could not reproduce faithfully makes the server decline before
forking (the caller then runs the command itself, the ordinary way): another user,
another group set, a hard resource limit above the server's, a different Python
start-up environment, an installation changed on disk since the server started.

The server ends after IDLE_S seconds without a request, on SIGTERM, or when its
installation changes. It never reads the cluster's configuration: each command does,
in its own child, from the caller's environment.
"""
from __future__ import annotations

import errno
import fcntl
import gc
import os
import resource
import select
import signal
import socket
import stat
import struct
import sys
import time

COMMANDS = {"rsub": "rmsbatch.cli.rsub", "rq": "rmsbatch.cli.rq",
            "rcancel": "rmsbatch.cli.rcancel"}
# What the commands import on their common paths, loaded once here rather than in
# every child (a module missing from this list is imported by the child: slower only).
PRELOAD = ("rmsbatch.cli.jobscript", "rmsbatch.cli.directives", "rmsbatch.cli.rsub_options",
           "rmsbatch.core.jobspec", "rmsbatch.core.units", "rmsbatch.core.hostlist",
           "rmsbatch.core.resources", "rmsbatch.core.arrayspec", "rmsbatch.core.dependency",
           "rmsbatch.core.begintime", "rmsbatch.cli.priorities", "rmsbatch.net.client",
           "rmsbatch.net.tcp", "argparse", "json", "tomllib", "textwrap")
IDLE_S = 600.0              # RMS_CMDSERVER_IDLE in the environment that starts it
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST = 8 << 20
NLIMITS = 16
MAGIC = b"RMS1"
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UNLIMITED = (1 << 64) - 1


class Declined(Exception):
    """The request cannot be run here as the caller would run it: the caller runs it."""


def startup_environment(env) -> dict[bytes, bytes]:
    """The variables that change how Python starts (its paths, encodings, modes): a
    server serves only callers whose values are its own (cmdclient.c hashes the same
    ones into the socket's name)."""
    return {k: v for k, v in env.items()
            if k.startswith(b"PYTHON") or k in (b"LANG", b"LC_ALL", b"LC_CTYPE")}


class Request:
    """One call, parsed from the caller's message."""

    __slots__ = ("command", "argv", "env", "umask", "limits", "fds")

    def __init__(self, command, argv, env, umask, limits, fds):
        self.command, self.argv, self.env = command, argv, env
        self.umask, self.limits, self.fds = umask, limits, fds

    @classmethod
    def parse(cls, body: bytes, fds: list[int]) -> "Request":
        if len(fds) != 4:
            raise Declined(f"{len(fds)} descriptors instead of 4")
        try:
            umask, = struct.unpack_from("<I", body, 0)
            raw = struct.unpack_from(f"<{2 * NLIMITS}Q", body, 4)
            pos = 4 + 16 * NLIMITS
            end = body.index(b"\0", pos)
            command = body[pos:end].decode()
            argv, pos = _strings(body, end + 1)
            envlist, pos = _strings(body, pos)
        except (struct.error, ValueError, UnicodeDecodeError) as exc:
            raise Declined(f"malformed request: {exc}") from None
        if command not in COMMANDS or not argv:
            raise Declined(f"unknown command {command!r}")
        env = dict(e.split(b"=", 1) for e in envlist if b"=" in e)
        limits = [(_limit(raw[2 * i]), _limit(raw[2 * i + 1])) for i in range(NLIMITS)]
        return cls(command, argv, env, umask & 0o777, limits, fds)


def _limit(value: int) -> int:
    return resource.RLIM_INFINITY if value == _UNLIMITED else value


def _strings(body: bytes, pos: int) -> tuple[list[bytes], int]:
    count, = struct.unpack_from("<I", body, pos)
    pos += 4
    out = []
    for _ in range(count):
        end = body.index(b"\0", pos)
        out.append(body[pos:end])
        pos = end + 1
    return out, pos


def private_directory(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


class Server:
    """Accepts calls on `path` and runs each in a forked child. `run_once` handles what
    is ready (a new call, a child's end, a caller gone) and says whether to go on."""

    def __init__(self, path: str):
        self.path = path
        self.lock_fd = -1
        self.listener: socket.socket | None = None
        self.running: dict[int, socket.socket] = {}     # child pid -> its caller
        self.last_active = time.monotonic()
        self.stopping = False
        self.stop_requested = False
        self.hung_up: set[int] = set()      # children whose caller left: told once
        self.stamps: dict[str, tuple] = {}
        self.bound = -1
        self.environment = startup_environment(os.environb)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.verbose = bool(os.environ.get("RMS_CMDSERVER_LOG"))     # a line per call

    # -- start and stop ----------------------------------------------------------------
    def start(self) -> bool:
        """Take the lock and the socket; False when another server has them."""
        directory = os.path.dirname(self.path) or "."
        if not private_directory(directory):
            raise PermissionError(errno.EACCES, f"{directory} is not private to this user")
        self.lock_fd = os.open(self.path + ".lock",
                               os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self.lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.lock_fd)
            self.lock_fd = -1
            return False
        for name in (*COMMANDS.values(), *PRELOAD):
            try:
                __import__(name)
            except ImportError:
                pass
        self.stamps = self._stamps()
        # What is loaded now stays as it is in every child: kept out of the collector's
        # passes, which would otherwise touch (and so copy) every page of it.
        gc.collect()
        gc.freeze()
        try:
            os.unlink(self.path)            # a server killed earlier left it
        except FileNotFoundError:
            pass
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        self.listener.listen(128)
        self.bound = os.stat(self.path).st_ino      # to remove only our own socket file
        os.ftruncate(self.lock_fd, 0)               # our pid, once we listen (for admins
        os.write(self.lock_fd, f"{os.getpid()}\n".encode())     # and tests)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._terminate)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return True

    def _terminate(self, *_):
        self.stop_requested = True          # acted on by run_once, between selects

    def stop(self) -> None:
        """Take no more calls; the running ones still get their caller's answer."""
        if self.stopping:
            return
        self.stopping = True
        if self.listener is not None:
            try:
                if os.stat(self.path).st_ino == self.bound:
                    os.unlink(self.path)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        if self.lock_fd >= 0:
            os.close(self.lock_fd)          # a new server may start while these finish
            self.lock_fd = -1

    @staticmethod
    def _stamps() -> dict[str, tuple]:
        stamps = {}
        for name, module in list(sys.modules.items()):
            path = getattr(module, "__file__", None)
            if name.startswith("rmsbatch") and path:
                st = os.stat(path)
                stamps[path] = (st.st_mtime_ns, st.st_size, st.st_ino)
        return stamps

    def installation_changed(self) -> bool:
        for path, stamp in self.stamps.items():
            try:
                st = os.stat(path)
            except OSError:
                return True
            if (st.st_mtime_ns, st.st_size, st.st_ino) != stamp:
                return True
        return False

    # -- the loop ----------------------------------------------------------------------
    def run_once(self, timeout: float) -> bool:
        # poll, not select: no limit on descriptor numbers, however many calls run
        by_fd = {c.fileno(): c for p, c in self.running.items() if p not in self.hung_up}
        by_fd[self.wake_r] = None
        if self.listener is not None:
            by_fd[self.listener.fileno()] = self.listener
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        ready = poller.poll(None if timeout is None else timeout * 1000)
        if self.stop_requested:
            self.stop()
        for fd, _ in ready:
            item = by_fd.get(fd)
            if fd == self.wake_r:
                try:
                    os.read(self.wake_r, 512)
                except BlockingIOError:
                    pass
            elif item is not None and item is self.listener:    # None once stopped
                self._accept()
            elif item in self.running.values():
                self._caller_gone(item)
        self._reap()
        if self.running:
            return True
        if self.stopping:
            return False
        if time.monotonic() - self.last_active > IDLE_S:
            self.stop()
            return False
        return True

    def serve(self) -> None:
        while self.run_once(IDLE_S / 4):
            pass

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last_active = time.monotonic()
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT_S)
            caller, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET,
                                                                   socket.SO_PEERCRED, 12))
            if uid != os.getuid():
                conn.close()                # not ours to serve, nor to answer
                return
            body = self._receive(conn, fds)
            request = self._check(conn, gid, body, fds)
        except (Declined, OSError) as exc:
            log(f"declined a call: {exc}")      # the caller runs it itself
            self._answer(conn, b"D", 0)
            for fd in fds:
                os.close(fd)
            conn.close()
            return
        try:
            pid = os.fork()
        except OSError as exc:              # out of processes (RLIMIT_NPROC) or memory
            pid, failure = -1, exc.strerror
        if pid == 0:
            self._become(request, conn)     # never returns
        for fd in fds:
            os.close(fd)
        if pid < 0:
            log(f"declined a call: cannot fork: {failure}")
            self._answer(conn, b"D", 0)
            conn.close()
            return
        self.running[pid] = conn
        self._answer(conn, b"P", pid)
        if self.verbose:
            log(f"pid {pid}: {request.command} for pid {caller}")

    def _receive(self, conn: socket.socket, fds: list[int]) -> bytes:
        data, ancillary, flags, _ = conn.recvmsg(65536, socket.CMSG_SPACE(16 * 4))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(struct.unpack(f"{len(payload) // 4}i", payload[:len(payload) // 4 * 4]))
        if flags & socket.MSG_CTRUNC or len(data) < 8 or data[:4] != MAGIC:
            raise Declined("malformed request")
        size, = struct.unpack_from("<I", data, 4)
        if size > MAX_REQUEST:
            raise Declined("request too large")
        chunks, got = [data[8:]], len(data) - 8
        while got < size:
            chunk = conn.recv(min(1 << 20, size - got))
            if not chunk:
                raise Declined("caller left mid-request")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _check(self, conn: socket.socket, gid: int, body: bytes, fds: list[int]) -> Request:
        if self.stopping:
            raise Declined("stopping")
        if self.installation_changed():
            self.stop()
            raise Declined("installation changed")
        request = Request.parse(body, fds)
        if gid != os.getgid() or sorted(_peer_groups(conn)) != sorted(os.getgroups()):
            raise Declined("another group set")
        if startup_environment(request.env) != self.environment:
            raise Declined("another Python environment")
        if os.getuid() != 0:
            for which, (_, hard) in enumerate(request.limits):
                try:
                    _, own = resource.getrlimit(which)
                except (ValueError, OSError):
                    continue
                if own != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY
                                                      or hard > own):
                    raise Declined("a hard limit above the server's")
        return request

    @staticmethod
    def _answer(conn: socket.socket, kind: bytes, value: int) -> None:
        try:
            conn.sendall(kind + struct.pack("<i", value))
        except OSError:
            pass

    def _reap(self) -> None:
        while self.running:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.running.pop(pid, None)
            self.hung_up.discard(pid)
            if conn is None:
                continue
            if os.WIFSIGNALED(status):
                self._answer(conn, b"S", os.WTERMSIG(status))
            else:
                self._answer(conn, b"X", os.waitstatus_to_exitcode(status))
            conn.close()
            self.last_active = time.monotonic()

    def _caller_gone(self, conn: socket.socket) -> None:
        """The caller's end was closed (it was killed): end its command, as a hangup."""
        try:
            if conn.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK):
                conn.recv(4096, socket.MSG_DONTWAIT)    # nothing is expected; drop it
                return
        except BlockingIOError:
            return
        except OSError:
            pass
        for pid, c in self.running.items():
            if c is conn:
                self.hung_up.add(pid)
                try:
                    os.kill(pid, signal.SIGHUP)
                except ProcessLookupError:
                    pass

    # -- the child ---------------------------------------------------------------------
    def _become(self, request: Request, conn: socket.socket) -> None:
        """Turn this forked child into the caller's command, and end with its status."""
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.listener is not None:
                self.listener.close()
            for other in self.running.values():
                other.close()
            for fd in (self.lock_fd, self.wake_r, self.wake_w):
                if fd >= 0:
                    os.close(fd)
            status_fd = conn.detach()   # kept: the caller sees EOF only once both the
            # server and this command are gone
            stdin, stdout, stderr, cwd = request.fds
            os.dup2(stdin, 0)
            os.dup2(stdout, 1)
            os.dup2(stderr, 2)
            os.fchdir(cwd)
            for fd in request.fds:
                if fd > 2:
                    os.close(fd)
            os.umask(request.umask)
            for which, limit in enumerate(request.limits):
                try:
                    resource.setrlimit(which, limit)
                except (ValueError, OSError):
                    pass
            os.environb.clear()
            os.environb.update(request.env)
            time.tzset()
            sys.argv = [os.fsdecode(a) for a in request.argv]
            sys.stdout.reconfigure(line_buffering=os.isatty(1))
            module = sys.modules.get(COMMANDS[request.command]) or \
                __import__(COMMANDS[request.command], fromlist=["main"])
            from rmsbatch.cli.common import finish
            code = finish(module.main) & 0xFF
            # Said here too, not only by the server after waitpid: the caller still
            # learns the outcome if the server was killed in the meantime.
            os.write(status_fd, b"X" + struct.pack("<i", code))
            os._exit(code)
        except BaseException:           # noqa: BLE001 - never back into the server's loop
            try:
                import traceback
                traceback.print_exc()
            finally:
                os._exit(1)
        os._exit(1)


def _peer_groups(conn: socket.socket) -> list[int]:
    """The caller's supplementary groups (Linux 4.13+). Python reads at most 1,024
    bytes of an option: a caller in more than 256 groups is declined (ERANGE)."""
    try:
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 1024)
    except OSError as exc:
        raise Declined(f"cannot read the caller's groups: {exc.strerror}") from None
    return list(struct.unpack(f"{len(raw) // 4}I", raw))


def log(line: str) -> None:
    """To the server's stderr: /dev/null unless RMS_CMDSERVER_LOG named a file when
    the server was started."""
    print(f"rms-client[{os.getpid()}]: {time.strftime('%Y-%m-%dT%H:%M:%S')} {line}",
          file=sys.stderr, flush=True)


def serve(path: str) -> int:
    global IDLE_S
    try:
        IDLE_S = max(1.0, float(os.environ.get("RMS_CMDSERVER_IDLE", IDLE_S)))
    except ValueError:
        log(f"RMS_CMDSERVER_IDLE={os.environ['RMS_CMDSERVER_IDLE']!r} is not a number "
            f"of seconds: using {IDLE_S:g}")
    server = Server(path)
    try:
        if not server.start():
            return 0                        # another server has it
    except OSError as exc:
        print(f"rms-client: error: cannot serve on {path}: "
              f"{exc.strerror or exc} (its directory must be yours, mode 0700)",
              file=sys.stderr)
        return 1
    server.serve()
    return 0
