"""Jobs run as the users who submitted them, and users keep to their own jobs."""
from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create users")


def test_jobs_run_as_their_owners(cluster, users):
    alice, bob = users
    ids = {}
    for pw in (alice, bob):
        result = cluster.run("rsub", "--parsable", "--wrap", "id -u; id -G",
                             user=pw.pw_name, cwd=cluster.work)
        assert result.returncode == 0, result.stderr
        ids[pw.pw_name] = int(result.stdout)
    for pw in (alice, bob):
        job = cluster.wait_ended(ids[pw.pw_name])
        assert job["state"] == "COMPLETED" and job["user"] == pw.pw_name
        out = os.path.join(cluster.work, f"rms-{job['id']}.out")
        uid_line, groups_line = open(out).read().splitlines()
        assert int(uid_line) == pw.pw_uid
        expected = set(os.getgrouplist(pw.pw_name, pw.pw_gid))
        assert set(map(int, groups_line.split())) == expected
        assert os.stat(out).st_uid == pw.pw_uid
    # supplementary groups really apply: alice is in rmsteam
    import grp
    assert grp.getgrnam("rmsteam").gr_gid in os.getgrouplist(alice.pw_name, alice.pw_gid)


def test_user_cannot_cancel_another_users_job(cluster, users):
    alice, bob = users
    result = cluster.run("rsub", "--parsable", "-H", "--wrap", "true", user=alice.pw_name)
    job_id = int(result.stdout)
    refused = cluster.run("rcancel", str(job_id), user=bob.pw_name)
    assert refused.returncode != 0
    assert "permission denied" in refused.stderr and str(job_id) in refused.stderr
    assert refused.stderr.startswith("rcancel: error:")
    assert cluster.job(job_id)["state"] == "PENDING"
    # a filter that matches someone else's jobs silently skips them
    cluster.run("rcancel", "-u", alice.pw_name, user=bob.pw_name)
    assert cluster.job(job_id)["state"] == "PENDING"
    ok = cluster.run("rcancel", str(job_id), user=alice.pw_name)
    assert ok.returncode == 0, ok.stderr
    assert cluster.wait_ended(job_id)["state"] == "CANCELLED"


def test_user_cannot_drain_nodes(cluster, users):
    alice, _ = users
    result = cluster.run("rcontrol", "drain", cluster.node, "reason=mine", user=alice.pw_name)
    assert result.returncode != 0 and "permission denied" in result.stderr


def test_output_file_the_user_cannot_write_fails_the_job(cluster, users):
    alice, _ = users
    locked = os.path.join(cluster.work, "root-only")
    os.makedirs(locked, mode=0o700, exist_ok=True)
    result = cluster.run("rsub", "--parsable", "-o", f"{locked}/out.txt", "--wrap", "true",
                         user=alice.pw_name)
    job = cluster.wait_ended(int(result.stdout))
    assert job["state"] == "FAILED"
    assert not os.path.exists(f"{locked}/out.txt")


def test_single_user_mode(new_cluster, users):
    """The same system started by an ordinary user: jobs run as that user and
    the daemons say which protections are missing."""
    alice, _ = users
    from conftest import user_cluster
    with user_cluster(alice, "single") as c:
        directory = c.dir
        up = c.run("rms-local", "up", "--dir", directory, user=alice.pw_name)
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export RMS_CONF_DIR={directory}"
        result = c.run("rsub", "--parsable", "--wait", "--wrap", "id -un", user=alice.pw_name,
                       cwd=directory)
        assert result.returncode == 0, result.stderr
        job_id = int(result.stdout.splitlines()[0])
        assert open(f"{directory}/rms-{job_id}.out").read().strip() == alice.pw_name
        log = open(f"{directory}/log/rmsd-{c.node}.log").read()
        assert "single-user mode" in log
        show = c.run("rcontrol", "show", "node", c.node, user=alice.pw_name)
        assert "single-user" in show.stdout
        # no cgroups here: a watchdog enforces the memory limit
        hog = c.run("rsub", "--parsable", "--wait", "--mem=64M", "--wrap",
                    "python3 -c 'import time; b = bytearray(300 * 1024 * 1024); time.sleep(5)'",
                    user=alice.pw_name, cwd=directory)
        job = c.api("jobs", ids=[int(hog.stdout.split()[0])])["jobs"][0]
        assert job["state"] == "OUT_OF_MEMORY", job
        assert "memory(watchdog)" in job["protections"]


def test_a_test_user_left_without_its_group_gets_it():
    """An earlier run may have created the user and stopped before adding its groups
    (the old flaky case: a pre-existing rmsalice without rmsteam)."""
    import grp
    from conftest import ensure_user
    name = "rmsnogroup"
    subprocess.run(["userdel", "-r", name], capture_output=True)
    subprocess.run(["useradd", name], check=True, capture_output=True)
    try:
        pw = ensure_user(name, ("rmsteam",))
        assert grp.getgrnam("rmsteam").gr_gid in os.getgrouplist(name, pw.pw_gid)
    finally:
        subprocess.run(["userdel", "-r", name], capture_output=True)
