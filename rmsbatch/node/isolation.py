"""Isolation at launch: what one job gets, applied by its supervisor.

The node daemon decides the limits (job.json "isolation": memory, CPU ids,
process count, which accelerator device files the node has and which of them
the job was given, the cgroup parent, the mode); the supervisor calls `setup()`
before it forks the job, `enter()` in the forked child before dropping
privileges (so the program is born inside its cgroup), `kill()` to end the whole
tree at once, and `finish()` for the usage and the record of what was applied.

Modes (cluster.toml [node_daemon] isolation):
  auto         as root, every protection the job needs is applied or the job does
               not run: `setup()` raises IsolationError, the launch fails, rmsctld
               drains the node and requeues the job ("fails closed")
  best-effort  what can be applied is; the job record names what was missing
  off          none (the job still runs as its user)
Without root (single-user mode) there are no cgroups at all: a psutil watchdog
enforces the memory limit and tracks the process tree, and the record says so.

Job cgroups live under a parent named for the cluster, the node and the node's
state directory (`cgroup_parent`), so two clusters on one host, or a test suite
beside a live cluster, never share one; a job cgroup that already exists is never
adopted (it belongs to someone else, or to a crashed run that rmsd's start-up
sweep removes).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import signal

log = logging.getLogger("rmsbatch.isolation")


# A supervisor process serves many runs in turn (rmsbatch.node.spawner): the host's
# cgroup mounts are read once per process, not once per run (some 20 files).
_LAYOUTS: dict = {}


def _layout(root: str):
    from rmsbatch.node import cgroup
    if root not in _LAYOUTS:
        _LAYOUTS[root] = cgroup.detect(root)
    return _LAYOUTS[root]

MiB = 1024 * 1024
BASE = "rmsbatch"


class IsolationError(Exception):
    """A protection the job needs cannot be applied (isolation = "auto" as root)."""


def cgroup_parent(cluster: str, node: str, state_dir: str) -> str:
    """`rmsbatch/<cluster>_<node>_<8 hex>`: the hash of the node's state directory
    tells apart two clusters with the same names on one host."""
    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:64] or "x"
    digest = hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:8]
    return f"{BASE}/{clean(cluster)}_{clean(node)}_{digest}"


class Isolation:
    def __init__(self, job_id: int, name: str, spec: dict | None):
        self.job_id = job_id
        self.name = name                 # cgroup directory name, unique per run
        self.spec = spec or {}
        self.cgroup = None
        self.applied: dict[str, str] = {}
        self.missing: dict[str, str] = {}
        self.watchdog = False
        self.peak_kb = 0
        self.oom_by_watchdog = False

    @property
    def mode(self) -> str:
        return self.spec.get("mode", "auto")

    @property
    def wanted(self) -> bool:
        return bool(self.spec) and self.mode != "off"

    @property
    def required(self) -> bool:
        """Fail closed: root, and the admin did not choose best-effort."""
        return self.wanted and self.mode == "auto" and os.geteuid() == 0

    # -- before the fork ------------------------------------------------------
    def setup(self) -> None:
        if not self.wanted:
            return
        if os.geteuid() != 0:
            self._no_cgroup("not root (single-user mode)")
            return
        try:
            from rmsbatch.node import cgroup, devfilter
            layout = _layout(self.spec.get("cgroup_root", cgroup.DEFAULT_ROOT))
            limits = cgroup.Limits(mem_bytes=self.spec.get("mem_bytes"),
                                   cpus=self.spec.get("cpus"),
                                   pids_max=self.spec.get("pids_max"))
            self.cgroup = cgroup.JobCgroup(
                self.job_id, layout, self.spec.get("cgroup_parent", cgroup.DEFAULT_PARENT),
                name=self.name).create(limits)
            devices = self.spec.get("devices") or []
            if devices:
                fence = devfilter.DeviceFence(devices, self.spec.get("allowed") or [])
                fence.apply(self.cgroup)
            record = self.cgroup.record()
            self.applied = record["mechanisms"]
            self.missing = record["missing"]
        except Exception as exc:   # noqa: BLE001 - judged below: fail closed or run without
            log.warning("job %s: isolation not applied: %s", self.job_id, exc)
            self._drop_cgroup()
            if self.required:
                raise IsolationError(f"cannot create the job's cgroup: {exc}") from None
            self._no_cgroup(f"cgroup setup failed: {exc}")
            return
        if self.cpus_wanted and "cpuset" not in self.applied:
            self.missing.setdefault("cpuset", "no cpuset controller")
        if self.spec.get("why_no_cpuset"):
            # The node declares more CPUs than the host has: an admin's choice, shown
            # on the node, not a failure of this launch.
            self.missing["cpuset"] = self.spec["why_no_cpuset"]
        if self.required:
            needed = [n for n in ("memory", "pids", "devices", "kill", "cpuset")
                      if n in self.missing and self._requested(n)
                      and not (n == "cpuset" and self.spec.get("why_no_cpuset"))]
            if needed:
                self._drop_cgroup()
                raise IsolationError("; ".join(f"{n}: {self.missing[n]}" for n in needed)
                                     + " (isolation = \"best-effort\" in cluster.toml runs "
                                     "jobs without them)")
        if "memory" not in self.applied and self.spec.get("mem_bytes"):
            self.watchdog = True
            self.applied["memory"] = "watchdog"
            self.missing.pop("memory", None)

    @property
    def cpus_wanted(self) -> bool:
        return bool(self.spec.get("cpus"))

    def _no_cgroup(self, why: str) -> None:
        for need in ("memory", "cpuset", "pids", "devices"):
            if self._requested(need):
                self.missing[need] = why
        if self.spec.get("mem_bytes"):
            self.watchdog = True
            self.applied["memory"] = "watchdog"
            self.missing.pop("memory", None)
        if self.spec.get("why_no_cpuset"):
            self.missing["cpuset"] = self.spec["why_no_cpuset"]

    def _requested(self, need: str) -> bool:
        return {"memory": bool(self.spec.get("mem_bytes")), "cpuset": self.cpus_wanted,
                "pids": bool(self.spec.get("pids_max")),
                "devices": bool(self.spec.get("devices")), "kill": True}[need]

    # -- in the child, before exec ----------------------------------------------
    def enter(self) -> None:
        if self.cgroup is not None:
            self.cgroup.attach_self()

    # -- while the job runs --------------------------------------------------------
    def procs(self, root_pid: int) -> list[int]:
        """Every process of the job: the cgroup's members, else the tree under root_pid."""
        if self.cgroup is not None:
            return self.cgroup.procs()
        try:
            import psutil
            root = psutil.Process(root_pid)
            return [root.pid] + [p.pid for p in root.children(recursive=True)]
        except Exception:   # noqa: BLE001 - gone already
            return []

    def poll(self, pid: int) -> bool:
        """Watchdog tick (no cgroup): True when the job's tree went over its memory."""
        if not self.watchdog:
            return False
        try:
            import psutil
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
            rss = 0
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
        except Exception:   # noqa: BLE001 - the job may be gone already
            return False
        self.peak_kb = max(self.peak_kb, rss // 1024)
        limit = self.spec.get("mem_bytes")
        if limit and rss > limit:
            log.warning("job %s: %d MiB over its %d MiB limit: killed (watchdog)",
                        self.job_id, rss // MiB, limit // MiB)
            self.oom_by_watchdog = True
            for p in reversed(procs):
                try:
                    p.send_signal(signal.SIGKILL)
                except Exception:   # noqa: BLE001
                    pass
            return True
        return False

    @property
    def poll_interval(self) -> float | None:
        return 0.25 if self.watchdog else None

    # -- the end ---------------------------------------------------------------------
    def kill(self) -> None:
        """Everything in the job's cgroup, at once (double forks and setsid too)."""
        if self.cgroup is not None:
            try:
                self.cgroup.kill()
            except Exception as exc:   # noqa: BLE001
                log.warning("job %s: cgroup kill failed: %s", self.job_id, exc)

    def finish(self, exit_signal: int | None) -> dict:
        """Usage, whether memory ran out, and the record; removes the cgroup."""
        out = {"oom_killed": self.oom_by_watchdog, "max_rss_kb": None, "total_cpu_s": None}
        if self.cgroup is not None:
            try:
                usage = self.cgroup.usage(exit_signal)
                out["oom_killed"] = bool(usage.get("oom_killed"))
                out["max_rss_kb"] = usage.get("max_rss_kb")
                out["total_cpu_s"] = usage.get("total_cpu_s")
                out["pids_max_hit"] = usage.get("pids_max_hit")
            except Exception as exc:   # noqa: BLE001
                log.warning("job %s: cgroup usage unreadable: %s", self.job_id, exc)
            self.kill()
            self._drop_cgroup()
        elif self.watchdog and self.peak_kb:
            out["max_rss_kb"] = self.peak_kb
        out["protections"] = self.describe()
        return out

    def _drop_cgroup(self) -> None:
        if self.cgroup is None:
            return
        try:
            self.cgroup.remove()
        except Exception as exc:   # noqa: BLE001
            log.warning("job %s: cgroup not removed: %s", self.job_id, exc)
        self.cgroup = None

    def describe(self) -> str:
        """One line for the job record: `memory(v1) cpuset(v1) ... missing: x (why)`."""
        if not self.wanted:
            return ""
        parts = [f"{need}({how})" for need, how in self.applied.items()]
        if self.missing:
            parts.append("missing: " + ", ".join(f"{n} ({why})" for n, why in self.missing.items()))
        return " ".join(parts) or "none"
