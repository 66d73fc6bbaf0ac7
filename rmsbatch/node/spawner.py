"""The supervisor spawner: a small process that rmsd starts once, and its workers, the
processes that supervise the runs.

Why not fork rmsd for each run, as before: a fork copies the parent's page tables, and
the child's first write to each inherited page copies that page (CPython writes a
reference count whenever it touches an object). On a busy node that was most of a
launch's cost. The spawner holds only what a supervisor needs, imported once; and a
supervisor whose run has ended does not exit: it goes back to the spawner as an idle
worker and supervises the next run in the same process, its pages its own by then.
The fork, the copy-on-write faults and the exit of a process are paid once per worker,
not once per job.

A worker is a supervisor in every way that matters to the rest of the node: it holds
the run's lock for the run's whole life (liveness comes from the lock, never from a
pid), it leaves the spawner's session at birth so that it outlives rmsd and the
spawner, and it writes its pid to the run's pid file. Between runs it holds nothing of
the last one (rmsbatch.node.supervisor.run leaves the process as found); a worker
that still holds a descriptor it did not hold before, or that has supervised
RUNS_PER_WORKER runs, retires instead of taking another.

rmsd's end: a request is the job directory's path, with the run's lock (held by rmsd
since before the request) passed alongside; the reply is the supervisor's pid, or
"error: ..." when the fork failed. The spawner exits when rmsd's end closes (rmsd
stopped or killed); idle workers then exit, busy ones after their run. When the
spawner cannot be reached, rmsd forks the supervisor itself (rmsbatch.node.launch):
slower, never wrong.
"""
from __future__ import annotations

import array
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time

log = logging.getLogger("rmsbatch.spawner")

READY_TIMEOUT_S = 10.0      # its start (an interpreter and the supervisor's imports)
REPLY_TIMEOUT_S = 10.0      # a fork that takes longer is a machine in trouble
RETRY_AFTER_S = 10.0        # after the spawner failed, rmsd forks itself meanwhile


class SpawnerGone(Exception):
    """The spawner is not there and took no request: the caller forks the supervisor
    itself."""


class Unanswered(Exception):
    """The spawner took the request and gave no answer: whether it forked is unknown,
    so the caller must not fork a second supervisor for the run."""


class Spawner:
    """rmsd's end: starts the spawner process and asks it for supervisors."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.ready = False
        self.failed_at = float("-inf")

    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rmsbatch.node.spawner", str(theirs.fileno())],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, cwd="/")
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.ready = False
        log.info("node daemon: supervisor spawner started (pid %d)", self.proc.pid)

    def available(self) -> bool:
        if self.sock is not None:
            return True
        if time.monotonic() - self.failed_at < RETRY_AFTER_S:
            return False
        try:
            self.start()
        except OSError as exc:
            self._failed(f"cannot start it: {exc}")
            return False
        return True

    def spawn(self, jobdir: str, lock: int) -> int:
        """The new supervisor's pid. Raises SpawnerGone when the spawner is not there
        and took no request (forking is safe), Unanswered when it took the request and
        gave no answer, OSError when it answered that the fork failed."""
        if not self.available():
            raise SpawnerGone("the supervisor spawner is not running")
        if not self.ready:
            # No request is out yet: whatever goes wrong here, forking is safe.
            self.sock.settimeout(READY_TIMEOUT_S)
            hello, why = self._receive()
            if hello != b"ready":
                self._failed(why)
                raise SpawnerGone(f"the supervisor spawner did not start: {why}")
            self.ready = True
            self.sock.settimeout(REPLY_TIMEOUT_S)
        try:
            _send(self.sock, os.fsencode(jobdir), lock)
        except OSError as exc:
            self._failed(str(exc))
            raise SpawnerGone(f"the supervisor spawner is gone: {exc}") from None
        data, why = self._receive()
        reply = data.decode("utf-8", "replace")
        if not reply:
            self._failed(why)
            raise Unanswered(f"the supervisor spawner took the launch and gave no answer "
                             f"({why}): the run is reported lost unless its supervisor "
                             f"started")
        if reply.startswith("error: "):
            raise OSError(reply[len("error: "):])
        return int(reply)

    def _receive(self) -> tuple[bytes, str]:
        """One message from the spawner, and why there is none when it is empty."""
        try:
            return self.sock.recv(4096), "it exited"
        except OSError as exc:
            return b"", str(exc) or type(exc).__name__

    def _failed(self, why: str) -> None:
        log.warning("node daemon: supervisor spawner unusable (%s): rmsd forks supervisors "
                    "itself for the next %.0f s", why, RETRY_AFTER_S)
        self.stop()
        self.failed_at = time.monotonic()

    def stop(self) -> None:
        self.ready = False
        if self.sock is not None:
            self.sock.close()       # the spawner reads EOF and exits
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


# -- the spawner process -----------------------------------------------------------------
# A supervisor whose run ended goes back to the spawner as an idle worker and takes the
# next run: its pages are its own by then, so the copy-on-write faults, the fork and
# the exit of a fresh process are paid once per worker, not once per job.
MAX_IDLE = 16               # idle workers kept (about 5 MiB of its own memory each)
IDLE_S = 60.0               # an idle worker is let go after this long
RUNS_PER_WORKER = 256       # then it exits: what a run leaves in memory stays bounded
LOCK_FD, WORKER_FD = 3, 4   # a worker's descriptors: the run's lock, its socket


def _reap(*_args) -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _receive(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One request: (job directory, descriptors). b"" when the other end closed."""
    try:
        msg, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
    except ConnectionResetError:
        return b"", []
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[:len(data) - len(data) % fds.itemsize])
    return msg, list(fds)


def _send(sock: socket.socket, jobdir: bytes, lock: int) -> None:
    sock.sendmsg([jobdir], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [lock]))])


class Pool:
    """The spawner's workers: busy ones (supervising a run) and idle ones."""

    def __init__(self):
        self.busy: dict[socket.socket, int] = {}
        self.idle: list[tuple[socket.socket, int, float]] = []    # (socket, pid, since)

    def sockets(self) -> list[socket.socket]:
        return list(self.busy) + [s for s, _, _ in self.idle]

    def hand(self, jobdir: bytes, lock: int) -> int:
        """Give the run to an idle worker, or to a new one; its pid."""
        while self.idle:
            sock, pid, _ = self.idle.pop()
            try:
                _send(sock, jobdir, lock)
            except OSError:
                sock.close()        # it is gone: the next one
                continue
            self.busy[sock] = pid
            return pid
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            raise
        if pid == 0:
            try:
                _work(theirs, os.fsdecode(jobdir), lock)
            finally:
                os._exit(1)
        theirs.close()
        self.busy[ours] = pid
        return pid

    def heard(self, sock: socket.socket, now: float) -> None:
        """A worker said it is idle, or closed its end (it exited)."""
        try:
            said = sock.recv(64)
        except OSError:
            said = b""
        pid = self.busy.pop(sock, None)
        if pid is not None and said == b"idle" and len(self.idle) < MAX_IDLE:
            self.idle.append((sock, pid, now))
            return
        self.idle = [w for w in self.idle if w[0] is not sock]
        sock.close()                # a worker reads EOF and exits

    def expire(self, now: float) -> float | None:
        """Let go of workers idle too long; seconds until the next one is due."""
        keep = []
        for sock, pid, since in self.idle:
            if now - since >= IDLE_S:
                sock.close()
            else:
                keep.append((sock, pid, since))
        self.idle = keep
        return min((since + IDLE_S - now for _, _, since in keep), default=None)

    def close(self) -> None:
        """rmsd is gone: idle workers exit now, busy ones after their run."""
        for sock in self.sockets():
            sock.close()
        self.busy.clear()
        self.idle.clear()


def _work(sock: socket.socket, jobdir: str, lock: int) -> None:
    """A worker: supervise JOBDIR's run, then the runs the spawner hands over, in this
    one process. Never returns."""
    from rmsbatch.node import procs, supervisor
    procs.detach({LOCK_FD: lock, WORKER_FD: sock.detach()})
    chan = socket.socket(fileno=WORKER_FD)
    held = _descriptors()           # counted with the run's lock
    runs = 0
    while True:
        supervisor.main([jobdir, "--lock-fd", str(LOCK_FD)])
        os.close(LOCK_FD)           # the run has ended: rmsd may read its outcome now
        runs += 1
        if runs >= RUNS_PER_WORKER or _descriptors() != held - 1:
            break
        try:
            chan.send(b"idle")
        except OSError:
            break
        msg, fds = _receive(chan)
        if not msg or len(fds) != 1:
            break                   # let go (or rmsd gone): exit
        if fds[0] != LOCK_FD:
            os.dup2(fds[0], LOCK_FD)
            os.close(fds[0])
        jobdir = os.fsdecode(msg)
    os._exit(0)


def _descriptors() -> int:
    """How many descriptors this process holds (the one listing them included)."""
    return len(os.listdir("/proc/self/fd"))


def serve(sock: socket.socket) -> None:
    pool = Pool()
    try:
        while True:
            wait = pool.expire(time.monotonic())
            ready, _, _ = select.select([sock, *pool.sockets()], [], [], wait)
            now = time.monotonic()
            for ready_sock in ready:
                if ready_sock is not sock:
                    pool.heard(ready_sock, now)
                    continue
                msg, fds = _receive(sock)
                if not msg:
                    return          # rmsd's end closed
                if len(fds) != 1:
                    for fd in fds:
                        os.close(fd)
                    sock.send(b"error: a request carries exactly one lock descriptor")
                    continue
                try:
                    pid = pool.hand(msg, fds[0])
                except OSError as exc:
                    sock.send(f"error: {exc.strerror or exc}".encode())
                else:
                    sock.send(str(pid).encode())
                finally:
                    os.close(fds[0])
    finally:
        pool.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m rmsbatch.node.spawner FD (started by rmsd)", file=sys.stderr)
        return 2
    # Ctrl-C at a foreground rmsd reaches its whole process group: rmsd decides when
    # the spawner ends, by closing its end.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, _reap)
    # What every supervisor uses, imported once here (rmsbatch.node.daemon does the same
    # for the supervisors it forks itself).
    from rmsbatch.node import cgroup, devfilter, lease, supervisor  # noqa: F401
    try:
        import psutil  # noqa: F401
    except ImportError:
        pass
    sock = socket.socket(fileno=int(args[0]))
    try:
        sock.send(b"ready")
    except OSError:
        return 0                # rmsd is gone already
    serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main())
