"""rms-local: run a complete single-host cluster (rmsctld + one rmsd) from one directory.

  rms-local up --dir DIR [--gpus N]   generate a config if DIR has none, start
                                      whatever is not running, wait for the node
  rms-local down --dir DIR            cancel running jobs, stop both daemons
  rms-local status --dir DIR          say what runs

Run as root on a shared host, everything under DIR is written by root: DIR and
every directory above it must be ones no other user can change (else a link
planted there would redirect root's writes), files are created without following
links, and a daemon is signalled only if it holds this cluster's lock and its
command line names exactly this DIR.
"""
from __future__ import annotations

import argparse
import datetime
import fcntl
import getpass
import os
import shlex
import signal
import socket
import stat
import subprocess
import sys
import time

from rmsbatch.cli.common import CommandError, exit_with

EPILOG = """Examples:
  rms-local up --dir ~/rms --gpus 4     # 4 stand-in GPUs for demos and tests
  export RMS_CONF_DIR=~/rms
  rsub --wrap 'echo hello from $RMS_JOB_ID'
  rms-local down --dir ~/rms
"""

FIRST_TTY = 10     # virtual consoles 10.. back the stand-in GPUs (unused minors)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rms-local", description="Start, stop or inspect a "
                                "single-host rmsbatch cluster kept in one directory.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-V", "--version", action="version", version="rms-local (rmsbatch) 0.1.0")
    sub = p.add_subparsers(dest="command", metavar="{up,down,status}")
    up = sub.add_parser("up", help="generate a config if needed and start the daemons")
    down = sub.add_parser("down", help="stop the daemons (running jobs are cancelled)")
    status = sub.add_parser("status", help="show which daemons are running")
    for sp in (up, down, status):
        sp.add_argument("--dir", required=True, help="the cluster's directory (config, spool, logs)")
    up.add_argument("--gpus", type=int, default=None,
                    help="stand-in accelerators to declare (character devices nothing uses); "
                         "without it, rmsd finds the host's real GPUs (NVML, AMD SMI, sysfs)")
    up.add_argument("--cpus", type=int, help="CPUs to declare (default: this machine's)")
    up.add_argument("--memory", help="memory to declare, e.g. 16G (default: this machine's)")
    up.add_argument("--node", help="node name (default: the short host name)")
    up.add_argument("--timeout", type=float, default=30.0,
                    help="seconds to wait for the node to be ready (default 30)")
    down.add_argument("--keep-jobs", action="store_true",
                      help="leave running jobs running (their end is recorded at the next up)")
    return p


# -- configuration ---------------------------------------------------------------------
def stand_in_devices(directory: str, count: int) -> str | None:
    if count == 0:
        return None
    if count > 54:
        raise CommandError(f"--gpus={count}: at most 54 stand-in GPUs")
    last = FIRST_TTY + count - 1
    if all(os.path.exists(f"/dev/tty{FIRST_TTY + i}") for i in range(count)):
        return f"/dev/tty[{FIRST_TTY}-{last}]" if count > 1 else f"/dev/tty{FIRST_TTY}"
    if os.geteuid() != 0:
        return None
    devdir = os.path.join(directory, "dev")
    check_tree(devdir, directory)
    os.makedirs(devdir, mode=0o755, exist_ok=True)
    for i in range(count):
        path = os.path.join(devdir, f"tty{FIRST_TTY + i}")
        want = os.makedev(4, FIRST_TTY + i)
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            os.mknod(path, 0o600 | stat.S_IFCHR, want)    # mknod never follows a link
            continue
        if not stat.S_ISCHR(info.st_mode) or info.st_rdev != want:
            raise CommandError(f"unexpected file on {path}: not the stand-in device "
                               f"(character device 4:{FIRST_TTY + i}); remove it")
    return f"{devdir}/tty[{FIRST_TTY}-{last}]" if count > 1 else f"{devdir}/tty{FIRST_TTY}"


def generate_config(directory: str, args) -> None:
    import psutil
    from rmsbatch.core import units

    node = args.node or socket.gethostname().split(".")[0]
    cpus = args.cpus or psutil.cpu_count(logical=True) or 1
    mem_mb = units.parse_memory(args.memory) if args.memory else \
        psutil.virtual_memory().total // (1024 * 1024)
    if args.gpus is not None and args.gpus < 0:
        raise CommandError(f"--gpus={args.gpus}: must be 0 or more")
    files = stand_in_devices(directory, args.gpus or 0)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    gpu_block = ""
    if args.gpus is None:
        gpu_block = ("# the host's own GPUs, found by rmsd (NVML, AMD SMI, else /proc and /sys)\n"
                     "gpu_detect = \"auto\"\n")
    elif args.gpus:
        gpu_block = (f"\n[[nodes.gpus]]\ntype = \"gpu\"\ncount = {args.gpus}\n"
                     + (f"files = \"{files}\"\n" if files else "")
                     + "# stand-in devices: character devices no real hardware uses\n")
    cluster = f"""# Generated by 'rms-local up' on {stamp}: a single-host cluster.
# See man 5 rmsbatch-cluster.toml. Relative paths are relative to this directory.
name = "local"

[controller]
socket = "run/rmsctld.sock"
spool_dir = "spool"
log_file = "log/rmsctld.log"
pid_file = "run/rmsctld.pid"
heartbeat_interval = 2
node_timeout = 10
kill_grace = 5

[node_daemon]
state_dir = "state"
log_file = "log/rmsd-%n.log"
pid_file = "run/rmsd-%n.pid"

[[nodes]]
names = "{node}"
cpus = {cpus}
memory = "{mem_mb}M"
{gpu_block}
[[partitions]]
name = "main"
nodes = "ALL"
default = true
"""
    admins = ["root"] + ([getpass.getuser()] if os.geteuid() != 0 else [])
    tenants = f"""# Generated by 'rms-local up': every user of this machine may submit.
admins = {admins!r}
operators = []
private_jobs = false
private_accounting = false

[[accounts]]
name = "default"
description = "everyone on this host"
users = ["*"]
""".replace("'", '"')
    qos = """# Generated by 'rms-local up'.
default = "normal"

[[qos]]
name = "normal"

[[qos]]
name = "high"
priority = 100
"""
    for name, text in (("cluster.toml", cluster), ("tenants.toml", tenants), ("qos.toml", qos)):
        write_new(os.path.join(directory, name), text.encode())


def write_new(path: str, data: bytes) -> None:
    """Write a file through a fresh temporary one (O_EXCL, never through a link),
    renamed into place: a link at `path` is replaced, not followed."""
    from rmsbatch.core.daemon import open_file
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# -- where root may write ----------------------------------------------------------------
def _owner(uid: int) -> str:
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _unsafe(path: str, info: os.stat_result, last: bool) -> str | None:
    """Why another user could change what is at or under `path`, or None."""
    me = os.geteuid()
    if info.st_uid not in (0, me):
        return f"owned by {_owner(info.st_uid)}"
    if stat.S_ISLNK(info.st_mode):
        return None           # only its owner (root or you) could change it
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    mode = stat.S_IMODE(info.st_mode)
    # Root cannot trust a group; an ordinary user's own group is often their private one.
    others = 0o022 if me == 0 else 0o002
    if mode & others:
        # /tmp: others may add entries but not replace ours (sticky, owned by root)
        if not last and mode & stat.S_ISVTX and info.st_uid == 0:
            return None
        return f"writable by other users (mode {mode:04o})"
    return None


def check_tree(path: str, cluster_dir: str) -> None:
    """Refuse `path` when any directory from / down to it (through any symbolic
    links) could be changed by another user: a link planted there would redirect
    what this command and the daemons write (as root: anywhere)."""
    seen = set()
    todo = [os.path.abspath(path)]
    while todo:
        target = todo.pop()
        parts = target.split(os.sep)
        for i in range(1, len(parts) + 1):
            p = os.sep.join(parts[:i]) or os.sep
            if p in seen:
                continue
            seen.add(p)
            try:
                info = os.lstat(p)
            except FileNotFoundError:
                break
            why = _unsafe(p, info, last=i == len(parts))
            if why is None and p == cluster_dir and info.st_uid != os.geteuid():
                why = f"owned by {_owner(info.st_uid)}, not {_owner(os.geteuid())}"
            if why:
                fix = ("remove it (rms-local creates a missing --dir itself) or use a directory "
                       "only you can write" if p == cluster_dir else
                       "use a directory whose every parent only root or you can write")
                raise CommandError(f"refusing --dir {cluster_dir}: {p} is {why}, so another "
                                   f"user could redirect the cluster's files; {fix}")
            if stat.S_ISLNK(info.st_mode):
                todo.append(os.path.realpath(target))
                break


def prepare_dir(directory: str) -> None:
    """Check DIR and the tree above it; create DIR if missing (so it is ours)."""
    check_tree(directory, directory)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755, exist_ok=True)
        check_tree(directory, directory)


def check_config_dirs(cfg, directory: str) -> None:
    """The directories the configuration has the daemons write in, checked like DIR."""
    nd = cfg.cluster.node_daemon
    ctl = cfg.cluster.controller
    files = [cfg.socket, ctl.log_file and cfg.path(ctl.log_file),
             ctl.pid_file and cfg.path(ctl.pid_file), nd.log_file and cfg.path(nd.log_file),
             nd.pid_file and cfg.path(nd.pid_file)]
    dirs = {cfg.spool_dir, cfg.node_state_dir} | {os.path.dirname(f) for f in files if f}
    for d in sorted(dirs):
        check_tree(d, directory)


# -- processes ---------------------------------------------------------------------------
DAEMONS = {"rmsctld": "rmsbatch.ctld.rmsctld", "rmsd": "rmsbatch.node.rmsd"}


def _lock_holder(info: os.stat_result) -> int | None:
    """The pid holding a flock on the file `info` describes, as the kernel says."""
    where = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    try:
        with open("/proc/locks") as fh:
            for line in fh:
                fields = line.split()
                if "->" not in fields and len(fields) > 5 and fields[1] == "FLOCK" \
                        and fields[5] == where and fields[4].isdigit():
                    return int(fields[4])
    except OSError:
        pass
    return None


def _is_ours(pid: int, daemon: str, directory: str) -> bool:
    """Does process `pid` run `daemon` with exactly --conf-dir DIRECTORY?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = [a.decode(errors="replace") for a in fh.read().split(b"\0")]
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return False
    except (OSError, IndexError):
        return False
    if not any(a == DAEMONS[daemon] or os.path.basename(a) == daemon for a in argv[:3]):
        return False
    conf = None
    for i, a in enumerate(argv):
        if a == "--conf-dir" and i + 1 < len(argv):
            conf = argv[i + 1]
        elif a.startswith("--conf-dir="):
            conf = a.split("=", 1)[1]
    if conf is None:
        # started by hand (`rmsd -N node2 &` with RMS_CONF_DIR set, as INSTALL shows)
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = dict(v.split(b"=", 1) for v in fh.read().split(b"\0") if b"=" in v)
            conf = env[b"RMS_CONF_DIR"].decode(errors="replace")
        except (OSError, KeyError):
            return False
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return os.path.normpath(os.path.join(cwd, conf)) == directory


def daemon_pid(lock_path: str, daemon: str, directory: str) -> int | None:
    """The pid of this cluster's `daemon` if it runs. The daemon's lock is the truth
    (a pid file may be stale, or name another cluster's process): someone must hold
    it, and the holder must run `daemon` with --conf-dir DIRECTORY."""
    try:
        fd = os.open(lock_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None                       # nobody holds it: not running
        except BlockingIOError:
            pass
        pid = _lock_holder(os.fstat(fd))
        if pid is None:                       # /proc/locks hidden: the pid it wrote
            try:
                pid = int(os.read(fd, 32).decode().strip())
            except ValueError:
                return None
    finally:
        os.close(fd)
    if _is_ours(pid, daemon, directory):
        return pid
    print(f"rms-local: warning: pid {pid} holds {lock_path} but is not {daemon} with "
          f"--conf-dir {directory}; leaving it alone", file=sys.stderr)
    return None


def daemon_locks(cfg, node: str) -> dict[str, str]:
    return {"rmsctld": os.path.join(cfg.spool_dir, "rmsctld.lock"),
            "rmsd": os.path.join(cfg.node_state_dir, node, "rmsd.lock")}


def start(module: str, directory: str, extra: list[str], log_path: str) -> subprocess.Popen:
    from rmsbatch.core.daemon import UnsafePath, open_file
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    try:
        out = open_file(log_path + ".stderr", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except UnsafePath as exc:
        raise CommandError(str(exc)) from None
    try:
        return subprocess.Popen([sys.executable, "-m", module, "--conf-dir", directory, *extra],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True)
    finally:
        os.close(out)


def wait_for(predicate, proc: subprocess.Popen | None, timeout: float, what: str, log_path: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = predicate()
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise CommandError(f"{what} exited with status {proc.returncode}: "
                               f"{tail(log_path + '.stderr') or tail(log_path)}")
        time.sleep(0.05)
    raise CommandError(f"{what} did not become ready in {timeout:.0f} s (see {log_path})")


def tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            lines = [l.strip() for l in fh.readlines()[-3:] if l.strip()]
    except OSError:
        return ""
    return " / ".join(lines)


def controller_ping(directory: str):
    from rmsbatch.net import client
    try:
        return client.Client(client.socket_path(directory), timeout=2).connect().call("ping")
    except client.ClientError:
        return None


def node_records(directory: str) -> dict[str, dict]:
    from rmsbatch.net import client
    try:
        reply = client.Client(client.socket_path(directory), timeout=5).connect().call("nodes")
    except client.ClientError:
        return {}
    return {n["name"]: n for n in reply["nodes"]}


def node_states(directory: str) -> dict[str, str]:
    # A node counts once its rmsd is connected: after a controller restart the
    # spool still says "up" for a while, whatever the node daemon is doing.
    return {name: n["state"] if n.get("connected") else "DOWN"
            for name, n in node_records(directory).items()}


def cluster_dir(args) -> str:
    directory = os.path.abspath(os.path.expanduser(args.dir))
    check_tree(directory, directory)
    return directory


def up(args) -> int:
    directory = os.path.abspath(os.path.expanduser(args.dir))
    prepare_dir(directory)
    if not os.path.exists(os.path.join(directory, "cluster.toml")):
        generate_config(directory, args)
        print(f"rms-local: wrote a configuration for this host to {directory}", file=sys.stderr)
    cfg = load_config(directory)
    check_config_dirs(cfg, directory)
    from rmsbatch.core.daemon import UnsafePath, ensure_dir
    try:
        # every user of the host may read the config and reach the socket
        ensure_dir(directory, 0o755)
    except UnsafePath as exc:
        raise CommandError(str(exc)) from None
    ctl = cfg.cluster.controller
    ctl_log = cfg.path(ctl.log_file or "log/rmsctld.log")
    node = args.node or socket.gethostname().split(".")[0]
    if node not in cfg.nodes:
        node = next(iter(cfg.nodes))
    locks = daemon_locks(cfg, node)
    started = []
    if daemon_pid(locks["rmsctld"], "rmsctld", directory) is None:
        proc = start(DAEMONS["rmsctld"], directory, [], ctl_log)
        wait_for(lambda: controller_ping(directory), proc, args.timeout, "rmsctld", ctl_log)
        started.append("rmsctld")
    nd = cfg.cluster.node_daemon
    rmsd_log = cfg.path(nd.log_file or "log/rmsd-%n.log").replace("%n", node)
    proc = None
    if daemon_pid(locks["rmsd"], "rmsd", directory) is None:
        proc = start(DAEMONS["rmsd"], directory, ["--node", node], rmsd_log)
        started.append("rmsd")
    state = wait_for(lambda: node_states(directory).get(node) not in (None, "DOWN")
                     and node_states(directory)[node], proc, args.timeout,
                     f"rmsd for node {node}", rmsd_log)
    nodedef = cfg.nodes[node]
    record = node_records(directory).get(node) or {}
    gpus = record.get("gpus", len(nodedef.gpus))
    kinds = f" {record['gpu_type']}" if record.get("gpu_type") not in (None, "", "gpu") else ""
    print(f"rms-local: cluster {cfg.cluster.name!r} in {directory}: "
          f"{'started ' + ' and '.join(started) if started else 'already running'}; "
          f"node {node} ({nodedef.cpus} CPUs, {nodedef.mem_mb} MB, {gpus}{kinds} GPUs) is "
          f"{state.lower()}" + (f" ({record['reason']})" if record.get("reason") else ""),
          file=sys.stderr)
    # quoted: the line is meant for eval, and a directory may hold spaces or $(...)
    print(f"export RMS_CONF_DIR={shlex.quote(directory)}")
    return 0


def stop_daemon(pid: int, daemon: str, directory: str, timeout: float = 10.0) -> bool:
    """SIGTERM, SIGKILL after `timeout`. Through a pidfd, taken before the last look
    at the process: a pid reused meanwhile by another process is never signalled."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):    # kernel < 5.3
        pidfd = None
    try:
        if not _is_ours(pid, daemon, directory):
            return False

        def kill(sig: int) -> None:
            try:
                if pidfd is None:
                    os.kill(pid, sig)
                else:
                    signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                pass

        kill(signal.SIGTERM)
        if not _exited(pid, pidfd, timeout):
            kill(signal.SIGKILL)
            _exited(pid, pidfd, 5.0)
        return True
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _exited(pid: int, pidfd: int | None, timeout: float) -> bool:
    if pidfd is not None:
        import select
        return bool(select.select([pidfd], [], [], timeout)[0])   # readable once it exits
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def load_config(directory: str):
    from rmsbatch import config as configmod
    try:
        return configmod.load(directory)
    except configmod.ConfigError as exc:
        raise CommandError(str(exc)) from None


def down(args) -> int:
    directory = cluster_dir(args)
    from rmsbatch.net import client
    cfg = load_config(directory)
    ctl = cfg.cluster.controller
    if not args.keep_jobs and controller_ping(directory):
        conn = client.Client(client.socket_path(directory), timeout=10).connect()
        running = conn.call("jobs", states=["RUNNING", "COMPLETING"])["jobs"]
        if running:
            conn.call("cancel", ids=[j["id"] for j in running])
            deadline = time.time() + ctl.kill_grace + 5
            while time.time() < deadline and conn.call("jobs", active=True,
                                                       states=["RUNNING", "COMPLETING"])["jobs"]:
                time.sleep(0.1)
            print(f"rms-local: cancelled {len(running)} running job(s)", file=sys.stderr)
        conn.close()
    stopped = []
    for node in cfg.nodes:
        pid = daemon_pid(daemon_locks(cfg, node)["rmsd"], "rmsd", directory)
        if pid and stop_daemon(pid, "rmsd", directory):
            stopped.append(f"rmsd ({node})")
    pid = daemon_pid(daemon_locks(cfg, "")["rmsctld"], "rmsctld", directory)
    if pid and stop_daemon(pid, "rmsctld", directory):
        stopped.append("rmsctld")
    print(f"rms-local: stopped {', '.join(stopped)}" if stopped else
          "rms-local: nothing was running", file=sys.stderr)
    return 0


def status(args) -> int:
    directory = cluster_dir(args)
    cfg = load_config(directory)
    ctl_pid = daemon_pid(daemon_locks(cfg, "")["rmsctld"], "rmsctld", directory)
    print(f"rmsctld: {'running (pid %d)' % ctl_pid if ctl_pid else 'stopped'}")
    states = node_states(directory) if ctl_pid else {}
    for node in cfg.nodes:
        pid = daemon_pid(daemon_locks(cfg, node)["rmsd"], "rmsd", directory)
        print(f"rmsd {node}: {'running (pid %d)' % pid if pid else 'stopped'}"
              + (f", node {states[node].lower()}" if node in states else ""))
    return 0 if ctl_pid else 3


def body(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    return {"up": up, "down": down, "status": status}[args.command](args)


def main() -> None:
    exit_with("rms-local", body)


if __name__ == "__main__":
    main()
