"""Fair-share over the tenant tree: shares and decayed usage in, a factor per user.

The tree: top-level accounts, their sub-accounts (tenants.toml `parent`) and the users
of each account. Every node has raw shares; its normalised share S is its fraction of
its siblings' shares times its parent's S, so a sub-account splits its parent's share
with the parent's users and other sub-accounts. Its usage U is its billed usage
(rmsbatch.ctld.usage) over the whole cluster's, an account's being its users' and
sub-accounts' together.

The factor is Slurm's classic F = 2^(-UE/S): 1 with no usage, 0.5 at exactly its
share, toward 0 far above it. UE, the effective usage, is U for a top-level account;
below it, a node takes on part of its parent's effective usage in proportion to its
share among its siblings (UE = U + (UE_parent - U) x shares / siblings' shares), so
the users of an account far over its share rank below those of an account under it,
even when they themselves have used little. Classic rather than Fair Tree because
each factor is a closed formula of numbers `rshare` shows (S, U, UE), which makes
`--what-if` readable and a ranking explainable; Fair Tree's rank-based factor
depends on every other association's place in the tree.

Pure: no clock, no I/O; the same code runs in the controller, in `rshare` answers
and in a trace simulator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

DEFAULT_USER_SHARES = 1


@dataclass
class Account:
    name: str
    shares: int = 1
    parent: str | None = None
    users: dict[str, int] = field(default_factory=dict)   # user -> shares in this account


@dataclass
class Row:
    """One line of `rshare`: an account (user None) or a user within an account."""
    account: str
    user: str | None
    depth: int
    raw_shares: int
    norm_shares: float = 0.0
    raw_usage: float = 0.0
    norm_usage: float = 0.0
    effective_usage: float = 0.0
    factor: float = 0.0

    def as_dict(self) -> dict:
        return {"account": self.account, "user": self.user, "depth": self.depth,
                "raw_shares": self.raw_shares, "norm_shares": self.norm_shares,
                "raw_usage": self.raw_usage, "norm_usage": self.norm_usage,
                "effective_usage": self.effective_usage, "factor": self.factor}


class UnknownAccount(ValueError):
    """A what-if names an account the tree does not have."""


def accounts_of(tenants) -> list[Account]:
    """The tree as tenants.toml describes it (users "*" stand for nobody in
    particular: users of such an account join the tree as their usage or jobs appear)."""
    out = []
    for a in tenants.accounts:
        users = {u: DEFAULT_USER_SHARES for u in a.users if u != "*"}
        users.update(getattr(a, "user_shares", None) or {})
        out.append(Account(a.name, a.shares, getattr(a, "parent", None), users))
    return out


def decayed(rate: float, start: float, end: float, at: float, half_life: float) -> float:
    """Usage of `rate` billing units per second over [start, end], each second weighed
    2^(-age / half_life) for its age at `at` (exact: no tick needed); half_life 0: no
    decay."""
    if end <= start:
        return 0.0
    if half_life <= 0:
        return rate * (end - start)
    return rate * half_life / math.log(2) * (
        2.0 ** ((end - at) / half_life) - 2.0 ** ((start - at) / half_life))


def factor(effective_usage: float, norm_shares: float) -> float:
    if norm_shares <= 0:
        return 0.0          # no shares: no claim on the cluster at all
    return 2.0 ** (-effective_usage / norm_shares)


def compute(accounts: list[Account], usage: dict[tuple[str, str], float],
            what_if: dict[str, int] | None = None,
            extra: tuple | list | set = ()) -> list[Row]:
    """Every account and user of the tree with its shares, usage and factor, depth
    first (an account, its users, then its sub-accounts). `usage` maps (account, user)
    to billed usage; `what_if` replaces accounts' raw shares; `extra` (account, user)
    pairs join the tree with the default share (users of a "*" account with jobs)."""
    what_if = what_if or {}
    by_name = {a.name: a for a in accounts}
    for name in what_if:
        if name not in by_name:
            raise UnknownAccount(name)
    users: dict[str, dict[str, int]] = {a.name: dict(a.users) for a in accounts}
    for account, user in list(usage) + list(extra):
        if account in users:
            users[account].setdefault(user, DEFAULT_USER_SHARES)
    children: dict[str | None, list[str]] = {}
    for a in accounts:
        parent = a.parent if a.parent in by_name else None
        children.setdefault(parent, []).append(a.name)

    def shares_of(name: str) -> int:
        return what_if.get(name, by_name[name].shares)

    # Usage bottom-up: an account's is its users' and its sub-accounts' together.
    account_usage: dict[str, float] = {}

    def total(name: str) -> float:
        if name not in account_usage:
            own = sum(usage.get((name, u), 0.0) for u in users[name])
            account_usage[name] = own + sum(total(c) for c in children.get(name, ()))
        return account_usage[name]

    cluster = sum(total(name) for name in children.get(None, ()))
    rows: list[Row] = []

    def norm(value: float) -> float:
        return value / cluster if cluster > 0 else 0.0

    def visit(name: str, level: int, parent_s: float, parent_ue: float | None,
              depth: int) -> None:
        row = _node(name, None, depth, shares_of(name), level, parent_s, parent_ue,
                    norm(total(name)), total(name))
        rows.append(row)
        kids = sorted(children.get(name, ()))
        # The account's users and sub-accounts are siblings of one another.
        inner = sum(users[name].values()) + sum(shares_of(k) for k in kids)
        for user in sorted(users[name]):
            raw = usage.get((name, user), 0.0)
            rows.append(_node(name, user, depth + 1, users[name][user], inner,
                              row.norm_shares, row.effective_usage, norm(raw), raw))
        for kid in kids:
            visit(kid, inner, row.norm_shares, row.effective_usage, depth + 1)

    top = sorted(children.get(None, ()))
    level = sum(shares_of(name) for name in top)
    for name in top:
        visit(name, level, 1.0, None, 0)
    return rows


def _node(account: str, user: str | None, depth: int, raw_shares: int, level: int,
          parent_s: float, parent_ue: float | None, u: float, raw: float) -> Row:
    s = parent_s * raw_shares / level if level > 0 else 0.0
    ue = u if parent_ue is None else u + (parent_ue - u) * (raw_shares / level if level else 0)
    return Row(account, user, depth, raw_shares, s, raw, u, ue, factor(ue, s))


def factors(rows: list[Row]) -> dict[tuple[str, str], float]:
    """(account, user) -> fair-share factor, for the priority of their jobs."""
    return {(r.account, r.user): r.factor for r in rows if r.user is not None}
