"""Tenant budgets: GPU-hours or billing units per calendar period (tenants.toml).

An account's budget covers its own jobs and its sub-accounts'. What has been used in
the current period is kept current without a query per pass: the runs that ended in
the period are summed from the spool when the controller starts, reloads or a period
turns over (through the end-time index), each run that ends later is added once
(`ended`), and running jobs add the part of their run inside the period when asked.

A spent budget holds the account's pending jobs (and its sub-accounts') with the reason
BudgetExhausted; running jobs finish. From the account's `budget_warn` fraction on, its
users see a warning in rq and in rsacct report.
"""
from __future__ import annotations

import logging
import time

log = logging.getLogger("rmsbatch.budgets")

REFRESH_S = 10.0        # running jobs' use is re-summed at most this often


def period_bounds(period: str, now: float) -> tuple[str, float, float]:
    """The calendar period (local time) holding `now`: its label, start and end."""
    lt = time.localtime(now)
    y, m, d = lt.tm_year, lt.tm_mon, lt.tm_mday

    def at(year, month, day):
        return time.mktime((year, month, day, 0, 0, 0, 0, 0, -1))
    if period == "day":
        return f"{y:04d}-{m:02d}-{d:02d}", at(y, m, d), at(y, m, d + 1)
    if period == "week":        # ISO weeks, from Monday
        start = at(y, m, d - lt.tm_wday)
        iso = time.strftime("%G-W%V", lt)
        return iso, start, at(y, m, d - lt.tm_wday + 7)
    if period == "quarter":
        q0 = (m - 1) // 3 * 3 + 1
        return f"{y:04d}-Q{(m - 1) // 3 + 1}", at(y, q0, 1), at(y, q0 + 3, 1)
    if period == "year":
        return f"{y:04d}", at(y, 1, 1), at(y + 1, 1, 1)
    return f"{y:04d}-{m:02d}", at(y, m, 1), at(y, m + 1, 1)


class Budgets:
    def __init__(self, config, spool, now: float):
        self.spool = spool
        self.config = config
        self.budgeted = {a.name: a for a in config.tenants.accounts
                         if a.budget_gpu_hours is not None or a.budget_billing is not None}
        self.parent = {a.name: a.parent for a in config.tenants.accounts}
        self.periods: dict[str, tuple[str, float, float]] = {}  # period kind -> bounds
        # period kind -> account -> [GPU-seconds, billing-unit-seconds] of ended runs
        self.done: dict[str, dict[str, list[float]]] = {}
        self.running: dict[int, tuple] = {}     # job -> (account, gpus, billing/h, start)
        self.cached: tuple[float, dict] | None = None
        if self.budgeted:
            self._load(now)

    @property
    def active(self) -> bool:
        return bool(self.budgeted)

    def _load(self, now: float) -> None:
        self.periods, self.done = {}, {}
        for kind in {a.budget_period for a in self.budgeted.values()}:
            bounds = period_bounds(kind, now)
            self.periods[kind] = bounds
            self.done[kind] = {acct: [gpu_s, bill_s] for acct, gpu_s, bill_s
                               in self.spool.usage_since(bounds[1])}
        self.cached = None

    def _chain(self, account: str) -> list[str]:
        out, seen = [], set()
        while account is not None and account not in seen:
            seen.add(account)
            out.append(account)
            account = self.parent.get(account)
        return out

    # -- what the controller tells it --------------------------------------------------
    def ended(self, job_id: int, now: float) -> None:
        """A run ended (or was requeued): its use in each period becomes history."""
        if not self.budgeted:
            return
        run = self.running.pop(job_id, None)
        rows = self.spool.budget_rows([job_id])
        if rows and rows[0][4] is not None and rows[0][5] is not None:
            _, account, gpus, billing, start, end = rows[0]
        elif run is not None:       # requeued: the row no longer has the run's times
            account, gpus, billing, start = run
            end = now
        else:
            return
        for kind, (_, p_start, _) in self.periods.items():
            piece = max(0.0, end - max(start, p_start))
            got = self.done[kind].setdefault(account, [0.0, 0.0])
            got[0] += gpus * piece
            got[1] += (billing or 0) * piece / 3600
        self.cached = None

    def _track(self, running_ids) -> None:
        new = [j for j in running_ids if j not in self.running]
        for job_id, account, gpus, billing, start, _ in (self.spool.budget_rows(new)
                                                          if new else ()):
            if start is not None:
                self.running[job_id] = (account, gpus, billing, start)
        for gone in set(self.running) - set(running_ids):
            del self.running[gone]

    # -- what it answers ---------------------------------------------------------------
    def used(self, now: float, running_ids=()) -> dict[str, tuple[float, float]]:
        """Budgeted account -> (GPU-hours, billing units) used in its current period,
        its sub-accounts' and running jobs' included."""
        if not self.budgeted:
            return {}
        if self.cached is not None and now - self.cached[0] < REFRESH_S \
                and now >= self.cached[0]:
            return self.cached[1]
        if any(now >= end for _, _, end in self.periods.values()):
            self._load(now)         # a period turned over: count afresh
        self._track(list(running_ids))
        per_kind: dict[str, dict[str, list[float]]] = {}
        for kind, accounts in self.done.items():
            sums = per_kind[kind] = {}
            for account, (gpu_s, bill_s) in accounts.items():
                for up in self._chain(account):
                    got = sums.setdefault(up, [0.0, 0.0])
                    got[0] += gpu_s
                    got[1] += bill_s
        for account, gpus, billing, start in self.running.values():
            for kind, (_, p_start, _) in self.periods.items():
                piece = max(0.0, now - max(start, p_start))
                for up in self._chain(account):
                    got = per_kind[kind].setdefault(up, [0.0, 0.0])
                    got[0] += gpus * piece
                    got[1] += (billing or 0) * piece / 3600
        out = {}
        for name, acct in self.budgeted.items():
            gpu_s, bill_s = per_kind.get(acct.budget_period, {}).get(name, (0.0, 0.0))
            out[name] = (gpu_s / 3600, bill_s)
        self.cached = (now, out)
        return out

    def status(self, now: float, accounts=None, running_ids=()) -> list[dict]:
        """One row per budgeted account (or those named): limit, used, state."""
        used = self.used(now, running_ids)
        rows = []
        for name, acct in sorted(self.budgeted.items()):
            if accounts is not None and name not in accounts:
                continue
            gpu_h, billing = used[name]
            if acct.budget_gpu_hours is not None:
                unit, limit, spent = "gpu_hours", acct.budget_gpu_hours, gpu_h
            else:
                unit, limit, spent = "billing", acct.budget_billing, billing
            label = self.periods[acct.budget_period][0]
            fraction = spent / limit if limit else (1.0 if spent or not limit else 0.0)
            state = ("exhausted" if spent >= limit else
                     "warning" if fraction >= acct.budget_warn else "ok")
            rows.append({"account": name, "period": label, "unit": unit, "limit": limit,
                         "used": round(spent, 3), "warn": acct.budget_warn, "state": state})
        return rows

    def spent(self, now: float, running_ids=()) -> frozenset[str]:
        """Accounts whose jobs may not start: their budget, or a parent's, is spent."""
        if not self.budgeted:
            return frozenset()
        over = {r["account"] for r in self.status(now, running_ids=running_ids)
                if r["state"] == "exhausted"}
        if not over:
            return frozenset()
        return frozenset(a for a in self.parent if over.intersection(self._chain(a)))

    def accounts_of(self, user: str) -> set[str]:
        """The accounts whose budgets concern `user`: theirs and those above them."""
        mine = {a.name for a in self.config.tenants.accounts
                if user in a.users or "*" in a.users}
        default = self.config.tenants.users.get(user)
        if default is not None:
            mine.add(default.default_account)
        return {up for a in mine for up in self._chain(a)}

    def warnings(self, user: str, now: float, running_ids=()) -> list[str]:
        """Lines for `user` about budgets of their accounts at or past the warning mark."""
        if not self.budgeted:
            return []
        mine = self.accounts_of(user)
        out = []
        for r in self.status(now, mine, running_ids):
            if r["state"] == "ok":
                continue
            unit = "GPU-hour" if r["unit"] == "gpu_hours" else "billing"
            pct = 100 * r["used"] / r["limit"] if r["limit"] else 100
            what = ("is spent: its jobs wait (BudgetExhausted)" if r["state"] == "exhausted"
                    else "is nearly spent")
            out.append(f"account {r['account']}: {pct:.0f}% of its {unit} budget for "
                       f"{r['period']} used ({r['used']:.1f} of {r['limit']:g}); the budget "
                       f"{what}")
        return out
