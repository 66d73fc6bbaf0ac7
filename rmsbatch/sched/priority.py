"""Multifactor priority: a pending job's factors, each from 0 to 1, weighted and summed.

    priority = weight_age       x age         (pending time / max_age, at most 1)
             + weight_fairshare x fair-share  (rmsbatch.sched.fairshare: 1 unused, 0.5 at share)
             + weight_qos       x QoS         (its QoS priority on the scale of all QoS levels)
             + weight_partition x partition   (its partition's priority, likewise)
             + weight_job_size  x job size    (its share of the cluster's CPUs or GPUs)
             - nice

QoS and partition priorities may be negative (a "low" QoS at -1000): they are mapped
linearly from the lowest configured value (or 0, if none is below it) to the highest
(or 0) onto 0..1, so the order of the levels holds and the gap between two levels in
the total is weight x their difference / the spread. The job-size factor is the larger
of the job's share of the cluster's CPUs and of its GPUs: big jobs first by default,
since small ones fit in the gaps around them (`favor_small` turns it round). Nice is
subtracted as it is, as Slurm does. The result is an int; higher starts first.

An operator's `rcontrol update job Priority=N` pins the job at N (as Slurm does): the
controller stores that it is pinned (the spool's `priority_pinned`) and gives the job
its `pinned` value, which it keeps instead of being recomputed. It is never guessed
from the stored priority: a QoS or partition whose priority the configuration changed
would look pinned, and a pin at exactly what admission stores would look unpinned.

Pure: `now` is an argument; no clock, no I/O.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NAMES = ("age", "fairshare", "qos", "partition", "job_size")


@dataclass(frozen=True)
class Weights:
    age: int = 1000
    fairshare: int = 10000
    qos: int = 10000
    partition: int = 1000
    job_size: int = 1000
    max_age: float = 7 * 86400.0
    favor_small: bool = False

    @classmethod
    def of(cls, section) -> "Weights":
        """From cluster.toml's [priority] (rmsbatch.config.models.PrioritySection)."""
        return cls(section.weight_age, section.weight_fairshare, section.weight_qos,
                   section.weight_partition, section.weight_job_size,
                   float(section.max_age), section.favor_small)

    def weight(self, name: str) -> int:
        return getattr(self, name)


@dataclass
class Context:
    """What a job's factors depend on beyond the job itself."""
    weights: Weights = field(default_factory=Weights)
    qos_priority: dict[str, int] = field(default_factory=dict)
    partition_priority: dict[str, int] = field(default_factory=dict)
    fairshare: dict[tuple[str, str], float] = field(default_factory=dict)
    cpus: int = 0               # the cluster's, for the job-size factor
    gpus: int = 0
    qos_scale: dict[str, float] = field(default_factory=dict)
    partition_scale: dict[str, float] = field(default_factory=dict)

    def __post_init__(self):
        self.qos_scale = scale(self.qos_priority)
        self.partition_scale = scale(self.partition_priority)


def scale(priorities: dict[str, int]) -> dict[str, float]:
    """Priorities mapped linearly onto 0..1, from min(0, lowest) to max(0, highest)."""
    if not priorities:
        return {}
    low, high = min(0, *priorities.values()), max(0, *priorities.values())
    if high == low:
        return dict.fromkeys(priorities, 0.0)
    return {name: (p - low) / (high - low) for name, p in priorities.items()}


def size_share(request, ctx: Context) -> float:
    """The larger of the job's share of the cluster's CPUs and of its GPUs."""
    cpus = request.nodes * request.cpus
    gpus = request.nodes * request.gpus
    share = max(cpus / ctx.cpus if ctx.cpus else 0.0, gpus / ctx.gpus if ctx.gpus else 0.0)
    return min(1.0, share)


def factors(job, now: float, ctx: Context) -> dict[str, float]:
    """The job's five factors, each from 0 to 1."""
    w = ctx.weights
    since = job.submit_time
    if job.begin_time is not None and job.begin_time > since:
        since = job.begin_time      # as Slurm: age counts from when it could first start
    size = size_share(job.request, ctx)
    return {
        "age": min(1.0, max(0.0, now - since) / w.max_age),
        "fairshare": ctx.fairshare.get((job.account, job.user), 0.0),
        "qos": ctx.qos_scale.get(job.qos, 0.0),
        "partition": ctx.partition_scale.get(job.partition, 0.0),
        "job_size": 1.0 - size if w.favor_small else size,
    }


def weighted(f: dict[str, float], w: Weights) -> dict[str, int]:
    """Each factor times its weight, as the total counts it."""
    return {name: round(w.weight(name) * f[name]) for name in NAMES}


def total(f: dict[str, float], w: Weights, nice: int) -> int:
    return sum(weighted(f, w).values()) - nice


def assign(jobs, now: float, ctx: Context, only_new: bool = False) -> int:
    """Set each job's `priority` and `factors` (the five, and "pinned" when an
    operator set its priority); `only_new`: only jobs that have none yet. Returns
    how many were set. The same sums as `factors` and `total`, inlined: a pass may
    recompute 10,000 jobs."""
    w = ctx.weights
    wa, wf, wq, wp, ws = w.age, w.fairshare, w.qos, w.partition, w.job_size
    max_age, small = w.max_age, w.favor_small
    fair, qos, part = ctx.fairshare, ctx.qos_scale, ctx.partition_scale
    cpus, gpus = ctx.cpus, ctx.gpus
    done = 0
    for job in jobs:
        if only_new and job.factors is not None:
            continue
        pin = job.pinned
        since = job.submit_time
        if job.begin_time is not None and job.begin_time > since:
            since = job.begin_time
        age = (now - since) / max_age
        age = 1.0 if age > 1.0 else (0.0 if age < 0.0 else age)
        req = job.request
        size = max(req.nodes * req.cpus / cpus if cpus else 0.0,
                   req.nodes * req.gpus / gpus if gpus else 0.0)
        size = 1.0 if size > 1.0 else size
        if small:
            size = 1.0 - size
        fs = fair.get((job.account, job.user), 0.0)
        q, p = qos.get(job.qos, 0.0), part.get(job.partition, 0.0)
        job.factors = {"age": age, "fairshare": fs, "qos": q, "partition": p,
                       "job_size": size, "pinned": pin}
        job.priority = pin if pin is not None else (
            round(wa * age) + round(wf * fs) + round(wq * q) + round(wp * p)
            + round(ws * size) - job.nice)
        done += 1
    return done


def explain(job, now: float, ctx: Context) -> dict:
    """A job's priority as `rq --priority` and `rcontrol show job` show it: the total,
    each factor (0..1) and what it adds, and whether an operator pinned it."""
    f = factors(job, now, ctx)
    pin = job.pinned          # set by an operator; None: it follows the factors
    parts = weighted(f, ctx.weights)
    return {"priority": pin if pin is not None else sum(parts.values()) - job.nice,
            "factors": {k: round(f[k], 6) for k in NAMES}, "weighted": parts,
            "nice": job.nice, "pinned": pin is not None}
