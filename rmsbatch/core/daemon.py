"""What both daemon shells share: logging, the single-instance lock, the pid
file, and signals turned into flags that wake the event loop."""
from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
import sys


class AlreadyRunning(Exception):
    pass


def setup_logging(log_file: str | None, verbose: bool) -> None:
    handler: logging.Handler
    if log_file:
        os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
        handler = logging.FileHandler(log_file)
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
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
        with open(path + ".tmp", "w") as fh:
            fh.write(f"{os.getpid()}\n")
        os.rename(path + ".tmp", path)


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
