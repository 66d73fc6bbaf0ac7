"""The job's own process: from the supervisor's fork to the exec of the script.

It resets signals, starts a session, enters the job's cgroup while still root (so the
program is born inside it), drops to the user with the submitter's umask and soft
limits, changes to the working directory, opens the output files and execs the script.
Whatever fails on the way is written to the error pipe, first byte saying whose fault
it is, and the child exits: it never returns into the supervisor's code.

`start` does this through the C module rmsbatch.node._spawn where it was built (vfork:
the child shares the supervisor's memory until the exec, instead of copying it, which
is most of what a short job costs its node), else by os.fork() and `run_child`. The
environment variable RMSBATCH_JOB_FORK=1 asks for the fork (tests run both ways).
"""
from __future__ import annotations

import os
import resource
import signal

import _signal   # signal's C half: the same calls, without the enum wrappers

from rmsbatch.node.jobfile import Job

# What the forked child reports on its error pipe before exec, first byte:
SETUP_FAILED = b"S"             # the job's own setup (output file, working directory)
ISOLATION_FAILED = b"I"         # the node's protections: the launch failed, not the job
RLIMITS = {name: getattr(resource, "RLIMIT_" + name) for name in
           ("CORE", "CPU", "DATA", "FSIZE", "MEMLOCK", "NOFILE", "NPROC", "RSS", "STACK", "AS")}


PID_VARIABLES = ("SLURM_TASK_PID", "RMS_TASK_PID")     # only the job's process knows it
STEPS = {  # what a record of the C child says failed -> run_child's words for it
    "chdir": "cannot chdir to {detail}",
    "mkdir-output": "cannot create directory {detail} for output file {out}",
    "mkdir-error": "cannot create directory {detail} for error file {err}",
    "open-output": "cannot open output file {detail}",
    "open-error": "cannot open error file {detail}",
    "devnull": "cannot open {detail}",
    "exec": "cannot execute {detail}",
    "ids": "cannot switch to uid {uid} gid {gid}",
    "cgroup-open": "cannot enter the job's cgroup: cannot open {detail} for writing",
    "cgroup-write": "cannot enter the job's cgroup: writing the job's pid to {detail}",
}


def start(job: Job, out_path: str, err_path: str, errw: int, iso,
          handled: list[int]) -> int:
    """The job's process, started; its pid. The caller blocks SIGTERM, SIGINT and
    SIGCHLD around it (the fork's child must not run the supervisor's handlers)."""
    spawn = _spawner()
    if spawn is not None:
        args = _spawn_args(job, out_path, err_path, errw, iso, handled)
        if args is not None:
            return spawn(*args)
    pid = os.fork()
    if pid == 0:
        run_child(job, out_path, err_path, errw, iso, handled)     # no return
    return pid


def _spawner():
    if os.environ.get("RMSBATCH_JOB_FORK") == "1":
        return None
    try:
        from rmsbatch.node._spawn import spawn
    except ImportError:         # built without a C compiler
        return None
    return spawn


def _spawn_args(job: Job, out_path: str, err_path: str, errw: int, iso,
                handled: list[int]) -> tuple | None:
    """rmsbatch.node._spawn.spawn's arguments, or None where only the fork will do."""
    ids = None
    if os.geteuid() == 0:
        if _suid_dumpable() == "1":
            # Between its switch to the user and the exec the child shares the
            # supervisor's memory; a system that lets users trace such a process
            # ("debug" dumps) must not have one.
            return None
        ids = (job.uid, job.gid, list(job.groups))
    env = []
    for key, value in job.environment.items():
        if key in PID_VARIABLES:
            continue
        if not key or "=" in key or "\0" in key or "\0" in value:
            return None         # run_child's exec says what is wrong with it
        env.append(os.fsencode(f"{key}={value}"))
    cgroups: list[bytes] = []
    if iso.cgroup is not None:
        cgroups = [os.fsencode(p) for p in iso.cgroup.procs_files()]
    limits = [(RLIMITS[name], soft) for name, (soft, _hard) in (job.rlimits or {}).items()
              if name in RLIMITS]
    try:
        maxfd = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        maxfd = 65536
    try:
        return (os.fsencode(job.script_path),
                [os.fsencode(a) for a in (job.script_path, *job.argv)], env,
                [v.encode() for v in PID_VARIABLES], list(handled), cgroups,
                bool(iso.required), ids, -1 if job.umask is None else job.umask, limits,
                os.fsencode(job.workdir), os.fsencode(out_path), os.fsencode(err_path),
                output_flags(job), errw, maxfd)
    except (UnicodeError, ValueError):
        return None


def _suid_dumpable() -> str:
    try:
        with open("/proc/sys/fs/suid_dumpable") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def explain(raw: bytes, job: Job, out_path: str, err_path: str) -> tuple[bytes, str]:
    """What the error pipe said: (whose fault, SETUP_FAILED or ISOLATION_FAILED; the
    message). The C child writes a record, "C" KIND STEP NUL ERRNO NUL DETAIL, said here
    in run_child's words; run_child writes the kind and the words."""
    if raw[:1] != b"C" or raw.count(b"\0") < 2:
        return raw[:1], raw[1:].decode("utf-8", "replace")
    kind = raw[1:2]
    step, err, detail = raw[2:].split(b"\0", 2)
    what = STEPS.get(step.decode("ascii", "replace"), "job setup failed: {step}")
    text = what.format(detail=os.fsdecode(detail), out=out_path, err=err_path,
                       uid=job.uid, gid=job.gid, step=step.decode("ascii", "replace"))
    try:
        reason = os.strerror(int(err))
    except ValueError:
        reason = "unknown error"
    return kind, f"{text}: {reason}"


def become(job) -> None:
    """As root: take the job's user, group and groups (the job's process, and the tasks
    of its steps). Not root: nothing to change. Raises OSError."""
    if os.geteuid() == 0:
        os.setgroups(list(job.groups))
        os.setgid(job.gid)
        os.setuid(job.uid)


_UNCATCHABLE = (int(signal.SIGKILL), int(signal.SIGSTOP))


def _catchable_signals() -> list[int]:
    """Asked of `_signal`, which answers in plain ints: `signal`'s wrappers make an enum
    member of each of the 64, half a millisecond of every job's start."""
    return [sig for sig in sorted(_signal.valid_signals()) if sig not in _UNCATCHABLE]


def handled_signals() -> list[int]:
    """The signals whose disposition is not the default: caught by the supervisor or by
    Python, or ignored (Python ignores SIGPIPE and SIGXFSZ; rmsd's launcher may have
    ignored more). Asked in the parent before fork: the child then resets only these,
    instead of every signal, which copies fewer of the parent's pages."""
    return [sig for sig in _catchable_signals() if _signal.getsignal(sig) != _signal.SIG_DFL]


def run_child(job: Job, out_path: str, err_path: str, errw: int, iso,
              handled: list[int] | None = None) -> None:
    """Runs in the forked child; never returns. `handled`: handled_signals() as the
    parent saw them at fork (None: every signal is reset)."""
    def fail(msg: str, kind: bytes = SETUP_FAILED) -> None:
        try:
            os.write(errw, kind + msg.encode("utf-8", "replace")[:4000])
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
            fd = os.open(path, output_flags(job) | os.O_NONBLOCK, 0o666)
        except OSError as e:
            fail(f"cannot open {kind} file {path}: {e.strerror or e}")
        os.set_blocking(fd, True)
        return fd

    try:
        # Signals: back to defaults (also those rmsd's launcher ignored), then
        # unblock what the parent blocked around fork().
        signal.set_wakeup_fd(-1)
        for sig in _catchable_signals() if handled is None else handled:
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError, RuntimeError):
                pass
        signal.pthread_sigmask(signal.SIG_SETMASK, [])

        os.setsid()
        try:
            iso.enter()     # born inside its cgroup, while still root
        except Exception as e:   # noqa: BLE001
            if iso.required:
                fail(f"cannot enter the job's cgroup: {e}", ISOLATION_FAILED)
        try:
            become(job)
        except OSError as e:
            fail(f"cannot switch to uid {job.uid} gid {job.gid}: {e.strerror or e}")
        inherit(job)
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
        env = dict(job.environment)
        env["SLURM_TASK_PID"] = env["RMS_TASK_PID"] = str(os.getpid())   # only we know it
        try:
            os.execve(job.script_path, [job.script_path, *job.argv], env)
        except OSError as e:
            fail(f"cannot execute {job.script_path}: {e.strerror or e}")
    except BaseException as e:          # noqa: BLE001 - never return into the parent's code
        fail(f"job setup failed: {type(e).__name__}: {e}")
    finally:
        os._exit(1)


def output_flags(job: Job) -> int:
    """--open-mode: truncate or keep what the file holds. Writes always append, so the
    job's own processes writing the same file never overwrite each other. (Both ways
    of starting the job open with O_NONBLOCK, then clear it: an output that is a FIFO
    nobody reads, or a line that waits for its carrier, fails the job at once instead
    of leaving its start hanging where no cancel or time limit reaches it.)"""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
    return flags if job.open_mode == "append" else flags | os.O_TRUNC


def inherit(job: Job) -> None:
    """The submitter's umask and soft resource limits (as Slurm propagates them), after
    the switch to the user: a soft limit is capped by the node's hard one."""
    if job.umask is not None:
        os.umask(job.umask)
    for name, (soft, _hard) in (job.rlimits or {}).items():
        which = RLIMITS.get(name)
        if which is None:
            continue
        try:
            _, node_hard = resource.getrlimit(which)
            want = resource.RLIM_INFINITY if soft < 0 else soft
            if node_hard != resource.RLIM_INFINITY and (want == resource.RLIM_INFINITY
                                                        or want > node_hard):
                want = node_hard
            resource.setrlimit(which, (want, node_hard))
        except (OSError, ValueError):
            pass
