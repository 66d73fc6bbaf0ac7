"""Figure 8's synthetic accounting records: finished jobs of the last 30 days.

A million real jobs cannot be run for a benchmark, so the accounting figure writes
finished-job records straight into each system's store (rmsbatch: the spool's `jobs`
table, with rmsctld stopped; Slurm: slurmdbd's `bench_job_table` in MariaDB). The
records are generated here, from a fixed seed, so both systems get the same jobs:
48 users in 8 accounts under 3 parent accounts, 4 partitions, mostly COMPLETED with
some FAILED, CANCELLED and TIMEOUT, submitted in id order over the window, CPU and
GPU jobs of one to four nodes. Nothing is stored in the repository.

`jobs()` yields them one at a time (a million records never sit in memory at once);
each system turns a `Job` into its own row (rms.py, slurm.py).
"""
from __future__ import annotations

import bisect
import itertools
import math
import random
import time
from typing import Iterator, NamedTuple

FIELDS = "JobID,User,Account,State,Elapsed,AllocCPUS"     # what both listings show
DAY = 86400
WINDOW_DAYS = 30
SEED = 8

# (account, parent): the tenant path is "parent/account"
ACCOUNTS = [("physics", "science"), ("chemistry", "science"), ("biology", "science"),
            ("astro", "science"), ("nlp", "ai"), ("vision", "ai"), ("climate", "earth"),
            ("ops", None)]
PARENTS = sorted({p for _, p in ACCOUNTS if p})
USERS = [(f"user{k:03d}", 20000 + k, ACCOUNTS[k % len(ACCOUNTS)][0]) for k in range(1, 49)]
TENANT = {a: f"{p}/{a}" if p else a for a, p in ACCOUNTS}

# partition: (weight, node prefix, node count, GPUs per node, GPU type)
PARTITIONS = {
    "main": (45, "cpu", 64, 0, None),
    "gpu": (35, "gpu", 128, 8, "h100"),
    "long": (12, "cpu", 64, 0, None),
    "debug": (8, "gpu", 128, 8, "a100"),
}
STATES = [("COMPLETED", 0.85), ("FAILED", 0.08), ("CANCELLED", 0.04), ("TIMEOUT", 0.03)]
NAMES = ["train", "eval", "prep", "sim", "render", "align", "fit", "wrap", "bench", "sweep"]


class Job(NamedTuple):
    index: int                # 0, 1, ...: the job id is the system's first id + index
    name: str
    user: str
    uid: int
    account: str
    tenant: str
    partition: str
    state: str
    submit: float
    start: float
    end: float
    time_limit_min: int
    nodes: int
    nodelist: str
    cpus: int                 # allocated, all nodes
    mem_mb: int               # allocated, all nodes
    gpus: int                 # allocated, all nodes
    gpu_type: str | None
    exit_code: int
    exit_signal: int
    max_rss_kb: int
    total_cpu_s: float
    billing: float            # billing units per hour of run
    gpu_util: float | None
    gpu_idle_s: float | None


def window_start(now: float | None = None) -> float:
    """The -S of the figure's queries: 30 days before now, to the second."""
    return float(int((time.time() if now is None else now) - WINDOW_DAYS * DAY))


def when(t: float) -> str:
    """-S for rsacct and sacct alike (local time)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))


def node_names(nodelist: str) -> list[str]:
    """"gpu[003-004]" -> ["gpu003", "gpu004"] (the only forms jobs() writes)."""
    if "[" not in nodelist:
        return [nodelist]
    prefix, _, rest = nodelist.partition("[")
    lo, _, hi = rest.rstrip("]").partition("-")
    return [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]


def jobs(count: int, start: float, now: float, seed: int = SEED) -> Iterator[Job]:
    """`count` finished jobs submitted in order between an hour after `start` and two
    hours before `now`, all ended by a minute before `now`: every one of them is in a
    query window that opens at `start`."""
    rnd = random.Random(seed)
    r, expo, logn, uni = rnd.random, rnd.expovariate, rnd.lognormvariate, rnd.uniform
    t0, t1 = start + 3600, now - 7200
    step = (t1 - t0) / max(1, count)
    parts = list(PARTITIONS)
    part_cum = list(itertools.accumulate(PARTITIONS[p][0] for p in parts))
    state_cum = list(itertools.accumulate(w for _, w in STATES))
    states = [s for s, _ in STATES]
    log_mean = math.log(900)
    limits = (30, 60, 240, 720, 1440, 2880)
    cpu_sizes = (1, 1, 2, 4, 8, 16, 32, 64)
    gpu_sizes = (1, 1, 2, 4, 8)
    exits = {"COMPLETED": (0, 0), "CANCELLED": (0, 15), "TIMEOUT": (0, 15)}
    n_users, n_names = len(USERS), len(NAMES)
    for k in range(count):
        user, uid, account = USERS[int(r() * n_users)]
        part = parts[bisect.bisect(part_cum, r() * part_cum[-1])]
        _, prefix, size, per_node, gtype = PARTITIONS[part]
        nodes = 1 if r() < 0.9 else (2, 2, 4)[int(r() * 3)]
        if per_node:
            gpus_each = gpu_sizes[int(r() * 5)] if nodes == 1 else per_node
            gpus = gpus_each * nodes
            cpus = gpus_each * 8 * nodes
        else:
            gpus = 0
            cpus = cpu_sizes[int(r() * 8)] * nodes
        mem_mb = cpus * 4096
        first = 1 + int(r() * (size - nodes))
        submit = t0 + (k + r() * 0.9) * step
        begin = submit + min(expo(1 / 300), 3600.0)
        limit_min = limits[int(r() * 6)]
        state = states[bisect.bisect(state_cum, r() * state_cum[-1])]
        if state == "TIMEOUT":
            run = limit_min * 60.0
        else:
            run = min(logn(log_mean, 1.6), limit_min * 60.0)
        if state == "FAILED":
            run = min(run, uni(1, 600))
            exit_code, exit_signal = (1, 1, 2, 137)[int(r() * 4)], 0
        else:
            exit_code, exit_signal = exits[state]
        run = max(1.0, min(run, now - 60 - begin))
        busy = uni(0.05, 1.0)
        if gpus:
            gpu_util, gpu_idle = r() * 100, run * r() * 0.3
        else:
            gpu_util = gpu_idle = None
        billing = cpus + mem_mb / 4096 + gpus * (4.0 if gtype == "h100" else 2.0)
        yield Job(k, f"{NAMES[int(r() * n_names)]}-{k % 997}", user, uid, account,
                  TENANT[account], part, state, submit, begin, begin + run, limit_min, nodes,
                  f"{prefix}{first:03d}" if nodes == 1 else
                  f"{prefix}[{first:03d}-{first + nodes - 1:03d}]",
                  cpus, mem_mb, gpus, gtype, exit_code, exit_signal,
                  int(mem_mb * 1024 * busy * 0.8 / nodes), run * cpus * busy,
                  billing, gpu_util, gpu_idle)
