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
"""
from __future__ import annotations

import json
import os

FILE = "gpu_usage.json"
MIN_SAMPLES = 2


class GpuUsage:
    def __init__(self, jobdir: str, gpus: list[int], data: dict | None = None):
        self.path = os.path.join(jobdir, FILE)
        self.gpus = [str(g) for g in gpus]
        d = data or {}
        self.samples = int(d.get("samples", 0))
        self.util_sum = float(d.get("util_sum", 0.0))
        self.util_n = int(d.get("util_n", 0))
        self.mem_peak = d.get("mem_peak_mb")
        self.energy_first: dict[str, float] = dict(d.get("energy_first") or {})
        self.energy_last: dict[str, float] = dict(d.get("energy_last") or {})

    @classmethod
    def load(cls, jobdir: str, gpus: list[int]) -> "GpuUsage":
        try:
            with open(os.path.join(jobdir, FILE)) as fh:
                data = json.load(fh)
        except (OSError, ValueError):
            data = None
        return cls(jobdir, gpus, data if isinstance(data, dict) else None)

    def add(self, samples: dict, now: float, run: str, session: int | None) -> None:
        mine = [samples[g] for g in self.gpus if isinstance(samples.get(g), dict)]
        if not mine:
            return
        self.samples += 1
        utils = [s["util_pct"] for s in mine if isinstance(s.get("util_pct"), (int, float))]
        if utils:
            self.util_sum += sum(utils) / len(utils)
            self.util_n += 1
        mem = self._memory(samples, mine, run, session)
        if mem is not None:
            self.mem_peak = max(self.mem_peak or 0, mem)
        for g in self.gpus:
            joules = (samples.get(g) or {}).get("energy_j")
            if isinstance(joules, (int, float)):
                self.energy_first.setdefault(g, joules)
                self.energy_last[g] = joules
        self.save()

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
            return {"gpu_util": None, "gpu_mem_peak_mb": None, "gpu_energy_j": None}
        energy = None
        if self.energy_last:
            energy = round(sum(self.energy_last[g] - self.energy_first.get(g, self.energy_last[g])
                               for g in self.energy_last), 3)
        return {"gpu_util": round(self.util_sum / self.util_n, 1) if self.util_n else None,
                "gpu_mem_peak_mb": self.mem_peak, "gpu_energy_j": energy}

    def save(self) -> None:
        from rmsbatch.node.jobdir import write_json
        data = {"samples": self.samples, "util_sum": self.util_sum, "util_n": self.util_n,
                "mem_peak_mb": self.mem_peak, "energy_first": self.energy_first,
                "energy_last": self.energy_last}
        try:
            # every few seconds, and only to outlive rmsd: not synced to disk
            write_json(self.path, data, durable=False)
        except OSError:
            pass      # the job directory is gone: the job has been acknowledged
