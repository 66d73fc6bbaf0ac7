"""EASY backfill and best fit in the pure scheduling core: hand-built snapshots with
running jobs and their ends in, starts, reasons and start estimates out."""
from __future__ import annotations

import random
import time

from rmsbatch.sched import placement
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.placement import NodeAlloc, NodeView, Request
from rmsbatch.sched.plan import PartitionView, PendingJob, Policy


def node(name: str, gpus: int = 4, cpus: int = 32, mem: int = 256_000,
         gpu_type: str = "a100") -> NodeView:
    return NodeView(name, cpus, mem, {i: gpu_type for i in range(gpus)})


def job(i, limit=3600, partition="gpu", priority=0, **req) -> PendingJob:
    j = PendingJob(i, partition, priority, float(i), Request(**req))
    j.time_limit = limit
    return j


def cluster(*views: NodeView):
    nodes = {v.name: v for v in views}
    return nodes, {"gpu": PartitionView("gpu", True, list(nodes))}


def run_on(nodes, name, end, cpus=1, gpus=()):
    """A job already running on `name` until `end`: booked on the views, and its end."""
    alloc = {name: NodeAlloc(cpus, 0, list(gpus))}
    placement.take(nodes, alloc)
    return (alloc, end)


def started(out) -> list[int]:
    return [job_id for job_id, _ in out.starts]


def test_a_cpu_job_starts_beside_a_blocked_gpu_job():
    nodes, parts = cluster(node("g1"))
    running = [run_on(nodes, "g1", end=100, gpus=[0, 1])]
    out = scheduler.schedule([job(1, gpus=4), job(2, cpus=1)], nodes, parts, now=0,
                             running=running)
    assert started(out) == [2]
    assert out.reasons[1] == "Resources" and out.est_start[1] == 100


def test_backfill_never_delays_the_reservation():
    nodes, parts = cluster(node("g1"))
    running = [run_on(nodes, "g1", end=100, gpus=[0, 1])]
    long_one = job(2, limit=1000, gpus=1)        # would still hold a GPU at 100
    short_one = job(3, limit=50, gpus=1)         # done before 100
    out = scheduler.schedule([job(1, gpus=4), long_one, short_one], nodes, parts, now=0,
                             running=running)
    assert started(out) == [3]
    assert out.reasons[2] == "Priority" and out.est_start[2] == 100 + 3600   # after job 1's reserved run
    assert out.est_start[1] == 100


def test_without_backfill_the_first_waiting_job_holds_up_its_partition():
    nodes, parts = cluster(node("g1"))
    running = [run_on(nodes, "g1", end=100, gpus=[0, 1])]
    out = scheduler.schedule([job(1, gpus=4), job(2, limit=50, gpus=1)], nodes, parts, now=0,
                             running=running, policy=Policy(backfill=False))
    assert started(out) == [] and out.reasons == {1: "Resources", 2: "Priority"}


def test_an_h100_job_does_not_hold_up_a100_jobs():
    nodes, parts = cluster(node("a1", gpu_type="a100"), node("h1", gpu_type="h100"))
    running = [run_on(nodes, "h1", end=500, gpus=[0, 1, 2, 3])]
    out = scheduler.schedule([job(1, gpus=2, gpu_type="h100"),
                              job(2, limit=10_000, gpus=2, gpu_type="a100")],
                             nodes, parts, now=0, running=running)
    assert started(out) == [2]
    assert out.est_start[1] == 500


def test_the_estimate_is_unknown_when_nothing_in_view_ends():
    nodes, parts = cluster(node("g1"))
    running = [run_on(nodes, "g1", end=None, gpus=[0, 1, 2, 3])]     # no time limit
    out = scheduler.schedule([job(1, gpus=1)], nodes, parts, now=0, running=running)
    assert out.reasons[1] == "Resources" and 1 not in out.est_start


def test_a_job_that_ends_early_lets_the_reserved_job_start_at_once():
    nodes, parts = cluster(node("g1"))
    running = [run_on(nodes, "g1", end=3600, gpus=[0, 1, 2, 3])]
    out = scheduler.schedule([job(1, gpus=4)], nodes, parts, now=0, running=running)
    assert out.est_start[1] == 3600
    placement.take(nodes, running[0][0], -1)        # it ended after 60 s
    out = scheduler.schedule([job(1, gpus=4)], nodes, parts, now=60, running=[])
    assert started(out) == [1]


def test_best_fit_fills_a_used_node_before_breaking_into_an_empty_one():
    nodes, parts = cluster(node("g1", gpus=8), node("g2", gpus=8))
    run_on(nodes, "g2", end=100, gpus=[0, 1, 2, 3, 4, 5])
    out = scheduler.schedule([job(1, gpus=1), job(2, gpus=1), job(3, gpus=1)], nodes, parts,
                             now=0)
    where = [list(alloc) for _, alloc in out.starts]
    assert where == [["g2"], ["g2"], ["g1"]]
    assert nodes["g1"].free_gpus == set(range(1, 8))


def test_jobs_without_gpus_keep_off_gpu_nodes_while_others_have_room():
    nodes, parts = cluster(node("g1", gpus=8), node("c1", gpus=0, cpus=16))
    out = scheduler.schedule([job(1, cpus=4)], nodes, parts, now=0)
    assert [list(a) for _, a in out.starts] == [["c1"]]


def test_easy_backfill_never_moves_the_reserved_jobs_start():
    """Random snapshots: the top waiting job's planned start with a queue of smaller
    jobs behind it is never later than with the queue empty."""
    rng = random.Random(7)
    for trial in range(200):
        def snapshot():
            rng_local = random.Random(trial)
            nodes, parts = cluster(*(node(f"g{i}", gpus=4, cpus=16) for i in range(3)))
            running = []
            for name in nodes:
                for _ in range(rng_local.randint(0, 3)):
                    free = sorted(nodes[name].free_gpus)
                    if not free:
                        break
                    take = free[:rng_local.randint(1, len(free))]
                    running.append(run_on(nodes, name, end=rng_local.randint(10, 500),
                                          cpus=rng_local.randint(1, 4), gpus=take))
            return nodes, parts, running
        top = job(1, limit=rng.randint(50, 400), nodes=rng.randint(1, 2), gpus=rng.randint(2, 4))
        behind = [job(i, limit=rng.randint(5, 600), gpus=rng.randint(0, 3), cpus=rng.randint(1, 8))
                  for i in range(2, 2 + rng.randint(1, 12))]
        nodes, parts, running = snapshot()
        alone = scheduler.schedule([top], nodes, parts, now=0, running=running)
        if 1 in started(alone):
            continue
        nodes, parts, running = snapshot()
        queued = scheduler.schedule([top] + behind, nodes, parts, now=0, running=running)
        assert 1 not in started(queued)
        assert queued.est_start.get(1) == alone.est_start.get(1), trial


# -- with real daemons --------------------------------------------------------------------
def test_a_cpu_job_runs_beside_a_blocked_gpu_job_and_rq_says_when_that_one_starts(
        new_cluster):
    c = new_cluster(gpus=2, start=False)
    c.up("--cpus", "8")
    holder = c.submit("--gpus=1", "-t", "10", "--wrap", "sleep 300")
    c.wait_state(holder, "RUNNING")
    both = c.submit("--gpus=2", "-t", "5", "--wrap", "true")       # waits for the holder
    long_one = c.submit("--gpus=1", "-t", "30", "--wrap", "true")  # would delay it
    cpu_only = c.submit("-t", "1", "--wrap", "echo beside")
    assert c.wait_ended(cpu_only)["state"] == "COMPLETED"
    assert c.output(cpu_only) == "beside\n"

    def planned():
        # the pass that plans follows the submissions by a moment
        rows = c.run("rq", "--start", "-h", "-o", "jobid,start_time,reasons", check=True)
        return {int(line.split()[0]): line.split()[1:] for line in rows.stdout.splitlines()}
    deadline = time.time() + 15
    while planned().get(both, ["Unknown"])[0] == "Unknown" and time.time() < deadline:
        time.sleep(0.2)
    shown = planned()
    start = c.job(holder)["start_time"] + 600
    assert shown[both] == [time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                           "Resources"]
    assert shown[long_one][1] == "Priority"
    assert c.job(long_one)["state"] == "PENDING"
    detail = c.run("rcontrol", "show", "job", str(both), check=True).stdout
    assert f"StartTime={shown[both][0]}" in detail
    # the holder ends early: the plan is redone and the reserved job starts at once
    c.run("rcancel", str(holder), check=True)
    assert c.wait_ended(both)["state"] == "COMPLETED"
    assert c.wait_ended(long_one)["state"] == "COMPLETED"


def test_two_jobs_ending_together_on_one_node_give_one_estimate():
    """Jobs of one array on one node often share an end: the plan walks ends in order and
    must not compare the allocations of two that tie."""
    nodes, parts = cluster(node("c1", gpus=0, cpus=8))
    running = [run_on(nodes, "c1", end=50, cpus=3), run_on(nodes, "c1", end=100, cpus=2),
               run_on(nodes, "c1", end=100, cpus=3)]
    for policy in (Policy(), Policy(estimates=False, reasons=False)):
        out = scheduler.schedule([job(1, cpus=8)], nodes, parts, now=0,
                                 running=running, policy=policy)
        assert started(out) == [] and out.est_start[1] == 100


def test_the_tasks_of_an_array_get_their_estimates_from_one_question(monkeypatch):
    """Alike waiting jobs (an array's tasks) are each given a start estimate, the one a
    question of their own would give, but the timeline is asked once per shape and
    per change of the timeline: a pass after every job end of a 500-task array on a
    small node no longer asks it 500 times."""
    from rmsbatch.sched.timeline import Timeline

    def snapshot():
        nodes, parts = cluster(node("g1", gpus=2, cpus=4))
        running = [run_on(nodes, "g1", end=100 + 10 * k, cpus=1) for k in range(4)]
        tasks = [job(i, limit=600, cpus=1) for i in range(1, 301)]
        others = [job(400 + i, limit=60 * i, gpus=1, cpus=1) for i in range(1, 4)]
        return tasks + others, nodes, parts, running

    asked = []
    real = Timeline.earliest

    def counting(self, request, nodes, run):
        asked.append((request, run))
        return real(self, request, nodes, run)
    monkeypatch.setattr(Timeline, "earliest", counting)
    pending, nodes, parts, running = snapshot()
    out = scheduler.schedule(pending, nodes, parts, now=0, running=running)
    assert started(out) == [] and len(out.est_start) == 303
    assert len(asked) <= 6          # the first task (booked), the next, each other shape

    # and each estimate is the one a question of its own gives
    class Forgetful(dict):
        def __contains__(self, key):
            return False
    init = scheduler.Pass.__init__

    def forgetting(self, *args):
        init(self, *args)
        self.earliest = Forgetful()
    monkeypatch.setattr(scheduler.Pass, "__init__", forgetting)
    asked.clear()
    pending, nodes, parts, running = snapshot()
    again = scheduler.schedule(pending, nodes, parts, now=0, running=running)
    assert len(asked) == 303
    assert again.est_start == out.est_start
    assert len(set(out.est_start.values())) > 2       # not all alike: a real comparison
