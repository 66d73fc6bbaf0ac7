"""rmsbatch.node.cgroup: (a) the v2 file-level logic against a fake kernel in a temp
tree, (b) real cgroups on this host (root only), (c) detection."""
from __future__ import annotations

import ctypes
import errno
import json
import os
import pwd
import select
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from rmsbatch.node import cgroup
from rmsbatch.node.cgroup import (CgroupError, JobCgroup, Limits, cleanup_stale, detect,
                             format_cpus, parse_cpus)

ROOT = os.geteuid() == 0
KIB = 1024
MIB = 1024 * 1024


# ==========================================================================
# (a) a fake cgroup2 kernel over a temporary directory

class FakeKernel:
    """Emulates the cgroup2 interface files well enough to check what the
    library writes where: mkdir populates interface files from the parent's
    subtree_control, writes follow the kernel's rules for the files used."""

    ALL = "cpuset cpu io memory hugetlb pids rdma misc"

    def __init__(self, root: str, *, controllers: str = ALL, kill: bool = True,
                 swap: bool = True, cpus: str = "0-3"):
        self.root = root
        self.kill = kill
        self.swap = swap
        self.writes: list[tuple[str, str]] = []
        self.killed: list[int] = []
        files = {"cgroup.controllers": controllers, "cgroup.subtree_control": "",
                 "cgroup.procs": "", "cpu.stat": "usage_usec 0\n",
                 "cpuset.cpus.effective": cpus, "cpuset.mems.effective": "0"}
        for name, text in files.items():
            self._put(os.path.join(root, name), text)
        # an existing child tells detect() whether non-root cgroups have cgroup.kill
        self.mkdir(os.path.join(root, "init.scope"))

    # -- helpers -----------------------------------------------------------
    @staticmethod
    def _put(path: str, text: str) -> None:
        with open(path, "w") as fh:
            fh.write(text)

    @staticmethod
    def get(path: str) -> str:
        with open(path) as fh:
            return fh.read()

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def written(self, suffix: str) -> list[str]:
        return [v for p, v in self.writes if p == suffix]

    def procs_of(self, d: str) -> list[int]:
        return [int(x) for x in self.get(os.path.join(d, "cgroup.procs")).split()]

    def _set_procs(self, d: str, pids: list[int]) -> None:
        self._put(os.path.join(d, "cgroup.procs"), "".join(f"{p}\n" for p in pids))
        ev = os.path.join(d, "cgroup.events")
        if os.path.exists(ev):
            frozen = "1" if self.get(os.path.join(d, "cgroup.freeze")).strip() == "1" else "0"
            self._put(ev, f"populated {1 if pids else 0}\nfrozen {frozen}\n")

    # -- the three primitives the library uses ------------------------------
    def mkdir(self, path: str) -> None:
        os.mkdir(path, 0o755)
        files = {"cgroup.subtree_control": "", "cgroup.procs": "",
                 "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0",
                 "cpu.stat": "usage_usec 0\n"}
        if self.kill:
            files["cgroup.kill"] = ""
        for name, text in files.items():
            self._put(os.path.join(path, name), text)
        self._populate(path)

    def _populate(self, path: str) -> None:
        """cgroup.controllers and the controllers' files follow the parent's
        subtree_control, as in the kernel."""
        parent = os.path.dirname(path)
        enabled = self.get(os.path.join(parent, "cgroup.subtree_control")).split()
        self._put(os.path.join(path, "cgroup.controllers"), " ".join(enabled))
        files = {}
        if "memory" in enabled:
            files.update({"memory.max": "max", "memory.oom.group": "0",
                          "memory.current": "0", "memory.peak": "0",
                          "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"})
            if self.swap:
                files["memory.swap.max"] = "max"
        if "pids" in enabled:
            files.update({"pids.max": "max", "pids.events": "max 0\n"})
        if "cpuset" in enabled:
            files.update({"cpuset.cpus": "", "cpuset.mems": "",
                          "cpuset.cpus.effective":
                              self.get(os.path.join(parent, "cpuset.cpus.effective")),
                          "cpuset.mems.effective":
                              self.get(os.path.join(parent, "cpuset.mems.effective"))})
        for name, text in files.items():
            if not os.path.exists(os.path.join(path, name)):
                self._put(os.path.join(path, name), text)

    def rmdir(self, path: str) -> None:
        if not os.path.isdir(path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        if any(e.is_dir() for e in os.scandir(path)) or self.procs_of(path):
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        shutil.rmtree(path)

    def write(self, path: str, value) -> None:
        value = value.decode() if isinstance(value, bytes) else str(value)
        self.writes.append((self.rel(path), value))
        d, name = os.path.split(path)

        def fail(err):
            raise CgroupError(f"writing {value!r} to {path}: {os.strerror(err)}", path, err)

        if not os.path.exists(path):
            fail(errno.ENOENT)
        if name == "cgroup.subtree_control":
            have = self.get(os.path.join(d, "cgroup.controllers")).split()
            on = self.get(path).split()
            for tok in value.split():
                c = tok[1:]
                if c not in have:
                    fail(errno.ENOENT)
                if d != self.root and self.procs_of(d):
                    fail(errno.EBUSY)           # no internal processes
                if tok[0] == "+" and c not in on:
                    on.append(c)
                elif tok[0] == "-" and c in on:
                    on.remove(c)
            self._put(path, " ".join(on))
            for e in os.scandir(d):
                if e.is_dir():
                    self._populate(e.path)
        elif name == "cgroup.procs":
            pid = int(value)
            for dirpath, _dirs, fnames in os.walk(self.root):
                if "cgroup.procs" in fnames:
                    pids = self.procs_of(dirpath)
                    if pid in pids:
                        pids.remove(pid)
                        self._set_procs(dirpath, pids)
            self._set_procs(d, self.procs_of(d) + [pid])
        elif name == "cgroup.kill":
            self.killed.extend(self.procs_of(d))
            self._set_procs(d, [])
        elif name == "cgroup.freeze":
            self._put(path, value)
            # thawing: tasks killed while frozen are gone now
            alive = [p for p in self.procs_of(d) if _alive(p)]
            self._set_procs(d, alive)
        elif name == "cpuset.cpus":
            allowed = set(parse_cpus(self.get(os.path.join(os.path.dirname(d),
                                                           "cpuset.cpus.effective"))))
            if not set(parse_cpus(value)) <= allowed:
                fail(errno.EINVAL)
            self._put(path, value)
            self._put(os.path.join(d, "cpuset.cpus.effective"), value)
        else:
            self._put(path, value)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """factory: a fake pure-v2 root wired into rmsbatch.node.cgroup's primitives."""
    def make(**kw) -> FakeKernel:
        root = tmp_path / "cg"
        root.mkdir()
        k = FakeKernel(str(root), **kw)
        monkeypatch.setattr(cgroup, "_mkdir", k.mkdir)
        monkeypatch.setattr(cgroup, "_rmdir", k.rmdir)
        monkeypatch.setattr(cgroup, "_write", k.write)
        return k
    return make


LIMITS = Limits(mem_bytes=64 * MIB, cpus=[1, 2, 3], pids_max=50)


def test_cpu_list_format():
    assert format_cpus([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert format_cpus([3]) == "3"
    assert parse_cpus("0-2,5,7-8\n") == [0, 1, 2, 5, 7, 8]
    assert parse_cpus("") == []


def test_limits_coerce():
    assert Limits.coerce({"mem_bytes": 5, "cpus": [0]}) == Limits(mem_bytes=5, cpus=[0])
    assert Limits.coerce(None) == Limits()
    with pytest.raises(ValueError, match="mem_mb"):
        Limits.coerce({"mem_mb": 5})


def test_detect_pure_v2_tree(fake):
    k = fake()
    lay = detect(k.root)
    assert lay.v2 == k.root and lay.v1 == {} and not lay.hybrid
    assert lay.mechanisms == {"memory": "v2", "cpuset": "v2", "pids": "v2",
                              "devices": "ebpf", "kill": "v2", "cpuacct": "v2"}
    assert lay.ebpf_devices
    assert set(lay.available()) == {"memory", "cpuset", "pids", "devices", "kill", "cpuacct"}


def test_detect_hybrid_tree(tmp_path):
    for c in ("memory", "cpuset", "pids", "devices", "freezer", "cpuacct", "blkio"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    (tmp_path / "unified").mkdir()
    (tmp_path / "unified" / "cgroup.controllers").write_text("")
    lay = detect(str(tmp_path))
    assert lay.hybrid and lay.v2 == str(tmp_path / "unified")
    assert lay.v2_controllers == frozenset()
    assert {k: lay.mechanisms[k] for k in ("memory", "cpuset", "pids", "devices")} == \
        dict.fromkeys(("memory", "cpuset", "pids", "devices"), "v1")
    assert set(lay.v1) == {"memory", "cpuset", "pids", "devices", "freezer", "cpuacct"}
    # without the unified mount: the freezer kills, no eBPF
    lay1 = lay.without_v2()
    assert lay1.mechanisms["kill"] == "v1" and lay1.mechanisms["cpuacct"] == "v1"
    assert not lay1.ebpf_devices
    # explicit paths
    lay2 = detect("/nonexistent", v1={"memory": str(tmp_path / "memory")}, v2=None)
    assert lay2.mechanisms["memory"] == "v1" and lay2.mechanisms["pids"] is None
    assert lay2.mechanisms["kill"] == "signal" and lay2.mechanisms["devices"] is None


def test_v2_create_writes(fake):
    k = fake()
    cg = JobCgroup(7, detect(k.root))
    assert cg.dirs == {"v2": os.path.join(k.root, "rmsbatch", "job_7")}
    cg.create(LIMITS)
    # controllers enabled top-down, one per write, at the root and the parent
    assert k.written("cgroup.subtree_control") == ["+memory", "+cpuset", "+pids"]
    assert k.written("rmsbatch/cgroup.subtree_control") == ["+memory", "+cpuset", "+pids"]
    j = "rmsbatch/job_7/"
    assert k.written(j + "memory.max") == [str(64 * MIB)]
    assert k.written(j + "memory.swap.max") == ["0"]
    assert k.written(j + "memory.oom.group") == ["1"]
    assert k.written(j + "cpuset.cpus") == ["1-3"]
    assert k.written(j + "cpuset.mems") == ["0"]
    assert k.written(j + "pids.max") == ["50"]
    assert not [p for p, _ in k.writes if p.startswith("rmsbatch/job_7/cgroup.procs")]
    assert cg.protections() == ["memory", "cpuset", "pids", "kill"]
    assert cg.mechanisms() == {"memory": "v2", "cpuset": "v2", "pids": "v2", "kill": "v2"}
    assert cg.missing() == {} and cg.notes() == []
    # a second job: parents are ready, nothing written above the job
    n = len(k.writes)
    cg2 = JobCgroup(8, detect(k.root)).create(Limits(pids_max=5))
    assert all(p.startswith("rmsbatch/job_8/") for p, _ in k.writes[n:])
    assert cg2.protections() == ["pids", "kill"]
    cg2.remove()


def test_v2_membership_kill_usage_remove(fake):
    k = fake()
    cg = JobCgroup(7, detect(k.root)).create(LIMITS)
    d = cg.dirs["v2"]
    cg.add(4242)
    cg.add(4243)
    assert k.written("rmsbatch/job_7/cgroup.procs") == ["4242", "4243"]
    assert cg.procs() == [4242, 4243] and cg.populated()
    # usage: memory.peak, memory.events oom_kill, pids.events max, cpu.stat
    k._put(os.path.join(d, "memory.peak"), "10485760\n")
    k._put(os.path.join(d, "memory.events"), "low 0\nhigh 0\nmax 9\noom 1\noom_kill 1\n")
    k._put(os.path.join(d, "pids.events"), "max 3\n")
    k._put(os.path.join(d, "cpu.stat"), "usage_usec 1500000\nuser_usec 1000000\n")
    u = cg.usage()
    assert u["max_rss_kb"] == 10240 and u["total_cpu_s"] == 1.5
    assert u["oom_killed"] is True and u["oom_kills"] == 1 and u["pids_max_hit"] is True
    # kill: one write to cgroup.kill
    assert cg.kill() is True
    assert k.written("rmsbatch/job_7/cgroup.kill") == ["1"]
    assert k.killed == [4242, 4243] and cg.procs() == []
    cg.remove()
    assert not os.path.exists(d)
    assert os.path.isdir(os.path.dirname(d))       # the shared parent stays
    assert cleanup_stale("rmsbatch", detect(k.root), remove_parent=True) == \
        [os.path.dirname(d)]


def test_v2_peak_tracked_without_memory_peak(fake):
    k = fake()
    cg = JobCgroup(1, detect(k.root)).create(Limits(mem_bytes=MIB))
    d = cg.dirs["v2"]
    os.unlink(os.path.join(d, "memory.peak"))          # kernels before 5.19
    for cur, want in ((300 * KIB, 300), (900 * KIB, 900), (100 * KIB, 900)):
        k._put(os.path.join(d, "memory.current"), f"{cur}\n")
        assert cg.usage()["max_rss_kb"] == want
    cg.remove()


def test_v2_unavailable_controller_is_recorded_not_fatal(fake):
    k = fake(controllers="cpu io memory", swap=False)
    cg = JobCgroup(3, detect(k.root)).create(LIMITS)
    assert cg.protections() == ["memory", "kill"]
    assert set(cg.missing()) == {"cpuset", "pids"}
    assert "swap not capped" in " ".join(cg.notes())
    assert k.written("cgroup.subtree_control") == ["+memory"]
    cg.remove()


def test_v2_no_internal_process_rule(fake):
    """The parent holds a process: enabling controllers below it fails with
    EBUSY; the job cgroup is still made and the record says why."""
    k = fake()
    parent = os.path.join(k.root, "rmsbatch")
    k.mkdir(parent)
    k.write(os.path.join(k.root, "cgroup.subtree_control"), "+memory +pids +cpuset")
    k.write(os.path.join(parent, "cgroup.procs"), 99)
    cg = JobCgroup(4, detect(k.root)).create(LIMITS)
    assert set(cg.missing()) == {"memory", "cpuset", "pids"}
    assert "no-internal-process" in cg.missing()["memory"]
    assert "rmsbatch/cgroup.subtree_control" in cg.missing()["memory"]
    assert cg.protections() == ["kill"]
    assert os.path.isdir(cg.dirs["v2"])
    cg.remove()


def test_v2_rejected_value_raises_and_cleans_up(fake):
    k = fake(cpus="0-1")
    cg = JobCgroup(5, detect(k.root))
    with pytest.raises(CgroupError, match=r"rmsbatch/job_5/cpuset\.cpus"):
        cg.create(Limits(cpus=[0, 7]))
    assert not os.path.exists(cg.dirs["v2"])


def test_v2_freeze_kill_fallback(fake):
    """No cgroup.kill (Linux < 5.14): freeze, SIGKILL each pid, thaw."""
    k = fake(kill=False)
    lay = detect(k.root)
    assert lay.mechanisms["kill"] == "v2-freeze"
    cg = JobCgroup(6, lay).create(Limits())
    assert cg.mechanisms() == {"kill": "v2-freeze"}
    child = subprocess.Popen(["sleep", "30"])
    try:
        cg.add(child.pid)
        assert cg.kill(timeout=3) is True
        assert child.wait(timeout=3) == -signal.SIGKILL
        # frozen, then thawed (again if the kill had to be repeated on a busy host)
        written = k.written("rmsbatch/job_6/cgroup.freeze")
        assert written[:2] == ["1", "0"] and written == ["1", "0"] * (len(written) // 2)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    cg.remove()


def test_cleanup_stale_keeps_live_and_kept(fake):
    k = fake()
    lay = detect(k.root)
    a, b, c = (JobCgroup(i, lay).create(Limits()) for i in (1, 2, 3))
    b.add(555)                                  # "still running"
    removed = cleanup_stale("rmsbatch", lay, keep={"job_3"})
    assert removed == [a.dirs["v2"]]
    assert os.path.isdir(b.dirs["v2"]) and os.path.isdir(c.dirs["v2"])


def test_attach_failure_names_file(fake):
    k = fake()
    cg = JobCgroup(9, detect(k.root)).create(Limits())
    os.unlink(os.path.join(cg.dirs["v2"], "cgroup.procs"))
    with pytest.raises(CgroupError, match="job_9/cgroup.procs"):
        cg.add(1)


# ==========================================================================
# (b) real cgroups on this host

HOST = detect() if os.path.isdir("/sys/fs/cgroup") else None
REAL = ROOT and HOST is not None and all(HOST.mechanisms.get(n) for n in ("memory", "pids"))
real = pytest.mark.skipif(not REAL, reason="needs root and memory/pids cgroups")
PARENT = f"rmsbatch_test_{os.getpid()}"
PR_SET_CHILD_SUBREAPER = 36


def _all_parent_dirs(layout) -> list[str]:
    roots = list(layout.v1.values()) + ([layout.v2] if layout.v2 else [])
    return [os.path.join(r, PARENT) for r in roots]


@pytest.fixture
def jobs():
    """factory for real JobCgroups under a per-run parent; all removed after."""
    made: list[JobCgroup] = []

    def make(job_id: int, limits=None, layout=None) -> JobCgroup:
        cg = JobCgroup(job_id, layout or HOST, parent=PARENT)
        made.append(cg)
        return cg.create(limits)

    yield make
    for cg in made:
        try:
            cg.kill(timeout=2)
            cg.remove()
        except CgroupError:
            pass
    cleanup_stale(PARENT, HOST, remove_parent=True)
    left = [d for d in _all_parent_dirs(HOST) if os.path.exists(d)]
    assert not left, f"cgroup directories left behind: {left}"


class Launched:
    """A job started inside a cgroup under a subreaper helper, so that
    double-forked/orphaned descendants are reaped too (this host's pid 1 does
    not reap).  The helper stays outside the job cgroup."""

    def __init__(self, cg: JobCgroup, argv: list[str]):
        r, w = os.pipe()
        self.helper = os.fork()
        if self.helper == 0:            # helper
            try:
                os.close(r)
                ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
                pid = os.fork()
                if pid == 0:            # the job: born inside, then exec
                    try:
                        cg.attach_self()
                        os.execvp(argv[0], argv)
                    finally:
                        os._exit(127)
                os.write(w, f"{pid}\n".encode())
                while True:
                    try:
                        p, st = os.waitpid(-1, 0)
                    except ChildProcessError:
                        break
                    if p == pid:
                        os.write(w, f"{st}\n".encode())
            finally:
                os._exit(0)
        os.close(w)
        self._r = r
        self._buf = b""
        self.pid = int(self._line(5))
        self.status: int | None = None

    def _line(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no word from the launch helper")
            chunk = os.read(self._r, 4096)
            if not chunk:
                raise EOFError("launch helper gone")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def wait(self, timeout: float = 5) -> int:
        """The wait status of the job's main process."""
        if self.status is None:
            self.status = int(self._line(timeout))
        return self.status

    def finish(self, timeout: float = 5) -> None:
        """Wait for the helper: it exits once every descendant is reaped."""
        deadline = time.monotonic() + timeout
        while True:
            p, _ = os.waitpid(self.helper, os.WNOHANG)
            if p:
                break
            if time.monotonic() > deadline:
                os.kill(self.helper, signal.SIGKILL)
                os.waitpid(self.helper, 0)
                raise AssertionError("descendants of the job still running")
            time.sleep(0.005)
        os.close(self._r)


@pytest.fixture
def launch():
    started: list[Launched] = []

    def start(cg, argv):
        job = Launched(cg, argv)
        started.append(job)
        return job

    yield start
    for job in started:
        try:
            os.kill(job.helper, signal.SIGKILL)
            os.waitpid(job.helper, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _running(pid: int, command: str) -> bool:
    """The job has exec'd `command`: it joined every hierarchy before that (attach_self
    writes one cgroup.procs after another, so membership in one is not enough)."""
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip() == command
    except OSError:
        return False


def _wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _proc_cgroups(pid: int) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/cgroup") as fh:
        for line in fh:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in (ctrls.split(",") if ctrls else [""]):
                out[c] = path
    return out


@real
def test_real_membership_limits_and_ownership(jobs, launch):
    cg = jobs(1, Limits(mem_bytes=64 * MIB, cpus=[0], pids_max=50))
    assert {"memory", "cpuset", "pids", "kill"} <= set(cg.protections())
    job = launch(cg, ["sleep", "30"])
    _wait_for(lambda: _running(job.pid, "sleep"), what="the job's exec")
    assert cg.procs() == [job.pid]
    where = _proc_cgroups(job.pid)
    rel = f"/{PARENT}/job_1"
    for c in ("memory", "cpuset", "pids"):
        if cg.mechanisms()[c] == "v1":
            assert where[c] == rel
    if "v2" in cg.dirs:
        assert where[""] == rel
    _wait_for(lambda: os.sched_getaffinity(job.pid) == {0}, what="cpuset affinity")
    # limits in place, root-owned, not writable by others
    for key, d in cg.dirs.items():
        st = os.stat(d)
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o755), d
        procs = os.stat(os.path.join(d, "cgroup.procs"))
        assert procs.st_uid == 0 and not procs.st_mode & 0o022
    if cg.mechanisms()["memory"] == "v1":
        d = cg.dirs["memory"]
        assert open(os.path.join(d, "memory.limit_in_bytes")).read().strip() == str(64 * MIB)
        memsw = os.path.join(d, "memory.memsw.limit_in_bytes")
        if os.path.exists(memsw):
            assert open(memsw).read().strip() == str(64 * MIB)
    pdir = cg.dirs["pids"] if "pids" in cg.dirs else cg.dirs["v2"]
    assert open(os.path.join(pdir, "pids.max")).read().strip() == "50"
    assert cg.kill() is True
    assert os.WTERMSIG(job.wait()) == signal.SIGKILL
    job.finish()
    dirs = list(cg.dirs.values())
    cg.remove()
    assert not [d for d in dirs if os.path.exists(d)]


@real
def test_real_oom_kill_is_reported(jobs, launch):
    cg = jobs(2, Limits(mem_bytes=64 * MIB, pids_max=50))
    job = launch(cg, [sys.executable, "-S", "-c", "b = bytearray(200 * 1024 * 1024)"])
    st = job.wait(timeout=10)
    assert os.WIFSIGNALED(st) and os.WTERMSIG(st) == signal.SIGKILL
    u = cg.usage(exit_signal=os.WTERMSIG(st))
    assert u["oom_killed"] is True
    assert 48 * KIB <= u["max_rss_kb"] <= 64 * KIB + 64
    job.finish()


@real
def test_real_pids_max_hit(jobs, launch):
    cg = jobs(3, Limits(pids_max=50))
    job = launch(cg, ["bash", "-c", "for i in $(seq 200); do sleep 30 & done 2>/dev/null; wait"])
    _wait_for(lambda: cg.usage()["pids_max_hit"], what="pids.max hit")
    assert len(cg.procs()) <= 50
    assert cg.kill() is True
    job.wait()
    job.finish()


DAEMON = ["sh", "-c", "setsid sh -c 'sleep 60 & sleep 60' </dev/null >/dev/null 2>&1 & exit 0"]


@real
@pytest.mark.parametrize("v2", [True, False], ids=["host", "v1-freezer"])
def test_real_kill_reaches_setsid_double_fork(jobs, launch, v2):
    layout = HOST if v2 else HOST.without_v2()
    if layout.mechanisms["kill"] == "signal":
        pytest.skip("no cgroup.kill/freezer")
    cg = jobs(4, Limits(pids_max=50), layout)
    job = launch(cg, DAEMON)
    assert job.wait() == 0                       # the launcher exited at once
    _wait_for(lambda: len(cg.procs()) >= 3, what="daemon processes")
    sessions = {os.getsid(p) for p in cg.procs()}
    assert job.pid not in cg.procs() and job.pid not in sessions
    assert cg.kill() is True
    assert cg.procs() == []
    job.finish()                                 # every descendant reaped
    assert cg.mechanisms()["kill"] == layout.mechanisms["kill"]


@real
@pytest.mark.parametrize("v2", [True, False], ids=["host", "v1"])
def test_real_cpu_accounting(jobs, launch, v2):
    layout = HOST if v2 else HOST.without_v2()
    cg = jobs(5, Limits(), layout)
    job = launch(cg, ["sh", "-c", "i=0; while [ $i -lt 30000 ]; do i=$((i+1)); done"])
    assert job.wait() == 0
    job.finish()
    assert cg.usage()["total_cpu_s"] > 0.005


@real
def test_real_unprivileged_job_cannot_escape_or_raise_limits(jobs):
    try:
        pw = pwd.getpwnam("rmscgtest")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "rmscgtest"],
                       check=True, capture_output=True)
        pw = pwd.getpwnam("rmscgtest")
    cg = jobs(6, Limits(mem_bytes=64 * MIB, pids_max=50))
    targets = {}
    for key, d in cg.dirs.items():
        root = HOST.v2 if key == "v2" else HOST.v1[key]
        targets[f"{key}:parent"] = os.path.join(os.path.dirname(d), "cgroup.procs")
        targets[f"{key}:root"] = os.path.join(root, "cgroup.procs")
        targets[f"{key}:own"] = os.path.join(d, "cgroup.procs")
    if "memory" in cg.dirs:
        targets["limit"] = os.path.join(cg.dirs["memory"], "memory.limit_in_bytes")
    if "pids" in cg.dirs:
        targets["pids.max"] = os.path.join(cg.dirs["pids"], "pids.max")
    if "v2" in cg.dirs and os.path.exists(os.path.join(cg.dirs["v2"], "memory.max")):
        targets["memory.max"] = os.path.join(cg.dirs["v2"], "memory.max")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            cg.attach_self()
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            res = {}
            for name, path in targets.items():
                value = str(10 * 1024 * MIB) if ("limit" in name or "max" in name) \
                    else str(os.getpid())
                try:
                    fd = os.open(path, os.O_WRONLY)
                    try:
                        os.write(fd, value.encode())
                    finally:
                        os.close(fd)
                    res[name] = "written"
                except OSError as e:
                    res[name] = errno.errorcode[e.errno]
            try:
                os.mkdir(os.path.join(cg.dirs[next(iter(cg.dirs))], "escape"))
                res["mkdir"] = "made"
            except OSError as e:
                res["mkdir"] = errno.errorcode[e.errno]
            os.write(w, json.dumps(res).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as fh:
        res = json.loads(fh.read())
    os.waitpid(pid, 0)
    assert res and all(v in ("EACCES", "EPERM") for v in res.values()), res
    assert {"v2:parent", "memory:parent", "limit"} & set(res)


@real
def test_real_cleanup_stale(jobs, launch):
    stale = jobs(7, Limits())
    live = jobs(8, Limits())
    job = launch(live, ["sleep", "30"])
    _wait_for(lambda: _running(job.pid, "sleep"), what="the job's exec")
    removed = cleanup_stale(PARENT, HOST)
    assert sorted(removed) == sorted(stale.dirs.values())
    assert all(os.path.isdir(d) for d in live.dirs.values())
    live.remove()                                 # kills what is left first
    job.wait()
    job.finish()
    assert not [d for d in live.dirs.values() if os.path.exists(d)]


# ==========================================================================
# (c) detection on this host

@pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup"), reason="no /sys/fs/cgroup")
def test_detect_this_host():
    lay = detect()
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):        # pure v2
        assert lay.v2 == "/sys/fs/cgroup" and lay.v1 == {}
        assert lay.mechanisms["devices"] == "ebpf"
    elif os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):   # hybrid / v1
        for need in ("memory", "cpuset", "pids", "devices"):
            if os.path.isdir(f"/sys/fs/cgroup/{need}"):
                assert lay.mechanisms[need] == "v1", need
        if os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers"):
            assert lay.hybrid and lay.v2 == "/sys/fs/cgroup/unified"
            assert lay.ebpf_devices
            assert lay.mechanisms["kill"] in ("v2", "v1")
    else:
        pytest.skip("unfamiliar cgroup layout")
