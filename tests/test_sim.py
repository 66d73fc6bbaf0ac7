"""rms-sim: a trace replayed through the scheduler core, checked against figures worked
out by hand, and run as a user runs it."""
from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess

import pytest

from conftest import command_path

# Four one-processor nodes. By hand, strict FIFO:
#   t=0 job 1 (2 nodes, runs 100) starts; job 2 (4 nodes) waits for it, and jobs 3
#   and 4 behind job 2; t=100 job 2 starts (ends 150); t=150 jobs 3 and 4 start.
#   waits 0, 90, 130, 120.
# FIFO with EASY backfill (requested times 200, 100, 40, 20): job 2 is reserved for
#   t=200 (job 1's limit); job 3 fits before that and starts at 20 (ends 50); job 4
#   finds one node free at 30 and starts at 50 (ends 60); job 1 ends at 100 and job 2
#   starts then. waits 0, 90, 0, 20.
TINY = """\
; Version: 2.2
; Computer: hand-made
; MaxNodes: 4
; MaxProcs: 4
;
    1      0   -1   100    2   -1   -1    2   200   -1  1   1   1  -1  1  -1  -1  -1
    2     10   -1    50    4   -1   -1    4   100   -1  1   2   1  -1  1  -1  -1  -1
    3     20   -1    30    1   -1   -1    1    40   -1  1   1   2  -1  1  -1  -1  -1
    4     30   -1    10    2   -1   -1    2    20   -1  1   3   2  -1  1  -1  -1  -1
"""


def sim(*args, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([command_path("rms-sim"), *args], capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny.swf"
    path.write_text(TINY)
    return str(path)


def test_fifo_gives_the_figures_worked_out_by_hand(tiny):
    r = json.loads(sim(tiny, "--policy", "fifo", "--json", "-").stdout)
    assert r["jobs"] == 4 and r["cluster"] == {"nodes": 4, "cpus_per_node": 1,
                                               "gpus_per_node": 0}
    assert r["mean_wait_s"] == (0 + 90 + 130 + 120) / 4
    assert r["p95_wait_s"] == 130
    bsld = [1, (90 + 50) / 50, (130 + 30) / 30, (120 + 10) / 10]
    assert r["mean_bounded_slowdown"] == pytest.approx(sum(bsld) / 4, abs=1e-6)
    assert r["mean_jct_s"] == (100 + 140 + 160 + 130) / 4
    # node-seconds held 200 + 200 + 30 + 20 over 4 nodes from 0 to 180
    assert r["utilization"] == pytest.approx(450 / (4 * 180))
    assert r["tenants"]["1"]["jobs"] == 2 and r["tenants"]["2"]["jobs"] == 2


def test_backfill_starts_short_jobs_early_without_delaying_the_reserved_one(tiny):
    r = json.loads(sim(tiny, "--policy", "fifo-backfill", "--json", "-").stdout)
    assert r["mean_wait_s"] == (0 + 90 + 0 + 20) / 4
    assert r["mean_bounded_slowdown"] == pytest.approx((1 + 2.8 + 1 + 3) / 4, abs=1e-6)
    assert r["utilization"] == pytest.approx(450 / (4 * 150))
    fifo = json.loads(sim(tiny, "--policy", "fifo", "--json", "-").stdout)
    assert r["p95_wait_s"] <= fifo["p95_wait_s"]


def test_the_table_for_people_and_the_json_file(tiny, tmp_path):
    out = tmp_path / "r.json"
    result = sim(tiny, "--jobs", "1:2", "--policy", "fifo", "--json", str(out))
    text = result.stdout
    assert "trace tiny (swf): jobs 1..2 of 4" in text
    assert "cluster 4 nodes x 1 CPUs; policy fifo" in text
    assert "mean bounded slowdown" in text and "utilization" in text
    saved = json.loads(out.read_text())
    # the window replays jobs 2 and 3 on an empty machine: job 2 starts at once and
    # takes every node for 50 s, so job 3 (submitted 10 s later) waits 40 s
    assert saved["window"] == {"start": 1, "count": 2} and saved["mean_wait_s"] == 20


def synthetic_swf(path, jobs=1500, procs=64, seed=3, per_node=1):
    """A Lublin-like mix: mostly small, some wide, run times spread over decades."""
    rng = random.Random(seed)
    lines = ["; MaxNodes: %d" % (procs // per_node), "; MaxProcs: %d" % procs]
    t = 0
    for i in range(1, jobs + 1):
        t += int(rng.expovariate(1 / 60))
        width = rng.choice([1, 1, 1, 2, 4, 8, 16, 32, 64])
        run = int(10 ** rng.uniform(1, 4))
        asked = int(run * rng.uniform(1, 5))
        lines.append(f"{i} {t} -1 {run} {width} -1 -1 {width} {asked} -1 1 "
                     f"{rng.randint(1, 9)} {rng.randint(1, 3)} -1 1 -1 -1 -1")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_a_longer_replay_is_the_same_twice_and_backfill_helps(tmp_path):
    trace = synthetic_swf(tmp_path / "mix.swf")
    one = sim(trace, "--jobs", "0:400", "--json", "-").stdout
    two = sim(trace, "--jobs", "0:400", "--json", "-").stdout
    assert one == two
    fifo = json.loads(sim(trace, "--jobs", "0:400", "--policy", "fifo", "--json", "-").stdout)
    easy = json.loads(one)
    assert easy["jobs"] == fifo["jobs"] == 400
    assert easy["mean_bounded_slowdown"] < fifo["mean_bounded_slowdown"]
    assert 0 < fifo["utilization"] <= 1 and 0 < easy["utilization"] <= 1


@pytest.mark.skipif(not os.environ.get("RMS_TRACES_DIR"),
                    reason="RMS_TRACES_DIR names no folder of real traces")
def test_a_window_of_a_real_trace_replays_the_same_twice():
    trace = os.path.join(os.environ["RMS_TRACES_DIR"], "rlscheduler_lublin", "lublin_256.swf")
    one = sim(trace, "--jobs", "0:2000", "--json", "-").stdout
    assert one == sim(trace, "--jobs", "0:2000", "--json", "-").stdout
    assert json.loads(one)["jobs"] == 2000
    whole = json.loads(sim(trace, "--policy", "fifo", "--json", "-").stdout)
    assert whole["mean_bounded_slowdown"] == pytest.approx(reference_fifo(trace), abs=1e-6)


def test_bad_input_is_one_line_and_a_non_zero_exit(tiny, tmp_path):
    missing = sim(str(tmp_path / "nope.swf"), check=False)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("rms-sim: error:")
    broken = tmp_path / "broken.swf"
    broken.write_text(TINY + "5 40 -1 ten 1 -1 -1 1 10 -1 1 1 1 -1 1 -1 -1 -1\n")
    result = sim(str(broken), check=False)
    assert result.returncode == 1 and "broken.swf" in result.stderr and "line 10" in result.stderr
    assert result.stderr.count("\n") == 1
    beyond = sim(tiny, "--jobs", "9:1", check=False)
    assert beyond.returncode == 2 and "the trace has 4 jobs" in beyond.stderr
    small = sim(tiny, "--nodes", "2", check=False)
    assert small.returncode == 1 and "job 2 needs 4 nodes" in small.stderr
    window = sim(tiny, "--jobs", "x:1", check=False)
    assert window.returncode == 2 and "START:COUNT" in window.stderr


def reference_fifo(path):
    """First come, first served the way the published simulators write it (RLScheduler's
    HPCSim, the PWA's own tools): a pool of identical nodes, each job takes
    ceil(procs / procs per node) of them at the earliest moment both it has arrived
    and the job before it has started, and enough have been given back."""
    import heapq
    import math
    header, jobs = {}, []
    for line in open(path):
        if line.startswith(";"):
            key, _, value = line[1:].partition(":")
            header[key.strip()] = value.strip()
            continue
        f = line.split()
        procs = max(int(f[4]), int(f[7]))
        jobs.append((int(f[1]), int(f[0]), int(f[3]), procs))
    nodes = int(header["MaxNodes"])
    per_node = int(header.get("MaxProcs", nodes)) // nodes
    free, ends, last_start, bsld = nodes, [], 0, []
    for submit, _, run, procs in sorted(jobs):     # by submit time, then job number
        need = math.ceil(procs / per_node)
        t = max(submit, last_start)
        while ends and ends[0][0] <= t:
            free += heapq.heappop(ends)[1]
        while free < need:
            end, held = heapq.heappop(ends)
            t, free = max(t, end), free + held
        free -= need
        heapq.heappush(ends, (t + run, need))
        last_start = t
        bsld.append(max(1, (t - submit + run) / max(run, 10)))
    return sum(bsld) / len(bsld)


@pytest.mark.parametrize("per_node", [1, 8])
def test_fifo_equals_the_published_simulators_first_come_first_served(tmp_path, per_node):
    trace = synthetic_swf(tmp_path / "mix.swf", jobs=2000, per_node=per_node)
    ours = json.loads(sim(trace, "--policy", "fifo", "--json", "-").stdout)
    assert ours["mean_bounded_slowdown"] == pytest.approx(reference_fifo(trace), abs=1e-6)


def test_the_default_policy_gives_a_tenant_without_usage_its_turn(tmp_path):
    """Two nodes; group 1 queues ten 100-second jobs, then group 2 five. In submit order
    group 2 waits for all of group 1; with fair-share it goes first as soon as group 1
    has used something."""
    lines = ["; MaxNodes: 2", "; MaxProcs: 2"]
    for i in range(10):
        lines.append(f"{i + 1} {i} -1 100 1 -1 -1 1 100 -1 1 1 1 -1 1 -1 -1 -1")
    for i in range(5):
        lines.append(f"{i + 11} {10 + i} -1 100 1 -1 -1 1 100 -1 1 2 2 -1 1 -1 -1 -1")
    path = tmp_path / "two.swf"
    path.write_text("\n".join(lines) + "\n")
    plain = json.loads(sim(str(path), "--policy", "fifo-backfill", "--json", "-").stdout)
    fair = json.loads(sim(str(path), "--policy", "default", "--json", "-").stdout)
    assert plain["tenants"]["2"]["mean_wait_s"] > 400
    assert fair["tenants"]["2"]["mean_wait_s"] < plain["tenants"]["2"]["mean_wait_s"] / 2
    assert fair["tenants"]["1"]["mean_wait_s"] > plain["tenants"]["1"]["mean_wait_s"]


@pytest.mark.parametrize("shape", ["processors", "gpus"])
def test_the_replay_shortcuts_change_no_start(tmp_path, shape):
    """Pooling one-processor nodes and deciding only newcomers after an arrival are
    there for speed alone: every job starts when the plain replay (a node per node, a
    whole pass at every moment) starts it."""
    from rmsbatch.sim.replay import Replay, Shape
    from rmsbatch.sim.traces import read_trace
    trace = read_trace(synthetic_swf(tmp_path / "mix.swf", jobs=500))
    jobs = trace.jobs
    if shape == "gpus":
        jobs = [dataclasses.replace(j, gpus=min(16, j.procs), procs=0) for j in jobs]
        machine = Shape(8, cpus_per_node=16, gpus_per_node=8)
    else:
        machine = Shape(16, cpus_per_node=4)

    def starts(**shortcuts):
        return [(o.id, o.start) for o in Replay(jobs, machine, **shortcuts).run()]

    plain = Replay(jobs, machine, pool=False, incremental=False).run()
    # the workload does queue: a shortcut that changed starts would show
    assert sum(1 for o in plain if o.wait > 0) > 100
    plain = [(o.id, o.start) for o in plain]
    assert starts() == plain
    assert starts(pool=False) == starts(incremental=False) == plain
