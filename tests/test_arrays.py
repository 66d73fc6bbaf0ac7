"""Job arrays end to end: rsub --array, the tasks' files and environment, the throttle,
rq's folding, rcancel of arrays and tasks, rsacct and rcontrol ids, the size limit."""
from __future__ import annotations

import json
import os

from conftest import wait_for

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"}


def tasks_of(c, array_id: int) -> list[dict]:
    return c.api("jobs", ids=[array_id])["jobs"]


def all_ended(c, array_id: int) -> list[dict] | None:
    jobs = tasks_of(c, array_id)
    return jobs if jobs and all(j["state"] in ENDED for j in jobs) else None


def write(c, name: str, text: str) -> str:
    path = os.path.join(c.work, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_ten_thousand_tasks_in_one_submission_fold_and_cancel_at_once(cluster):
    c = cluster
    write(c, "big.sh", "#!/bin/bash\n"
                       "#SBATCH --array=0-9999   # one task per input file\n"
                       "#SBATCH --hold\n"
                       "true\n")
    result = c.run("rsub", "big.sh", check=True)
    array_id = int(result.stdout.split()[-1])
    assert result.stdout == f"Submitted batch job {array_id}\n"
    jobs = tasks_of(c, array_id)
    assert [j["array_task_id"] for j in jobs] == list(range(10000))
    assert [j["id"] for j in jobs] == list(range(array_id, array_id + 10000))
    assert {j["array_job_id"] for j in jobs} == {array_id}
    assert {j["state"] for j in jobs} == {"PENDING"}

    listing = c.run("rq", "-h", "-o", "%i %t", check=True).stdout.splitlines()
    assert listing == [f"{array_id}_[0-9999] PD"]

    c.run("rcancel", str(array_id), check=True)
    states = c.api("jobs", ids=[array_id], fields=["state"])["rows"]
    assert len(states) == 10000 and {s[0] for s in states} == {"CANCELLED"}
    assert c.run("rq", "-h", check=True).stdout == ""


def test_tasks_write_their_task_id_into_their_own_files(cluster):
    c = cluster
    write(c, "small.sh", "#!/bin/bash\n"
                         "#SBATCH --job-name=sweep\n"
                         "#SBATCH -a 1,3,5          # three settings\n"
                         "#SBATCH --output out-%A_%a.txt\n"
                         'echo "$SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_JOB_ID:'
                         ' $RMS_ARRAY_TASK_COUNT $SLURM_ARRAY_TASK_MIN'
                         ' $SLURM_ARRAY_TASK_MAX $SLURM_ARRAY_TASK_STEP $SLURM_JOB_ID"\n')
    array_id = c.submit("small.sh")
    jobs = wait_for(lambda: all_ended(c, array_id), 30, "the array's tasks")
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    for job in jobs:
        task = job["array_task_id"]
        with open(os.path.join(c.work, f"out-{array_id}_{task}.txt")) as fh:
            assert fh.read() == f"{task} of {array_id}: 3 1 5 2 {job['id']}\n"


def test_default_output_names_the_array_and_task(cluster):
    c = cluster
    array_id = c.submit("--array=0-1", "--wrap", "echo task $SLURM_ARRAY_TASK_ID")
    wait_for(lambda: all_ended(c, array_id), 30, "the array's tasks")
    for task in (0, 1):
        with open(os.path.join(c.work, f"rms-{array_id}_{task}.out")) as fh:
            assert fh.read() == f"task {task}\n"


def test_a_throttle_of_two_never_runs_more_than_two(cluster):
    c = cluster
    write(c, "slow.sh", "#!/bin/bash\n"
                        "#SBATCH --array 0-5%2\n"
                        "#SBATCH -o times-%a.txt\n"
                        "date +%s.%N; sleep 0.4; date +%s.%N\n")
    array_id = c.submit("slow.sh")
    waiting = wait_for(lambda: [j for j in tasks_of(c, array_id)
                                if j["reason"] == "JobArrayTaskLimit"], 10, "a throttled task")
    assert waiting[0]["state"] == "PENDING"
    assert c.run("rq", "-h", "-j", str(array_id), "-o", "%i", check=True).stdout \
        .splitlines()[-1].endswith("%2]")
    jobs = wait_for(lambda: all_ended(c, array_id), 60, "the array's tasks")
    assert {j["state"] for j in jobs} == {"COMPLETED"}
    spans = []
    for task in range(6):
        with open(os.path.join(c.work, f"times-{task}.txt")) as fh:
            start, end = (float(x) for x in fh.read().split())
        spans.append((start, end))
    for start, _ in spans:
        running = sum(1 for s, e in spans if s <= start < e)
        assert running <= 2, spans


def test_cancel_some_tasks_by_range_and_one_by_id(cluster):
    c = cluster
    array_id = c.submit("-H", "--array=0-5", "--wrap", "true")
    c.run("rcancel", f"{array_id}_[1-3]", check=True)
    c.run("rcancel", f"{array_id}_5", check=True)
    states = {j["array_task_id"]: j["state"] for j in tasks_of(c, array_id)}
    assert states == {0: "PENDING", 1: "CANCELLED", 2: "CANCELLED", 3: "CANCELLED",
                      4: "PENDING", 5: "CANCELLED"}
    assert c.run("rq", "-h", "-o", "%i", "-j", str(array_id), check=True).stdout \
        == f"{array_id}_[0,4]\n"
    unfolded = c.run("rq", "-h", "-r", "-o", "%i", "-j", str(array_id), check=True).stdout
    assert unfolded.split() == [f"{array_id}_0", f"{array_id}_4"]
    listed = json.loads(c.run("rq", "--json", "-j", str(array_id), check=True).stdout)["jobs"]
    assert [(j["array_job_id"], j["array_task_id"]) for j in listed] == \
        [(array_id, 0), (array_id, 4)]
    acct = c.run("rsacct", "-j", f"{array_id}_2", "-n", "-P", "-o", "JobID,State", check=True)
    assert acct.stdout == f"{array_id}_2|CANCELLED\n"
    shown = c.run("rcontrol", "show", "job", f"{array_id}_4", "--json", check=True)
    assert json.loads(shown.stdout)["jobs"][0]["id"] == array_id + 4
    again = c.run("rcancel", f"{array_id}_2")
    assert again.returncode == 1
    assert again.stderr == f"rcancel: error: job {array_id}_2 has already finished (CANCELLED)\n"
    c.run("rcancel", str(array_id), check=True)


def test_an_array_above_the_maximum_size_is_refused_whole(cluster):
    c = cluster
    before = c.api("jobs", states=["PENDING"], fields=["id"])["rows"]
    result = c.run("rsub", "--array=0-20000%5", "--wrap", "true")
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("rsub: error: ")
    assert "max_array_size" in result.stderr and "0-10000" in result.stderr
    assert c.api("jobs", states=["PENDING"], fields=["id"])["rows"] == before


def test_a_malformed_array_is_refused_by_rsub(cluster):
    result = cluster.run("rsub", "--array=5-1", "--wrap", "true")
    assert result.returncode != 0
    assert result.stderr.startswith("rsub: error: --array=5-1: ") \
        and "ends before it starts" in result.stderr and result.stderr.count("\n") == 1


def test_malformed_array_task_ids_are_usage_errors(cluster):
    c = cluster
    for argv, prefix in ((("rcancel", "12_x"), "rcancel: error: argument JOBID: "),
                         (("rq", "-j", "12_[1-"), "rq: error: argument -j/--jobs: "),
                         (("rsacct", "-j", "5_"), "rsacct: error: argument -j/--jobs: ")):
        result = c.run(*argv)
        assert result.returncode == 2
        assert result.stderr.startswith(prefix + "invalid array task ")
        assert "42_[1-5]" in result.stderr and result.stderr.count("\n") == 1
    shown = c.run("rcontrol", "show", "job", "3_x")
    assert shown.returncode == 2 and "array task such as 42_7" in shown.stderr


def test_wait_waits_for_every_task_and_returns_the_highest_exit_code(cluster):
    result = cluster.run("rsub", "--wait", "--array=1-3", "--wrap", "exit $SLURM_ARRAY_TASK_ID")
    array_id = int(result.stdout.split()[-1])
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        f"rsub: job {array_id}_{k} ended FAILED (exit code {k}:0)" for k in (1, 2, 3)]
    assert all(j["state"] == "FAILED" for j in tasks_of(cluster, array_id))
