"""rmsctld's multifactor priority in a replay: age, job size and fair-share, with the
fair-share usage the replay itself accrues.

Trace jobs carry a tenant (SWF group, virtual cluster) and a user; each tenant is an
account of the tenant tree -- the configuration's (`rms-sim --config`) when one is
given, else one account per tenant with equal shares. Usage is billed as rmsctld
bills it (CPUs and GPUs held, GPUs weighing most) and decays with the same half-life;
fair-share factors are recomputed every `every` simulated seconds, as rmsctld does
once a minute, and priorities of waiting jobs then, or when they arrive.
"""
from __future__ import annotations

from rmsbatch.sched import fairshare, priority


class ReplayPriority:
    def __init__(self, cpus: int, gpus: int, accounts: list | None = None,
                 weights: priority.Weights | None = None, half_life: float = 7 * 86400.0,
                 billing_cpu: float = 1.0, billing_gpu: float = 32.0, every: float = 60.0):
        self.accounts = accounts            # None: one account per tenant seen, alike
        self.weights = weights or priority.Weights()
        self.half_life = half_life
        self.billing_cpu, self.billing_gpu = billing_cpu, billing_gpu
        self.every = every
        self.cpus, self.gpus = cpus, gpus
        self.usage: dict[tuple[str, str], float] = {}     # decayed to `self.at`
        self.at = 0.0
        self.next_at: float | None = None
        self.ctx = priority.Context(self.weights, cpus=cpus, gpus=gpus)

    def ended(self, tenant: str, user: str, cpus: int, gpus: int, start: float,
              end: float) -> None:
        """A job's run, billed and decayed to the last recompute."""
        rate = cpus * self.billing_cpu + gpus * self.billing_gpu
        key = (tenant, user)
        self.usage[key] = self.usage.get(key, 0.0) + fairshare.decayed(
            rate, start, end, self.at, self.half_life)

    def assign(self, jobs, now: float) -> None:
        """Every waiting job's priority: all of them when the factors are due again,
        else the new ones."""
        if self.next_at is None or now >= self.next_at:
            self._recompute(now, {(j.account, j.user) for j in jobs})
            priority.assign(jobs, now, self.ctx)
        else:
            priority.assign(jobs, now, self.ctx, only_new=True)

    def _recompute(self, now: float, waiting: set) -> None:
        if self.half_life > 0 and now > self.at:
            fade = 2.0 ** (-(now - self.at) / self.half_life)
            self.usage = {k: v * fade for k, v in self.usage.items()}
        self.at = now
        self.next_at = now + self.every
        # tenants the configuration does not name join with one share
        accounts = list(self.accounts or ())
        known = {a.name for a in accounts}
        tenants = {t for t, _ in self.usage} | {t for t, _ in waiting}
        accounts += [fairshare.Account(t) for t in sorted(tenants - known)]
        rows = fairshare.compute(accounts, self.usage, extra=waiting)
        self.ctx = priority.Context(self.weights, fairshare=fairshare.factors(rows),
                                    cpus=self.cpus, gpus=self.gpus)
