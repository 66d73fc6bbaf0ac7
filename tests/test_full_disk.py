"""A full disk under the spool: submissions are refused with a clear line and nothing
half-written, the controller keeps serving, and works again once there is room."""
from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")]


@pytest.fixture
def small_disk():
    mount = tempfile.mkdtemp(prefix="rms-full-", dir="/tmp")
    os.chmod(mount, 0o755)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0755", "tmpfs", mount],
                   check=True)
    from conftest import Cluster
    c = Cluster(os.path.join(mount, "cluster"), gpus=0)
    try:
        c.up()
        yield c, mount
    finally:
        c.down()
        subprocess.run(["umount", "-l", mount])
        os.rmdir(mount)


def test_a_full_disk_refuses_submissions_cleanly_and_recovers(small_disk):
    c, mount = small_disk
    stat = os.statvfs(mount)
    free = stat.f_bavail * stat.f_frsize
    script = os.path.join(os.path.dirname(mount), os.path.basename(mount) + ".sh")
    with open(script, "w") as fh:     # 3 MB of script (elsewhere): more than will be left
        fh.write("#!/bin/sh\n: <<'EOF'\n" + ("x" * 99 + "\n") * 30_000 + "EOF\necho ran\n")
    filler = os.path.join(mount, "filler")
    subprocess.run(["fallocate", "-l", str(free - 1024 * 1024), filler], check=True)
    before = len(c.api("jobs", all_users=True)["jobs"])
    result = c.run("rsub", script)
    assert result.returncode == 1
    assert result.stderr == ("rsub: error: rmsctld cannot write its spool (database or disk "
                             "is full): nothing was changed; try again, and tell an admin if "
                             "it persists\n")
    assert len(c.api("jobs", all_users=True)["jobs"]) == before
    assert c.run("rq").returncode == 0                        # still serving
    os.unlink(filler)
    job_id = c.submit(script)
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    assert open(os.path.join(c.work, f"rms-{job_id}.out")).read() == "ran\n"
    os.unlink(script)
