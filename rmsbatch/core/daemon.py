"""What both daemon shells share: logging, the single-instance lock, the pid
file, and signals turned into flags that wake the event loop.

Daemons often run as root in directories an admin (or rms-local) chose: every
file they create or reopen is opened without following a symlink in its last
component (O_NOFOLLOW), new ones exclusively (O_EXCL), and is changed through
its descriptor, so a link planted in their place cannot redirect root's writes.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import stat
import sys


class AlreadyRunning(Exception):
    pass


class UnsafePath(Exception):
    """A file or directory a daemon would write is not one it can trust."""


def open_file(path: str, flags: int, mode: int = 0o644) -> int:
    """os.open that refuses a symlink, and anything but a plain file with one link
    (a hard link to another file would get root's writes as well)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"refusing to open {path}: it is a symbolic link; remove it") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a plain file" if not stat.S_ISREG(info.st_mode) else \
            f"a file with {info.st_nlink} hard links"
        raise UnsafePath(f"refusing to open {path}: it is {what}; remove it")
    return fd


def ensure_dir(path: str, mode: int, at_least: bool = False) -> None:
    """Create `path` (and parents) if missing, and give it `mode` (`at_least`: add
    those bits) through a descriptor: chmod on the path would follow a symlink put there."""
    os.makedirs(path, mode=mode, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePath(f"refusing to use {path}: it is a symbolic link or not a "
                             "directory; remove it") from None
        raise
    try:
        info = os.fstat(fd)
        if info.st_uid not in (os.geteuid(), 0):
            raise UnsafePath(f"refusing to use {path}: owned by uid {info.st_uid}, not "
                             f"{os.geteuid()}; remove it or chown it")
        current = stat.S_IMODE(info.st_mode)
        wanted = current | mode if at_least else mode
        if current != wanted:
            os.fchmod(fd, wanted)
    finally:
        os.close(fd)


def raise_fd_limit() -> None:
    """Up to the hard limit: a server holds a connection per waiting client."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def setup_logging(log_file: str | None, verbose: bool) -> None:
    handler: logging.Handler
    if log_file in ("/dev/stdout", "-"):
        handler = logging.StreamHandler(sys.stdout)
    elif log_file and log_file != "/dev/stderr":
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        fd = open_file(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        handler = logging.StreamHandler(os.fdopen(fd, "a", encoding="utf-8"))
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def take_lock(path: str, what: str):
    """Hold an exclusive lock for the life of the process; the pid goes in the file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = open_file(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode().strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(f"another {what} (pid {other}; lock {path}): stop it first") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def write_pid_file(path: str | None) -> None:
    if path:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        try:
            os.unlink(tmp)        # a leftover (or a planted link): never written through
        except FileNotFoundError:
            pass
        fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.fchmod(fd, 0o644)
            os.write(fd, f"{os.getpid()}\n".encode())
        finally:
            os.close(fd)
        os.rename(tmp, path)     # replaces a link at `path` itself, not its target


class Signals:
    """SIGTERM/SIGINT: stop (a second one: exit now). SIGHUP: reload.
    The wakeup socket is registered with the loop so select() returns."""

    def __init__(self):
        self.stop = False
        self.reload = False
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._reload)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def _stop(self, signum, frame):
        if self.stop:
            os._exit(128 + signum)
        self.stop = True

    def _reload(self, signum, frame):
        self.reload = True


def unprivileged_notice(name: str) -> str | None:
    if os.geteuid() == 0:
        return None
    return (f"{name}: running as uid {os.geteuid()} (single-user mode): jobs run as this "
            "user only; not available: running jobs as their submitters, cgroup limits, "
            "device fencing")
