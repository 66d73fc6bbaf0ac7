"""QoS, account and partition limits with real daemons: enforced with no switch
turned on, a job over its account's GPUs waits with AssocGrpGPULimit and starts when
the account's other job ends, and what a limit would refuse for ever is refused at
submit with one line; and the controller object on its spool, restarted while the
limit is held."""
from __future__ import annotations

import os
import shutil

import pytest

from conftest import (Cluster, _kill_leftovers, _new_cluster_dir, controller_on_spool,
                      fake_conn, wait_for)
from rmsbatch.core.jobspec import JobSpec

TENANTS = """admins = ["root"]
private_accounting = false
[[accounts]]
name = "default"
users = ["*"]
[[accounts]]
name = "capped"
users = ["*"]
max_gpus = 2
[[accounts]]
name = "outsider"
users = ["*"]
[[accounts]]
name = "capped-sub"
parent = "capped"
users = ["*"]
"""
QOS = """default = "normal"
[[qos]]
name = "normal"
max_gpus_per_user = 3
[[qos]]
name = "batch"
max_submit_per_user = 2
"""
PARTITION = """
[[partitions]]
name = "restricted"
nodes = "ALL"
allow_accounts = ["default", "capped"]
"""


def _configure(c) -> None:
    for name, text in (("tenants.toml", TENANTS), ("qos.toml", QOS)):
        with open(os.path.join(c.dir, name), "w") as fh:
            fh.write(text)
    with open(os.path.join(c.dir, "cluster.toml"), "a") as fh:
        fh.write(PARTITION)


@pytest.fixture(scope="module")
def c():
    cluster = Cluster(_new_cluster_dir(), gpus=4)
    cluster.up()
    cluster.down()
    _configure(cluster)
    cluster.up()
    yield cluster
    cluster.down()
    _kill_leftovers(cluster.dir)
    shutil.rmtree(cluster.dir, ignore_errors=True)


def _until(name: str) -> str:
    """A job that runs until the test creates `name` in the work directory."""
    return f"while [ ! -e {name} ]; do sleep 0.1; done"


def _refused(result) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsub: error: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_job_over_its_accounts_gpus_waits_then_starts_when_the_other_ends(c):
    first = c.submit("-A", "capped", "--gpus", "2", "--wrap", _until("first.done"))
    c.wait_state(first, "RUNNING")
    second = c.submit("-A", "capped", "--gpus", "1", "--wrap", "true")
    # free GPUs remain, and another account's job starts beside the one that waits
    other = c.submit("--gpus", "1", "--wrap", "true")
    c.wait_state(other, "COMPLETED")
    job = wait_for(lambda: (j := c.job(second))["reason"] == "AssocGrpGPULimit" and j,
                   10, "the limit's reason")
    assert job["state"] == "PENDING"
    listed = c.run("rq", "-j", str(second), check=True).stdout
    assert "AssocGrpGPULimit" in listed
    open(os.path.join(c.work, "first.done"), "w").close()
    c.wait_state(first, "COMPLETED")
    c.wait_state(second, "COMPLETED")


def test_submission_over_max_submit_per_user_is_refused(c):
    first = c.submit("-q", "batch", "--hold", "--wrap", "true")
    line = _refused(c.run("rsub", "-q", "batch", "--array", "0-1", "--hold", "--wrap", "true"))
    assert "max_submit_per_user" in line and "qos.toml" in line
    second = c.submit("-q", "batch", "--hold", "--wrap", "true")
    line = _refused(c.run("rsub", "-q", "batch", "--wrap", "true"))
    assert "limit is 2" in line
    # other QoS levels are not counted against it
    c.run("rcancel", str(c.submit("--hold", "--wrap", "true")), check=True)
    c.run("rcancel", str(first), check=True)
    third = c.submit("-q", "batch", "--hold", "--wrap", "true")
    c.run("rcancel", str(second), str(third), check=True)


def test_gpus_over_the_qos_per_user_max_are_refused_at_submit(c):
    line = _refused(c.run("rsub", "--gpus", "4", "--wrap", "true"))
    assert "max_gpus_per_user = 3" in line and "QoS normal" in line
    line = _refused(c.run("rsub", "-A", "capped", "--gpus", "3", "--wrap", "true"))
    assert "account capped" in line and "max_gpus = 2" in line
    # a sub-account's jobs count against its parent's limit too
    line = _refused(c.run("rsub", "-A", "capped-sub", "--gpus", "3", "--wrap", "true"))
    assert "account capped" in line and "max_gpus = 2" in line


def test_account_not_allowed_in_partition_is_refused_at_submit(c):
    line = _refused(c.run("rsub", "-p", "restricted", "-A", "outsider", "--wrap", "true"))
    assert "account outsider may not use partition restricted" in line
    assert "allow_accounts" in line
    job = c.submit("-p", "restricted", "-A", "capped", "--wrap", "true")
    c.wait_state(job, "COMPLETED")


# -- the controller object on a real spool, across its own restart ----------------------
CTL_CLUSTER = """
name = "t"
[controller]
socket = "run/s.sock"
spool_dir = "spool"
[[nodes]]
names = "g1"
cpus = 8
memory = "64G"
[[nodes.gpus]]
type = "a100"
count = 4
[[partitions]]
name = "gpu"
default = true
"""


def _submit(ctl, conn, **kw) -> dict:
    spec = JobSpec(script="#!/bin/sh\ntrue\n", workdir="/tmp", submit_dir="/tmp")
    for k, v in kw.items():
        setattr(spec, k, v)
    return ctl.handle(conn, {"op": "submit", "spec": spec.to_dict()})


def test_what_running_jobs_hold_survives_a_controller_restart(tmp_path):
    ctl, conn = controller_on_spool(tmp_path, CTL_CLUSTER, TENANTS, QOS), fake_conn()
    assert ctl.handle(conn, {"op": "node_hello", "node": "g1", "inventory": {}})["ok"]
    first = _submit(ctl, conn, account="capped", gpus=2)["job_id"]
    second = _submit(ctl, conn, account="capped", gpus=1)["job_id"]
    assert ctl.schedule() == 1
    assert ctl.reasons[second] == "AssocGrpGPULimit"
    assert _submit(ctl, conn, qos="batch", hold=True)["ok"]
    ctl.spool.close()

    ctl = controller_on_spool(tmp_path)      # a restart: nothing but the spool
    assert ctl.handle(conn, {"op": "node_hello", "node": "g1", "inventory": {}})["ok"]
    assert ctl.schedule() == 0 and ctl.reasons[second] == "AssocGrpGPULimit"
    assert _submit(ctl, conn, qos="batch", hold=True)["ok"]
    refused = _submit(ctl, conn, qos="batch", hold=True)
    assert not refused["ok"] and "max_submit_per_user" in refused["error"]
    outcome = {"job_id": first, "run": 0, "state": "COMPLETED", "exit_code": 0, "signal": 0}
    assert ctl.handle(conn, {"op": "job_ended", "node": "g1", "outcome": outcome})["ok"]
    assert ctl.schedule() == 1 and ctl.spool.job(second)["state"] == "RUNNING"
    ctl.spool.close()
