"""What one job did with its accelerators, from the monitor's samples.

rmsd keeps one GpuUsage per running job and feeds it every sample:

    utilization   mean over the job's samples of the mean utilization of its devices
    memory peak   the most device memory the job's processes held at once (processes
                  are the job's by their cgroup, or by their session where there are
                  no cgroups); devices that cannot list processes count their whole use
    energy        the device energy counters' growth over the job's run (not for MIG
                  instances or partitions: the counter belongs to the whole board)

It is written to JOBDIR/gpu_usage.json at every sample, so a restarted rmsd carries on
where it left off, and merged into the job's outcome at the end. The figures need two
samples (one sampling interval of the job's run): a mean or a growth over one sample
would read as a measured 0, so a job with fewer has no figures (blank, not 0).

Idle GPUs (cluster.toml [accounting] idle_gpu_util, in percent; 0: not tracked): a
sample whose mean utilization over the job's devices is under the threshold starts an
idle streak, or continues it; one at or over it ends it. `gpu_idle_s` adds up the time
between consecutive samples that were both idle, so the first idle sample of a streak
adds nothing and a job idle from start to end has one sampling interval less than its
run. A sample without a utilization reading neither continues nor ends a streak. Where
samples stop for longer than `gap_s` (the monitor hung, rmsd was down) nobody knows
what the GPUs did: the streak ends there, and that gap is not counted.
"""
from __future__ import annotations

import json
import os

FILE = "gpu_usage.json"
MIN_SAMPLES = 2
GAP_S = 60.0        # samples further apart than this break an idle streak


class GpuUsage:
    def __init__(self, jobdir: str, gpus: list[int], data: dict | None = None, *,
                 idle_util: float | None = None, gap_s: float = GAP_S):
        self.path = os.path.join(jobdir, FILE)
        self.gpus = [str(g) for g in gpus]
        d = data or {}
        # None: as the file says, so the supervisor's own report of the outcome (rmsd
        # away) carries the idle time too
        self.idle_util = float(d.get("idle_util") or 0.0) if idle_util is None else idle_util
        self.gap_s = gap_s
        self.idle_s = float(d.get("idle_s") or 0.0)
        self.idle_since: float | None = d.get("idle_since")
        self.idle_last: float | None = d.get("idle_last")    # the streak's latest sample
        self.samples = int(d.get("samples", 0))
        self.util_sum = float(d.get("util_sum", 0.0))
        self.util_n = int(d.get("util_n", 0))
        self.mem_peak = d.get("mem_peak_mb")
        self.energy_first: dict[str, float] = dict(d.get("energy_first") or {})
        self.energy_last: dict[str, float] = dict(d.get("energy_last") or {})

    @classmethod
    def load(cls, jobdir: str, gpus: list[int], *, idle_util: float | None = None,
             gap_s: float = GAP_S) -> "GpuUsage":
        try:
            with open(os.path.join(jobdir, FILE)) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = None
        return cls(jobdir, gpus, data if isinstance(data, dict) else None,
                   idle_util=idle_util, gap_s=gap_s)

    def add(self, samples: dict, now: float, run: str, session: int | None) -> None:
        mine = [samples[g] for g in self.gpus if isinstance(samples.get(g), dict)]
        if not mine:
            return
        self.samples += 1
        utils = [s["util_pct"] for s in mine if isinstance(s.get("util_pct"), (int, float))]
        if utils:
            self.util_sum += sum(utils) / len(utils)
            self.util_n += 1
            if self.idle_util > 0:
                self._streak(sum(utils) / len(utils), now)
        mem = self._memory(samples, mine, run, session)
        if mem is not None:
            self.mem_peak = max(self.mem_peak or 0, mem)
        for g in self.gpus:
            joules = (samples.get(g) or {}).get("energy_j")
            if isinstance(joules, (int, float)):
                self.energy_first.setdefault(g, joules)
                self.energy_last[g] = joules
        self.save()

    def _streak(self, util: float, now: float) -> None:
        if util >= self.idle_util:
            self.idle_since = self.idle_last = None
            return
        if self.idle_last is None or now - self.idle_last > self.gap_s:
            self.idle_since = now
        elif now > self.idle_last:
            self.idle_s += now - self.idle_last
        self.idle_last = now

    def set_idle_util(self, percent: float) -> None:
        """A new threshold (configuration reloaded); 0 ends any streak."""
        self.idle_util = percent
        if percent <= 0:
            self.idle_since = self.idle_last = None

    def idle(self, now: float) -> tuple[float | None, float] | None:
        """(start of the current idle streak or None, seconds idle so far) for rmsctld;
        None when not tracked. A streak whose last sample is older than `gap_s` is
        over: silence is no evidence of idleness."""
        if self.idle_util <= 0:
            return None
        fresh = self.idle_last is not None and now - self.idle_last <= self.gap_s
        return (self.idle_since if fresh else None), round(self.idle_s, 3)

    def _memory(self, samples: dict, mine: list[dict], run: str, session: int | None) -> int | None:
        total, known = 0, False
        for s in samples.values():
            for proc in s.get("procs") or []:
                pid, mem, proc_run, sid = (list(proc) + [None, None])[:4]
                if mem is None:
                    continue
                if proc_run == run or (proc_run is None and session is not None and sid == session):
                    total += mem
                    known = True
        for s in mine:
            if s.get("procs") is None and isinstance(s.get("mem_used_mb"), int):
                total += s["mem_used_mb"]        # no process list: the device's whole use
                known = True
            elif s.get("procs") is not None:
                known = True
        return total if known else None

    def summary(self) -> dict:
        if self.samples < MIN_SAMPLES:
            blank = {"gpu_util": None, "gpu_mem_peak_mb": None, "gpu_energy_j": None}
            return {**blank, "gpu_idle_s": None} if self.idle_util > 0 else blank
        energy = None
        if self.energy_last:
            energy = round(sum(self.energy_last[g] - self.energy_first.get(g, self.energy_last[g])
                               for g in self.energy_last), 3)
        out = {"gpu_util": round(self.util_sum / self.util_n, 1) if self.util_n else None,
               "gpu_mem_peak_mb": self.mem_peak, "gpu_energy_j": energy}
        if self.idle_util > 0:
            out["gpu_idle_s"] = round(self.idle_s, 3)
        return out

    def save(self) -> None:
        from rmsbatch.node.jobdir import write_json
        data = {"samples": self.samples, "util_sum": self.util_sum, "util_n": self.util_n,
                "mem_peak_mb": self.mem_peak, "energy_first": self.energy_first,
                "energy_last": self.energy_last}
        if self.idle_util > 0:
            data.update(idle_util=self.idle_util, idle_s=self.idle_s,
                        idle_since=self.idle_since, idle_last=self.idle_last)
        try:
            # every few seconds, and only to outlive rmsd: not synced to disk
            write_json(self.path, data, durable=False)
        except OSError:
            pass      # the job directory is gone: the job has been acknowledged
