"""rms-local run by root on a shared host: no other user can redirect root's
writes, and no pid file makes it signal another cluster's daemons.

Real users (useradd), real directories under /tmp, real daemons.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess

import pytest

from conftest import ROOT, _kill_leftovers, command_path, daemons_of

pytestmark = pytest.mark.skipif(not ROOT, reason="these are root's dangers")


def as_user(user: str, *argv: str) -> None:
    pw = pwd.getpwnam(user)
    subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                    "--", *argv], check=True)


def rms_local(*args: str, user: str | None = None, cwd: str = "/tmp") -> subprocess.CompletedProcess:
    argv = [command_path("rms-local"), *args]
    if user:
        pw = pwd.getpwnam(user)
        argv = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups",
                "--", *argv]
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=120)


def snapshot(path: str) -> dict[str, tuple]:
    """Every entry under `path` (links not followed), with what identifies its content."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns,
                      os.readlink(p) if os.path.islink(p) else None)
    return out


@pytest.fixture
def scratch():
    """Directories under /tmp this test makes; removed (and any daemon in them
    killed) at the end."""
    made: list[str] = []

    def make(name: str) -> str:
        path = f"/tmp/rms-safety-{name}-{os.getpid()}"
        subprocess.run(["rm", "-rf", path], check=True)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.path.exists(os.path.join(path, "cluster.toml")):
            rms_local("down", "--dir", path)
        _kill_leftovers(path)
        subprocess.run(["rm", "-rf", path])


@pytest.fixture
def victim(scratch):
    """A root-owned file an attacker would like root to overwrite."""
    directory = scratch("victim")
    os.makedirs(directory, mode=0o755)
    with open(os.path.join(directory, "precious"), "w") as fh:
        fh.write("precious\n")
    return directory


def test_root_refuses_a_dir_a_user_made_and_writes_nothing_through_it(users, scratch, victim):
    alice, _ = users
    directory = scratch("alice")
    as_user(alice.pw_name, "mkdir", "-m", "0755", directory)
    for name in ("log", "run", "spool", "state"):
        as_user(alice.pw_name, "ln", "-s", victim, os.path.join(directory, name))
    as_user(alice.pw_name, "ln", "-s", os.path.join(victim, "precious"),
            os.path.join(directory, "cluster.toml.tmp"))
    before, victim_before = snapshot(directory), snapshot(victim)
    for command in ("up", "down", "status"):
        result = rms_local(command, "--dir", directory)
        assert result.returncode == 1, result
        assert result.stderr == (
            f"rms-local: error: refusing --dir {directory}: {directory} is owned by rmsalice, "
            "so another user could redirect the cluster's files; remove it "
            "(rms-local creates a missing --dir itself) or use a directory only you can "
            "write\n"), result.stderr
        assert result.stdout == ""
    assert snapshot(directory) == before
    assert snapshot(victim) == victim_before
    assert daemons_of(directory) == []


@pytest.mark.parametrize("case", ["parent owned by a user", "parent writable by all",
                                  "link owned by a user"])
def test_root_refuses_a_dir_others_could_replace(users, scratch, victim, case):
    alice, _ = users
    if case == "parent owned by a user":
        parent = scratch("parent")
        as_user(alice.pw_name, "mkdir", "-m", "0755", parent)
        directory = os.path.join(parent, "rms")
        culprit, why = parent, "owned by rmsalice"
        os.makedirs(directory)           # root's, but alice may swap it for a link
    elif case == "parent writable by all":
        parent = scratch("open")
        os.makedirs(parent)
        os.chmod(parent, 0o777)          # not sticky: anyone may rename what is inside
        directory = os.path.join(parent, "rms")
        culprit, why = parent, "writable by other users (mode 0777)"
    else:
        directory = scratch("link")
        as_user(alice.pw_name, "ln", "-s", victim, directory)
        culprit, why = directory, "owned by rmsalice"
    result = rms_local("up", "--dir", directory, "--gpus", "0")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"rms-local: error: refusing --dir {directory}: {culprit} is {why}, so another user "
        "could redirect the cluster's files; "), result.stderr
    assert result.stderr.count("\n") == 1
    assert not os.path.exists(os.path.join(directory, "cluster.toml"))
    assert os.listdir(victim) == ["precious"]


def test_root_refuses_a_config_dir_that_leads_into_a_users_tree(users, scratch):
    alice, _ = users
    directory = scratch("cfg")
    assert rms_local("up", "--dir", directory, "--gpus", "0").returncode == 0
    assert rms_local("down", "--dir", directory).returncode == 0
    logs = os.path.join(alice.pw_dir, f"rms-logs-{os.getpid()}")
    as_user(alice.pw_name, "mkdir", "-p", logs)
    try:
        shutil.rmtree(os.path.join(directory, "log"))
        os.symlink(logs, os.path.join(directory, "log"))     # root's link, alice's target
        result = rms_local("up", "--dir", directory, "--gpus", "0")
        assert result.returncode == 1
        assert f": {alice.pw_dir} is owned by rmsalice, so another user could redirect " \
            in result.stderr, result.stderr
        assert os.listdir(logs) == []
        assert daemons_of(directory) == []
    finally:
        shutil.rmtree(logs, ignore_errors=True)


def test_daemon_files_are_not_opened_through_links(scratch, victim):
    """Defence in depth, for files in trusted directories (a leftover, a daemon
    run by hand): a link where a log or pid file goes is never written through."""
    directory = scratch("links")
    precious = os.path.join(victim, "precious")
    assert rms_local("up", "--dir", directory, "--gpus", "0").returncode == 0
    assert rms_local("down", "--dir", directory).returncode == 0
    log = os.path.join(directory, "log", "rmsctld.log")
    os.unlink(log)
    os.symlink(precious, log)
    result = rms_local("up", "--dir", directory, "--gpus", "0")
    assert result.returncode == 1
    assert f"refusing to open {log}: it is a symbolic link; remove it" in result.stderr, \
        result.stderr
    os.unlink(log)
    pid_file = os.path.join(directory, "run", "rmsctld.pid")
    os.unlink(pid_file)
    os.symlink(precious, pid_file)
    os.symlink(precious, pid_file + ".tmp")
    result = rms_local("up", "--dir", directory, "--gpus", "0")
    assert result.returncode == 0, result.stderr
    assert not os.path.islink(pid_file) and not os.path.lexists(pid_file + ".tmp")
    with open(precious) as fh:
        assert fh.read() == "precious\n"


def test_a_pid_file_naming_another_cluster_is_not_trusted(new_cluster):
    other = new_cluster(gpus=0)
    other_pids = [other.pid("rmsctld"), other.pid("rmsd")]
    mine = new_cluster(gpus=0)
    node = mine.node
    mine.down()
    with open(os.path.join(mine.dir, "run", "rmsctld.pid"), "w") as fh:
        fh.write(f"{other_pids[0]}\n")
    with open(os.path.join(mine.dir, "run", f"rmsd-{node}.pid"), "w") as fh:
        fh.write(f"{other_pids[1]}\n")
    status = mine.run("rms-local", "status", "--dir", mine.dir)
    assert status.returncode == 3
    assert status.stdout.startswith("rmsctld: stopped\n"), status.stdout
    down = mine.run("rms-local", "down", "--dir", mine.dir)
    assert down.stderr == "rms-local: nothing was running\n", down.stderr
    up = mine.run("rms-local", "up", "--dir", mine.dir, "--gpus", "0")
    assert up.returncode == 0, up.stderr
    assert "started rmsctld and rmsd" in up.stderr
    mine.down()
    for pid in other_pids:
        os.kill(pid, 0)                   # still there
    assert other.run("rq").returncode == 0


def test_export_line_is_quoted_for_the_shell(scratch):
    directory = scratch("it's $(touch PWNED) $HOME")
    work = scratch("cwd")
    os.makedirs(work)
    result = rms_local("up", "--dir", directory, "--gpus", "0", cwd=work)
    assert result.returncode == 0, result.stderr
    info = os.stat(directory)             # made by rms-local: root's, 0755
    assert (info.st_uid, info.st_mode & 0o7777) == (0, 0o755)
    shell = subprocess.run(["sh", "-c", 'eval "$1" && printf %s "$RMS_CONF_DIR" && '
                            f'{command_path("rq")} >/dev/null', "sh", result.stdout],
                           capture_output=True, text=True, cwd=work,
                           env={k: v for k, v in os.environ.items() if k != "RMS_CONF_DIR"})
    assert shell.returncode == 0, shell.stderr
    assert shell.stdout == directory
    assert os.listdir(work) == []


def test_ordinary_user_is_refused_a_dir_of_roots(users, scratch):
    alice, _ = users
    directory = scratch("roots")
    os.makedirs(directory, mode=0o755)
    result = rms_local("status", "--dir", directory, user=alice.pw_name)
    assert result.returncode == 1
    assert f"{directory} is owned by root, not rmsalice" in result.stderr, result.stderr
    # (test_users.py::test_single_user_mode runs a whole cluster as alice in her own dir)
