"""The pure scheduling core and placement: a snapshot in, decisions out."""
from __future__ import annotations

import pytest

from rmsbatch.sched import placement
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.placement import InfeasibleRequest, InsufficientResources, NodeView, Request
from rmsbatch.sched.plan import PartitionView, PendingJob


def gpu_node(name: str, gpus: int = 8, cpus: int = 64, mem: int = 512_000, **kw) -> NodeView:
    return NodeView(name, cpus, mem, {i: "a100" for i in range(gpus)}, **kw)


def job(i, partition="gpu", priority=0, hold=0, **req) -> PendingJob:
    return PendingJob(i, partition, priority, float(i), Request(**req), hold)


def test_first_fit_takes_gpus_cpus_and_memory():
    nodes = {"g1": gpu_node("g1", gpus=4), "g2": gpu_node("g2", gpus=4)}
    alloc = placement.allocate(Request(cpus=8, mem_mb=1000, gpus=3), list(nodes.values()))
    assert list(alloc) == ["g1"] and alloc["g1"].gpus == [0, 1, 2]
    placement.take(nodes, alloc)
    assert nodes["g1"].free_gpus == {3} and nodes["g1"].free_cpus == 56
    alloc2 = placement.allocate(Request(gpus=2), list(nodes.values()))
    assert list(alloc2) == ["g2"]
    placement.take(nodes, alloc, -1)
    assert nodes["g1"].free_gpus == {0, 1, 2, 3} and nodes["g1"].jobs == 0


def test_insufficient_versus_infeasible():
    nodes = [gpu_node("g1", gpus=8)]
    with pytest.raises(InfeasibleRequest, match="requested 9 GPUs per node; node g1 has 8"):
        placement.check_feasible(Request(gpus=9), nodes, "gpu")
    with pytest.raises(InfeasibleRequest, match="requested 2 nodes"):
        placement.check_feasible(Request(nodes=2), nodes, "gpu")
    with pytest.raises(InfeasibleRequest, match="v100 GPUs"):
        placement.check_feasible(Request(gpus=1, gpu_type="v100"), nodes, "gpu")
    placement.check_feasible(Request(gpus=8), nodes, "gpu")
    nodes[0].free_gpus = {0}
    with pytest.raises(InsufficientResources):
        placement.allocate(Request(gpus=2), nodes)


def test_constraints_and_exclusive():
    a = gpu_node("a", features=frozenset({"hbm80g", "nvlink"}))
    b = gpu_node("b", features=frozenset({"hbm40g"}))
    assert list(placement.allocate(Request(constraint="hbm80g&nvlink"), [b, a])) == ["a"]
    assert list(placement.allocate(Request(constraint="hbm40g|x"), [a, b])) == ["b"]
    whole = placement.allocate(Request(exclusive=True), [a])
    assert whole["a"].gpus == list(range(8)) and whole["a"].cpus == 64
    placement.take({"a": a}, whole)
    with pytest.raises(InsufficientResources):
        placement.allocate(Request(cpus=1), [a])


def test_multi_node_is_all_or_nothing():
    nodes = {n: gpu_node(n, gpus=2) for n in ("g1", "g2", "g3")}
    nodes["g2"].usable = False
    alloc = placement.allocate(Request(nodes=2, gpus=2), list(nodes.values()))
    assert sorted(alloc) == ["g1", "g3"]
    with pytest.raises(InsufficientResources):
        placement.allocate(Request(nodes=3, gpus=1), list(nodes.values()))


def test_priority_then_submit_order_and_reasons():
    nodes = {"g1": gpu_node("g1", gpus=4)}
    parts = {"gpu": PartitionView("gpu", True, ["g1"])}
    pending = [job(1, gpus=2), job(2, gpus=4, priority=10), job(3, gpus=1), job(4, hold=1)]
    out = scheduler.schedule([j for j in pending if not j.hold], nodes, parts, now=0)
    # job 2 outranks the others and takes every GPU; the rest wait behind it
    assert [s[0] for s in out.starts] == [2]
    assert out.reasons == {1: "Resources", 3: "Priority"}
    assert out.blocked["gpu"] == scheduler.order_key(pending[0])


def test_blocked_job_is_not_overtaken_without_backfill():
    nodes = {"g1": gpu_node("g1", gpus=4)}
    nodes["g1"].free_gpus = {0, 1}
    parts = {"gpu": PartitionView("gpu", True, ["g1"])}
    out = scheduler.schedule([job(1, gpus=4), job(2, gpus=1)], nodes, parts, now=0,
                             policy=scheduler.Policy(backfill=False))
    assert out.starts == [] and out.reasons == {1: "Resources", 2: "Priority"}


def test_down_partition_and_unavailable_nodes():
    nodes = {"g1": gpu_node("g1", usable=False), "c1": gpu_node("c1", gpus=0)}
    parts = {"gpu": PartitionView("gpu", True, ["g1"]), "off": PartitionView("off", False, ["c1"])}
    out = scheduler.schedule([job(1, gpus=1), job(2, partition="off")], nodes, parts, now=0)
    assert out.reasons == {1: "ReqNodeNotAvail", 2: "PartitionDown"}


def test_pass_over_a_large_snapshot_decides_every_job():
    nodes = {f"g{i:03d}": gpu_node(f"g{i:03d}") for i in range(128)}
    parts = {"gpu": PartitionView("gpu", True, list(nodes))}
    pending = [job(i, gpus=1 + i % 8, cpus=4) for i in range(5000)]
    out = scheduler.schedule(pending, nodes, parts, now=0)
    decided = {s[0] for s in out.starts} | set(out.reasons)
    assert decided == {j.id for j in pending}
    assert sum(len(a.gpus) for _, alloc in out.starts for a in alloc.values()) <= 128 * 8


# -- accelerators: types, MIG, memory, drained devices, topology -----------------------------
from rmsbatch.sched.placement import Gpu  # noqa: E402


def mig_node() -> NodeView:
    """GPU 0 of an A100 80GB split into MIG instances, GPU 1 whole."""
    return NodeView("m", 32, 256_000, {
        0: Gpu("3g.40gb", 40192, "a100", True), 1: Gpu("2g.20gb", 19968, "a100", True),
        2: Gpu("1g.10gb", 9728, "a100", True), 3: Gpu("1g.10gb", 9728, "a100", True),
        4: Gpu("a100", 81920)})


def test_requests_by_type_profile_and_memory():
    node = mig_node()
    assert placement.allocate(Request(gpus=1, gpu_type="1g.10gb"), [node])["m"].gpus == [2]
    assert placement.allocate(Request(gpus=1, gpu_type="a100_3g.40gb"), [node])["m"].gpus == [0]
    # a whole A100 is asked for by its type; MIG instances of one are not whole A100s
    assert placement.allocate(Request(gpus=1, gpu_type="a100"), [node])["m"].gpus == [4]
    with pytest.raises(InfeasibleRequest, match="requested 2 a100 GPUs per node; node m has 1"):
        placement.check_feasible(Request(gpus=2, gpu_type="a100"), [node], "gpu")
    # by memory: a "40G" request is met by the 40,192 MiB slice and the 80 GB GPU
    assert placement.allocate(Request(gpus=2, gpu_mem_mb=40960), [node])["m"].gpus == [0, 4]
    # the smallest that fits: a 1g.10gb slice, not the 3g.40gb one
    assert placement.allocate(Request(gpus=1, gpu_mem_mb=10240), [node])["m"].gpus == [2]
    with pytest.raises(InfeasibleRequest, match="GPUs with 90000 MB per node; node m has 0"):
        placement.check_feasible(Request(gpus=1, gpu_mem_mb=90000), [node], "gpu")


def test_a_request_gets_the_smallest_device_that_fits():
    # an A100 40GB cut into 2g.10gb, 1g.5gb and 3g.20gb instances (slot order), and a whole GPU
    node = NodeView("m", 32, 256_000, {
        0: Gpu("2g.10gb", 9856, "a100", True), 1: Gpu("1g.5gb", 4864, "a100", True),
        2: Gpu("3g.20gb", 19968, "a100", True), 3: Gpu("a100", 40960)})
    assert placement.allocate(Request(gpus=1), [node])["m"].gpus == [1]
    assert placement.allocate(Request(gpus=1, gpu_mem_mb=5120), [node])["m"].gpus == [1]
    assert placement.allocate(Request(gpus=1, gpu_mem_mb=10240), [node])["m"].gpus == [0]
    assert placement.allocate(Request(gpus=2), [node])["m"].gpus == [0, 1]
    placement.take({"m": node}, placement.allocate(Request(gpus=1), [node]))
    assert placement.allocate(Request(gpus=1), [node])["m"].gpus == [0]   # the next smallest
    # whole GPUs of two sizes, NUMA known: a one-GPU job takes the small one
    mixed = NodeView("x", 32, 256_000, {0: Gpu("h100", 81559, numa=0), 1: Gpu("l40s", 46068, numa=0)})
    assert placement.allocate(Request(gpus=1), [mixed])["x"].gpus == [1]
    assert placement.allocate(Request(gpus=1, gpu_mem_mb=60000), [mixed])["x"].gpus == [0]


def test_drained_devices_are_never_allocated():
    node = gpu_node("g", gpus=4)
    node.drain_gpu(1)
    assert placement.allocate(Request(gpus=3), [node])["g"].gpus == [0, 2, 3]
    alloc = placement.allocate(Request(gpus=3), [node])
    placement.take({"g": node}, alloc)
    with pytest.raises(InsufficientResources):
        placement.allocate(Request(gpus=1), [node])
    placement.take({"g": node}, alloc, -1)
    assert node.free_gpus == {0, 2, 3}              # the drained one does not come back
    placement.check_feasible(Request(gpus=4), [node], "gpu")   # it may, after a resume
    node.undrain_gpus(busy=set())
    assert node.free_gpus == {0, 1, 2, 3}
    whole = placement.allocate(Request(exclusive=True), [gpu_node("h", gpus=2, drained={1})])
    assert whole["h"].gpus == [0]


def test_topology_keeps_linked_gpus_together():
    # 2 x A100 joined by NVLink (0-2) and 2 x L40S, NUMA 0 = {0, 1}, NUMA 1 = {2, 3}
    gpus = {0: Gpu("a100", 81920, numa=0, links=((2, 12),)), 1: Gpu("l40s", 46068, numa=0),
            2: Gpu("a100", 81920, numa=1, links=((0, 12),)), 3: Gpu("l40s", 46068, numa=1)}
    node = NodeView("x", 32, 256_000, gpus)
    assert placement.allocate(Request(gpus=2, gpu_type="a100"), [node])["x"].gpus == [0, 2]
    # untyped pairs: the linked pair beats two on one NUMA node
    assert placement.allocate(Request(gpus=2), [node])["x"].gpus == [0, 2]
    # one GPU: one that breaks up no link (an L40S), lowest first
    assert placement.allocate(Request(gpus=1), [node])["x"].gpus == [1]
    nv = NodeView("n", 64, 512_000, {i: Gpu("h100", 81559, numa=i // 4) for i in range(8)})
    nv.free_gpus = {1, 2, 5, 6, 7}
    assert placement.allocate(Request(gpus=3), [nv])["n"].gpus == [5, 6, 7]   # one NUMA node


def test_unregistered_auto_node_accepts_gpu_requests_but_runs_none():
    node = NodeView("a", 64, 512_000, {}, gpus_known=False)
    placement.check_feasible(Request(gpus=8, gpu_type="h100"), [node], "gpu")
    with pytest.raises(InsufficientResources):
        placement.allocate(Request(gpus=1), [node])
