"""rms-fleet, the test mode that plays many nodes' protocol in one process: its nodes
register with a real rmsctld, heartbeat, and run what it schedules to the end."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import Cluster, _kill_leftovers, _new_cluster_dir, wait_for


@pytest.fixture
def fleet():
    c = Cluster(_new_cluster_dir(), gpus=8)
    c.up()
    c.down()
    c.set_nodes("f[01-04]")
    procs = [c.start_rmsctld()]
    with open(os.path.join(c.dir, "log", "fleet.stderr"), "ab") as log:
        procs.append(subprocess.Popen([sys.executable, "-m", "rmsbatch.node.fleet",
                                       "--conf-dir", c.dir, "--nodes", "f[01-04]",
                                       "--run", "0.2"], env=c.env, stdout=log, stderr=log,
                                      start_new_session=True))
    try:
        wait_for(lambda: c.api("stats")["stats"]["nodes_connected"] == 4, 20, "4 nodes")
        yield c
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(15)
        _kill_leftovers(c.dir)
        shutil.rmtree(c.dir, ignore_errors=True)


def test_fleet_nodes_run_what_the_controller_schedules(fleet):
    c = fleet
    array = c.submit("--array=1-40", "--gpus", "2", "-t", "1", "--wrap", "true")
    wait_for(lambda: c.api("stats")["stats"]["pending"] == 0
             and c.api("stats")["stats"]["running"] == 0, 60, "the array to finish")
    tasks = c.api("jobs", ids=[array], states=["COMPLETED", "FAILED", "CANCELLED"])["jobs"]
    assert len(tasks) == 40 and {t["state"] for t in tasks} == {"COMPLETED"}
    assert {t["nodelist"] for t in tasks} == {"f01", "f02", "f03", "f04"}
    stats = c.api("stats")["stats"]
    assert stats["passes"] >= 1 and stats["pass_s_max"] >= stats["pass_s_mean"] > 0


def test_fleet_refuses_nodes_cluster_toml_does_not_know(fleet):
    result = subprocess.run([sys.executable, "-m", "rmsbatch.node.fleet", "--conf-dir",
                             fleet.dir, "--nodes", "zz[1-2]"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == "rms-fleet: error: node zz1 is not in cluster.toml"
