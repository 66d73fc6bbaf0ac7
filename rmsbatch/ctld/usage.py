"""Fair-share usage in the controller, kept current, and the priorities built on it.

Usage is billed resource-seconds (cluster.toml [priority]: per CPU, per GiB of memory,
per GPU by type) decayed with a half-life: a second of use `age` seconds ago counts
2^(-age / half_life). A run's whole contribution is an exact integral, so nothing
has to tick: finished runs are kept as one number per (account, user) as of a
reference time, scaled down when that time moves on (at most once a minute), and
running jobs add what they have used so far whenever the factors are refreshed.

Built when the controller starts (and on reconfigure) from the spool's runs that ended
within 30 half-lives (older ones weigh less than a billionth), summed by SQLite (see spool.usage_sums), through the end-time
index; after that each run is added once, when it ends (`ended`). A pass's priorities
(`prioritize`) are all recomputed when usage changed or a minute has passed, so age
grows and decay shows; in between only new pending jobs get theirs.
"""
from __future__ import annotations

import json
import logging
import math

from rmsbatch.sched import fairshare, priority

log = logging.getLogger("rmsbatch.usage")

REFRESH_S = 60.0        # priorities and decay recomputed at least this often
HORIZON = 30            # half-lives after which a run is forgotten at start


class Usage:
    def __init__(self, config, spool, now: float):
        self.config = config
        self.spool = spool
        sec = config.cluster.priority
        self.half_life = float(sec.half_life)
        self.weights = priority.Weights.of(sec)
        self.accounts = fairshare.accounts_of(config.tenants)
        self.as_of = now
        self.done: dict[tuple[str, str], float] = {}       # finished runs, as of as_of
        self.running: dict[int, tuple] = {}   # job -> (account, user, rate, start)
        self.ctx: priority.Context | None = None
        self.computed_at = -math.inf
        self.stale = True
        self._gpu_types = {name: {g.index: g.type for g in nd.gpus}
                           for name, nd in config.nodes.items()}
        self._usage_factor = {q.name: q.usage_factor for q in config.qos.qos}
        since = now - HORIZON * self.half_life if self.half_life > 0 else None
        sums, sparse = spool.usage_sums(since, now, self.half_life, self._prices())
        for account, user, used in sums:
            self.done[(account, user)] = self.done.get((account, user), 0.0) + used
        for row in spool.usage_rows(ids=sparse) if sparse else ():
            self._add(row[1], row[2], self.rate(row), row[3], row[4])
        log.info("fair-share usage loaded for %d user(s) of accounts (half-life %.0f s)",
                 len(self.done), self.half_life)

    def _prices(self) -> dict:
        """What `rate` charges, for the spool to sum in SQL."""
        sec = self.config.cluster.priority
        return {"cpu": sec.billing_cpu, "mem_gib": sec.billing_mem_gib,
                "gpu": sec.billing_gpu,
                "gpu_types": {k.lower(): v for k, v in sec.billing_gpu_types.items()},
                "qos_factor": dict(self._usage_factor)}

    # -- billing and decay ---------------------------------------------------------
    def rate(self, row: tuple) -> float:
        """Billing units per second of a run (a spool.USAGE_COLUMNS row): as charged at
        its start where that was recorded, else priced now."""
        _, _, _, _, _, cpus, gpus, mem_mb, nodes, gpu_type, qos, billing, alloc = row
        if billing is not None:
            return billing * self._usage_factor.get(qos, 1.0)
        allocs = json.loads(alloc) if alloc else {}
        mem = mem_mb * nodes if mem_mb else sum(a.get("mem_mb", 0) for a in allocs.values())
        types: list = []
        if gpus:
            if gpu_type:
                types = [gpu_type] * gpus
            else:           # the types it got, where the configuration says them
                types = [t for t in (self._gpu_types.get(n, {}).get(i) for n, a in allocs.items()
                                     for i in a.get("gpus", ())) if t]
                types += [None] * (gpus - len(types))
        return self.billing(cpus, mem, types) * self._usage_factor.get(qos, 1.0)

    def billing(self, cpus: int, mem_mb: int, gpu_types: list) -> float:
        """Billing units per second of these resources (cluster.toml [priority] billing_*):
        `gpu_types` has one entry per GPU, None where its type is unknown. Without the
        QoS usage factor: that weighs fair-share, not the bill (as Slurm's billing TRES)."""
        sec = self.config.cluster.priority
        return (sec.billing_cpu * cpus + sec.billing_mem_gib * mem_mb / 1024
                + sum(self._gpu_weight(t) if t else sec.billing_gpu for t in gpu_types))

    def _gpu_weight(self, gpu_type: str) -> float:
        sec = self.config.cluster.priority
        return sec.billing_gpu_types.get(gpu_type.lower(), sec.billing_gpu)

    def integral(self, rate: float, start: float, end: float, at: float) -> float:
        return fairshare.decayed(rate, start, end, at, self.half_life)

    def _add(self, account: str, user: str, rate: float, start: float, end: float) -> None:
        key = (account, user)
        self.done[key] = self.done.get(key, 0.0) + self.integral(rate, start, end, self.as_of)

    def _advance(self, now: float) -> None:
        if self.half_life > 0 and now > self.as_of:
            scale = 2.0 ** (-(now - self.as_of) / self.half_life)
            self.done = {k: v * scale for k, v in self.done.items()}
        self.as_of = max(self.as_of, now)

    # -- what the controller tells it --------------------------------------------------
    def ended(self, job_id: int, now: float) -> None:
        """A run ended (finished, or requeued): its usage becomes history. A finished
        run counts from the spool's start and end, which its node reported (and which
        a restart reads again); a requeued one, whose row no longer has them, from what
        was tracked until now."""
        run = self.running.pop(job_id, None)
        rows = self.spool.usage_rows(ids=[job_id])
        if rows and rows[0][4] is not None:
            row = rows[0]
            self._add(row[1], row[2], self.rate(row), row[3], row[4])
        elif run is not None:
            account, user, rate, start = run
            self._add(account, user, rate, start, now)
        else:
            return
        self.stale = True

    def track(self, running_ids, now: float) -> None:
        """Learn the runs started since the last look (and forget any gone)."""
        new = [j for j in running_ids if j not in self.running]
        for row in self.spool.usage_rows(ids=new) if new else ():
            self.running[row[0]] = (row[1], row[2], self.rate(row), row[3])
        if len(self.running) != len(running_ids):
            for gone in set(self.running) - set(running_ids):
                del self.running[gone]

    def usage(self, now: float) -> dict[tuple[str, str], float]:
        """(account, user) -> decayed usage at `now`, running jobs' time so far included."""
        self._advance(now)
        out = dict(self.done)
        for account, user, rate, start in self.running.values():
            key = (account, user)
            out[key] = out.get(key, 0.0) + self.integral(rate, start, now, self.as_of)
        return out

    # -- factors and priorities ------------------------------------------------------
    def shares(self, now: float, what_if: dict | None = None, extra=()) -> list:
        return fairshare.compute(self.accounts, self.usage(now), what_if, extra)

    def context(self, now: float, pending=()) -> priority.Context:
        """The priority context at `now` (fair-share from the usage now)."""
        cfg = self.config
        extra = {(j.account, j.user) for j in pending}
        rows = self.shares(now, extra=extra)
        return priority.Context(
            self.weights, {q.name: q.priority for q in cfg.qos.qos},
            {p.name: p.priority for p in cfg.partitions.values()},
            fairshare.factors(rows), sum(n.cpus for n in cfg.nodes.values()),
            sum(len(n.gpus) for n in cfg.nodes.values()))

    def prioritize(self, pending: dict, running: dict, now: float) -> bool:
        """Every pending job's priority for this pass; True when they were all
        recomputed (their order may have changed: a full pass is due)."""
        self.track(running, now)
        if self.stale or now - self.computed_at >= REFRESH_S or self.ctx is None:
            self.ctx = self.context(now, pending.values())
            self.computed_at, self.stale = now, False
            priority.assign(pending.values(), now, self.ctx)
            return True
        missing = [j for j in pending.values() if j.factors is None]
        if missing:
            unseen = {(j.account, j.user) for j in missing} - set(self.ctx.fairshare)
            if unseen:      # a new user of a "*" account: the tree grows
                self.ctx = self.context(now, pending.values())
            priority.assign(missing, now, self.ctx)
        return False
