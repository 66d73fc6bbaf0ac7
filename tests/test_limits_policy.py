"""QoS and account limits in the pure scheduler: each blocks with its reason, frees
when a running job ends, counts the starts of the same pass, touches nobody else,
and never holds up the jobs behind a blocked one."""
from __future__ import annotations

import pytest

from rmsbatch.sched import limits
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.limits import AccountLimits, Charge, LimitTally, Policy, QosLimits
from rmsbatch.sched import placement
from rmsbatch.sched.placement import NodeAlloc, NodeView, Request
from rmsbatch.sched.plan import PartitionView, PendingJob


def nodes(n=2, gpus=8, cpus=64, mem=512_000) -> dict[str, NodeView]:
    return {f"g{i}": NodeView(f"g{i}", cpus, mem, {g: "a100" for g in range(gpus)})
            for i in range(1, n + 1)}


def parts(ns) -> dict[str, PartitionView]:
    return {"gpu": PartitionView("gpu", True, list(ns))}


def job(i, user="alice", account="vision", qos="normal", **req) -> PendingJob:
    j = PendingJob(i, "gpu", 0, float(i), Request(**req))
    j.user, j.account, j.qos = user, account, qos
    return j


def run(pending, policy, running=(), ns=None):
    ns = ns or nodes()
    tally = LimitTally(policy, running)
    out = scheduler.schedule(pending, ns, parts(ns), 0.0, limits=tally)
    return [i for i, _ in out.starts], out.reasons


# each limit: (policy, the running job that fills it, a job over it, its reason)
CASES = {
    "qos GPUs per user": (Policy({"normal": QosLimits(gpus_per_user=4)}, {}),
                          Charge("alice", "vision", "normal", gpus=4, cpus=1),
                          dict(gpus=1), limits.QOS_MAX_GPU_PER_USER),
    "qos CPUs per user": (Policy({"normal": QosLimits(cpus_per_user=16)}, {}),
                          Charge("alice", "vision", "normal", cpus=10),
                          dict(cpus=8), limits.QOS_MAX_CPU_PER_USER),
    "qos jobs per user": (Policy({"normal": QosLimits(jobs_per_user=1)}, {}),
                          Charge("alice", "vision", "normal", cpus=1),
                          dict(cpus=1), limits.QOS_MAX_JOBS_PER_USER),
    "qos GPUs, all users": (Policy({"normal": QosLimits(gpus=6)}, {}),
                            Charge("bob", "nlp", "normal", gpus=4, cpus=1),
                            dict(gpus=4), limits.QOS_GRP_GPU),
    "qos CPUs, all users": (Policy({"normal": QosLimits(cpus=32)}, {}),
                            Charge("bob", "nlp", "normal", cpus=30),
                            dict(cpus=4), limits.QOS_GRP_CPU),
    "account GPUs": (Policy({}, {"vision": AccountLimits(gpus=8)}),
                     Charge("bob", "vision", "high", gpus=8, cpus=1),
                     dict(gpus=1), limits.ASSOC_GRP_GPU),
    "account CPUs": (Policy({}, {"vision": AccountLimits(cpus=8)}),
                     Charge("bob", "vision", "high", cpus=8),
                     dict(cpus=1), limits.ASSOC_GRP_CPU),
    "account memory": (Policy({}, {"vision": AccountLimits(mem_mb=100_000)}),
                       Charge("bob", "vision", "high", cpus=1, mem_mb=90_000),
                       dict(mem_mb=20_000), limits.ASSOC_GRP_MEM),
    "account jobs": (Policy({}, {"vision": AccountLimits(jobs=1)}),
                     Charge("bob", "vision", "high", cpus=1),
                     dict(cpus=1), limits.ASSOC_GRP_JOBS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_limit_blocks_with_its_reason_and_frees_when_the_job_ends(case):
    policy, holder, req, reason = CASES[case]
    started, reasons = run([job(1, **req)], policy, running=[holder])
    assert started == [] and reasons[1] == reason
    # the holder ended: the same job starts
    started, reasons = run([job(1, **req)], policy, running=[])
    assert started == [1] and 1 not in reasons
    # ... also when the tally is kept incrementally
    tally = LimitTally(policy, [holder])
    assert tally.why_not(job(1, **req)) == [reason]
    tally.add(holder, -1)
    assert tally.why_not(job(1, **req)) == []


def test_starts_within_one_pass_are_charged():
    policy = Policy({"normal": QosLimits(gpus_per_user=4)}, {})
    started, reasons = run([job(1, gpus=4), job(2, gpus=4)], policy)
    assert started == [1] and reasons[2] == limits.QOS_MAX_GPU_PER_USER
    account = Policy({}, {"vision": AccountLimits(jobs=2)})
    started, reasons = run([job(i, user=f"u{i}", cpus=1) for i in (1, 2, 3)], account)
    assert started == [1, 2] and reasons[3] == limits.ASSOC_GRP_JOBS


def test_charged_what_it_got_not_what_it_asked():
    """An exclusive job holds the whole node's GPUs against the limit."""
    policy = Policy({}, {"vision": AccountLimits(gpus=8)})
    started, reasons = run([job(1, cpus=1, exclusive=True), job(2, gpus=1)], policy)
    assert started == [1] and reasons[2] == limits.ASSOC_GRP_GPU


def test_other_users_and_accounts_are_not_touched():
    policy = Policy({"normal": QosLimits(gpus_per_user=4)},
                    {"vision": AccountLimits(gpus=4)})
    full = [Charge("alice", "vision", "normal", gpus=4, cpus=1)]
    pending = [job(1, gpus=2),                                   # alice: both limits
               job(2, user="bob", account="nlp", gpus=2),        # other user and account
               job(3, user="carol", account="vision", qos="high", gpus=2),  # account only
               job(4, qos="high", account="nlp", gpus=2)]        # alice, another QoS/account
    started, reasons = run(pending, policy, running=full)
    assert started == [2, 4]
    assert reasons == {1: limits.QOS_MAX_GPU_PER_USER, 3: limits.ASSOC_GRP_GPU}


def test_every_limit_passed_is_named():
    policy = Policy({"normal": QosLimits(gpus_per_user=4, jobs_per_user=1)},
                    {"vision": AccountLimits(gpus=4)})
    tally = LimitTally(policy, [Charge("alice", "vision", "normal", gpus=4, cpus=1)])
    assert tally.why_not(job(1, gpus=1)) == [
        limits.QOS_MAX_GPU_PER_USER, limits.QOS_MAX_JOBS_PER_USER, limits.ASSOC_GRP_GPU]


def test_a_limit_blocked_job_does_not_block_its_partition():
    """A job over its limit waits with the limit's reason and a later, lower job of the
    same partition on the GPUs the first would have taken."""
    policy = Policy({}, {"vision": AccountLimits(gpus=4)})
    running = [Charge("alice", "vision", "normal", gpus=4, cpus=1)]
    pending = [job(1, gpus=4), job(2, user="bob", account="nlp", gpus=4)]
    started, reasons = run(pending, policy, running=running, ns=half_busy())
    assert started == [2] and reasons[1] == limits.ASSOC_GRP_GPU


def half_busy() -> dict[str, NodeView]:
    """One 8-GPU node, 4 of its GPUs held by a job the limits do not see."""
    ns = nodes(n=1)
    placement.take(ns, {"g1": NodeAlloc(cpus=1, mem_mb=0, gpus=[0, 1, 2, 3])})
    return ns


def test_a_job_asking_for_none_of_a_resource_ignores_its_limit():
    policy = Policy({"normal": QosLimits(gpus_per_user=0)}, {})
    started, reasons = run([job(1, cpus=4), job(2, gpus=1)], policy)
    assert started == [1] and reasons[2] == limits.QOS_MAX_GPU_PER_USER


def test_policy_from_configuration_keeps_only_what_sets_limits(tmp_path):
    from rmsbatch.config.models import AccountSection, QosFile, QosSection, TenantsFile

    class Cfg:
        qos = QosFile(qos=[QosSection(name="normal", max_gpus_per_user=4),
                           QosSection(name="low")])
        tenants = TenantsFile(accounts=[AccountSection(name="a", max_mem="1G"),
                                        AccountSection(name="b", max_submit=5)])
    policy = limits.policy_of(Cfg())
    assert policy.qos == {"normal": QosLimits(gpus_per_user=4)}
    assert policy.accounts == {"a": AccountLimits(mem_mb=1024), "b": AccountLimits(submit=5)}
    assert policy.running
    assert not Policy({}, {"b": AccountLimits(submit=5)}).running


def test_rq_man_page_lists_every_limit_reason():
    import os
    import re
    page = os.path.join(os.path.dirname(__file__), "..", "man", "man1", "rq.1")
    with open(page, encoding="utf-8") as fh:
        text = fh.read()
    assert [r for r in limits.REASONS if not re.search(rf"^\.B {r}$", text, re.M)] == []


@pytest.mark.parametrize("file, old, new, message", [
    ("cluster.toml", 'allow_accounts = ["vision", "nlp"]', 'allow_accounts = ["vison"]',
     "partitions.1.allow_accounts: no account named 'vison' in tenants.toml"),
    ("qos.toml", 'preempt = ["low"]', 'preempt = ["lo"]', "qos.1.preempt: no QoS named 'lo'"),
    ("qos.toml", "max_gpus_per_user = 8", "max_gpus_per_user = -1",
     "qos.1.max_gpus_per_user: Value error, must not be negative"),
    ("tenants.toml", "max_gpus = 8", 'max_gpus = "eight"', "accounts.3.max_gpus"),
])
def test_a_wrong_limit_is_refused_naming_file_and_key(tmp_path, file, old, new, message):
    import os
    import shutil
    from rmsbatch import config
    etc = os.path.join(os.path.dirname(__file__), "..", "etc")
    for name in ("cluster.toml", "tenants.toml", "qos.toml"):
        shutil.copy(os.path.join(etc, name), tmp_path / name)
    text = (tmp_path / file).read_text()
    assert old in text
    (tmp_path / file).write_text(text.replace(old, new, 1))
    with pytest.raises(config.ConfigError) as err:
        config.load(str(tmp_path))
    assert f"{tmp_path / file}: {message}" in str(err.value)


def test_a_parent_accounts_limit_covers_its_sub_accounts():
    from rmsbatch.config.models import AccountSection, QosFile, QosSection, TenantsFile

    class Cfg:
        qos = QosFile(qos=[QosSection(name="normal")])
        tenants = TenantsFile(accounts=[
            AccountSection(name="nlp", max_gpus=8),
            AccountSection(name="nlp-mt", parent="nlp"),
            AccountSection(name="nlp-mt-big", parent="nlp-mt", max_gpus=6),
            AccountSection(name="vision")])
    policy = limits.policy_of(Cfg())
    assert policy.limited("nlp-mt-big") == ("nlp-mt-big", "nlp")
    # the parent's 8 GPUs are held by a job of a sub-account: another sub-account waits
    held = Charge("erin", "nlp-mt", "normal", gpus=8, cpus=1)
    started, reasons = run([job(1, account="nlp-mt-big", gpus=1),
                            job(2, account="nlp", gpus=1),
                            job(3, account="vision", gpus=1)], policy, [held])
    assert started == [3]
    assert reasons[1] == reasons[2] == limits.ASSOC_GRP_GPU
    # and the sub-account's own, lower limit holds by itself
    started, reasons = run([job(4, account="nlp-mt-big", gpus=4),
                            job(5, account="nlp-mt-big", gpus=4)], policy)
    assert started == [4] and reasons[5] == limits.ASSOC_GRP_GPU
