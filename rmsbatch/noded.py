"""The node daemon service: registers the node, launches and stops jobs.

Each job runs under its own supervisor (rmsbatch.supervisor) in a job
directory `<state_dir>/jobs/<id>/`. The directory is the node's record of the
job: creating it is the launch's point of no return (mkdir is atomic, so a
job is never launched twice), the supervisor writes `outcome.json` there when
the job ends, and the directory is removed only once the controller has
acknowledged the outcome. So rmsd can be killed at any moment: on restart it
reads the directories back, reports what ended meanwhile, and carries on.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import socket
import time

from rmsbatch import supervisor
from rmsbatch.config import Config
from rmsbatch.server import Conn, Loop

log = logging.getLogger("rmsbatch.noded")

try:   # the supervisors' end-of-job sweep uses it: load it once, not per job
    import psutil  # noqa: F401
except ImportError:
    pass

VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                   "ZE_AFFINITY_MASK")


def _write_json(path: str, data: dict, mode: int = 0o600) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.rename(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """True if pid runs and is not a zombie (orphans may be left unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (FileNotFoundError, IndexError, ProcessLookupError):
        return False


class NodeDaemon:
    def __init__(self, config: Config, node: str, loop: Loop | None = None):
        if node not in config.nodes:
            raise ValueError(f"node {node!r} is not in {config.directory}/cluster.toml "
                             f"(nodes: {', '.join(list(config.nodes)[:8])}): use --node NAME")
        self.config = config
        self.node = node
        self.loop = loop or Loop()
        self.state_dir = os.path.join(config.node_state_dir, node)
        self.jobs_dir = os.path.join(self.state_dir, "jobs")
        self.notify_path = os.path.join(self.state_dir, "rmsd.sock")
        self.privileged = os.geteuid() == 0
        self.controller: Conn | None = None
        self.next_connect = 0.0
        self.backoff = 0.1
        self.last_heartbeat = 0.0
        self.last_scan = 0.0
        self.unacked: dict[int, float] = {}  # job id -> when its outcome was last sent
        self.isolation_mode = config.cluster.node_daemon.isolation
        self.layout = None
        if self.privileged and self.isolation_mode != "off":
            from rmsbatch import cgroup
            try:
                self.layout = cgroup.detect()
            except Exception as exc:   # noqa: BLE001 - jobs run without cgroups then
                log.warning("node %s: no cgroups: %s", node, exc)
        os.makedirs(self.jobs_dir, exist_ok=True)
        # Jobs running as their users must be able to reach their own job dir.
        for d in (config.node_state_dir, self.state_dir, self.jobs_dir):
            os.chmod(d, 0o711)
        self.loop.listen(self.notify_path, "notify", mode=0o600)
        self.host_cpus = sorted(os.sched_getaffinity(0))
        self.cpus_in_use: dict[str, list[int]] = {}
        for run in self.runs():
            spec = (_read_json(os.path.join(self.job_dir(run), "job.json")) or {}).get("isolation")
            if spec and spec.get("cpus"):
                self.cpus_in_use[run] = spec["cpus"]

    @property
    def protections(self) -> str:
        """What this node enforces, for rinfo and rcontrol show node."""
        if not self.privileged:
            return ("none (single-user mode: jobs run as the daemon's user; memory limit "
                    "by watchdog)")
        if self.isolation_mode == "off":
            return "uid (isolation = \"off\" in cluster.toml)"
        if self.layout is None:
            return "uid (no usable cgroups)"
        have = self.layout.available()
        return "uid " + " ".join(f"{need}({how})" for need, how in have.items())

    @property
    def fenced(self) -> bool:
        """Will jobs see only their own accelerators?"""
        return bool(self.layout is not None and self.layout.mechanisms.get("devices"))

    def isolation(self, job: dict, run: str) -> dict | None:
        """The limits the job's supervisor applies (job.json "isolation")."""
        if self.isolation_mode == "off":
            return None
        alloc = job["alloc"]
        nd = self.config.nodes[self.node]
        spec = {"mem_bytes": alloc["mem_mb"] * 1024 * 1024,
                "pids_max": self.config.cluster.node_daemon.pids_max,
                "devices": [g.file for g in nd.gpus if g.file],
                "allowed": [nd.gpus[i].file for i in alloc["gpus"] if nd.gpus[i].file]}
        used = {c for cpus in self.cpus_in_use.values() for c in cpus}
        free = [c for c in self.host_cpus if c not in used]
        if alloc["cpus"] <= len(free):
            spec["cpus"] = free[:alloc["cpus"]]
            self.cpus_in_use[run] = spec["cpus"]
        else:
            spec["why_no_cpuset"] = (f"{len(free)} of the host's {len(self.host_cpus)} CPUs "
                                     f"free for {alloc['cpus']} (node declares {nd.cpus})")
        return spec

    def inventory(self) -> dict:
        nd = self.config.nodes[self.node]
        return {"cpus": nd.cpus, "mem_mb": nd.mem_mb, "features": list(nd.features),
                "gpus": [{"index": g.index, "type": g.type, "file": g.file} for g in nd.gpus],
                "protections": self.protections, "pid": os.getpid()}

    # -- job directories ------------------------------------------------------------
    # A run is one start of a job: a requeued job runs again under the same id,
    # so directories and messages name the run, "<job id>.<restart count>".
    def job_dir(self, run: str) -> str:
        return os.path.join(self.jobs_dir, run)

    def runs(self) -> list[str]:
        return sorted(n for n in os.listdir(self.jobs_dir) if _parse_run(n))

    def outcome(self, run: str) -> dict | None:
        return _read_json(os.path.join(self.job_dir(run), "outcome.json"))

    def supervisor_pid(self, run: str) -> int | None:
        try:
            with open(os.path.join(self.job_dir(run), "supervisor.pid")) as fh:
                return int(fh.read())
        except (FileNotFoundError, ValueError):
            return None

    def _ended_or_lost(self, run: str) -> dict | None:
        """The run's outcome if it has ended, also when its supervisor died."""
        out = self.outcome(run)
        if out is None:
            pid = self.supervisor_pid(run)
            if pid is not None and _alive(pid):
                return None
            out = self.outcome(run)   # it may have finished writing just now
        if out is None:
            try:
                if pid is None and time.time() - os.stat(self.job_dir(run)).st_mtime < 10:
                    return None  # launch in progress
            except FileNotFoundError:
                return None
            out = {"state": "FAILED", "exit_code": 1, "signal": 0,
                   "end_time": time.time(), "reason": "job supervisor died (killed?)"}
            _write_json(os.path.join(self.job_dir(run), "outcome.json"), out)
        job_id, restart = _parse_run(run)
        return {**out, "job_id": job_id, "run": restart}

    # -- launching -------------------------------------------------------------------
    def launch(self, job: dict) -> None:
        job_id = job["job_id"]
        run = f"{job_id}.{job['restart_count']}"
        jobdir = self.job_dir(run)
        try:
            os.mkdir(jobdir, 0o711)
        except FileExistsError:
            log.info("job %d: already launched here", job_id)
            self._report_started(run)
            return
        try:
            self._prepare(job, jobdir)
        except LaunchError as exc:
            log.error("job %d: launch failed: %s", job_id, exc)
            _write_json(os.path.join(jobdir, "outcome.json"), {
                "job_id": job_id, "state": "FAILED", "exit_code": 1, "signal": 0,
                "start_time": time.time(), "end_time": time.time(), "reason": str(exc)})
            self.report_outcome(run)
            return
        pid = self._spawn_supervisor(jobdir)
        with open(os.path.join(jobdir, "supervisor.pid"), "w") as fh:
            fh.write(str(pid))
        log.info("job %d: launched for %s (supervisor pid %d)", job_id, job["user"], pid)
        self._report_started(run)

    def _prepare(self, job: dict, jobdir: str) -> None:
        user, uid, gid = job["user"], job["uid"], job["gid"]
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise LaunchError(f"user {user} does not exist on node {self.node}") from None
        if pw.pw_uid != uid:
            raise LaunchError(f"user {user} has uid {pw.pw_uid} on node {self.node} but "
                              f"uid {uid} where the job was submitted")
        if not self.privileged and uid != os.geteuid():
            raise LaunchError(f"rmsd on {self.node} runs unprivileged as uid {os.geteuid()} "
                              f"and cannot start jobs for {user}")
        groups = os.getgrouplist(user, gid) if self.privileged else os.getgroups()
        script = os.path.join(jobdir, "script")
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o500)
        with os.fdopen(fd, "w") as fh:
            fh.write(job["script"])
        if self.privileged:
            os.chown(script, uid, gid)
        _write_json(os.path.join(jobdir, "job.json"), {
            "job_id": job["job_id"], "name": job["name"], "user": user, "uid": uid,
            "gid": gid, "groups": groups, "home": pw.pw_dir, "script_path": script,
            "argv": job["argv"], "workdir": job["workdir"], "submit_dir": job["submit_dir"],
            "output": job["output"], "error": job["error"],
            "environment": self.environment(job, pw), "time_limit": job["time_limit"],
            "kill_grace": job.get("kill_grace", 30), "node": self.node,
            "notify_socket": self.notify_path, "array_job_id": None, "array_task_id": None,
            "isolation": self.isolation(job, os.path.basename(jobdir)),
        })

    def environment(self, job: dict, pw) -> dict[str, str]:
        env = dict(job["environment"])
        if job["export"].upper().startswith("NONE") or not env:
            env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("HOME", pw.pw_dir)
        env.setdefault("USER", pw.pw_name)
        env.setdefault("LOGNAME", pw.pw_name)
        env.setdefault("SHELL", pw.pw_shell or "/bin/sh")
        for var in VISIBILITY_VARS:
            env.pop(var, None)   # never inherit another allocation's devices
        alloc = job["alloc"]
        ours = {
            "JOB_ID": job["job_id"], "JOB_NAME": job["name"], "JOB_NODELIST": job["nodelist"],
            "JOB_NUM_NODES": job["nodes"], "NNODES": job["nodes"],
            "SUBMIT_DIR": job["submit_dir"], "SUBMIT_HOST": job["submit_host"],
            "JOB_ACCOUNT": job["account"], "JOB_PARTITION": job["partition"],
            "JOB_QOS": job["qos"], "JOB_USER": job["user"], "JOB_UID": job["uid"],
            "NTASKS": job["ntasks"], "CPUS_PER_TASK": job["cpus_per_task"],
            "CPUS_ON_NODE": alloc["cpus"], "MEM_PER_NODE": alloc["mem_mb"],
            "NODENAME": self.node, "CLUSTER_NAME": job["cluster"],
            "RESTART_COUNT": job["restart_count"], "NODEID": 0, "PROCID": 0, "LOCALID": 0,
            "JOB_GPUS": ",".join(map(str, alloc["gpus"])),
        }
        for key, value in ours.items():
            env[f"RMS_{key}"] = str(value)
            env[f"SLURM_{key}"] = str(value)   # existing Slurm scripts keep working
        env["SLURM_JOBID"] = env["RMS_JOBID"] = str(job["job_id"])
        env["SLURM_NODELIST"] = job["nodelist"]
        env["SLURMD_NODENAME"] = self.node
        gpus = self.config.nodes[self.node].gpus
        if gpus:
            by_var: dict[str, list[str]] = {}
            for g in gpus:
                by_var.setdefault(g.env, [])
            # Fenced, a job sees only its own devices, numbered from 0 as the
            # vendor runtime will number them; unfenced, it sees all of them.
            for position, index in enumerate(alloc["gpus"]):
                by_var[gpus[index].env].append(str(position if self.fenced else index))
            for var, ids in by_var.items():
                env[var] = ",".join(ids)   # empty: a GPU-less job sees no GPU
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return env

    def _spawn_supervisor(self, jobdir: str) -> int:
        # fork without exec: starting a fresh interpreter would add tens of
        # milliseconds to every job's start. The child leaves rmsd's session,
        # so it survives rmsd being killed.
        pid = os.fork()
        if pid:
            return pid
        try:
            os.setsid()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD,
                        signal.SIGUSR1, signal.SIGPIPE):
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 65536)
            root = logging.getLogger()
            for h in list(root.handlers):
                root.removeHandler(h)
            supervisor.main([jobdir])   # imported up front: the fork inherits it
            os._exit(0)
        except BaseException:
            os._exit(1)

    def _report_started(self, run: str) -> None:
        job_id, restart = _parse_run(run)
        self.send({"op": "job_started", "node": self.node, "job_id": job_id, "run": restart,
                   "protections": self.protections})

    # -- signals and cancel ----------------------------------------------------------
    def cancel(self, run: str) -> None:
        pid = self.supervisor_pid(run)
        if pid is None or not _alive(pid):
            if os.path.isdir(self.job_dir(run)):
                self.report_outcome(run)
            return
        log.info("job %s: cancelling (supervisor pid %d)", run, pid)
        os.kill(pid, signal.SIGTERM)

    def signal_job(self, run: str, signum: int) -> None:
        info = _read_json(os.path.join(self.job_dir(run), "pid"))
        if not info:
            log.warning("job %s: no process to signal", run)
            return
        try:
            os.killpg(info["pid"], signum)
            log.info("job %s: sent signal %d", run, signum)
        except ProcessLookupError:
            pass

    # -- reporting -------------------------------------------------------------------
    def report_outcome(self, run: str) -> None:
        out = self._ended_or_lost(run)
        if out is None:
            return
        if self.send({"op": "job_ended", "node": self.node, "outcome": out}):
            self.unacked[run] = time.time()

    def acknowledged(self, run: str) -> None:
        self.unacked.pop(run, None)
        self.cpus_in_use.pop(run, None)
        shutil.rmtree(self.job_dir(run), ignore_errors=True)

    def scan(self) -> None:
        """Backstop for lost notifications: report every run that has ended."""
        now = time.time()
        for run in self.runs():
            sent = self.unacked.get(run)
            if sent is not None and now - sent < 5:
                continue
            self.report_outcome(run)

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- the controller connection ------------------------------------------------------
    def send(self, message: dict) -> bool:
        if self.controller is None or self.controller.closed:
            return False
        self.loop.send(self.controller, message)
        return not self.controller.closed

    def connect(self) -> bool:
        now = time.time()
        if now < self.next_connect:
            return False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.config.socket)
        except OSError as exc:
            sock.close()
            self.next_connect = now + self.backoff
            if self.backoff >= 1.6:
                log.warning("node %s: cannot reach rmsctld at %s (%s); retrying",
                            self.node, self.config.socket, exc.strerror or exc)
            self.backoff = min(self.backoff * 2, 2.0)
            return False
        self.backoff = 0.1
        self.controller = self.loop.add(sock, {"peer": "rmsctld"})
        running, ended = [], []
        for run in self.runs():
            out = self._ended_or_lost(run)
            if out is None:
                running.append(list(_parse_run(run)))
            else:
                ended.append(out)
                self.unacked[run] = now
        self.send({"op": "node_hello", "node": self.node, "inventory": self.inventory(),
                   "running": running, "ended": ended})
        self.hello_ended = [f"{o['job_id']}.{o['run']}" for o in ended]
        self.last_heartbeat = now
        log.info("node %s: connected to rmsctld (%d running, %d to report)",
                 self.node, len(running), len(ended))
        return True

    def on_message(self, conn: Conn, msg: dict) -> None:
        if conn.listener == "notify":
            if msg.get("op") == "ended" and isinstance(msg.get("job_id"), int):
                for run in self.runs():
                    if _parse_run(run)[0] == msg["job_id"]:
                        self.report_outcome(run)
            return
        if "op" in msg:  # an order from the controller
            self.order(msg)
            return
        if not msg.get("ok"):
            log.error("node %s: rmsctld refused: %s", self.node, msg.get("error"))
            if "not in cluster.toml" in str(msg.get("error")):
                raise SystemExit(f"rmsd: error: {msg.get('error')}")
            return
        if "orders" in msg:  # reply to node_hello
            for run in getattr(self, "hello_ended", []):
                self.acknowledged(run)
            self.hello_ended = []
            for order in msg["orders"]:
                self.order(order)
        elif msg.get("ack") == "job_ended":
            self.acknowledged(f"{msg['job_id']}.{msg['run']}")
        elif msg.get("rehello"):
            self.loop.close(conn)

    def order(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "launch":
            self.launch(msg["job"])
        elif op == "cancel":
            self.cancel(f"{msg['job_id']}.{msg['run']}")
        elif op == "signal":
            self.signal_job(f"{msg['job_id']}.{msg['run']}", msg["signal"])
        else:
            log.warning("node %s: unknown order %r", self.node, op)

    def run_once(self, timeout: float = 0.5) -> None:
        if self.controller is None or self.controller.closed:
            if self.controller is not None:
                log.warning("node %s: lost rmsctld; reconnecting", self.node)
                self.controller = None
                self.unacked.clear()
            self.connect()
        interval = self.config.cluster.controller.heartbeat_interval
        for conn, msg in self.loop.poll(min(timeout, interval)):
            self.on_message(conn, msg)
        self.loop.closed.clear()
        now = time.time()
        if self.controller is not None and now - self.last_heartbeat >= interval:
            self.send({"op": "heartbeat", "node": self.node})
            self.last_heartbeat = now
        self.reap()
        if now - self.last_scan >= 1.0:
            self.last_scan = now
            if self.controller is not None:
                self.scan()

    def stop_jobs(self) -> int:
        """SIGTERM every supervisor (used by `rms-local down`); returns how many."""
        count = 0
        for run in self.runs():
            pid = self.supervisor_pid(run)
            if pid and _alive(pid):
                os.kill(pid, signal.SIGTERM)
                count += 1
        return count


class LaunchError(Exception):
    pass


def _parse_run(name: str) -> tuple[int, int] | None:
    job, dot, restart = name.partition(".")
    if dot and job.isdigit() and restart.isdigit():
        return int(job), int(restart)
    return None
