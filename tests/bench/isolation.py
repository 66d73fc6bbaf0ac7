"""Figure 11 (rmsbatch only, as root): what each protection costs a job launch.

The steps a job's supervisor takes around every job, timed one by one on this host's
real cgroups with the launch code itself (rmsbatch.node.cgroup, rmsbatch.node.devfilter):
create the job's cgroups and write the limits (memory with swap capped, cpuset, pids),
fence a node's 8 accelerator devices with the job given 1 of them (v1 devices.deny
lines, or a cgroup v2 device eBPF program loaded and attached), start a process
inside (fork, join the cgroup, exit) and, at the end, kill everything in it and remove
the cgroups. Medians over the repetitions, after a warm-up.
"""
from __future__ import annotations

import os
import time

from tests.bench.util import Measurement

FIRST_TTY = 50          # stand-in accelerators: unused virtual consoles
DEVICES = 8


def _devices() -> list[str]:
    return [f"/dev/tty{FIRST_TTY + i}" for i in range(DEVICES)]


def one_launch(layout, n: int, mechanism: str | None) -> dict[str, float]:
    from rmsbatch.node import cgroup
    from rmsbatch.node import devfilter
    cpus = sorted(os.sched_getaffinity(0))[:1]
    out = {}
    t0 = time.perf_counter()
    cg = cgroup.JobCgroup(f"bench{n}", layout, name=f"job_bench.{n}").create(
        cgroup.Limits(mem_bytes=512 << 20, cpus=cpus, pids_max=512))
    t1 = time.perf_counter()
    out["create"] = t1 - t0
    if mechanism:
        devfilter.DeviceFence(_devices(), _devices()[:1]).apply(cg, mechanism)
        out[f"fence_{mechanism}"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            cg.attach_self()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    t3 = time.perf_counter()
    out["spawn_inside"] = t3 - t2
    cg.kill()
    cg.usage(None)
    cg.remove()
    out["kill_usage_remove"] = time.perf_counter() - t3
    return out


def isolation_cost(ctx, reps: int | None = None) -> None:
    reps = reps or (10 if ctx.sizes.query_reps < 20 else 30)
    rows = {
        "create": ctx.row("isolation", "11 launch: job cgroups + memory, cpuset, pids limits", "ms"),
        "fence_v1": ctx.row("isolation", "11 launch: fence 8 devices, v1 devices.deny", "ms"),
        "fence_ebpf": ctx.row("isolation", "11 launch: fence 8 devices, cgroup v2 eBPF", "ms"),
        "spawn_inside": ctx.row("isolation", "11 launch: fork a process into the cgroups", "ms"),
        "kill_usage_remove": ctx.row("isolation", "11 end: kill all, read usage, remove", "ms"),
    }

    class Core:
        label = "rmsbatch"

    def run():
        if os.geteuid() != 0:
            raise RuntimeError("needs root (real cgroups)")
        from rmsbatch.node import cgroup
        layout = cgroup.detect()
        samples: dict[str, list[float]] = {k: [] for k in rows}
        mechanisms = [m for m in ("v1", "ebpf")
                      if (m == "v1" and "devices" in layout.v1) or (m == "ebpf" and layout.v2)]
        for n in range(reps + 1):
            for m in mechanisms:
                got = one_launch(layout, n * 10 + len(m), m)
                if n == 0:
                    continue                        # warm-up
                for key, value in got.items():
                    if key in ("create", "spawn_inside", "kill_usage_remove") and m != mechanisms[0]:
                        continue                    # the same steps: counted once
                    samples[key].append(value)
        return tuple(Measurement(samples[k]) if samples[k] else "n/a on this host" for k in rows)

    ctx.measure(Core(), list(rows.values()), run)
    for r in rows.values():
        r.cells["Slurm"] = "n/a"
