"""The per-job supervisor: one process per running job, started by rmsd as

    python -m rmsbatch.node.supervisor JOBDIR

in a session of its own (so it outlives a `kill -9` of rmsd), with stdin,
stdout and stderr on /dev/null.  It reads `JOBDIR/job.json`, forks the job
(new session, privileges dropped to the user, working directory, output
files), records `JOBDIR/pid`, enforces the time limit, turns SIGTERM/SIGINT
into a cancel, cleans up what the job left behind, writes
`JOBDIR/outcome.json` and pokes rmsd's notify socket.

Everything it has to say goes to `JOBDIR/supervisor.log` (logger
`rmsbatch.node.supervisor`, lines starting `job N: `).

Files (all written atomically: tmp file, fsync, rename, fsync of JOBDIR):

    JOBDIR/pid          {"pid": P, "start_time": T, "supervisor_pid": S}
                        P is the job process, its process group and session id.
    JOBDIR/outcome.json {"job_id", "state", "exit_code", "signal", "start_time",
                         "end_time", "max_rss_kb", "total_cpu_s", "reason"}
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

from rmsbatch.node.isolation import Isolation
from rmsbatch.core.states import JobState

log = logging.getLogger("rmsbatch.supervisor")

NO_VALUE = 4294967294           # what Slurm writes for %a / %s outside arrays / steps
DEFAULT_OUTPUT = "rms-%j.out"
DEFAULT_KILL_GRACE = 30
MAX_PAD = 10                    # Slurm caps the zero-padding width
MAX_WAIT_S = 1.0                # longest select() sleep; SIGCHLD wakes us much earlier
ORPHAN_REAP_S = 2.0             # how long to wait for killed leftovers at the end
PR_SET_CHILD_SUBREAPER = 36

JOB_FILE = "job.json"
PID_FILE = "pid"
OUTCOME_FILE = "outcome.json"
LOG_FILE = "supervisor.log"


# --------------------------------------------------------------------------
# pure helpers

def expand_pattern(pattern: str, *, job_id: int, name: str, user: str, node: str,
                   array_job_id: int | None = None,
                   array_task_id: int | None = None) -> str:
    """Expand a Slurm-style output file pattern.

    A backslash anywhere disables expansion (backslashes are removed).  A
    number between `%` and the letter zero-pads numeric fields (`%4j`);
    it is ignored for text fields.  Unknown `%` sequences are kept as is.
    """
    if "\\" in pattern:
        return pattern.replace("\\", "")
    numeric = {
        "j": job_id, "J": job_id,
        "A": array_job_id if array_job_id is not None else job_id,
        "a": array_task_id if array_task_id is not None else NO_VALUE,
        "n": 0, "t": 0, "s": NO_VALUE,
    }
    text = {"x": name, "u": user, "N": node}
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < n and "0" <= pattern[j] <= "9":
            j += 1
        if j >= n:                          # trailing "%" or "%12": literal
            out.append(pattern[i:])
            break
        width, letter = pattern[i + 1:j], pattern[j]
        if letter == "%" and not width:
            out.append("%")
        elif letter in numeric:
            pad = min(int(width), MAX_PAD) if width else 0
            out.append(str(numeric[letter]).zfill(pad))
        elif letter in text:
            out.append(str(text[letter]))
        else:
            out.append(pattern[i:j + 1])
        i = j + 1
    return "".join(out)


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


# --------------------------------------------------------------------------
# job.json

class JobFileError(ValueError):
    """job.json is missing or malformed; the message says why."""


@dataclass
class Job:
    job_id: int
    uid: int
    gid: int
    script_path: str
    workdir: str
    environment: dict[str, str]
    name: str = ""
    user: str = ""
    groups: list[int] = field(default_factory=list)
    home: str = ""
    argv: list[str] = field(default_factory=list)
    submit_dir: str = ""
    output: str | None = None
    error: str | None = None
    time_limit: int = 0
    kill_grace: int = DEFAULT_KILL_GRACE
    node: str = ""
    notify_socket: str | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    isolation: dict | None = None           # limits for rmsbatch.node.isolation


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def isinstance_of(kind):
    return lambda v: isinstance(v, kind)


def parse_job(data) -> Job:
    """Validate the decoded job.json; raise JobFileError naming the bad key."""
    if not isinstance(data, dict):
        raise JobFileError("job.json is not a JSON object")

    def need(key, check, what, default=KeyError):
        if key not in data:
            if default is KeyError:
                raise JobFileError(f"job.json: missing key {key!r}")
            return default
        value = data[key]
        if not check(value):
            raise JobFileError(f"job.json: {key!r} must be {what}, not {value!r:.80}")
        return value

    def opt_int(v):
        return v is None or _is_int(v)

    def opt_str(v):
        return v is None or isinstance(v, str)

    def abs_path(v):
        return isinstance(v, str) and os.path.isabs(v)

    def str_list(v):
        return isinstance(v, list) and all(isinstance(x, str) for x in v)

    def int_list(v):
        return isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v)

    def env(v):
        return isinstance(v, dict) and all(
            isinstance(k, str) and isinstance(x, str) and k and "=" not in k and "\0" not in k + x
            for k, x in v.items())

    def nonneg(v):
        return _is_int(v) and v >= 0

    job_id = need("job_id", nonneg, "a non-negative integer")
    uid = need("uid", nonneg, "a non-negative integer")
    gid = need("gid", nonneg, "a non-negative integer")
    script_path = need("script_path", abs_path, "an absolute path")
    return Job(
        job_id=job_id, uid=uid, gid=gid, script_path=script_path,
        workdir=need("workdir", abs_path, "an absolute path"),
        environment=need("environment", env, "an object of strings"),
        name=need("name", isinstance_of(str), "a string", None) or os.path.basename(script_path),
        user=need("user", isinstance_of(str), "a string", None) or str(uid),
        groups=need("groups", int_list, "a list of group ids", None) or [gid],
        home=need("home", isinstance_of(str), "a string", ""),
        argv=need("argv", str_list, "a list of strings", None) or [],
        submit_dir=need("submit_dir", isinstance_of(str), "a string", ""),
        output=need("output", opt_str, "a string or null", None) or None,
        error=need("error", opt_str, "a string or null", None) or None,
        time_limit=need("time_limit", nonneg, "a non-negative integer", 0),
        kill_grace=need("kill_grace", nonneg, "a non-negative integer", DEFAULT_KILL_GRACE),
        node=need("node", isinstance_of(str), "a string", None) or socket.gethostname(),
        notify_socket=need("notify_socket", opt_str, "a string or null", None) or None,
        array_job_id=need("array_job_id", opt_int, "an integer or null", None),
        array_task_id=need("array_task_id", opt_int, "an integer or null", None),
        isolation=need("isolation", lambda v: v is None or isinstance(v, dict),
                       "an object or null", None),
    )


def load_job(path: str) -> Job:
    try:
        with open(path, encoding="utf-8") as f:
            raw = f.read()
    except OSError as e:
        raise JobFileError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise JobFileError(f"malformed {path}: {e}") from None
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise JobFileError(f"malformed {path}: {e}") from None
    return parse_job(data)


def output_paths(job: Job) -> tuple[str, str]:
    """Absolute stdout and stderr paths (equal when both go to one file)."""
    def resolve(pattern: str) -> str:
        path = expand_pattern(pattern, job_id=job.job_id, name=job.name, user=job.user,
                              node=job.node, array_job_id=job.array_job_id,
                              array_task_id=job.array_task_id)
        return os.path.normpath(os.path.join(job.workdir, path))

    out = resolve(job.output or DEFAULT_OUTPUT)
    err = resolve(job.error) if job.error else out
    return out, err


# --------------------------------------------------------------------------
# files

def write_json_atomic(path: str, data: dict, durable: bool = True) -> None:
    """tmp file + fsync + rename + fsync of the directory. `durable=False` for what
    only has to outlive processes (rmsd restarts), not the machine: no fsync."""
    directory = os.path.dirname(path) or "."
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
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


def notify(sock_path: str, job_id: int) -> None:
    """Tell rmsd the job ended; any error is ignored (rmsd also scans)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(sock_path)
            s.sendall((json.dumps({"op": "ended", "job_id": job_id}) + "\n").encode())
    except (OSError, ValueError) as e:
        log.info("job %s: cannot notify %s: %s", job_id, sock_path, e)


# --------------------------------------------------------------------------
# the job process (child side of the fork)

def _catchable_signals():
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            yield sig


def _child(job: Job, out_path: str, err_path: str, errw: int, iso) -> None:
    """Runs in the forked child; never returns."""
    def fail(msg: str) -> None:
        try:
            os.write(errw, msg.encode("utf-8", "replace")[:4000])
        finally:
            os._exit(1)

    def open_output(path: str, kind: str) -> int:
        parent = os.path.dirname(path)
        if parent and not os.path.isdir(parent):
            try:
                os.makedirs(parent, exist_ok=True)
            except FileExistsError:
                pass            # not a directory: os.open() below says so
            except OSError as e:
                fail(f"cannot create directory {e.filename or parent} for {kind} file "
                     f"{path}: {e.strerror or e}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as e:
            fail(f"cannot open {kind} file {path}: {e.strerror or e}")

    try:
        # Signals: back to defaults (also those rmsd's launcher ignored), then
        # unblock what the parent blocked around fork().
        signal.set_wakeup_fd(-1)
        for sig in _catchable_signals():
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError, RuntimeError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

        os.setsid()
        try:
            iso.enter()     # born inside its cgroup, while still root
        except Exception:   # noqa: BLE001 - run unconfined rather than not at all
            pass
        if os.geteuid() == 0:
            try:
                os.setgroups(list(job.groups))
                os.setgid(job.gid)
                os.setuid(job.uid)
            except OSError as e:
                fail(f"cannot switch to uid {job.uid} gid {job.gid}: {e.strerror or e}")
        try:
            os.chdir(job.workdir)
        except OSError as e:
            fail(f"cannot chdir to {job.workdir}: {e.strerror or e}")

        out_fd = open_output(out_path, "output")
        err_fd = out_fd
        if err_path != out_path:
            err_fd = open_output(err_path, "error")
            s1, s2 = os.fstat(out_fd), os.fstat(err_fd)
            if (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino):
                os.close(err_fd)
                err_fd = out_fd
        try:
            in_fd = os.open(os.devnull, os.O_RDONLY)
        except OSError as e:
            fail(f"cannot open {os.devnull}: {e.strerror or e}")
        os.dup2(in_fd, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        for fd in {in_fd, out_fd, err_fd} - {0, 1, 2, errw}:
            os.close(fd)
        try:
            maxfd = os.sysconf("SC_OPEN_MAX")
        except (OSError, ValueError):
            maxfd = 65536
        os.closerange(3, errw)
        os.closerange(errw + 1, max(maxfd, errw + 1))
        try:
            os.execve(job.script_path, [job.script_path, *job.argv], job.environment)
        except OSError as e:
            fail(f"cannot execute {job.script_path}: {e.strerror or e}")
    except BaseException as e:          # noqa: BLE001 - never return into the parent's code
        fail(f"job setup failed: {type(e).__name__}: {e}")
    finally:
        os._exit(1)


# --------------------------------------------------------------------------
# the supervisor (parent side)

class Supervisor:
    def __init__(self, jobdir: str, job: Job):
        self.jobdir = jobdir
        self.job = job
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
        self.iso = Isolation(job.job_id, "job_" + os.path.basename(jobdir.rstrip("/")),
                             job.isolation)
        self.usage: dict = {}
        self.kill_at: float | None = None      # monotonic time of the SIGKILL
        self.killed = False
        self.reason = ""
        self.err_chunks: list[bytes] = []
        self.errr: int | None = None
        self.wake_r = self.wake_w = -1

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

    def _drain_wakeup(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass

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
            pid = os.fork()
            if pid == 0:
                _child(job, out_path, err_path, errw, self.iso)   # never returns
            self.pid = pid
            self.start_time = time.time()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(errw)
        os.set_blocking(self.errr, False)
        # A machine that crashes takes the job with it: the pid file only has to outlive
        # rmsd, so it is not synced to disk (the outcome is).
        write_json_atomic(os.path.join(self.jobdir, PID_FILE),
                          {"pid": self.pid, "start_time": self.start_time,
                           "supervisor_pid": os.getpid()}, durable=False)

    def watch(self) -> None:
        job = self.job
        limit_at = time.monotonic() + job.time_limit if job.time_limit > 0 else None
        while not self._reap():
            now = time.monotonic()
            if self.cancel_signal is not None and not (self.cancelled or self.timed_out):
                self.cancelled = True
                self._terminate(f"cancelled by {signal.Signals(self.cancel_signal).name}")
            elif (limit_at is not None and now >= limit_at
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
            deadlines = [d for d in (limit_at if not (self.cancelled or self.timed_out) else None,
                                     self.kill_at if not self.killed else None) if d is not None]
            timeout = min(MAX_WAIT_S, self.iso.poll_interval or MAX_WAIT_S)
            if deadlines:
                timeout = min(timeout, max(0.0, min(deadlines) - time.monotonic()))
            fds = [self.wake_r] + ([self.errr] if self.errr is not None else [])
            ready, _, _ = select.select(fds, [], [], timeout)
            if self.wake_r in ready:
                self._drain_wakeup()
            if self.errr is not None and self.errr in ready:
                self._read_errpipe(block=False)
        self._read_errpipe(block=True)      # the child is gone: EOF is certain

    def cleanup(self) -> None:
        """Kill what the job left behind: its process group, its session, and
        (we are a child subreaper) every remaining descendant; reap them."""
        sid = self.pid
        signum = os.WTERMSIG(self.status) if self.status is not None and \
            os.WIFSIGNALED(self.status) else None
        self.usage = self.iso.finish(signum)    # kills the cgroup, reads, removes it
        try:
            os.killpg(sid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._reap()
        if _SUBREAPER and not _has_children():
            return      # every orphan would be our child: nothing is left
        killed = self._sweep(sid)
        if killed:
            self.info("killed %d leftover process(es)", killed)
        deadline = time.monotonic() + ORPHAN_REAP_S
        while True:
            self._reap()
            try:
                if not _has_children():
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
        victims = _descendants(me)
        if not _SUBREAPER:
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
            if _is_zombie(pid):
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                count += 1
            except OSError:
                pass
        return count

    def outcome(self) -> dict:
        if self.err_chunks:
            self.reason = b"".join(self.err_chunks).decode("utf-8", "replace")
            state, code, sig = JobState.FAILED.value, 1, 0
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
        }


def _descendants(pid: int) -> set[int]:
    """Every live descendant of pid, from /proc/<pid>/task/*/children where the
    kernel has it (no scan of the whole process table), else from a ppid map."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return _descendants_by_ppid(pid)
    found: set[int] = set()
    stack = [pid]
    while stack:
        parent = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as fh:
                    kids = fh.read().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.add(kid)
                    stack.append(kid)
    return found


def _descendants_by_ppid(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for kid in children.get(stack.pop(), ()):
            if kid not in found:
                found.add(kid)
                stack.append(kid)
    return found


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


_SUBREAPER = False   # set once prctl succeeded: orphans of the job come to us


def _set_subreaper() -> None:
    global _SUBREAPER
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
        else:
            _SUBREAPER = True
    except (OSError, AttributeError):
        pass


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


def _setup_logging(jobdir: str) -> None:
    handler = logging.FileHandler(os.path.join(jobdir, LOG_FILE))
    handler.setFormatter(_JobLineFormatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _guess_job_id(jobdir: str) -> int:
    digits = "".join(ch for ch in os.path.basename(jobdir.rstrip("/")) if ch.isdigit())
    return int(digits) if digits else 0


def _fail_outcome(jobdir: str, job_id: int, reason: str, start: float | None = None) -> None:
    now = time.time()
    write_json_atomic(os.path.join(jobdir, OUTCOME_FILE), {
        "job_id": job_id, "state": JobState.FAILED.value, "exit_code": 1, "signal": 0,
        "start_time": start if start is not None else now, "end_time": now,
        "max_rss_kb": 0, "total_cpu_s": 0.0, "reason": reason,
    })


def run(jobdir: str) -> int:
    """Supervise the job in JOBDIR to its end. Returns the process exit code."""
    jobdir = os.path.abspath(jobdir)
    try:
        _setup_logging(jobdir)
    except OSError as e:
        print(f"rmsbatch.node.supervisor: cannot log to {jobdir}: {e}", file=sys.stderr)
        return 2
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
        sup.install_signals()
        _set_subreaper()
        try:
            sup.start()
        except OSError as e:
            if sup.pid is None:
                log.error("job %s: cannot start: %s", job.job_id, e)
                _fail_outcome(jobdir, job.job_id, f"cannot start job: {e.strerror or e}")
                return 0
            raise
        sup.watch()
        sup.cleanup()
        result = sup.outcome()
    except Exception as e:      # noqa: BLE001 - a bug here must not leave a job unaccounted
        log.exception("job %s: supervisor error", job.job_id)
        if sup.pid is not None and sup.status is None:
            sup._signal_job(signal.SIGKILL)
        try:
            _fail_outcome(jobdir, job.job_id, f"supervisor error: {type(e).__name__}: {e}",
                          sup.start_time or None)
        except OSError:
            return 2
        if job.notify_socket:
            notify(job.notify_socket, job.job_id)
        return 0

    sup.info("ended: %s exit_code %d signal %d (max_rss %d KiB, cpu %.2f s)%s",
             result["state"], result["exit_code"], result["signal"], result["max_rss_kb"],
             result["total_cpu_s"], f": {result['reason']}" if result["reason"] else "")
    try:
        write_json_atomic(os.path.join(jobdir, OUTCOME_FILE), result)
    except OSError as e:
        log.error("job %s: cannot write %s: %s", job.job_id, OUTCOME_FILE, e)
        return 2
    if job.notify_socket:
        notify(job.notify_socket, job.job_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m rmsbatch.node.supervisor JOBDIR", file=sys.stderr)
        return 2
    return run(args[0])


if __name__ == "__main__":
    sys.exit(main())
