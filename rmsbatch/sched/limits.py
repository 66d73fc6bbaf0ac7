"""QoS and account limits: what running jobs hold against them, and which pending
jobs would pass one by starting now.

Enforced as soon as a limit is set in qos.toml or tenants.toml: there is no switch to
turn enforcement on (Slurm needs AccountingStorageEnforce). A job over a limit waits
with that limit's reason, under Slurm's names, and does not hold up the jobs behind it
in its partition (they may belong to someone under no limit). A job that could never
pass one, alone on an empty cluster, is refused at submit (rmsbatch.sched.admission).

Per QoS, per user (the user's running jobs of that QoS): GPUs, CPUs, jobs; per QoS
over all users (Slurm's Grp limits): GPUs, CPUs; per account over all its jobs: GPUs,
CPUs, memory, jobs. Submitted-job counts (max_submit_per_user, an account's
max_submit) are checked at submit time only: pending jobs never pass them later.

A pending job is measured by what it asked for (per-node request times its node
count); a started job is charged what it got (an exclusive job holds whole nodes).
Pure: the policy and the running jobs in, reasons out; `LimitTally` is the object
`rmsbatch.sched.plan.schedule(limits=...)` asks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Slurm's pending reasons for these limits (QOSMaxGRESPerUser is named for GPUs here).
QOS_MAX_GPU_PER_USER = "QOSMaxGPUPerUser"
QOS_MAX_CPU_PER_USER = "QOSMaxCpuPerUserLimit"
QOS_MAX_JOBS_PER_USER = "QOSMaxJobsPerUserLimit"
QOS_GRP_GPU = "QOSGrpGPULimit"
QOS_GRP_CPU = "QOSGrpCpuLimit"
ASSOC_GRP_GPU = "AssocGrpGPULimit"
ASSOC_GRP_CPU = "AssocGrpCpuLimit"
ASSOC_GRP_MEM = "AssocGrpMemLimit"
ASSOC_GRP_JOBS = "AssocGrpJobsLimit"
# The account's budget for the period (tenants.toml budget_*), or a parent's, is spent
# (Slurm would say AssocGrpBillingMinutes).
BUDGET_EXHAUSTED = "BudgetExhausted"

REASONS = (QOS_MAX_GPU_PER_USER, QOS_MAX_CPU_PER_USER, QOS_MAX_JOBS_PER_USER, QOS_GRP_GPU,
           QOS_GRP_CPU, ASSOC_GRP_GPU, ASSOC_GRP_CPU, ASSOC_GRP_MEM, ASSOC_GRP_JOBS,
           BUDGET_EXHAUSTED)


@dataclass(frozen=True)
class QosLimits:
    """One QoS level's limits; None: no limit."""
    gpus_per_user: int | None = None
    cpus_per_user: int | None = None
    jobs_per_user: int | None = None
    submit_per_user: int | None = None
    gpus: int | None = None
    cpus: int | None = None

    @property
    def running(self) -> bool:
        """Does any limit on running jobs apply?"""
        return any(v is not None for v in (self.gpus_per_user, self.cpus_per_user,
                                           self.jobs_per_user, self.gpus, self.cpus))


@dataclass(frozen=True)
class AccountLimits:
    """One account's limits over all its jobs; None: no limit."""
    gpus: int | None = None
    cpus: int | None = None
    mem_mb: int | None = None
    jobs: int | None = None
    submit: int | None = None

    @property
    def running(self) -> bool:
        return any(v is not None for v in (self.gpus, self.cpus, self.mem_mb, self.jobs))


@dataclass(frozen=True)
class Policy:
    """The limits of a configuration: only the QoS levels and accounts that set some.
    `chain`: account -> the accounts whose limits its jobs count against, itself and
    its parents (tenants.toml `parent`), those with limits only; an account missing
    there counts against its own limits alone."""
    qos: dict
    accounts: dict
    chain: dict = field(default_factory=dict)

    def limited(self, account: str):
        return self.chain.get(account) or ((account,) if account in self.accounts else ())

    @property
    def running(self) -> bool:
        """Is any limit on running jobs set (else the scheduler need not ask)?"""
        return any(q.running for q in self.qos.values()) or \
            any(a.running for a in self.accounts.values())


_cached: tuple = (None, None)


def policy_of(cfg) -> Policy:
    """The limits of a loaded configuration (computed once per configuration)."""
    global _cached
    if _cached[0] is not cfg:
        qos = {}
        for q in cfg.qos.qos:
            lim = QosLimits(q.max_gpus_per_user, q.max_cpus_per_user, q.max_jobs_per_user,
                            q.max_submit_per_user, q.max_gpus, q.max_cpus)
            if lim != QosLimits():
                qos[q.name] = lim
        accounts = {}
        parents = {}
        for a in cfg.tenants.accounts:
            lim = AccountLimits(a.max_gpus, a.max_cpus, a.max_mem, a.max_jobs, a.max_submit)
            if lim != AccountLimits():
                accounts[a.name] = lim
            parents[a.name] = getattr(a, "parent", None)
        chain = {}
        for name in parents:
            # a sub-account's jobs count against its parents' group limits too, as a
            # Slurm association's Grp limits cover its children (loops are refused
            # when tenants.toml is read)
            line, at = [], name
            while at is not None and at not in line:
                if at in accounts:
                    line.append(at)
                at = parents.get(at)
            if line:
                chain[name] = tuple(line)
        _cached = (cfg, Policy(qos, accounts, chain))
    return _cached[1]


@dataclass(frozen=True)
class Charge:
    """What one running job holds against the limits."""
    user: str
    account: str
    qos: str
    gpus: int = 0
    cpus: int = 0
    mem_mb: int = 0


def charge_of(job, alloc) -> Charge:
    """The charge of a job (anything with user, account and qos) started on `alloc`."""
    gpus = cpus = mem = 0
    for part in alloc.values():
        gpus += len(part.gpus)
        cpus += part.cpus
        mem += part.mem_mb
    return Charge(job.user, job.account, job.qos, gpus, cpus, mem)


def demand_of(job) -> tuple[int, int, int]:
    """GPUs, CPUs and memory (MB) a pending job asks for over all its nodes; memory 0
    when it asks for whole nodes' memory (known once placed)."""
    r = job.request
    mem = 0 if r.mem_whole_node else r.mem_mb * r.nodes
    return r.gpus * r.nodes, r.cpus * r.nodes, mem


class LimitTally:
    """What running jobs hold per (QoS, user), per QoS and per account; answers which
    limits a pending job would pass by starting now, and counts the starts of a pass."""

    def __init__(self, policy: Policy, running=(), spent: frozenset = frozenset()):
        self.policy = policy
        self.spent = spent          # accounts whose budget is spent
        self.user: dict[tuple[str, str], list[int]] = {}   # (qos, user) -> gpus, cpus, jobs
        self.qos: dict[str, list[int]] = {}                # qos -> gpus, cpus
        self.account: dict[str, list[int]] = {}            # account -> gpus, cpus, mem, jobs
        # verdicts by who and how much, until the next charge: 10,000 pending jobs are
        # mostly a few users' copies of a few shapes
        self.verdicts: dict[tuple, list[str]] = {}
        for charge in running:
            self.add(charge)

    def add(self, c: Charge, sign: int = 1) -> None:
        """Count a running job (sign -1: one that ended). Only what some limit watches
        is kept, so a big cluster with few limits pays little."""
        self.verdicts.clear()
        if c.qos in self.policy.qos:
            u = self.user.setdefault((c.qos, c.user), [0, 0, 0])
            u[0] += sign * c.gpus
            u[1] += sign * c.cpus
            u[2] += sign
            q = self.qos.setdefault(c.qos, [0, 0])
            q[0] += sign * c.gpus
            q[1] += sign * c.cpus
        for name in self.policy.limited(c.account):
            a = self.account.setdefault(name, [0, 0, 0, 0])
            a[0] += sign * c.gpus
            a[1] += sign * c.cpus
            a[2] += sign * c.mem_mb
            a[3] += sign

    def why_not(self, job) -> list[str]:
        """The reasons of every limit the job would pass by starting now; [] if none."""
        qlim = self.policy.qos.get(job.qos)
        accounts = self.policy.limited(job.account)
        spent = job.account in self.spent
        if qlim is None and not accounts:
            return [BUDGET_EXHAUSTED] if spent else []
        r = job.request
        gpus, cpus = r.gpus * r.nodes, r.cpus * r.nodes     # as demand_of, inlined: hot
        mem = 0 if r.mem_whole_node else r.mem_mb * r.nodes
        key = (job.qos, job.user, job.account, gpus, cpus, mem)
        out = self.verdicts.get(key)
        if out is not None:
            return list(out)
        out = self.verdicts[key] = [BUDGET_EXHAUSTED] if spent else []
        if qlim is not None:
            u = self.user.get((job.qos, job.user), (0, 0, 0))
            q = self.qos.get(job.qos, (0, 0))
            _over(out, qlim.gpus_per_user, u[0], gpus, QOS_MAX_GPU_PER_USER)
            _over(out, qlim.cpus_per_user, u[1], cpus, QOS_MAX_CPU_PER_USER)
            _over(out, qlim.jobs_per_user, u[2], 1, QOS_MAX_JOBS_PER_USER)
            _over(out, qlim.gpus, q[0], gpus, QOS_GRP_GPU)
            _over(out, qlim.cpus, q[1], cpus, QOS_GRP_CPU)
        for name in accounts:
            alim = self.policy.accounts[name]
            a = self.account.get(name, (0, 0, 0, 0))
            _over(out, alim.gpus, a[0], gpus, ASSOC_GRP_GPU)
            _over(out, alim.cpus, a[1], cpus, ASSOC_GRP_CPU)
            _over(out, alim.mem_mb, a[2], mem, ASSOC_GRP_MEM)
            _over(out, alim.jobs, a[3], 1, ASSOC_GRP_JOBS)
        return list(dict.fromkeys(out))     # a reason once, whichever level it is

    def charge(self, job, alloc) -> None:
        """A start made in this pass: the jobs after it see what it holds."""
        self.add(charge_of(job, alloc))


def _over(out: list, limit: int | None, used: int, wanted: int, reason: str) -> None:
    # a job that asks for none of a resource never waits on that resource's limit
    if limit is not None and wanted and used + wanted > limit:
        out.append(reason)
