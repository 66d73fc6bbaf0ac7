"""A job directory, `<state_dir>/<node>/jobs/<job id>.<run>/`: the node's record of one
run of a job, shared by rmsd and the run's supervisor.

    job.json         what to run and how (written by rmsd before the supervisor starts)
    supervisor.lock  held (flock) by the supervisor for its whole life: while it is
                     held, the supervisor lives; the kernel drops it when it dies, so
                     liveness never rests on a pid that may have been reused
    supervisor.sock  the supervisor's control socket: cancel, signal, stop
    pid              written by the supervisor once the job's process exists
    outcome.json     how the run ended (written by the supervisor, or by rmsd when the
                     supervisor is gone)

Creating the directory is the launch's point of no return (mkdir is atomic: a run is
never launched twice); it is removed only once the controller has acknowledged the
outcome, so rmsd can be killed at any moment and read its runs back.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import socket

from rmsbatch.net.client import connect_unix

JOB_FILE = "job.json"
LOCK_FILE = "supervisor.lock"
CONTROL_SOCKET = "supervisor.sock"
PID_FILE = "pid"
OUTCOME_FILE = "outcome.json"
LOG_FILE = "supervisor.log"
LEGACY_PID_FILE = "supervisor.pid"      # written by rmsd before supervisor.lock existed


def read_line(sock, limit: int = 1 << 20) -> bytes:
    """One newline-terminated message from a blocking socket (with its timeout);
    ConnectionResetError when the peer closes before the end of the line."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed mid-message")
        data += chunk
        if len(data) > limit:
            raise ValueError(f"message longer than {limit} bytes")
    return data


class SupervisorGone(Exception):
    """The run's supervisor is not there to answer."""


def parse_run(name: str) -> tuple[int, int] | None:
    """`"42.1"` -> (42, 1): job 42, its second run (a requeued job runs again)."""
    job, dot, restart = name.partition(".")
    if dot and job.isdigit() and restart.isdigit():
        return int(job), int(restart)
    return None


def write_json(path: str, data: dict, durable: bool = True, mode: int = 0o600) -> None:
    """tmp file + fsync + rename + fsync of the directory. `durable=False` for what
    only has to outlive processes (rmsd restarts), not the machine: no fsync. Private
    by default: job.json holds the submitter's environment (tokens, keys), and job
    directories are reachable by every user who can guess their names."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, (json.dumps(data) + "\n").encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    if not durable:
        return
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def hold_lock(path: str) -> int:
    """Create the supervisor's lock and hold it; the descriptor goes to the supervisor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


class JobDir:
    def __init__(self, path: str):
        self.path = path
        self.run = os.path.basename(path.rstrip("/"))
        parsed = parse_run(self.run)
        if parsed is None:
            raise ValueError(f"{path}: not a job directory (expected <job>.<run>)")
        self.job_id, self.restart = parsed

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def job(self) -> dict:
        return read_json(self.file(JOB_FILE)) or {}

    def outcome(self) -> dict | None:
        return read_json(self.file(OUTCOME_FILE))

    def pid_info(self) -> dict | None:
        return read_json(self.file(PID_FILE))

    def write_outcome(self, outcome: dict) -> None:
        write_json(self.file(OUTCOME_FILE), outcome)

    def supervisor_alive(self) -> bool:
        """Whoever holds the lock is the supervisor; nobody holds it once it died."""
        try:
            fd = os.open(self.file(LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return self.legacy_supervisor() is not None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return True
            raise
        finally:
            os.close(fd)
        return False

    def legacy_supervisor(self) -> int | None:
        """The supervisor of a run started by rmsbatch before supervisor.lock existed
        (an upgrade with jobs running): its pid from `supervisor.pid`, trusted only if
        that process is a forked rmsd (rmsd's command line) that chdir'ed to /."""
        try:
            with open(self.file(LEGACY_PID_FILE)) as fh:
                pid = int(fh.read())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
            with open(f"/proc/{pid}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError, IndexError):
            return None
        if state in ("Z", "X") or b"rmsd" not in cmdline or cwd != "/":
            return None
        return pid

    def control(self, message: dict, timeout: float = 5.0) -> dict:
        """Ask the supervisor something (cancel, signal, stop); its answer."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            try:
                connect_unix(sock, self.file(CONTROL_SOCKET))
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                legacy = self.legacy_supervisor()
                if legacy is not None and message.get("op") == "cancel":
                    os.kill(legacy, signal.SIGTERM)     # its only way to hear a cancel
                    return {"ok": True}
                raise SupervisorGone(f"job {self.run}: no supervisor ({exc.strerror})") from None
            sock.sendall((json.dumps(message) + "\n").encode())
            data = read_line(sock)
        except (OSError, ValueError) as exc:
            raise SupervisorGone(f"job {self.run}: supervisor did not answer ({exc})") from None
        finally:
            sock.close()
        try:
            reply = json.loads(data)
        except ValueError:
            reply = {}
        return reply if isinstance(reply, dict) else {}
