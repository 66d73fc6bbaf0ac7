"""Fair-share on hand-built tenant trees: decay, shares, usage and the factor
(rmsbatch.sched.fairshare; pure)."""
from __future__ import annotations

import pytest

from rmsbatch.sched.fairshare import Account, UnknownAccount, compute, decayed, factors

DAY = 86400.0


def test_usage_halves_after_one_half_life():
    fresh = decayed(64.0, 0.0, 3600.0, at=3600.0, half_life=7 * DAY)
    later = decayed(64.0, 0.0, 3600.0, at=3600.0 + 7 * DAY, half_life=7 * DAY)
    assert later == pytest.approx(fresh / 2)
    # a short run just ended counts about its billed seconds
    assert fresh == pytest.approx(64 * 3600, rel=0.01)
    assert decayed(64.0, 0.0, 3600.0, at=10 * DAY, half_life=0) == 64 * 3600   # no decay


def test_no_usage_factor_is_one_and_at_share_one_half():
    tree = [Account("a", 1, users={"u": 1}), Account("b", 1, users={"v": 1})]
    assert factors(compute(tree, {})) == {("a", "u"): 1.0, ("b", "v"): 1.0}
    # equal use of equal shares: each exactly at its share
    f = factors(compute(tree, {("a", "u"): 50.0, ("b", "v"): 50.0}))
    assert f[("a", "u")] == pytest.approx(0.5) and f[("b", "v")] == pytest.approx(0.5)


def test_heavier_user_ranks_below_lighter_one():
    tree = [Account("lab", 1, users={"heavy": 1, "light": 1})]
    f = factors(compute(tree, {("lab", "heavy"): 900.0, ("lab", "light"): 100.0}))
    assert f[("lab", "heavy")] < f[("lab", "light")]


def test_idle_user_of_an_account_over_its_share_ranks_below_one_under_it():
    tree = [Account("busy", 1, users={"a": 1, "idle": 1}), Account("quiet", 1, users={"b": 1})]
    f = factors(compute(tree, {("busy", "a"): 900.0, ("quiet", "b"): 100.0}))
    assert f[("busy", "idle")] < f[("quiet", "b")]


def test_sub_accounts_split_their_parents_share():
    tree = [Account("lab", 1), Account("other", 1, users={"o": 1}),
            Account("vision", 3, parent="lab", users={"v": 1}),
            Account("nlp", 1, parent="lab", users={"n": 1})]
    rows = {(r.account, r.user): r for r in compute(tree, {("lab", "x"): 0.0})}
    assert rows[("lab", None)].norm_shares == pytest.approx(0.5)
    assert rows[("vision", None)].norm_shares == pytest.approx(0.5 * 3 / 5)   # x is a sibling
    assert rows[("nlp", None)].norm_shares == pytest.approx(0.5 * 1 / 5)
    # usage rolls up: a sub-account's usage is its parent's too
    used = {(r.account, r.user): r for r in compute(tree, {("vision", "v"): 30.0,
                                                           ("other", "o"): 10.0})}
    assert used[("lab", None)].raw_usage == 30.0
    assert used[("lab", None)].norm_usage == pytest.approx(0.75)
    assert used[("vision", "v")].factor < used[("nlp", "n")].factor


def test_rows_are_depth_first_accounts_then_their_users():
    tree = [Account("lab", 1, users={"u": 1}), Account("sub", 1, parent="lab")]
    assert [(r.account, r.user, r.depth) for r in compute(tree, {})] == [
        ("lab", None, 0), ("lab", "u", 1), ("sub", None, 1)]


def test_what_if_changes_shares_not_usage():
    tree = [Account("a", 1, users={"u": 1}), Account("b", 1, users={"v": 1})]
    usage = {("a", "u"): 50.0, ("b", "v"): 50.0}
    now = factors(compute(tree, usage))
    more = factors(compute(tree, usage, what_if={"a": 3}))
    assert more[("a", "u")] > now[("a", "u")] and more[("b", "v")] < now[("b", "v")]
    with pytest.raises(UnknownAccount):
        compute(tree, usage, what_if={"nosuch": 2})


def test_zero_shares_means_no_claim():
    tree = [Account("a", 0, users={"u": 1}), Account("b", 1, users={"v": 1})]
    assert factors(compute(tree, {}))[("a", "u")] == 0.0


def test_users_with_jobs_join_a_star_account():
    tree = [Account("general", 1)]
    f = factors(compute(tree, {}, extra={("general", "newcomer")}))
    assert f == {("general", "newcomer"): 1.0}
