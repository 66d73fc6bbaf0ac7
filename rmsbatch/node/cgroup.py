"""Per-job cgroups: one interface over cgroup v1, v2 and hybrid hosts.

    layout = detect()                         # what this host offers, per need
    cg = JobCgroup(42, layout)                # rmsbatch/job_42 in every hierarchy used
    cg.create(Limits(mem_bytes=4 << 30, cpus=[0, 1], pids_max=512))
    DeviceFence(node_gpus, allocated).apply(cg)   # rmsbatch.node.devfilter
    pid = os.fork()
    if pid == 0:
        cg.attach_self()                      # born inside, before exec
        os.execvp(...)
    ...
    usage = cg.usage()                        # max_rss_kb, total_cpu_s, oom_killed, ...
    cg.kill()                                 # whole tree, setsid/double-fork included
    cg.remove()

Needs and the mechanism that serves each (`Layout.mechanisms`):

    memory   v2 memory.max (+ memory.swap.max=0, memory.oom.group) | v1 memory
    cpuset   v2 cpuset.cpus/mems                                     | v1 cpuset
    pids     v2 pids.max                                             | v1 pids
    devices  v1 devices.deny | "ebpf": a device program on a cgroup2 hierarchy
             (the pure-v2 root, or the empty `unified` mount of a hybrid host)
    kill     v2 cgroup.kill | "v2-freeze" (cgroup.freeze + SIGKILL) |
             v1 freezer (FROZEN + SIGKILL) | "signal" (best effort, not isolation)
    cpuacct  v2 cpu.stat usage_usec | v1 cpuacct.usage   (accounting only)

On a hybrid host the job also joins a cgroup in the v2 hierarchy (which has no
controllers): it gives `cgroup.kill`, `cgroup.events`, `cpu.stat` and a place
to attach the eBPF device program.  `JobCgroup(..., use_v2=False)` opts out.

Ownership: every directory is created root-owned 0755 and never chowned; the
kernel creates the interface files root-owned 0644.  A job running as an
ordinary user can read its limits but cannot write them, cannot write its pid
anywhere (moving a process needs write access to the destination's
`cgroup.procs` and, on v2, to the common ancestor's), and cannot create
sub-cgroups.

Where a controller is missing (not mounted, not enabled, no permission),
`create` records the need under `missing()` instead of failing: the job still
runs and the record says what was not applied.  A value the kernel rejects
(for example CPUs outside the parent's set) raises CgroupError naming the file.

v1 caveats:
  * no `memory.oom.group`: the v1 OOM killer picks one process; the caller
    should kill() the job when usage()["oom_killed"] becomes true.
  * OOM detection reads the `oom_kill N` counter of `memory.oom_control`
    (Linux 4.13+).  Older kernels lack it; there usage(exit_signal=...) falls
    back to "memory.failcnt > 0 and the job died of SIGKILL", which can be
    wrong both ways (a failcnt hit that reclaim absorbed, then a kill -9).
  * `memory.memsw.limit_in_bytes` exists only with swap accounting; without
    it swap is not capped (noted in notes()).
  * a new cpuset cgroup starts with empty cpus/mems and refuses tasks (ENOSPC)
    until both are written: parents get the root's sets, the job the
    requested CPUs (or the parent's) and the parent's mems.
"""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from typing import Iterable

DEFAULT_ROOT = "/sys/fs/cgroup"
DEFAULT_PARENT = "rmsbatch"
V1_CONTROLLERS = ("memory", "cpuset", "pids", "devices", "freezer", "cpuacct")
V2_CONTROLLERS = ("memory", "cpuset", "pids")      # what we enable in subtree_control
PROTECTIONS = ("memory", "cpuset", "pids", "devices", "kill")
KILL_TIMEOUT_S = 5.0
REMOVE_TIMEOUT_S = 2.0
_AUTO = "auto"


class CgroupError(RuntimeError):
    """A cgroup operation failed; the message names the file."""

    def __init__(self, message: str, path: str | None = None, err: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = err


# --------------------------------------------------------------------------
# file primitives (module-level so tests can substitute a fake kernel)

class CgroupExists(CgroupError):
    """The job's cgroup directory exists already."""


def _mkdir(path: str) -> None:
    os.mkdir(path, 0o755)
    os.chmod(path, 0o755)           # independent of the umask; never chowned


def _rmdir(path: str) -> None:
    os.rmdir(path)


def _write(path: str, value) -> None:
    """One write(2) per call, checked (buffered writes lose cgroup errors)."""
    data = value if isinstance(value, bytes) else str(value).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"cannot open {path} for writing: {e.strerror}", path, e.errno) from e
    try:
        os.write(fd, data)
    except OSError as e:
        raise CgroupError(f"writing {data.decode(errors='replace')!r} to {path}: {e.strerror}",
                          path, e.errno) from e
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror}", path, e.errno) from e
    try:
        chunks = []
        while True:
            b = os.read(fd, 65536)
            if not b:
                break
            chunks.append(b)
        return b"".join(chunks).decode()
    except OSError as e:
        raise CgroupError(f"cannot read {path}: {e.strerror}", path, e.errno) from e
    finally:
        os.close(fd)


def _read_or(path: str, default: str | None = None) -> str | None:
    try:
        return _read(path)
    except CgroupError:
        return default


def _keyed(text: str | None) -> dict[str, int]:
    """'key value' lines (memory.events, cpu.stat, oom_control...) -> dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                pass
    return out


def format_cpus(cpus: Iterable[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (the kernel's list format)."""
    ids = sorted(set(int(c) for c in cpus))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def parse_cpus(text: str) -> list[int]:
    """'0-2,5' -> [0, 1, 2, 5]."""
    out: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        else:
            out.append(int(part))
    return out


def _kernel_at_least(major: int, minor: int) -> bool:
    try:
        rel = os.uname().release.split("-")[0].split(".")
        return (int(rel[0]), int(rel[1])) >= (major, minor)
    except (ValueError, IndexError):
        return False


# --------------------------------------------------------------------------
# detection

@dataclass(frozen=True)
class Layout:
    """What the host offers.

    v1: controller -> root of its v1 hierarchy.
    v2: the cgroup2 hierarchy (pure-v2 root, or a hybrid host's `unified`).
    v2_controllers: controllers available at the v2 root (empty when hybrid).
    mechanisms: need -> mechanism ("v1", "v2", "ebpf", "v2-freeze", "signal"),
        or None when nothing serves it.  Needs: PROTECTIONS + "cpuacct".
    """
    v1: dict
    v2: str | None
    v2_controllers: frozenset
    mechanisms: dict
    v2_kill: bool = False           # cgroup.kill in v2 (Linux 5.14+)
    v2_freeze: bool = False         # cgroup.freeze in v2 (Linux 5.2+)

    @property
    def hybrid(self) -> bool:
        return self.v2 is not None and bool(self.v1)

    @property
    def ebpf_devices(self) -> bool:
        """A cgroup2 hierarchy exists, so a device eBPF program can be attached."""
        return self.v2 is not None

    def available(self) -> dict:
        """need -> mechanism for every need this host can serve (for rinfo)."""
        return {k: v for k, v in self.mechanisms.items() if v and v != "signal"}

    def without_v2(self) -> "Layout":
        """The same host as if it had no cgroup2 hierarchy (testing v1 paths)."""
        return _finish(dict(self.v1), None, frozenset(), False, False)


def _is_v2(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "cgroup.controllers"))


def _probe_v2_file(v2: str, name: str, since: tuple[int, int]) -> bool:
    """Does a non-root cgroup in `v2` have interface file `name`?  Look at an
    existing child; with none, go by the kernel version."""
    try:
        with os.scandir(v2) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    return os.path.exists(os.path.join(entry.path, name))
    except OSError:
        pass
    return _kernel_at_least(*since)


def _finish(v1: dict, v2: str | None, v2_ctrl: frozenset, v2_kill: bool,
            v2_freeze: bool) -> Layout:
    mech: dict = {}
    for need in ("memory", "cpuset", "pids"):
        mech[need] = "v2" if need in v2_ctrl else ("v1" if need in v1 else None)
    mech["devices"] = "v1" if "devices" in v1 else ("ebpf" if v2 else None)
    if v2 and v2_kill:
        mech["kill"] = "v2"
    elif "freezer" in v1:
        mech["kill"] = "v1"
    elif v2 and v2_freeze:
        mech["kill"] = "v2-freeze"
    else:
        mech["kill"] = "signal"
    if v2 and os.path.exists(os.path.join(v2, "cpu.stat")):
        mech["cpuacct"] = "v2"
    else:
        mech["cpuacct"] = "v1" if "cpuacct" in v1 else None
    return Layout(v1=v1, v2=v2, v2_controllers=v2_ctrl, mechanisms=mech,
                  v2_kill=v2_kill, v2_freeze=v2_freeze)


def detect(root: str = DEFAULT_ROOT, *, v1=_AUTO, v2=_AUTO) -> Layout:
    """Which mechanism serves each need on this host.

    root: where the hierarchies are mounted.  A cgroup2 root means pure v2;
      otherwise each `root/<controller>` holding `cgroup.procs` is a v1
      hierarchy and `root/unified` (if cgroup2) is the hybrid v2 mount.
    v1: "auto", or a dict controller -> path (an empty dict: no v1).
    v2: "auto", a path, or None (no v2).
    """
    root_is_v2 = _is_v2(root)
    if v1 == _AUTO:
        found = {}
        if not root_is_v2:
            for c in V1_CONTROLLERS:
                p = os.path.join(root, c)
                if os.path.isfile(os.path.join(p, "cgroup.procs")) and not _is_v2(p):
                    found[c] = p
        v1 = found
    else:
        v1 = dict(v1 or {})
    if v2 == _AUTO:
        if root_is_v2:
            v2 = root
        elif _is_v2(os.path.join(root, "unified")):
            v2 = os.path.join(root, "unified")
        else:
            v2 = None
    ctrl: frozenset = frozenset()
    kill = freeze = False
    if v2 is not None:
        ctrl = frozenset((_read_or(os.path.join(v2, "cgroup.controllers"), "") or "").split())
        kill = _probe_v2_file(v2, "cgroup.kill", (5, 14))
        freeze = _probe_v2_file(v2, "cgroup.freeze", (5, 2))
    return _finish(v1, v2, ctrl, kill, freeze)


# --------------------------------------------------------------------------
# the job cgroup

@dataclass
class Limits:
    mem_bytes: int | None = None        # memory limit; swap capped as well
    cpus: list | None = None            # CPU ids -> cpuset.cpus
    pids_max: int | None = None
    oom_group: bool = True              # v2 memory.oom.group=1

    @classmethod
    def coerce(cls, limits) -> "Limits":
        if limits is None:
            return cls()
        if isinstance(limits, cls):
            return limits
        if isinstance(limits, dict):
            unknown = set(limits) - {"mem_bytes", "cpus", "pids_max", "oom_group"}
            if unknown:
                raise ValueError(f"unknown cgroup limits: {sorted(unknown)}")
            return cls(**limits)
        return cls(**{k: getattr(limits, k) for k in ("mem_bytes", "cpus", "pids_max",
                                                      "oom_group") if hasattr(limits, k)})


class JobCgroup:
    """The cgroups of one job: `<parent>/<name>` in every hierarchy used.

    `dirs` maps a hierarchy key ("v2", or a v1 controller name) to the job's
    directory there.  The directories are computed up front, so a JobCgroup
    built after a daemon restart can still kill() and remove() a job.
    """

    def __init__(self, job_id: int | str, layout: Layout | None = None,
                 parent: str = DEFAULT_PARENT, *, name: str | None = None,
                 use_v2: bool = True):
        self.layout = layout if layout is not None else detect()
        self.parent = parent.strip("/")
        self.name = name or f"job_{job_id}"
        mech = self.layout.mechanisms
        self.dirs: dict[str, str] = {}
        if self.layout.v2 and use_v2:
            self.dirs["v2"] = os.path.join(self.layout.v2, self.parent, self.name)
        wanted = [n for n in ("memory", "cpuset", "pids", "devices") if mech.get(n) == "v1"]
        if mech.get("kill") == "v1":
            wanted.append("freezer")
        if mech.get("cpuacct") == "v1" or (mech.get("cpuacct") == "v2" and "v2" not in self.dirs
                                            and "cpuacct" in self.layout.v1):
            wanted.append("cpuacct")
        for c in wanted:
            self.dirs[c] = os.path.join(self.layout.v1[c], self.parent, self.name)
        self._applied: dict[str, str] = {}
        self._missing: dict[str, str] = {}
        self._notes: list[str] = []
        self._peak_bytes = 0
        self._created = False

    def __repr__(self) -> str:
        return f"JobCgroup({self.parent}/{self.name}, {sorted(self.dirs)})"

    # -- where ---------------------------------------------------------------
    def _root_of(self, key: str) -> str:
        return self.layout.v2 if key == "v2" else self.layout.v1[key]

    def _serving(self, need: str) -> str | None:
        """The hierarchy key whose job directory serves `need`, if joined."""
        m = self.layout.mechanisms.get(need)
        if m == "v2" and need in ("memory", "cpuset", "pids", "cpuacct", "kill") \
                and "v2" in self.dirs:
            return "v2"
        if m == "v2-freeze" and "v2" in self.dirs:
            return "v2"
        if m == "v1":
            key = {"kill": "freezer"}.get(need, need)
            if key in self.dirs:
                return key
        if need == "cpuacct" and "cpuacct" in self.dirs:
            return "cpuacct"
        return None

    # -- create ----------------------------------------------------------------
    def create(self, limits=None) -> "JobCgroup":
        """Make the job's cgroups and apply `limits` (a Limits, dict or object
        with mem_bytes / cpus / pids_max / oom_group).  Unavailable controllers
        are recorded in missing(); a rejected value raises CgroupError after
        the directories made so far are removed again."""
        lim = Limits.coerce(limits)
        made: list[str] = []
        try:
            for key in list(self.dirs):
                if not self._make(key, made):
                    del self.dirs[key]
            self._apply(lim)
        except BaseException:
            for path in reversed(made):
                try:
                    _rmdir(path)
                except OSError:
                    pass
            raise
        self._created = True
        return self

    def _make(self, key: str, made: list) -> bool:
        """Create parent chain and job dir in one hierarchy; False when this
        hierarchy cannot be used (recorded as missing)."""
        root = self._root_of(key)
        parts = [p for p in self.parent.split("/") if p]
        levels = [root]
        for p in parts:
            levels.append(os.path.join(levels[-1], p))
        try:
            for i, d in enumerate(levels[1:], start=1):
                if not os.path.isdir(d):
                    try:
                        _mkdir(d)
                    except FileExistsError:
                        pass
                if key == "cpuset":
                    self._v1_cpuset_init(levels[i - 1], d)
            if key == "v2":
                self._v2_enable(levels)
            job = self.dirs[key]
            try:
                _mkdir(job)
                made.append(job)
            except FileExistsError:
                # Someone else's (another cluster on this host), or a crashed run's that
                # the node daemon's start-up sweep had not removed: never adopted.
                raise CgroupExists(f"{job} already exists: not ours to use (another "
                                   "cluster on this host, or a leftover: remove it "
                                   "if it is empty)", job) from None
        except CgroupExists:
            raise
        except (OSError, CgroupError) as e:
            needs = self._needs_of(key)
            reason = f"{key} hierarchy unusable: {e}"
            for n in needs:
                self._missing.setdefault(n, reason)
            return False
        return True

    def _needs_of(self, key: str) -> list[str]:
        if key == "v2":
            return [n for n in ("memory", "cpuset", "pids", "kill")
                    if self.layout.mechanisms.get(n) in ("v2", "v2-freeze")]
        return [{"freezer": "kill"}.get(key, key)]

    def _v1_cpuset_init(self, parent_dir: str, d: str) -> None:
        """A v1 cpuset cgroup refuses tasks until cpus and mems are set. Our levels set
        them explicitly, and have their children (the jobs) born empty: see _v1_cpus."""
        for f in ("cpuset.cpus", "cpuset.mems"):
            path = os.path.join(d, f)
            if not (_read_or(path, "") or "").strip():
                _write(path, (_read_or(os.path.join(parent_dir, f), "") or "").strip())
        clone = os.path.join(d, "cgroup.clone_children")
        if (_read_or(clone, "0") or "0").strip() != "0":
            _write(clone, "0")

    @staticmethod
    def _v1_cpus(d: str, cpus: str, mems: str) -> None:
        """A v1 cpuset with load balancing on rebuilds the kernel's scheduling domains
        when its CPUs change and when it is removed (most of a launch's kernel time on
        small hosts). Turned off while the set is still empty, it costs nothing; and
        the root cpuset balancing every CPU makes a job's own flag moot."""
        try:
            _write(os.path.join(d, "cpuset.sched_load_balance"), "0")
        except OSError:
            pass        # not there (an older kernel): balancing stays as it was
        _write(os.path.join(d, "cpuset.cpus"), cpus)
        _write(os.path.join(d, "cpuset.mems"), mems)

    def _v2_enable(self, levels: list[str]) -> None:
        """Enable memory/cpuset/pids for children at each level down to the
        parent (which then must hold no processes itself)."""
        want = [c for c in V2_CONTROLLERS if self.layout.mechanisms.get(c) == "v2"]
        for d in levels:
            if not want:
                return
            have = set((_read_or(os.path.join(d, "cgroup.controllers"), "") or "").split())
            enabled = set((_read_or(os.path.join(d, "cgroup.subtree_control"), "") or "").split())
            for c in list(want):
                if c in enabled:
                    continue
                if c not in have:
                    self._missing.setdefault(c, f"controller {c} not available in "
                                                f"{os.path.join(d, 'cgroup.controllers')}")
                    want.remove(c)
                    continue
                try:
                    _write(os.path.join(d, "cgroup.subtree_control"), f"+{c}")
                except CgroupError as e:
                    hint = " (the cgroup has processes: no-internal-process rule)" \
                        if e.errno == errno.EBUSY else ""
                    self._missing.setdefault(c, f"{e}{hint}")
                    want.remove(c)

    def _apply(self, lim: Limits) -> None:
        mech = self.layout.mechanisms
        # memory
        if lim.mem_bytes is not None:
            key = self._serving("memory")
            if key is None or "memory" in self._missing:
                self._missing.setdefault("memory", "no memory controller")
            elif key == "v2":
                d = self.dirs["v2"]
                _write(os.path.join(d, "memory.max"), int(lim.mem_bytes))
                if os.path.exists(os.path.join(d, "memory.swap.max")):
                    _write(os.path.join(d, "memory.swap.max"), 0)
                else:
                    self._notes.append("swap not capped: no memory.swap.max")
                if lim.oom_group:
                    if os.path.exists(os.path.join(d, "memory.oom.group")):
                        _write(os.path.join(d, "memory.oom.group"), 1)
                    else:
                        self._notes.append("no memory.oom.group: OOM kills one process")
                self._applied["memory"] = "v2"
            else:
                d = self.dirs["memory"]
                memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
                limit = os.path.join(d, "memory.limit_in_bytes")
                # memsw must stay >= limit: lower limit first, raise memsw first
                cur_text = (_read_or(limit, "0") or "0").strip()
                cur = int(cur_text) if cur_text.isdigit() else 0
                order = [limit, memsw] if int(lim.mem_bytes) <= cur else [memsw, limit]
                for path in order:
                    if path == memsw and not os.path.exists(memsw):
                        self._notes.append("swap not capped: no memory.memsw.limit_in_bytes "
                                           "(swap accounting off)")
                        continue
                    _write(path, int(lim.mem_bytes))
                if lim.oom_group:
                    self._notes.append("v1 has no memory.oom.group: the OOM killer picks "
                                       "one process; kill() the job on oom_killed")
                self._applied["memory"] = "v1"
        # cpuset
        key = self._serving("cpuset")
        if key == "v2":
            if lim.cpus and "cpuset" not in self._missing:
                d = self.dirs["v2"]
                _write(os.path.join(d, "cpuset.cpus"), format_cpus(lim.cpus))
                mems = (_read_or(os.path.join(os.path.dirname(d), "cpuset.mems.effective"), "")
                        or "").strip()
                if mems:
                    _write(os.path.join(d, "cpuset.mems"), mems)
                self._applied["cpuset"] = "v2"
        elif key == "cpuset":
            d = self.dirs["cpuset"]
            pdir = os.path.dirname(d)
            cpus = format_cpus(lim.cpus) if lim.cpus else \
                (_read_or(os.path.join(pdir, "cpuset.cpus"), "") or "").strip()
            self._v1_cpus(d, cpus, (_read_or(os.path.join(pdir, "cpuset.mems"), "")
                                    or "").strip())
            if lim.cpus:
                self._applied["cpuset"] = "v1"
        if lim.cpus and "cpuset" not in self._applied:
            self._missing.setdefault("cpuset", "no cpuset controller")
        # pids
        if lim.pids_max is not None:
            key = self._serving("pids")
            if key is None or "pids" in self._missing:
                self._missing.setdefault("pids", "no pids controller")
            else:
                _write(os.path.join(self.dirs[key], "pids.max"), int(lim.pids_max))
                self._applied["pids"] = mech["pids"]
        # kill
        km = self._kill_mechanism()
        if km in ("v2", "v1", "v2-freeze"):
            self._applied["kill"] = km
        else:
            self._missing.setdefault("kill", "no cgroup.kill, cgroup.freeze or v1 freezer: "
                                             "killing is best-effort signalling")

    def _kill_mechanism(self) -> str:
        v2 = self.dirs.get("v2")
        if v2 and os.path.exists(os.path.join(v2, "cgroup.kill")):
            return "v2"
        if "freezer" in self.dirs and os.path.isdir(self.dirs["freezer"]):
            return "v1"
        if v2 and os.path.exists(os.path.join(v2, "cgroup.freeze")):
            return "v2-freeze"
        return "signal"

    # -- bookkeeping -----------------------------------------------------------
    def mark_applied(self, need: str, mechanism: str) -> None:
        self._applied[need] = mechanism
        self._missing.pop(need, None)

    def mark_missing(self, need: str, reason: str) -> None:
        self._applied.pop(need, None)
        self._missing[need] = reason

    def protections(self) -> list[str]:
        """What is actually enforced, in PROTECTIONS order."""
        return [p for p in PROTECTIONS if p in self._applied]

    def mechanisms(self) -> dict[str, str]:
        """need -> mechanism ("v1", "v2", "ebpf", "v2-freeze") for each protection."""
        return {p: self._applied[p] for p in PROTECTIONS if p in self._applied}

    def missing(self) -> dict[str, str]:
        """need -> why it was requested but not applied."""
        return dict(self._missing)

    def notes(self) -> list[str]:
        """Weaker-than-asked details (swap not capped, no oom.group...)."""
        return list(self._notes)

    def record(self) -> dict:
        """For the job record / rinfo."""
        return {"protections": self.protections(), "mechanisms": self.mechanisms(),
                "missing": self.missing(), "notes": self.notes()}

    # -- membership -------------------------------------------------------------
    def _order(self) -> list[str]:
        # devices and kill first, so nothing runs unfenced or unkillable
        prio = {"v2": 0, "devices": 1, "freezer": 2}
        return sorted(self.dirs, key=lambda k: prio.get(k, 3))

    def add(self, pid: int) -> None:
        """Move `pid` into the job's cgroup in every hierarchy."""
        for key in self._order():
            _write(os.path.join(self.dirs[key], "cgroup.procs"), int(pid))

    def procs_files(self) -> list[str]:
        """The cgroup.procs files `add` writes, in its order (for a child that joins by
        itself: rmsbatch.node._spawn)."""
        return [os.path.join(self.dirs[key], "cgroup.procs") for key in self._order()]

    def attach_self(self) -> None:
        """In a forked child before exec: the program is born inside."""
        self.add(os.getpid())

    def procs(self) -> list[int]:
        """Member pids (union over the hierarchies)."""
        pids: set[int] = set()
        for d in self.dirs.values():
            text = _read_or(os.path.join(d, "cgroup.procs"))
            if text:
                pids.update(int(x) for x in text.split() if x.isdigit())
        return sorted(pids)

    def populated(self) -> bool:
        v2 = self.dirs.get("v2")
        if v2:
            ev = _keyed(_read_or(os.path.join(v2, "cgroup.events")))
            if "populated" in ev and ev["populated"]:
                return True
        return bool(self.procs())

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs.values())

    # -- kill --------------------------------------------------------------------
    def kill(self, timeout: float = KILL_TIMEOUT_S) -> bool:
        """SIGKILL every process of the job as one (setsid and double-forked
        ones included).  True when the job is empty within `timeout`."""
        deadline = time.monotonic() + timeout
        v2 = self.dirs.get("v2")
        if v2 and os.path.exists(os.path.join(v2, "cgroup.kill")):
            try:
                _write(os.path.join(v2, "cgroup.kill"), 1)
            except CgroupError:
                pass                    # fall through to freeze + signal
            if self._wait_empty(min(deadline, time.monotonic() + timeout / 2)):
                return True
        freezer = self.dirs.get("freezer")
        if freezer and not os.path.isdir(freezer):
            freezer = None
        v2freeze = v2 and os.path.exists(os.path.join(v2, "cgroup.freeze"))
        pause = 0.001
        while True:
            pids = self.procs()
            if not pids:
                return True
            if time.monotonic() > deadline:
                return False
            if freezer:
                self._v1_freeze(freezer, deadline)
                pids = self.procs()
            elif v2freeze:
                self._v2_freeze(v2, deadline)
                pids = self.procs()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if freezer:
                _write(os.path.join(freezer, "freezer.state"), "THAWED")
            elif v2freeze:
                _write(os.path.join(v2, "cgroup.freeze"), 0)
            if self._wait_empty(min(deadline, time.monotonic() + 0.2)):
                return True
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _wait_empty(self, until: float) -> bool:
        pause = 0.0005
        while True:
            if not self.populated():
                return True
            if time.monotonic() > until:
                return False
            time.sleep(pause)
            pause = min(pause * 2, 0.02)

    @staticmethod
    def _v1_freeze(freezer: str, deadline: float) -> None:
        state = os.path.join(freezer, "freezer.state")
        _write(state, "FROZEN")
        until = min(deadline, time.monotonic() + 1.0)
        while (_read_or(state, "") or "").strip() != "FROZEN" and time.monotonic() < until:
            time.sleep(0.001)

    @staticmethod
    def _v2_freeze(v2: str, deadline: float) -> None:
        _write(os.path.join(v2, "cgroup.freeze"), 1)
        until = min(deadline, time.monotonic() + 1.0)
        while _keyed(_read_or(os.path.join(v2, "cgroup.events"))).get("frozen", 1) != 1 \
                and time.monotonic() < until:
            time.sleep(0.001)

    # -- accounting ------------------------------------------------------------
    def usage(self, exit_signal: int | None = None) -> dict:
        """max_rss_kb, total_cpu_s, oom_killed, pids_max_hit (read before remove()).

        exit_signal: the signal that ended the job's main process, used only on
        v1 kernels without the oom_kill counter (see the module caveats).
        """
        out = {"max_rss_kb": 0, "total_cpu_s": 0.0, "oom_killed": False, "oom_kills": 0,
               "pids_max_hit": False}
        key = self._serving("memory")
        if key == "v2":
            d = self.dirs["v2"]
            peak = _read_or(os.path.join(d, "memory.peak"))
            cur = _read_or(os.path.join(d, "memory.current"))
            if cur and cur.strip().isdigit():
                self._peak_bytes = max(self._peak_bytes, int(cur))
            if peak and peak.strip().isdigit():
                self._peak_bytes = max(self._peak_bytes, int(peak))
            ev = _keyed(_read_or(os.path.join(d, "memory.events")))
            out["oom_kills"] = ev.get("oom_kill", 0)
            out["oom_killed"] = out["oom_kills"] > 0
        elif key == "memory":
            d = self.dirs["memory"]
            mx = (_read_or(os.path.join(d, "memory.max_usage_in_bytes"), "") or "").strip()
            if mx.isdigit():
                self._peak_bytes = max(self._peak_bytes, int(mx))
            oc = _keyed(_read_or(os.path.join(d, "memory.oom_control")))
            if "oom_kill" in oc:
                out["oom_kills"] = oc["oom_kill"]
                out["oom_killed"] = oc["oom_kill"] > 0
            else:
                fail = (_read_or(os.path.join(d, "memory.failcnt"), "0") or "0").strip()
                out["oom_killed"] = (fail.isdigit() and int(fail) > 0
                                     and exit_signal == signal.SIGKILL)
        out["max_rss_kb"] = self._peak_bytes // 1024
        key = self._serving("cpuacct")
        if key == "v2":
            us = _keyed(_read_or(os.path.join(self.dirs["v2"], "cpu.stat"))).get("usage_usec", 0)
            out["total_cpu_s"] = us / 1e6
        elif key == "cpuacct":
            ns = (_read_or(os.path.join(self.dirs["cpuacct"], "cpuacct.usage"), "0") or "0").strip()
            out["total_cpu_s"] = int(ns) / 1e9 if ns.isdigit() else 0.0
        key = self._serving("pids")
        if key:
            out["pids_max_hit"] = _keyed(_read_or(os.path.join(self.dirs[key], "pids.events"))
                                         ).get("max", 0) > 0
        return out

    # -- remove --------------------------------------------------------------
    def remove(self, timeout: float = REMOVE_TIMEOUT_S) -> None:
        """rmdir the job cgroup everywhere (killing what is left first);
        retries while the kernel releases it.  Leaves the shared parent."""
        if self.populated():
            self.kill()
        deadline = time.monotonic() + timeout
        failed: list[str] = []
        for key in self._order()[::-1]:
            d = self.dirs[key]
            pause = 0.001
            while True:
                try:
                    _rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno in (errno.EBUSY, errno.ENOTEMPTY) and time.monotonic() < deadline:
                        time.sleep(pause)
                        pause = min(pause * 2, 0.05)
                        continue
                    failed.append(f"{d}: {e.strerror}")
                    break
        if failed:
            raise CgroupError("cannot remove job cgroup: " + "; ".join(failed),
                              failed[0].split(":")[0])


def cleanup_stale(parent: str = DEFAULT_PARENT, layout: Layout | None = None, *,
                  keep: Iterable[str] = (), remove_parent: bool = False) -> list[str]:
    """Remove empty leftover job cgroups under `parent` in every hierarchy
    (after a crash).  Populated ones (a job still running) and names in
    `keep` are left alone.  Returns the directories removed."""
    layout = layout if layout is not None else detect()
    keep = set(keep)
    roots = list(layout.v1.values()) + ([layout.v2] if layout.v2 else [])
    removed: list[str] = []
    for root in roots:
        base = os.path.join(root, parent.strip("/"))
        try:
            entries = [e for e in os.scandir(base) if e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for e in entries:
            if e.name in keep:
                continue
            try:
                _rmdir(e.path)
                removed.append(e.path)
            except OSError:
                pass            # populated or has children: not stale
        if remove_parent:
            try:
                _rmdir(base)
                removed.append(base)
            except OSError:
                pass
    return removed
