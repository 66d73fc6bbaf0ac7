"""The node daemon service: registers the node, launches and stops jobs.

Each job runs under its own supervisor (rmsbatch.node.supervisor) in a job
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
import subprocess
import sys
import time

from rmsbatch.node import supervisor
from rmsbatch.config import Config
from rmsbatch.node.devices import discovery, record
from rmsbatch.node.devices.usage import GpuUsage
from rmsbatch.net.loop import Conn, Loop

log = logging.getLogger("rmsbatch.noded")

try:   # the supervisors' end-of-job sweep uses it: load it once, not per job
    import psutil  # noqa: F401
except ImportError:
    pass
# What every forked supervisor uses to isolate its job: imported here once, not by each
# supervisor (devfilter alone costs a launch ~10 ms of CPU).
from rmsbatch.node import cgroup as _cgroup, devfilter as _devfilter  # noqa: E402,F401

VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                   "ZE_AFFINITY_MASK", "GPU_DEVICE_ORDINAL")
# Telemetry forwarded to rmsctld with each heartbeat (process lists stay on the node).
TELEMETRY_KEYS = ("util_pct", "mem_used_mb", "power_w", "temp_c", "sm_clock_mhz", "thermal",
                  "ecc_uncorrected")
MONITOR_BACKOFF_S = (1, 5, 30, 60)
MONITOR_SILENCE_S = 60      # a monitor quiet for longer than this (and 5 intervals) is stuck


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
            from rmsbatch.node import cgroup
            try:
                self.layout = cgroup.detect()
            except Exception as exc:   # noqa: BLE001 - jobs run without cgroups then
                log.warning("node %s: no cgroups: %s", node, exc)
        # Jobs running as their users must be able to reach their own job dir.
        from rmsbatch.core.daemon import ensure_dir
        for d in (config.node_state_dir, self.state_dir, self.jobs_dir):
            ensure_dir(d, 0o711)
        self.loop.listen(self.notify_path, "notify", mode=0o600)
        self.host_cpus = sorted(os.sched_getaffinity(0))
        self.cpus_in_use: dict[str, list[int]] = {}
        self.gpu_usage: dict[str, GpuUsage] = {}
        for run in self.runs():
            job = _read_json(os.path.join(self.job_dir(run), "job.json")) or {}
            spec = job.get("isolation")
            if spec and spec.get("cpus"):
                self.cpus_in_use[run] = spec["cpus"]
            if job.get("gpus"):
                self.gpu_usage[run] = GpuUsage.load(self.job_dir(run), job["gpus"])
        # Accelerators: declared ones are known now; detected ones when the monitor
        # reports, and rmsd registers only then (or when discovery times out).
        nd = config.nodes[node]
        ndc = config.cluster.node_daemon
        self.gpu_mode = nd.gpu_detect
        self.gpus: discovery.Inventory | None = (
            discovery.static_inventory(nd.gpus) if self.gpu_mode == "static" else None)
        self.discovery_deadline = time.time() + ndc.gpu_discovery_timeout
        self.monitor: subprocess.Popen | None = None
        self.monitor_conn: Conn | None = None
        self.monitor_idle = ""
        self.monitor_starts = 0
        self.monitor_next_start = 0.0
        self.monitor_heard = 0.0
        self.telemetry: dict[str, dict] = {}
        self.unhealthy: dict[str, dict] = {}
        self.gpu_problems: list[str] = []
        self.reported_health: str | None = None
        self.health_seq = 0

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

    @property
    def devices(self) -> list[record.Accelerator]:
        return self.gpus.devices if self.gpus else []

    def isolation(self, job: dict, run: str) -> dict | None:
        """The limits the job's supervisor applies (job.json "isolation")."""
        if self.isolation_mode == "off":
            return None
        alloc = job["alloc"]
        nd = self.config.nodes[self.node]
        every, allowed = record.device_files(self.devices, alloc["gpus"])
        spec = {"mem_bytes": alloc["mem_mb"] * 1024 * 1024,
                "pids_max": self.config.cluster.node_daemon.pids_max,
                "devices": every, "allowed": allowed}
        used = {c for cpus in self.cpus_in_use.values() for c in cpus}
        free = [c for c in self.host_cpus if c not in used]
        if alloc["cpus"] <= len(free):
            # CPUs on the NUMA node of the job's accelerators first, then the rest
            near = set(record.local_cpus(self.devices, alloc["gpus"]))
            ordered = [c for c in free if c in near] + [c for c in free if c not in near]
            spec["cpus"] = sorted(ordered[:alloc["cpus"]])
            self.cpus_in_use[run] = spec["cpus"]
        else:
            spec["why_no_cpuset"] = (f"{len(free)} of the host's {len(self.host_cpus)} CPUs "
                                     f"free for {alloc['cpus']} (node declares {nd.cpus})")
        return spec

    def inventory(self) -> dict:
        nd = self.config.nodes[self.node]
        gpus = self.gpus or discovery.Inventory()
        return {"cpus": nd.cpus, "mem_mb": nd.mem_mb, "features": list(nd.features),
                "gpus": [d.to_dict() for d in gpus.devices], "gpu_mode": self.gpu_mode,
                "gpu_problems": gpus.problems, "gpu_notes": gpus.notes,
                "gpu_backends": gpus.backends, "protections": self.protections,
                "pid": os.getpid()}

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
            "gpus": list(job["alloc"]["gpus"]),
        })
        if job["alloc"]["gpus"]:
            self.gpu_usage[os.path.basename(jobdir)] = GpuUsage(jobdir, job["alloc"]["gpus"])

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
        env["RMS_GPUS_ON_NODE"] = env["SLURM_GPUS_ON_NODE"] = str(len(alloc["gpus"]))
        # Fenced, a job sees only its own devices, numbered from 0 as the vendor
        # runtime will number them; unfenced, it sees all of them.
        env.update(record.visibility(self.devices, alloc["gpus"], self.fenced))
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
        usage = self.gpu_usage.get(run)
        if usage is not None:
            out.update(usage.summary())
        if self.send({"op": "job_ended", "node": self.node, "outcome": out}):
            self.unacked[run] = time.time()

    def acknowledged(self, run: str) -> None:
        self.unacked.pop(run, None)
        self.cpus_in_use.pop(run, None)
        self.gpu_usage.pop(run, None)
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
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.monitor is not None and pid == self.monitor.pid:
                self.monitor.returncode = os.waitstatus_to_exitcode(status)
                self._monitor_gone()

    # -- the accelerator monitor ---------------------------------------------------------
    def wants_monitor(self) -> bool:
        ndc = self.config.cluster.node_daemon
        if not ndc.gpu_monitor or self.monitor_idle:
            return False
        return self.gpu_mode != "static" or bool(self.config.nodes[self.node].gpus)

    def start_monitor(self) -> None:
        argv = [sys.executable, "-m", "rmsbatch.node.devices.monitor", "--conf-dir",
                self.config.directory, "--node", self.node, "--socket", self.notify_path]
        ndc = self.config.cluster.node_daemon
        if ndc.log_file:
            argv += ["--log-file", self.config.path(ndc.log_file).replace("%n", self.node)]
        try:
            self.monitor = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, close_fds=True)
        except OSError as exc:
            log.error("node %s: cannot start the accelerator monitor: %s", self.node, exc)
            self._monitor_gone()
            return
        self.monitor_starts += 1
        self.monitor_heard = time.time()
        log.info("node %s: accelerator monitor started (pid %d)", self.node, self.monitor.pid)

    def check_monitor(self, now: float) -> None:
        """A monitor stuck in the driver (NVML calls can hang on a failing GPU) is killed
        and started again; meanwhile the node says so."""
        if self.monitor is None or self.monitor_idle:
            return
        limit = max(MONITOR_SILENCE_S, 5 * self.config.cluster.node_daemon.gpu_sample_interval)
        if now - self.monitor_heard <= limit:
            return
        why = f"accelerator monitor silent for {int(now - self.monitor_heard)} s: restarted"
        log.warning("node %s: %s", self.node, why)
        self.gpu_problems = [why]
        self.report_health()
        try:
            self.monitor.kill()
        except OSError:
            pass
        self.monitor_heard = now     # reap() sees it go and schedules the restart

    def _monitor_gone(self) -> None:
        code = self.monitor.returncode if self.monitor is not None else None
        self.monitor = None
        if self.monitor_conn is not None:
            self.loop.close(self.monitor_conn)
            self.monitor_conn = None
        if self.monitor_idle:
            return
        delay = MONITOR_BACKOFF_S[min(self.monitor_starts, len(MONITOR_BACKOFF_S)) - 1]
        self.monitor_next_start = time.time() + delay
        log.warning("node %s: accelerator monitor exited (%s); restarting in %d s",
                    self.node, code, delay)

    def on_monitor(self, conn: Conn, msg: dict) -> None:
        op = msg.get("op")
        self.monitor_heard = time.time()
        if op == "monitor_hello":
            conn.meta["monitor"] = True
            self.monitor_conn = conn
        elif op == "gpu_inventory":
            self._monitor_inventory(msg)
        elif op == "gpu_sample":
            self.monitor_starts = min(self.monitor_starts, 1)     # it works: back off less
            self._monitor_sample(msg)
        elif op == "monitor_idle":
            self.monitor_idle = str(msg.get("why") or "idle")
            log.info("node %s: accelerator monitor stops: %s", self.node, self.monitor_idle)

    def _monitor_inventory(self, msg: dict) -> None:
        if self.gpu_mode == "static":
            return
        inv = discovery.Inventory.from_dict(msg.get("inventory") or {})
        changed = self.gpus is None or [d.to_dict() for d in inv.devices] != \
            [d.to_dict() for d in self.gpus.devices] or inv.problems != self.gpus.problems
        self.gpus = inv
        log.info("node %s: %d accelerator(s) found (%s)", self.node, len(inv.devices),
                 "; ".join(f"{k}: {v}" for k, v in inv.backends.items()))
        for line in inv.problems:
            log.warning("node %s: %s", self.node, line)
        if changed and self.controller is not None and not self.controller.closed:
            self.loop.close(self.controller)     # register again with the new inventory

    def _monitor_sample(self, msg: dict) -> None:
        samples = msg.get("samples") or {}
        now = float(msg.get("time") or time.time())
        for index, s in samples.items():
            self.telemetry[str(index)] = {k: s.get(k) for k in TELEMETRY_KEYS}
            if s.get("lost"):
                self.telemetry[str(index)]["lost"] = s["lost"]
        if samples:
            sessions = self._job_sessions()
            for run, usage in self.gpu_usage.items():
                usage.add(samples, now, run, sessions.get(run))
        self.unhealthy = {str(k): v for k, v in (msg.get("unhealthy") or {}).items()}
        self.gpu_problems = [str(p) for p in msg.get("problems") or []]
        self.report_health(seq=msg.get("seq") if isinstance(msg.get("seq"), int) else 0)

    def _job_sessions(self) -> dict[str, int]:
        """run -> session id of the job (its process is a session leader)."""
        out = {}
        for run in self.gpu_usage:
            info = _read_json(os.path.join(self.job_dir(run), "pid"))
            if info and isinstance(info.get("pid"), int):
                out[run] = info["pid"]
        return out

    def report_health(self, seq: int | None = None) -> None:
        """Tell rmsctld which devices are unfit, when that changed; `seq` is the last
        `health_reset` the judgement follows."""
        seq = self.health_seq if seq is None else seq
        state = json.dumps([self.unhealthy, self.gpu_problems, seq], sort_keys=True)
        if state == self.reported_health:
            return
        if self.send({"op": "node_health", "node": self.node, "unhealthy": self.unhealthy,
                      "problems": self.gpu_problems, "seq": seq}):
            self.reported_health = state

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
            if conn.meta.get("monitor") or msg.get("op") == "monitor_hello":
                self.on_monitor(conn, msg)
                return
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
            self.reported_health = None
            self.report_health()
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
        elif op == "health_reset":
            self.health_seq = msg.get("seq") if isinstance(msg.get("seq"), int) else 0
            self.unhealthy, self.gpu_problems, self.reported_health = {}, [], None
            if self.monitor_conn is not None and not self.monitor_conn.closed:
                # the monitor's next sample, judged afresh, is the answer
                self.loop.send(self.monitor_conn, {"op": "health_reset", "seq": self.health_seq})
            else:
                self.report_health(seq=self.health_seq)
        else:
            log.warning("node %s: unknown order %r", self.node, op)

    def run_once(self, timeout: float = 0.5) -> None:
        now = time.time()
        if self.monitor is None and self.wants_monitor() and now >= self.monitor_next_start:
            self.start_monitor()
        if self.gpus is None and (now >= self.discovery_deadline or not self.wants_monitor()):
            why = self.monitor_idle or (f"GPU discovery did not finish within "
                                        f"{self.config.cluster.node_daemon.gpu_discovery_timeout:g} s")
            self.gpus = discovery.Inventory(problems=[] if self.monitor_idle else [why])
            log.warning("node %s: registering without detected accelerators: %s", self.node, why)
        if self.controller is None or self.controller.closed:
            if self.controller is not None:
                log.warning("node %s: lost rmsctld; reconnecting", self.node)
                self.controller = None
                self.unacked.clear()
                self.reported_health = None
            if self.gpus is not None:
                self.connect()
        interval = self.config.cluster.controller.heartbeat_interval
        for conn, msg in self.loop.poll(min(timeout, interval)):
            self.on_message(conn, msg)
        for conn in self.loop.closed:
            if conn is self.monitor_conn:
                self.monitor_conn = None
        self.loop.closed.clear()
        now = time.time()
        if self.controller is not None and now - self.last_heartbeat >= interval:
            self.send({"op": "heartbeat", "node": self.node,
                       **({"gpus": self.telemetry} if self.telemetry else {})})
            self.last_heartbeat = now
        self.reap()
        self.check_monitor(now)
        if now - self.last_scan >= 1.0:
            self.last_scan = now
            if self.controller is not None:
                self.scan()

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor_idle = "rmsd stopping"
            try:
                self.monitor.terminate()
                self.monitor.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.monitor.kill()
            self.monitor = None

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
