"""The per-job supervisor: one process per run of a job, forked by rmsd and run as

    rmsbatch.node.supervisor.main([JOBDIR, "--lock-fd", N])

in a session of its own (so it outlives a `kill -9` of rmsd), with stdin, stdout and
stderr on /dev/null. It holds JOBDIR/supervisor.lock (its liveness, see
rmsbatch.node.jobdir), reads JOBDIR/job.json, applies the job's isolation (or fails
the launch, as root, when it cannot: the job never runs unprotected), forks the job
(new session, inside its cgroup, privileges dropped to the user with the submitter's
umask and resource limits, working directory, output files), records JOBDIR/pid,
enforces the time limit (sending the job's --signal that many seconds before it, once)
and the lease, obeys its control socket (cancel, signal, a new time limit), kills
whatever the job left behind, writes JOBDIR/outcome.json, and tells rmsd (or, when
rmsd is away, rmsctld itself) that the run ended.

Everything it has to say goes to JOBDIR/supervisor.log (logger
`rmsbatch.supervisor`, lines starting `job N: `).

    JOBDIR/pid          {"pid": P, "start_time": T, "supervisor_pid": S}
                        P is the job process, its process group and session id.
    JOBDIR/outcome.json {"job_id", "run", "state", "exit_code", "signal", "start_time",
                         "end_time", "max_rss_kb", "total_cpu_s", "reason",
                         "protections", "launch_failed"}
"""
from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import sys
import time

from rmsbatch.core.states import JobState
from rmsbatch.net.client import connect_unix, unix_address
from rmsbatch.node import jobprocess, procs, prolog
from rmsbatch.node.isolation import Isolation, IsolationError
from rmsbatch.node.jobdir import (CONTROL_SOCKET, JOB_FILE, LOG_FILE, OUTCOME_FILE,
                                  PID_FILE, parse_run, read_line, write_json)
from rmsbatch.node.jobfile import Job, JobFileError, load_job, output_paths

log = logging.getLogger("rmsbatch.supervisor")

MAX_WAIT_S = 1.0                # longest select() sleep; SIGCHLD wakes us much earlier
ORPHAN_REAP_S = 2.0             # how long to wait for killed leftovers at the end
REPORT_FOR_S = 600.0            # how long to keep trying to report an outcome


def outcome_from_status(status: int, *, cancelled: bool,
                        timed_out: bool) -> tuple[str, int, int]:
    """Map a wait status to (state, exit_code, signal).

    Cancel and timeout take precedence over what the process did; the real
    exit code / signal is still returned.
    """
    if os.WIFSIGNALED(status):
        code, sig = 0, os.WTERMSIG(status)
    elif os.WIFEXITED(status):
        code, sig = os.WEXITSTATUS(status), 0
    else:                                   # stopped/continued: not an end
        code, sig = 0, 0
    if cancelled:
        state = JobState.CANCELLED
    elif timed_out:
        state = JobState.TIMEOUT
    elif sig == 0 and code == 0:
        state = JobState.COMPLETED
    else:
        state = JobState.FAILED
    return state.value, code, sig


def notify(sock_path: str, job_id: int, op: str = "ended", **fields) -> bool:
    """Tell rmsd the job ended (or, op "ready", that a holder's part is set up); False
    when rmsd is not there to hear it."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            connect_unix(s, sock_path)
            s.sendall((json.dumps({"op": op, "job_id": job_id, **fields}) + "\n").encode())
        return True
    except (OSError, ValueError) as e:
        log.info("job %s: cannot notify %s: %s", job_id, sock_path, e)
        return False


# --------------------------------------------------------------------------
# the supervisor (parent side)

class Supervisor:
    def __init__(self, jobdir: str, job: Job):
        self.jobdir = jobdir
        self.job = job
        self.run = os.path.basename(jobdir.rstrip("/"))
        self.pid: int | None = None
        self.start_time = 0.0
        self.end_time = 0.0
        self.status: int | None = None
        self.max_rss_kb = 0
        self.cpu_s = 0.0
        self.cancel_signal: int | None = None
        self.cancelled = False
        self.timed_out = False
        self.oom = False
        self.lost = ""                          # why the run was killed for its lease
        self.iso = Isolation(job.job_id, "job_" + self.run, job.isolation)
        self.usage: dict = {}
        self.kill_at: float | None = None      # monotonic time of the SIGKILL
        self.killed = False
        self.reason = ""
        self.err_chunks: list[bytes] = []
        self.errr: int | None = None
        self.wake_r = self.wake_w = -1
        self.control: socket.socket | None = None
        self.lease = None
        if job.lease:
            from rmsbatch.node.lease import LeaseKeeper
            spec = job.lease
            self.lease = LeaseKeeper(
                until=float(spec["until"]), lease_s=float(spec["lease_s"]),
                file=spec.get("file"), controller=spec.get("controller"),
                conf_dir=spec.get("conf_dir"), node=job.node,
                job_id=job.job_id, run=int(spec["run"]),
                retry_s=float(spec.get("retry_s") or 5.0))
        self.next_lease_check = 0.0
        self.started_at = 0.0                   # monotonic time of the fork
        self.limit_at: float | None = None      # monotonic end of the time limit
        self.warned = False                     # --signal goes out once per run

    # -- logging helper
    def info(self, msg, *args):
        log.info("job %s: " + msg, self.job.job_id, *args)

    def warn(self, msg, *args):
        log.warning("job %s: " + msg, self.job.job_id, *args)

    # -- signals
    def _on_cancel(self, signum, frame):
        if self.cancel_signal is None:
            self.cancel_signal = signum

    @staticmethod
    def _on_chld(signum, frame):
        pass                    # the wakeup fd does the work

    def install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_cancel)
        signal.signal(signal.SIGINT, self._on_cancel)
        signal.signal(signal.SIGCHLD, self._on_chld)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)    # no terminal; never die of it
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)

    def close(self) -> None:
        """Give back what the run held in this process (signal handlers, the wakeup
        pipe, the control socket): a worker of the spawner supervises the next run in
        the same process (rmsbatch.node.spawner)."""
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w, self.errr):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.wake_r = self.wake_w = -1
        self.errr = None
        if self.control is not None:
            self.control.close()
            self.control = None

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # -- the control socket: how rmsd reaches the job (never by a pid from a file)
    def open_control(self) -> None:
        path = os.path.join(self.jobdir, CONTROL_SOCKET)
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            with unix_address(path) as address:
                sock.bind(address)
        finally:
            os.umask(old)
        sock.listen(16)
        sock.setblocking(False)
        self.control = sock

    def _on_control(self) -> None:
        while True:
            try:
                conn, _ = self.control.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            with conn:
                conn.settimeout(2.0)
                try:
                    request = json.loads(read_line(conn, limit=65536))
                    reply = self.command(request if isinstance(request, dict) else {})
                    conn.sendall((json.dumps(reply) + "\n").encode())
                except (OSError, ValueError) as e:
                    self.warn("control request failed: %s", e)

    def command(self, request: dict) -> dict:
        op = request.get("op")
        if op == "cancel":
            if request.get("now"):
                self.kill_now("cancelled: this run was superseded (rmsctld gave it up)")
            elif self.cancel_signal is None:
                self.cancel_signal = signal.SIGTERM
            return {"ok": True}
        if op == "signal":
            sig, scope = request.get("signal"), request.get("scope", "children")
            if not isinstance(sig, int) or not 1 <= sig <= 64 or \
                    scope not in ("children", "batch", "full"):
                return {"ok": False, "error": "bad signal request"}
            return {"ok": True, "signalled": self.signal_scope(sig, scope)}
        if op == "time_limit":
            seconds = request.get("seconds")
            if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
                return {"ok": False, "error": "bad time limit"}
            self.set_time_limit(seconds)
            return {"ok": True}
        if op == "status":
            return {"ok": True, "pid": self.pid, "running": self.status is None}
        return {"ok": False, "error": f"unknown request {op!r}"}

    def signal_scope(self, sig: int, scope: str) -> int:
        """`children`: every process of the job but the batch shell (scancel's default);
        `batch`: the batch shell only; `full`: all of them."""
        if self.pid is None or self.status is not None:
            return 0
        members = set(self.iso.procs(self.pid)) | {self.pid}
        targets = {"batch": {self.pid}, "full": members,
                   "children": members - {self.pid}}[scope]
        sent = 0
        for pid in sorted(targets):
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, sig)
                sent += 1
            except (ProcessLookupError, PermissionError):
                pass
        self.info("signal %d sent to %d process(es) (%s)", sig, sent, scope)
        return sent

    # -- the time limit and the signal before it (--signal)
    def set_time_limit(self, seconds: int) -> None:
        """A time limit counted from the job's start (0: none); a new one from `rcontrol
        update` takes effect at once, so one already past ends the job now."""
        if self.job.time_limit != seconds:
            self.info("time limit changed from %d s to %d s", self.job.time_limit, seconds)
        self.job.time_limit = seconds
        self.limit_at = self.started_at + seconds if seconds > 0 else None

    def warning_at(self) -> float | None:
        """When --signal is due: SECONDS before the time limit, once."""
        sig = self.job.signal
        if sig is None or self.warned or self.limit_at is None:
            return None
        return self.limit_at - sig["seconds"]

    def check_warning(self, now: float) -> None:
        at = self.warning_at()
        if at is None or now < at or self.cancelled or self.timed_out:
            return
        self.warned = True
        sig = self.job.signal
        self.info("%d s before the time limit: sending --signal", sig["seconds"])
        self.signal_scope(sig["signal"], "batch" if sig["batch"] else "children")

    def serve(self, timeout: float) -> None:
        """Wait up to `timeout` s answering the control socket (before the job runs)."""
        fds = [self.wake_r] + ([self.control] if self.control is not None else [])
        ready, _, _ = select.select(fds, [], [], timeout)
        if self.wake_r in ready:
            self._drain_wakeup()
        if self.control is not None and self.control in ready:
            self._on_control()

    # -- process control
    def _signal_job(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            try:                # the child may not have called setsid() yet
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
        except PermissionError as e:
            self.warn("cannot send signal %d to process group %d: %s", sig, self.pid, e)

    def _terminate(self, why: str) -> None:
        grace = self.job.kill_grace
        self.info("%s: SIGTERM to process group %d, SIGKILL in %d s", why, self.pid, grace)
        self._signal_job(signal.SIGTERM)
        self._signal_job(signal.SIGCONT)        # a stopped job must see its SIGTERM
        self.kill_at = time.monotonic() + grace

    def kill_now(self, why: str) -> None:
        """No grace: the run must be dead before rmsctld starts the job elsewhere."""
        if self.killed or self.pid is None or self.status is not None:
            return
        self.lost = why
        self.warn("%s: killing the job now", why)
        self.killed = True
        self._signal_job(signal.SIGKILL)
        self.iso.kill()

    def check_lease(self) -> None:
        now = time.monotonic()
        if self.lease is None or self.lost or now < self.next_lease_check:
            return
        self.next_lease_check = now + 1.0
        verdict = self.lease.check()
        if verdict is not None:
            self.kill_now(verdict[1])

    def _account(self, ru) -> None:
        self.max_rss_kb = max(self.max_rss_kb, int(ru.ru_maxrss))
        self.cpu_s += ru.ru_utime + ru.ru_stime

    def _reap(self) -> bool:
        """Reap every child that ended; True once the job process has."""
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            self._account(ru)
            if pid == self.pid and self.status is None:
                self.status = status
                self.end_time = time.time()
        return self.status is not None

    def _read_errpipe(self, block: bool) -> None:
        if self.errr is None:
            return
        if not block:
            try:
                data = os.read(self.errr, 4096)
            except BlockingIOError:
                return
            if data:
                self.err_chunks.append(data)
                return
        else:
            os.set_blocking(self.errr, True)
            while True:
                data = os.read(self.errr, 4096)
                if not data:
                    break
                self.err_chunks.append(data)
        os.close(self.errr)
        self.errr = None
        if not self.err_chunks:
            uid = self.job.uid if os.geteuid() == 0 else os.geteuid()
            self.info("running %s as uid %d (pid %d)", self.job.script_path, uid, self.pid)

    def start(self) -> None:
        """Isolation, then the job's process. Raises IsolationError (the launch
        fails, the job does not run) when a protection it needs cannot be applied."""
        job = self.job
        out_path, err_path = output_paths(job)
        self.info("output %s, error %s", out_path, err_path)
        if os.geteuid() != 0 and job.uid != os.geteuid():
            self.warn("not root: running as uid %d instead of %d", os.geteuid(), job.uid)
        self.iso.setup()
        self.errr, errw = os.pipe()                 # both close-on-exec
        blocked = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.pid = jobprocess.start(job, out_path, err_path, errw, self.iso,
                                        jobprocess.handled_signals())
            self.start_time = time.time()
            self.started_at = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(errw)
        os.set_blocking(self.errr, False)
        # A machine that crashes takes the job with it: the pid file only has to outlive
        # rmsd, so it is not synced to disk (the outcome is).
        write_json(os.path.join(self.jobdir, PID_FILE),
                   {"pid": self.pid, "start_time": self.start_time,
                    "supervisor_pid": os.getpid()}, durable=False)

    def watch(self) -> None:
        job = self.job
        self.set_time_limit(job.time_limit)
        while not self._reap():
            now = time.monotonic()
            self.check_lease()
            self.check_warning(now)
            if self.cancel_signal is not None and not (self.cancelled or self.timed_out):
                self.cancelled = True
                self._terminate(f"cancelled by {signal.Signals(self.cancel_signal).name}")
            elif (self.limit_at is not None and now >= self.limit_at
                  and not (self.cancelled or self.timed_out)):
                self.timed_out = True
                self._terminate(f"time limit of {job.time_limit} s reached")
            if self.kill_at is not None and not self.killed and time.monotonic() >= self.kill_at:
                self.killed = True
                self.info("grace over: SIGKILL to the job's processes")
                self._signal_job(signal.SIGKILL)
                self.iso.kill()
            if self.iso.poll(self.pid):
                self.oom = True
            if self._reap():
                break
            ending = self.cancelled or self.timed_out
            deadlines = [d for d in (self.limit_at if not ending else None,
                                     self.kill_at if not self.killed else None,
                                     self.warning_at() if not ending else None)
                         if d is not None]
            timeout = min(MAX_WAIT_S, self.iso.poll_interval or MAX_WAIT_S)
            if deadlines:
                timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
            fds = [self.wake_r] + ([self.errr] if self.errr is not None else []) + \
                ([self.control] if self.control is not None else [])
            ready, _, _ = select.select(fds, [], [], timeout)
            if self.wake_r in ready:
                self._drain_wakeup()
            if self.errr is not None and self.errr in ready:
                self._read_errpipe(block=False)
            if self.control is not None and self.control in ready:
                self._on_control()
        self._read_errpipe(block=True)      # the child is gone: EOF is certain

    def cleanup(self) -> None:
        """Kill what the job left behind: its cgroup, its process group, its session,
        and (we are a child subreaper) every remaining descendant; reap them."""
        sid = self.pid
        signum = os.WTERMSIG(self.status) if self.status is not None and \
            os.WIFSIGNALED(self.status) else None
        self.usage = self.iso.finish(signum)    # kills the cgroup, reads, removes it
        try:
            os.killpg(sid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reap()
        if procs.SUBREAPER and not procs.has_children():
            return      # every orphan would be our child: nothing is left
        killed = self._sweep(sid)
        if killed:
            self.info("killed %d leftover process(es)", killed)
        deadline = time.monotonic() + ORPHAN_REAP_S
        while True:
            self._reap()
            try:
                if not procs.has_children():
                    break
            except Exception:       # noqa: BLE001
                break
            left = deadline - time.monotonic()
            if left <= 0:
                self.warn("leftover processes did not die in %.0f s", ORPHAN_REAP_S)
                break
            self._sweep(sid)
            r, _, _ = select.select([self.wake_r], [], [], min(0.05, left))
            if r:
                self._drain_wakeup()

    def _sweep(self, sid: int) -> int:
        me = os.getpid()
        victims = procs.descendants(me)
        if not procs.SUBREAPER:
            # Orphans went to init, not to us: look for the job's session instead.
            try:
                import psutil
                for proc in psutil.process_iter():
                    try:
                        if proc.pid != me and os.getsid(proc.pid) == sid:
                            victims.add(proc.pid)
                    except OSError:
                        pass
            except ImportError:     # pragma: no cover
                pass
        count = 0
        for pid in victims:
            if procs.is_zombie(pid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                count += 1
            except OSError:
                pass
        return count

    def outcome(self) -> dict:
        launch_failed = ""
        if self.err_chunks:
            raw = b"".join(self.err_chunks)
            kind, text = jobprocess.explain(raw, self.job, *output_paths(self.job))
            self.reason = text
            state, code, sig = JobState.FAILED.value, 1, 0
            if kind == jobprocess.ISOLATION_FAILED:
                launch_failed = text
        elif self.lost:
            state, code, sig = outcome_from_status(self.status, cancelled=False,
                                                   timed_out=False)
            state, self.reason = JobState.NODE_FAIL.value, self.lost
        else:
            state, code, sig = outcome_from_status(
                self.status, cancelled=self.cancelled, timed_out=self.timed_out)
            oom = self.oom or self.usage.get("oom_killed")
            if oom and not (self.cancelled or self.timed_out):
                state = JobState.OUT_OF_MEMORY.value
                self.reason = "the job used more memory than it asked for (--mem)"
        # The cgroup's figures cover every process of the job; rusage only
        # the ones we waited for.
        rss = self.usage.get("max_rss_kb") or self.max_rss_kb
        cpu = self.usage.get("total_cpu_s")
        return {
            "job_id": self.job.job_id, "state": state, "exit_code": code, "signal": sig,
            "start_time": self.start_time, "end_time": self.end_time,
            "max_rss_kb": rss, "total_cpu_s": round(cpu if cpu is not None else self.cpu_s, 3),
            "reason": self.reason, "protections": self.usage.get("protections", ""),
            "launch_failed": launch_failed,
        }


# --------------------------------------------------------------------------
# reporting the end

def report(jobdir: str, job: Job | None, outcome: dict) -> None:
    """rmsd reports what the run's directory holds; when rmsd is away, tell rmsctld
    directly (a job that ended must not be taken for lost and run again)."""
    job_id = outcome.get("job_id", 0)
    if job is None or not job.notify_socket:
        return
    if notify(job.notify_socket, job_id):
        return
    lease = job.lease or {}
    controller = lease.get("controller")
    if not controller:
        return
    from rmsbatch.net import client
    parsed = parse_run(os.path.basename(jobdir.rstrip("/")))
    message = {"op": "job_ended", "node": job.node,
               "outcome": {**outcome, "run": parsed[1] if parsed else lease.get("run", 0)}}
    try:
        from rmsbatch.node.devices.usage import GpuUsage
        if job.gpus:
            message["outcome"].update(GpuUsage.load(jobdir, job.gpus).summary())
    except Exception:   # noqa: BLE001 - usage is a nicety
        pass
    deadline = time.monotonic() + REPORT_FOR_S
    pause = 1.0
    while time.monotonic() < deadline:
        try:
            with client.Client(controller, timeout=10, conf=lease.get("conf_dir")) as conn:
                conn.call("job_ended", **{k: v for k, v in message.items() if k != "op"})
            log.info("job %s: outcome reported to rmsctld directly (rmsd is away)", job_id)
            return
        except client.ClientError as e:
            log.info("job %s: cannot report to rmsctld yet: %s", job_id, e)
        if notify(job.notify_socket, job_id):
            return          # rmsd is back: it reports from the job directory
        time.sleep(pause)
        pause = min(pause * 2, 30.0)
    log.warning("job %s: outcome not reported in %.0f s: rmsd reports it when it is back",
                job_id, REPORT_FOR_S)


# --------------------------------------------------------------------------
# entry point

class _JobLineFormatter(logging.Formatter):
    """Messages arrive as "job N: text"; lines come out as
    "job N: 2024-05-01 12:00:00,123 INFO text"."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)       # "ASCTIME LEVEL job N: text"
        head = f"{self.formatTime(record)} {record.levelname} "
        body = line[len(head):]
        if body.startswith("job ") and ": " in body:
            tag, _, rest = body.partition(": ")
            return f"{tag}: {head}{rest}"
        return line


def _setup_logging(jobdir: str) -> logging.Handler:
    handler = logging.FileHandler(os.path.join(jobdir, LOG_FILE))
    handler.setFormatter(_JobLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _guess_job_id(jobdir: str) -> int:
    name = os.path.basename(jobdir.rstrip("/"))
    parsed = parse_run(name)
    if parsed:
        return parsed[0]
    digits = "".join(ch for ch in name if ch.isdigit())
    return int(digits) if digits else 0


def _fail_outcome(jobdir: str, job_id: int, reason: str, start: float | None = None,
                  launch_failed: str = "") -> dict:
    now = time.time()
    outcome = {
        "job_id": job_id, "state": JobState.FAILED.value, "exit_code": 1, "signal": 0,
        "start_time": start if start is not None else now, "end_time": now,
        "max_rss_kb": 0, "total_cpu_s": 0.0, "reason": reason, "launch_failed": launch_failed,
    }
    write_json(os.path.join(jobdir, OUTCOME_FILE), outcome)
    return outcome


def run(jobdir: str) -> int:
    """Supervise the job in JOBDIR to its end. Returns the process exit code. The
    process is left as found (no handler, pipe or socket of the run's), so that one
    process can supervise runs one after another."""
    jobdir = os.path.abspath(jobdir)
    try:
        handler = _setup_logging(jobdir)
    except OSError as e:
        print(f"rmsbatch.node.supervisor: cannot log to {jobdir}: {e}", file=sys.stderr)
        return 2
    try:
        return _supervise(jobdir)
    finally:
        prolog.detach_logs()
        log.removeHandler(handler)
        handler.close()


def _supervise(jobdir: str) -> int:
    try:
        job = load_job(os.path.join(jobdir, JOB_FILE))
    except JobFileError as e:
        job_id = _guess_job_id(jobdir)
        log.error("job %s: %s", job_id, e)
        try:
            _fail_outcome(jobdir, job_id, str(e))
        except OSError as e2:
            log.error("job %s: cannot write %s: %s", job_id, OUTCOME_FILE, e2)
            return 2
        return 0

    os.chdir("/")           # hold no directory busy
    sup = Supervisor(jobdir, job)
    try:
        return _run_job(sup, jobdir, job)
    finally:
        sup.close()


def _run_job(sup: Supervisor, jobdir: str, job: Job) -> int:
    plan = None
    try:
        sup.install_signals()
        procs.set_subreaper()
        sup.open_control()
        try:
            # TMPDIR, node prolog. A cancel meanwhile is heard, and ends the job
            # as soon as it starts (watch()).
            plan = prolog.before_job(jobdir, log, sup.serve)
            sup.start()
        except (IsolationError, prolog.NodeSetupError) as e:
            prolog.after_job(plan)
            log.error("job %s: launch failed: %s", job.job_id, e)
            report(jobdir, job, _fail_outcome(jobdir, job.job_id, f"launch failed: {e}",
                                              launch_failed=str(e)))
            return 0
        except OSError as e:
            if sup.pid is None:
                prolog.after_job(plan)
                log.error("job %s: cannot start: %s", job.job_id, e)
                report(jobdir, job, _fail_outcome(
                    jobdir, job.job_id, f"cannot start job: {e.strerror or e}",
                    launch_failed=f"cannot start job: {e.strerror or e}"))
                return 0
            raise
        if job.holder and job.notify_socket:
            # this node's part is set up (cgroup, TMPDIR, prolog): --wait-all-nodes
            notify(job.notify_socket, job.job_id, "ready", run=os.path.basename(jobdir))
        sup.watch()
        sup.cleanup()
        result = sup.outcome()
        drain = prolog.after_job(plan, sup.serve)      # node epilog, TMPDIR removed
        if drain:
            result["drain"] = drain
    except Exception as e:      # noqa: BLE001 - a bug here must not leave a job unaccounted
        log.exception("job %s: supervisor error", job.job_id)
        if sup.pid is not None and sup.status is None:
            sup._signal_job(signal.SIGKILL)
            sup.iso.kill()
        prolog.remove_tmpdir(plan and plan.get("tmpdir"))
        try:
            result = _fail_outcome(jobdir, job.job_id,
                                   f"supervisor error: {type(e).__name__}: {e}",
                                   sup.start_time or None)
        except OSError:
            return 2
        report(jobdir, job, result)
        return 0

    sup.info("ended: %s exit_code %d signal %d (max_rss %d KiB, cpu %.2f s)%s",
             result["state"], result["exit_code"], result["signal"], result["max_rss_kb"],
             result["total_cpu_s"], f": {result['reason']}" if result["reason"] else "")
    try:
        write_json(os.path.join(jobdir, OUTCOME_FILE), result)
    except OSError as e:
        log.error("job %s: cannot write %s: %s", job.job_id, OUTCOME_FILE, e)
        return 2
    if sup.control is not None:
        sup.control.close()
        sup.control = None
    report(jobdir, job, result)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) not in (1, 3) or args[0].startswith("-") or \
            (len(args) == 3 and args[1] != "--lock-fd"):
        print("usage: python -m rmsbatch.node.supervisor JOBDIR [--lock-fd N]", file=sys.stderr)
        return 2
    # --lock-fd: the descriptor of JOBDIR/supervisor.lock that rmsd locked before the
    # fork; holding it open for our whole life is what tells rmsd we live.
    return run(args[0])


if __name__ == "__main__":
    sys.exit(main())
