"""Dependencies and begin times end to end: rsub -d/--dependency and --begin, the
reasons a waiting job shows, jobs whose dependency can never be satisfied."""
from __future__ import annotations

import os
import time

import pytest

from conftest import wait_for
from rmsbatch.core import begintime, dependency

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def reason_is(c, job_id: int, reason: str):
    job = c.api("jobs", ids=[job_id])["jobs"][0]
    return job if job["reason"] == reason else None


def release(c, job_id: int) -> None:
    c.run("rcontrol", "release", str(job_id), check=True)


def test_a_chain_breaks_where_a_job_fails(cluster):
    c = cluster
    with open(os.path.join(c.work, "step.sh"), "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH --job-name=step   # one step of the pipeline\n"
                 "exit ${1:-0}\n")
    a = c.submit("--hold", "step.sh", "3")
    b = c.submit("--dependency", f"afterok:{a}", "step.sh")
    cc = c.submit(f"-dafterok:{b}", "step.sh")
    wait_for(lambda: reason_is(c, b, "Dependency"), 10, "B to wait on A")
    wait_for(lambda: reason_is(c, cc, "Dependency"), 10, "C to wait on B")
    release(c, a)
    assert c.wait_ended(a)["state"] == "FAILED"
    job = wait_for(lambda: reason_is(c, b, "DependencyNeverSatisfied"), 10, "B to give up")
    assert job["state"] == "PENDING"
    assert c.job(cc)["reason"] == "Dependency"
    shown = c.run("rq", "-h", "-j", f"{b},{cc}", "-o", "%i %r", check=True).stdout
    assert shown == f"{b} DependencyNeverSatisfied\n{cc} Dependency\n"
    c.run("rcancel", str(b), str(cc), check=True)


def test_kill_on_invalid_dep_cancels_the_job_and_its_dependants(cluster):
    c = cluster
    a = c.submit("--hold", "--wrap", "exit 1")
    b = c.submit(f"--dependency=afterok:{a}", "--kill-on-invalid-dep=yes", "--wrap", "true")
    cc = c.submit(f"--dependency=afterok:{b}", "--kill-on-invalid-dep", "yes", "--wrap", "true")
    release(c, a)
    job = c.wait_ended(b)
    assert job["state"] == "CANCELLED" and job["reason"] == "DependencyNeverSatisfied"
    assert c.wait_ended(cc)["state"] == "CANCELLED"
    assert job["start_time"] is None


def test_afterany_runs_after_a_failure_and_afternotok_only_after_one(cluster):
    c = cluster
    a = c.submit("--hold", "--wrap", "exit 2")
    anyway = c.submit(f"--dependency=afterany:{a}", "--wrap", "true")
    on_failure = c.submit(f"--dependency=afternotok:{a}", "--wrap", "true")
    ok = c.submit("--wrap", "true")
    on_success_failure = c.submit(f"--dependency=afternotok:{ok}", "--wrap", "true")
    wait_for(lambda: reason_is(c, anyway, "Dependency"), 10, "afterany to wait")
    release(c, a)
    assert c.wait_ended(anyway)["state"] == "COMPLETED"
    assert c.wait_ended(on_failure)["state"] == "COMPLETED"
    wait_for(lambda: reason_is(c, on_success_failure, "DependencyNeverSatisfied"), 10,
             "afternotok on a job that succeeded to give up")
    c.run("rcancel", str(on_success_failure), check=True)


def test_any_of_several_with_a_question_mark(cluster):
    c = cluster
    bad = c.submit("--hold", "--wrap", "exit 1")
    good = c.submit("--hold", "--wrap", "true")
    either = c.submit(f"--dependency=afterok:{bad}?afterok:{good}", "--wrap", "true")
    release(c, bad)
    c.wait_ended(bad)
    wait_for(lambda: reason_is(c, either, "Dependency"), 10, "one of two still possible")
    release(c, good)
    assert c.wait_ended(either)["state"] == "COMPLETED"


def test_singleton_runs_one_job_of_a_name_at_a_time(cluster):
    c = cluster
    first = c.submit("-J", "nightly", "-d", "singleton", "--wrap", "sleep 0.5")
    second = c.submit("-J", "nightly", "-d", "singleton", "--wrap", "true")
    other_name = c.submit("-J", "other", "-d", "singleton", "--wrap", "true")
    assert c.wait_ended(other_name)["state"] == "COMPLETED"
    one, two = c.wait_ended(first), c.wait_ended(second)
    assert one["state"] == two["state"] == "COMPLETED"
    assert two["start_time"] >= one["end_time"]


def test_array_dependencies_whole_array_and_corresponding_tasks(cluster):
    c = cluster
    first = c.submit("--hold", "--array=0-2", "--wrap", 'exit $(( SLURM_ARRAY_TASK_ID == 1 ))')
    corr = c.submit("--array=0-2", f"--dependency=aftercorr:{first}", "--wrap", "true")
    whole = c.submit(f"--dependency=afterany:{first}", "--wrap", "true")
    one_task = c.submit(f"--dependency=afterok:{first}_2", "--wrap", "true")
    c.run("rcontrol", "release", *[str(first + k) for k in range(3)], check=True)
    assert c.wait_ended(one_task)["state"] == "COMPLETED"
    assert c.wait_ended(whole)["state"] == "COMPLETED"
    assert c.wait_ended(corr)["state"] == "COMPLETED"
    assert c.wait_ended(corr + 2)["state"] == "COMPLETED"
    wait_for(lambda: reason_is(c, corr + 1, "DependencyNeverSatisfied"), 10,
             "the task whose corresponding task failed")
    c.run("rcancel", str(corr), check=True)


def test_after_waits_for_the_start_only(cluster):
    c = cluster
    a = c.submit("--hold", "--wrap", "sleep 1")
    b = c.submit(f"--dependency=after:{a}", "--wrap", "true")
    wait_for(lambda: reason_is(c, b, "Dependency"), 10, "after to wait")
    release(c, a)
    job_b = c.wait_ended(b)
    job_a = c.wait_ended(a)
    assert job_b["start_time"] >= job_a["start_time"]
    assert job_b["start_time"] < job_a["end_time"]


def test_a_dependency_on_a_missing_job_is_refused(cluster):
    c = cluster
    before = c.api("jobs", active=True, fields=["id"])["rows"]
    result = c.run("rsub", "-d", "afterok:99999999", "--wrap", "true")
    assert result.returncode != 0 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("rsub: error: --dependency=afterok:99999999: job "
                                    "99999999 does not exist")
    bad = c.run("rsub", "-d", "afterwards:1", "--wrap", "true")
    assert bad.returncode != 0 and "unknown dependency type 'afterwards'" in bad.stderr
    assert bad.stderr.count("\n") == 1
    assert c.api("jobs", active=True, fields=["id"])["rows"] == before


def test_begin_holds_a_job_until_its_time(cluster):
    c = cluster
    before = time.time()
    job_id = c.submit("--begin=now+2", "--wrap", "true")
    job = wait_for(lambda: reason_is(c, job_id, "BeginTime"), 10, "the job to wait")
    assert job["begin_time"] >= before + 2
    job = c.wait_ended(job_id, timeout=20)
    assert job["state"] == "COMPLETED" and job["start_time"] >= job["begin_time"]
    later = c.submit("-b", "tomorrow", "--wrap", "true")
    wait_for(lambda: reason_is(c, later, "BeginTime"), 10, "tomorrow's job to wait")
    c.run("rcancel", str(later), check=True)


def test_kill_invalid_depend_from_cluster_toml(new_cluster):
    c = new_cluster(gpus=0, before_start=lambda c: c.tweak(
        "[controller]\n", "[controller]\nkill_invalid_depend = true\n"))
    a = c.submit("--wrap", "exit 1")
    b = c.submit(f"--dependency=afterok:{a}", "--wrap", "true")
    kept = c.submit(f"--dependency=afterok:{b}", "--kill-on-invalid-dep=no", "--wrap", "true")
    assert c.wait_ended(b)["reason"] == "DependencyNeverSatisfied"
    wait_for(lambda: reason_is(c, kept, "DependencyNeverSatisfied"), 10, "the job that stays")
    assert c.job(kept)["state"] == "PENDING"


# -- the parsers, as rsub and rmsctld share them ---------------------------------------

@pytest.mark.parametrize("text, seconds", [
    ("now+60", 60), ("now+1hour", 3600), ("now+10minutes", 600), ("now+2days", 172800)])
def test_begin_offsets(text, seconds):
    assert begintime.parse(text, 1_000_000.0) == 1_000_000.0 + seconds


def test_begin_times_of_day_and_dates():
    now = time.mktime((2026, 12, 5, 10, 0, 0, 0, 0, -1))
    assert begintime.parse("16:00", now) == time.mktime((2026, 12, 5, 16, 0, 0, 0, 0, -1))
    assert begintime.parse("08:00", now) == time.mktime((2026, 12, 6, 8, 0, 0, 0, 0, -1))
    assert begintime.parse("2026-12-06T08:00:00", now) == \
        time.mktime((2026, 12, 6, 8, 0, 0, 0, 0, -1))
    assert begintime.parse("tomorrow", now) == time.mktime((2026, 12, 6, 0, 0, 0, 0, 0, -1))
    assert begintime.parse("midnight", now) == begintime.parse("tomorrow", now)
    assert begintime.parse("noon", now) == time.mktime((2026, 12, 5, 12, 0, 0, 0, 0, -1))
    with pytest.raises(begintime.BeginTimeError, match="now\\+N"):
        begintime.parse("now+3fortnights", now)


def test_dependency_text_is_normalised():
    assert dependency.parse("afterok:12:13_4 ,singleton").text() == "afterok:12:13_4,singleton"
    assert dependency.parse("after:5+3?afterany:7").any_of
    with pytest.raises(dependency.DependencyError, match="mixes"):
        dependency.parse("afterok:1,afterany:2?after:3")


# -- the scheduler core, given the states ---------------------------------------------

def _pending(job_id, dep=None, task=None, array=None, throttle=0, begin=None):
    from rmsbatch.sched.plan import PendingJob
    from rmsbatch.sched.placement import Request
    return PendingJob(job_id, "p", 0, float(job_id), Request(), 0, user="u", name="n",
                      array_job_id=array, array_task_id=task, throttle=throttle,
                      dependency=dependency.parse(dep) if dep else None, begin_time=begin)


def _schedule(pending, waits, now=100.0, cpus=64):
    from rmsbatch.sched import plan
    from rmsbatch.sched.placement import NodeView
    nodes = {"n1": NodeView("n1", cpus, 512_000, {})}
    return plan.schedule(pending, nodes, {"p": plan.PartitionView("p", True, ["n1"])}, now,
                         waits)


def test_core_after_minutes_wakes_the_controller_when_they_have_passed():
    from rmsbatch.sched.plan import Waits
    waits = Waits(jobs={7: ("RUNNING", 40.0, None, None)})
    out = _schedule([_pending(8, "after:7+2")], waits, now=100.0)
    assert out.reasons == {8: "Dependency"} and out.wake_at == 160.0
    out = _schedule([_pending(8, "after:7+2")], waits, now=160.0)
    assert [job_id for job_id, _ in out.starts] == [8]


def test_core_begin_time_and_throttle_reasons():
    from rmsbatch.sched.plan import Waits
    out = _schedule([_pending(1, begin=500.0)], Waits(), now=100.0)
    assert out.reasons == {1: "BeginTime"} and out.wake_at == 500.0
    tasks = [_pending(10 + k, task=k, array=10, throttle=3) for k in range(6)]
    out = _schedule(tasks, Waits(running_tasks={10: 1}))
    assert [job_id for job_id, _ in out.starts] == [10, 11]
    assert set(out.reasons.values()) == {"JobArrayTaskLimit"}


def test_core_ten_thousand_tasks_after_a_ten_thousand_task_array():
    from rmsbatch.sched.plan import Waits
    waits = Waits()
    for k in range(10_000):
        waits.jobs[1 + k] = ("COMPLETED" if k % 2 else "RUNNING", 1.0, 1, k)
        waits.arrays.setdefault(1, {})[k] = 1 + k
    whole = [_pending(20_000 + k, "afterok:1", task=k, array=20_000) for k in range(10_000)]
    assert set(_schedule(whole, waits).reasons.values()) == {"Dependency"}
    corr = [_pending(20_000 + k, "aftercorr:1", task=k, array=20_000) for k in range(10_000)]
    out = _schedule(corr, waits, cpus=10_000)
    assert sorted(job_id - 20_000 for job_id, _ in out.starts) == list(range(1, 10_000, 2))


def test_malformed_dependency_and_begin_are_refused_by_rsub(cluster):
    for option, words in (("--begin=soon", "invalid time 'soon'"),
                          ("--dependency=afterok:1?afterany:2,after:3", "mixes ',' and '?'"),
                          ("--dependency=afterok:12+5", "only for after"),
                          ("--kill-on-invalid-dep=maybe", "must be yes or no")):
        result = cluster.run("rsub", option, "--wrap", "true")
        assert result.returncode == 2, option
        assert result.stderr.startswith(f"rsub: error: {option}: ") and words in result.stderr
        assert result.stderr.count("\n") == 1
