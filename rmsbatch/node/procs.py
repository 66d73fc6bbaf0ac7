"""The job's processes without a cgroup: the supervisor's descendants (it is a child
subreaper, so the job's orphans stay its descendants), found through /proc.
"""
from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("rmsbatch.supervisor")

PR_SET_CHILD_SUBREAPER = 36


def descendants(pid: int) -> set[int]:
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


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


SUBREAPER = False   # set once prctl succeeded: orphans of the job come to us


def set_subreaper() -> None:
    global SUBREAPER
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            log.debug("prctl(PR_SET_CHILD_SUBREAPER) failed: errno %d", ctypes.get_errno())
        else:
            SUBREAPER = True
    except (OSError, AttributeError):
        pass


def detach(keep: dict[int, int] | None = None) -> None:
    """In a child just forked from rmsd (or its spawner): leave the parent's session
    (so the child outlives it), take back the default signal handlers, and keep no
    descriptor of the parent's but those in KEEP (wanted number -> current one);
    stdio goes to /dev/null."""
    import fcntl
    import signal

    # The parent's log handlers go first, closed: their files (rmsd's log is fd 3)
    # would otherwise be closed whenever the handlers are collected, even after fd 3
    # became one we keep.
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
        h.close()
    os.setsid()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                signal.SIGUSR1, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = keep or {}
    top = max(keep, default=2) + 1
    # Out of the way first: a wanted number may be another's current one.
    moved = {want: fcntl.fcntl(fd, fcntl.F_DUPFD, top) for want, fd in keep.items()}
    for want, fd in moved.items():
        os.dup2(fd, want)
    os.closerange(top, 65536)
