"""The task model, resolved as Slurm's sbatch does: options as a user writes them (rsub's
parser), admitted against a real configuration (no daemons), and the job row read back."""
import json

import pytest

from rmsbatch import config
from rmsbatch.cli.jobscript import OptionError, parse_rsub
from rmsbatch.sched import plan
from rmsbatch.sched.admission import AdmissionError, admit
from rmsbatch.sched.jobrequest import pending_from_row
from rmsbatch.sched.placement import Gpu, NodeView, allocate, take

CLUSTER = """
name = "aurora"
[[nodes]]
names = "gpu[01-08]"
cpus = 96
memory = "1000G"
threads_per_core = 2
tmp_disk = "800G"
gres = { nvme = 1, gpumem = "80G" }
features = ["a100", "ib"]
[[nodes.gpus]]
type = "a100"
count = 8
memory = "80G"
[[nodes]]
names = "cpu[01-04]"
cpus = 64
memory = "500G"
[[partitions]]
name = "gpu"
nodes = "gpu[01-08]"
default = true
[[partitions]]
name = "cpu"
nodes = "cpu[01-04]"
[licenses]
matlab = 10
ansys = 2
[[reservations]]
name = "maint"
nodes = "gpu[07-08]"
users = ["ada"]
[submit]
site_options = ["image", "module"]
"""
TENANTS = '[[accounts]]\nname = "lab"\nusers = ["*"]\n'
QOS = 'default = "normal"\n[[qos]]\nname = "normal"\n'
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    d = tmp_path_factory.mktemp("conf")
    (d / "cluster.toml").write_text(CLUSTER)
    (d / "tenants.toml").write_text(TENANTS)
    (d / "qos.toml").write_text(QOS)
    return config.load(str(d))


def views(cfg) -> dict[str, NodeView]:
    return {name: NodeView(name, nd.cpus, nd.mem_mb,
                           {g.index: Gpu(g.type, g.mem_mb) for g in nd.gpus},
                           frozenset(nd.features), tmp_mb=nd.tmp_mb, gres=dict(nd.gres))
            for name, nd in cfg.nodes.items()}


@pytest.fixture
def submit(cfg, tmp_path):
    """submit("-n", "4", ...) -> the job row admission builds, as rsub's options say."""
    def run(*argv, user="ada"):
        (tmp_path / "job.sh").write_text("#!/bin/bash\nsrun python train.py\n")
        spec = parse_rsub([*argv, "job.sh"], stdin_text=None, environ={}, cwd=str(tmp_path),
                          hostname="login1").spec
        return admit(spec, user, 1000, 1000, cfg, views(cfg), NOW)
    return run


def refusal(submit, *argv, user="ada") -> str:
    with pytest.raises((AdmissionError, OptionError)) as info:
        submit(*argv, user=user)
    return str(info.value)


def shape(row) -> tuple:
    return (row["nodes"], row["ntasks"], row["req_cpus"] // row["nodes"],
            row["gpus_per_node"], row["req_gpus"])


# -- tasks and nodes ----------------------------------------------------------------
def test_tasks_beyond_one_node_take_as_many_nodes_as_they_need(submit):
    # 384 one-CPU tasks on 96-CPU nodes: 4 whole nodes with their 8 GPUs each
    row = submit("-n", "384", "--gpus-per-node=8", "--exclusive")
    assert shape(row) == (4, 384, 96, 8, 32)
    assert row["exclusive"] == 1


def test_ntasks_per_node_times_nodes(submit):
    row = submit("-N", "2", "--ntasks-per-node=8", "-c", "4")
    assert shape(row) == (2, 16, 32, 0, 0)
    assert row["ntasks_per_node"] == 8


def test_ntasks_with_ntasks_per_node_sets_the_node_count(submit):
    assert shape(submit("-n", "32", "--tasks-per-node=8")) == (4, 32, 8, 0, 0)


def test_node_range_keeps_least_and_most(submit):
    row = submit("--nodes=2-4", "--ntasks-per-node=4")
    assert (row["nodes"], row["nodes_max"], row["ntasks"]) == (2, 4, 8)


def test_explicit_node_count_is_not_second_guessed(submit):
    message = refusal(submit, "-N", "1", "-n", "200")
    assert "requested 200 CPUs per node" in message and "has 96" in message


# -- GPUs -----------------------------------------------------------------------------
def test_gpus_per_task_times_tasks_per_node(submit):
    row = submit("-N", "2", "--ntasks-per-node=8", "--gpus-per-task=1")
    assert shape(row) == (2, 16, 8, 8, 16)
    assert row["gpus_per_task"] == 1


def test_gpus_per_task_spreads_tasks_over_nodes(submit):
    # 8 GPUs a node: 32 one-GPU tasks need 4 nodes
    assert shape(submit("-n", "32", "--gpus-per-task=a100:1")) == (4, 32, 8, 8, 32)


def test_gpu_options_that_agree_are_reconciled(submit):
    row = submit("-N", "1", "--ntasks-per-node=4", "--gpus-per-task=1", "--gres=gpu:a100:4")
    assert shape(row) == (1, 4, 4, 4, 4) and row["gpu_type"] == "a100"


def test_gpu_options_that_disagree_name_both(submit):
    message = refusal(submit, "-N", "1", "--ntasks-per-node=8", "--gpus-per-task=1",
                      "--gpus-per-node=4")
    assert "--gpus-per-node=4" in message and "--gpus-per-task=1" in message


def test_ntasks_per_gpu_makes_the_tasks(submit):
    assert shape(submit("--gpus=4", "--ntasks-per-gpu=2"))[:2] == (1, 8)


def test_cpus_per_gpu(submit):
    assert shape(submit("--gpus-per-node=4", "--cpus-per-gpu=12")) == (1, 1, 48, 4, 4)
    message = refusal(submit, "--gpus=1", "--cpus-per-gpu=4", "-c", "2")
    assert "--cpus-per-gpu=4" in message and "--cpus-per-task=2" in message


# -- CPUs and memory ------------------------------------------------------------------
def test_nomultithread_gives_whole_cores(submit):
    # threads_per_core = 2: each CPU asked for is a core, two logical CPUs
    row = submit("--ntasks-per-node=4", "-c", "8", "--hint=nomultithread")
    assert row["req_cpus"] == 64 and row["hint"] == "nomultithread"
    assert row["threads_per_core"] == 2
    assert submit("--ntasks-per-node=4", "-c", "8")["req_cpus"] == 32


def test_memory_per_cpu_and_per_gpu(submit):
    assert submit("-n", "2", "-c", "4", "--mem-per-cpu=2G")["req_mem_mb"] == 16 * 1024
    assert submit("--gpus-per-node=2", "--mem-per-gpu=40G")["req_mem_mb"] == 80 * 1024
    assert submit("--mem=0")["mem_whole_node"] == 1


# -- what a job names beyond its nodes --------------------------------------------------
def test_tmp_gres_licenses_and_lists_are_stored(submit):
    row = submit("--tmp=100G", "--gres=gpu:a100:2,nvme:1,gpumem:20g", "-L", "matlab:2,ansys",
                 "-w", "gpu[01-02]", "-x", "gpu05")
    assert row["tmp_mb"] == 100 * 1024
    assert json.loads(row["gres"]) == {"nvme": 1, "gpumem": 20 << 30}
    assert json.loads(row["licenses"]) == {"matlab": 2, "ansys": 1}
    assert (row["req_nodelist"], row["exclude"], row["nodes"]) == ("gpu[01-02]", "gpu05", 2)


@pytest.mark.parametrize("argv, words", [
    (["-L", "stata"], ["no license named 'stata'", "matlab:10"]),
    (["-L", "ansys:3"], ["ansys:3", "has 2"]),
    (["--gres=fpga:1"], ["fpga:1", "fpga:0"]),
    (["--gres=nvme:2"], ["nvme:2", "nvme:1"]),
    (["--tmp=1T"], ["1048576 MB of local disk", "819200 MB"]),
    (["-w", "cpu01"], ["cpu01", "not in partition gpu"]),
    (["-x", "gpu[01-08]"], ["excludes every node"]),
    (["-x", "gpu09"], ["no node named gpu09"]),
    (["--reservation=nope"], ["no such reservation", "maint"]),
    (["--clusters=orion"], ["--clusters=orion", "'aurora'"]),
    (["-N", "1", "-w", "gpu[01-02]"], ["names 2 nodes", "--nodes=1"]),
])
def test_requests_that_can_never_run_are_refused_with_the_numbers(submit, argv, words):
    message = refusal(submit, *argv)
    assert all(w in message for w in words), message


def test_reservation_for_its_users_only(submit):
    assert submit("--reservation=maint")["reservation"] == "maint"
    message = refusal(submit, "--reservation=maint", user="bob")
    assert "bob" in message and "may not use it" in message


def test_clusters_naming_this_cluster_is_accepted(submit):
    assert submit("-M", "aurora")["partition"] == "gpu"


# -- the scheduler: licenses and reservations --------------------------------------------
def test_licenses_are_booked_cluster_wide(cfg, submit):
    nodes = views(cfg)
    parts = {"gpu": plan.PartitionView("gpu", True, cfg.partition_nodes["gpu"])}
    jobs = []
    for i in range(3):
        row = dict(submit("-L", "matlab:4"), id=i + 1)
        jobs.append(pending_from_row(row, cfg))
    decisions = plan.schedule(jobs, nodes, parts, NOW)
    assert [j for j, _ in decisions.starts] == [1, 2]
    assert decisions.reasons[3] == plan.LICENSES
    # one ends: its licenses come back
    take(nodes, dict(decisions.starts)[1], -1)
    assert [j for j, _ in plan.schedule(jobs[2:], nodes, parts, NOW).starts] == [3]


def test_reservation_nodes_only_for_its_jobs(cfg, submit):
    nodes = views(cfg)
    parts = {"gpu": plan.PartitionView("gpu", True, cfg.partition_nodes["gpu"])}
    inside = pending_from_row(dict(submit("--reservation=maint", "-N", "2"), id=1), cfg)
    outside = pending_from_row(dict(submit("-N", "8"), id=2), cfg)
    small = pending_from_row(dict(submit("-N", "6", "--exclusive"), id=3), cfg)
    decisions = plan.schedule([inside, outside, small], nodes, parts, NOW)
    started = dict(decisions.starts)
    assert sorted(started[1]) == ["gpu07", "gpu08"]
    assert 2 not in started and decisions.reasons[2] == f"{plan.RESERVED} reservation maint"
    # The reservation has no end, so the 8-node job has no start to protect: the job
    # behind it starts on the six nodes that are free.
    assert sorted(started[3]) == [f"gpu0{i}" for i in range(1, 7)]
    assert 2 not in decisions.est_start


def test_node_range_starts_on_what_is_free(cfg, submit):
    nodes = views(cfg)
    request = pending_from_row(dict(submit("-N", "2-4", "--exclusive"), id=1), cfg).request
    for name in ("gpu01", "gpu02", "gpu03", "gpu04", "gpu05"):
        nodes[name].jobs, nodes[name].exclusive = 1, True
    members = [nodes[n] for n in cfg.partition_nodes["gpu"]]
    assert sorted(allocate(request, members)) == ["gpu06", "gpu07", "gpu08"]


def test_tmp_and_gres_are_booked_per_node(cfg, submit):
    nodes = views(cfg)
    members = [nodes[n] for n in cfg.partition_nodes["gpu"]]
    req = pending_from_row(dict(submit("--gres=nvme:1", "--tmp=500G"), id=1), cfg).request
    first = allocate(req, members)
    take(nodes, first)
    second = allocate(req, members)
    assert list(first) == ["gpu01"] and list(second) == ["gpu02"]


def test_named_node_down_is_req_node_not_avail(cfg, submit):
    nodes = views(cfg)
    nodes["gpu02"].usable = False
    parts = {"gpu": plan.PartitionView("gpu", True, cfg.partition_nodes["gpu"])}
    job = pending_from_row(dict(submit("-w", "gpu02"), id=1), cfg)
    other = pending_from_row(dict(submit("-N", "1"), id=2), cfg)
    decisions = plan.schedule([job, other], nodes, parts, NOW)
    assert decisions.reasons[1] == plan.NODES_UNAVAILABLE
    assert [j for j, _ in decisions.starts] == [2]      # -w does not hold up the others


def test_spec_from_elsewhere_is_checked_again(cfg):
    from rmsbatch.core.jobspec import JobSpec
    spec = JobSpec(script="#!/bin/sh\n", workdir="/tmp", submit_dir="/tmp", nodes=2,
                   nodes_given=True, ntasks=64, ntasks_per_node=4, ntasks_given=True)
    with pytest.raises(AdmissionError, match="--ntasks=64 and --ntasks-per-node=4 disagree"):
        admit(spec, "ada", 1000, 1000, cfg, views(cfg), NOW)
