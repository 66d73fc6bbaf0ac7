"""Daemons killed with SIGKILL at bad moments lose nothing and run nothing twice."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import wait_for

pytestmark = pytest.mark.slow

CLIENT = textwrap.dedent("""
    import json, os, socket, sys, time
    from rmsbatch.net import client
    from rmsbatch.cli import jobscript
    ledger, count = sys.argv[1], int(sys.argv[2])
    sub = jobscript.parse_rsub(["--wrap", f"echo $RMS_JOB_ID >> {ledger}"], stdin_text=None,
                               environ=dict(os.environ), cwd=os.getcwd(),
                               hostname=socket.gethostname())
    spec = sub.spec.to_dict()
    acked = 0
    deadline = time.time() + 120
    while acked < count and time.time() < deadline:
        try:
            reply = client.call("submit", spec=spec)
        except client.ControllerUnavailable:
            time.sleep(0.05)       # the controller is down: retry, as a workflow tool would
            continue
        print(reply["job_id"], flush=True)
        acked += 1
""")


def test_kill_controller_during_submission_burst(new_cluster):
    c = new_cluster(gpus=0)
    ledger = os.path.join(c.work, "ledger")
    open(ledger, "w").close()
    os.chmod(ledger, 0o666)
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, ledger, "100"], env=c.env,
                                cwd=c.work, stdout=subprocess.PIPE, text=True)
               for _ in range(5)]
    # let the burst get going, then kill the controller in the middle of it
    deadline = time.time() + 30
    while time.time() < deadline:
        count = c.api("jobs", states=["PENDING", "RUNNING", "COMPLETING", "COMPLETED"])["jobs"]
        if len(count) >= 150:
            break
        time.sleep(0.02)
    c.kill9("rmsctld")
    time.sleep(0.5)
    c.up()                                  # restarts only what is not running
    acked = []
    for p in clients:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        acked.extend(int(x) for x in out.split())
    assert len(acked) == 500
    assert len(set(acked)) == 500, "a job id was acknowledged twice"

    deadline = time.time() + 60
    while time.time() < deadline:
        active = c.api("jobs", active=True)["jobs"]
        if not active:
            break
        time.sleep(0.2)
    assert not active, f"{len(active)} jobs never finished: {[(j['id'], j['state'], j['reason']) for j in active[:5]]}"
    jobs = {j["id"]: j for j in c.api("jobs", all_users=True)["jobs"]}
    missing = [i for i in acked if i not in jobs]
    assert not missing, f"acknowledged jobs lost: {missing[:10]}"
    runs = collections.Counter(int(line) for line in open(ledger).read().split())
    twice = {i: n for i, n in runs.items() if n > 1}
    assert not twice, f"jobs ran more than once: {twice}"
    for job_id, job in jobs.items():
        assert job["state"] == "COMPLETED", (job_id, job["state"], job.get("end_reason"))
        assert runs[job_id] == 1, f"job {job_id} is COMPLETED but did not run"


def test_kill_node_daemon_while_jobs_run(new_cluster):
    c = new_cluster(gpus=0)
    ok = c.submit("--wrap", "sleep 2; echo done")
    bad = c.submit("--wrap", "sleep 2; exit 7")
    for job_id in (ok, bad):
        c.wait_state(job_id, "RUNNING")
    time.sleep(0.3)
    pids = {}
    for job_id in (ok, bad):
        with open(os.path.join(c.dir, "state", c.node, "jobs", f"{job_id}.0", "pid")) as fh:
            pids[job_id] = json.load(fh)["pid"]
    c.kill9("rmsd")
    for pid in pids.values():
        os.kill(pid, 0)                      # the jobs keep running without rmsd
    # They end while rmsd is away, and their supervisors tell rmsctld themselves.
    job = c.wait_ended(ok, timeout=15)
    assert job["state"] == "COMPLETED" and job["exit_code"] == 0
    assert open(os.path.join(c.work, f"rms-{ok}.out")).read() == "done\n"
    job = c.wait_ended(bad, timeout=15)
    assert job["state"] == "FAILED" and job["exit_code"] == 7
    jobs_dir = os.path.join(c.dir, "state", c.node, "jobs")
    assert sorted(os.listdir(jobs_dir)) == [f"{ok}.0", f"{bad}.0"]   # until rmsd is back
    c.up()
    wait_for(lambda: not os.listdir(jobs_dir), 15, "rmsd to clean up the reported runs")
    assert c.job(ok)["state"] == "COMPLETED" and c.job(bad)["exit_code"] == 7
    # the node is usable again
    assert c.wait_ended(c.submit("--wrap", "true"))["state"] == "COMPLETED"


def test_second_controller_is_refused(new_cluster):
    c = new_cluster(gpus=0)
    result = c.run("rmsctld", "--conf-dir", c.dir, timeout=20)
    assert result.returncode == 1
    assert "another rmsctld is already running" in result.stderr
    assert c.run("rq").returncode == 0      # the first one is unharmed


def test_restart_keeps_queue(new_cluster):
    c = new_cluster(gpus=0)
    held = c.submit("-H", "-J", "keepme", "--wrap", "true")
    c.down()
    c.up()
    job = c.job(held)
    assert job["state"] == "PENDING" and job["name"] == "keepme"
    c.run("rcontrol", "release", str(held), check=True)
    assert c.wait_ended(held)["state"] == "COMPLETED"
