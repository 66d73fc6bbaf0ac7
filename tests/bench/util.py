"""Small tools the benchmark shares: statistics, timed commands, processes, /proc readings.

Everything here is standard library only, so the harness runs before rmsbatch is importable.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field


def log(message: str) -> None:
    """Progress goes to stderr so the table on stdout stays clean."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 100]."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@dataclass
class Measurement:
    """Samples of one quantity on one system, in the row's base unit."""
    samples: list[float]
    note: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return percentile(self.samples, 50)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def to_json(self) -> dict:
        out = {"median": self.median, "min": self.low, "max": self.high,
               "p90": percentile(self.samples, 90), "n": len(self.samples),
               "samples": self.samples}
        if self.note:
            out["note"] = self.note
        if self.extra:
            out["extra"] = self.extra
        return out


# -- commands -------------------------------------------------------------------------
class CommandFailed(RuntimeError):
    pass


def run(argv: list[str], env: dict | None = None, cwd: str | None = None,
        check: bool = True, timeout: float = 600, input_text: str | None = None
        ) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=None if input_text is not None
                          else subprocess.DEVNULL, input=input_text,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)!s:.120} exited {proc.returncode}: "
                            f"{(proc.stderr or proc.stdout).strip()[-400:]}")
    return proc


def timed(argv: list[str], env: dict | None = None, cwd: str | None = None,
          timeout: float = 300) -> tuple[float, str]:
    """Wall seconds of one call, output read to the end (as a terminal would); fails loudly."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise CommandFailed(f"{' '.join(argv)!s:.120} exited {proc.returncode}: "
                            f"{proc.stderr.decode(errors='replace').strip()[-400:]}")
    return elapsed, proc.stdout.decode(errors="replace")


def repeat(argv: list[str], reps: int, warmup: int, env=None, cwd=None) -> list[float]:
    for _ in range(warmup):
        timed(argv, env, cwd)
    return [timed(argv, env, cwd)[0] for _ in range(reps)]


def parallel(workers: int, tasks: list, fn) -> list:
    """Run fn(task) for every task on `workers` threads; results in task order.

    Threads are enough: every task waits on a child process. The first exception
    is re-raised once all threads have stopped."""
    results: list = [None] * len(tasks)
    errors: list[BaseException] = []
    lock = threading.Lock()
    cursor = iter(range(len(tasks)))

    def worker():
        while True:
            with lock:
                if errors:
                    return
                i = next(cursor, None)
            if i is None:
                return
            try:
                results[i] = fn(tasks[i])
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                with lock:
                    errors.append(exc)
                return

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached in {timeout:.0f} s")
        time.sleep(interval)


# -- processes ------------------------------------------------------------------------
def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, grace: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after `grace` seconds; True if it had to be killed."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            break
        time.sleep(0.05)
    else:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True
    return False


class Processes:
    """Every daemon the harness starts, by PID, so each is stopped by PID at the end."""

    def __init__(self):
        self.entries: list[tuple[str, int, subprocess.Popen | None]] = []

    def start(self, name: str, argv: list[str], log_path: str, env=None, user=None,
              cwd=None) -> subprocess.Popen:
        out = open(log_path, "ab")
        ids = {}
        if user is not None:          # the user's own group, not root's groups
            import pwd
            ids = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
        try:
            proc = subprocess.Popen(argv, env=env, cwd=cwd, **ids,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    start_new_session=True, close_fds=True)
        finally:
            out.close()
        self.entries.append((name, proc.pid, proc))
        log(f"started {name} (pid {proc.pid})")
        return proc

    def adopt(self, name: str, pid: int) -> None:
        """A daemon someone else started for us (rms-local forks its own)."""
        if all(p != pid for _, p, _ in self.entries):
            self.entries.append((name, pid, None))

    def pids(self) -> list[int]:
        return [pid for _, pid, _ in self.entries]

    def pid_of(self, name: str) -> int | None:
        for n, pid, proc in reversed(self.entries):
            if n == name and alive(pid):
                return pid
        return None

    def stop(self, name: str) -> None:
        for entry in [e for e in self.entries if e[0] == name]:
            self._stop(entry)
            self.entries.remove(entry)

    def _stop(self, entry) -> None:
        name, pid, proc = entry
        if not alive(pid):
            if proc is not None:
                proc.poll()
            return
        killed = stop_pid(pid)
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        log(f"stopped {name} (pid {pid}{', with SIGKILL' if killed else ''})")

    def stop_all(self) -> None:
        for entry in reversed(self.entries):
            try:
                self._stop(entry)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"could not stop {entry[0]} (pid {entry[1]}): {exc}")
        self.entries.clear()


# -- /proc readings ---------------------------------------------------------------------
def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (current) and VmHWM (peak) of a process, in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used itself (not its children)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as fh:
        a, b, c = fh.read().split()[:3]
    return float(a), float(b), float(c)


def cpu_busy_total() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:8]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


# -- someone else's work ----------------------------------------------------------------
MARK = "RMS_BENCH_RUN"      # in the environment of everything this run starts
# Slurm's helpers start with a clean environment; on this machine they are ours.
OWN_HELPERS = frozenset({"slurmstepd", "slurmscriptd", "slurm_script"})


def mark_environment() -> None:
    """Everything started from now on (daemons, commands, jobs) carries the mark."""
    os.environ[MARK] = str(os.getpid())


def _is_ours(pid: int, token: bytes) -> bool | None:
    """None when it cannot be told (the process is exiting)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = fh.read()
    except OSError:
        return None
    return (token in env) if env else None


def _all_ticks(pid: int) -> tuple[int, str]:
    """(utime + stime + cutime + cstime, command name): a process and the children it
    has reaped; -1 for a kernel thread or a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            head, _, rest = fh.read().rpartition(")")
    except OSError:
        return -1, ""
    f = rest.split()
    if pid == 2 or f[1] == "2" or f[0] == "Z":   # kernel thread; zombie (its parent
        return -1, ""                             # gets its time when it reaps it)
    name = head.partition("(")[2]
    if pid == 1:     # init reaps every orphan (our jobs too): count its own time only
        return int(f[11]) + int(f[12]), name
    return int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]), name


class Watcher:
    """Samples, once a second, the CPU time of processes that are not this run's (no
    MARK in their environment): other people's work that disturbs a figure."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self.token = f"{MARK}={os.getpid()}".encode()
        self.ours: dict[tuple[int, str], bool] = {}
        self.last: dict[int, int] = {}
        self.others = 0
        self.by_name: dict[str, int] = {}
        self.hz = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sampling = threading.Lock()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self, first: bool = False) -> None:
        with self._sampling:
            self._sample_locked(first)

    def _sample_locked(self, first: bool) -> None:
        seen: dict[int, int] = {}
        names: dict[str, int] = {}
        added = 0
        pids = [int(n) for n in os.listdir("/proc") if n.isdigit()]
        for pid in pids:
            if pid == os.getpid():
                continue
            ticks, name = _all_ticks(pid)
            if ticks < 0 or name in OWN_HELPERS:
                continue
            # Keyed by name too: a child between fork and exec still shows its parent's
            # first environment, without the mark; after exec its name changes.
            key = (pid, name)
            if key not in self.ours:
                verdict = _is_ours(pid, self.token)
                if verdict is None:
                    continue
                self.ours[key] = verdict
            if self.ours[key]:
                continue
            seen[pid] = ticks
            if not first and ticks > self.last.get(pid, 0):
                added += ticks - self.last.get(pid, 0)
                names[name] = names.get(name, 0) + ticks - self.last.get(pid, 0)
        present = set(pids)
        with self._lock:
            for name, ticks in names.items():
                self.by_name[name] = self.by_name.get(name, 0) + ticks
            self.others += max(0, added)
            self.last = seen
            self.ours = {k: v for k, v in self.ours.items() if k[0] in present}

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - a reading that failed is just skipped
                pass

    def cpu_seconds(self, fresh: bool = False) -> float:
        """CPU seconds others used since the start (`fresh`: sample right now)."""
        if fresh:
            self._sample()
        with self._lock:
            return self.others / self.hz

    def top(self, since: dict[str, int], count: int = 3) -> str:
        """The busiest other commands since the `since` snapshot of by_name."""
        with self._lock:
            now = dict(self.by_name)
        diff = sorted(((t - since.get(n, 0), n) for n, t in now.items()), reverse=True)
        return ", ".join(f"{n} {t / self.hz:.1f} s" for t, n in diff[:count] if t > 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.by_name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
