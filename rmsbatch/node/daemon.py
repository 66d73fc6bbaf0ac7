"""The node daemon service: registers the node, launches and stops jobs, keeps their
leases.

Each run of a job lives in a job directory (rmsbatch.node.jobdir) under its own
supervisor (rmsbatch.node.supervisor), which outlives rmsd. So rmsd can be killed or
restarted at any moment: on start it reads the directories back, sweeps the cgroups
of runs that are gone, reports what ended meanwhile, and carries on.

Liveness of a run comes from its supervisor's lock and its job cgroup, never from a
pid in a file: a run whose supervisor died while its processes live is killed through
its cgroup before its end is reported, so its GPUs are never given to another job
while it still holds them. Orders reach a job through its supervisor's control socket.

Leases (rmsbatch.ctld.leases): every heartbeat lists the runs this node supervises;
rmsctld renews their leases and rmsd writes the new deadline to
`<state_dir>/<node>/leases.json`, which each supervisor watches.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time

from rmsbatch.config import Config
from rmsbatch.core import failpoint
from rmsbatch.net import tcp
from rmsbatch.net.client import ClientError
from rmsbatch.net.loop import Conn, Loop
from rmsbatch.node import launch as launching, prolog, slurmcommands
from rmsbatch.node.devices import discovery, record
from rmsbatch.node.devices.usage import GpuUsage
from rmsbatch.node.isolation import cgroup_parent
from rmsbatch.node.jobdir import (LEGACY_PID_FILE, JobDir, SupervisorGone, parse_run,
                                  read_json, write_json)
from rmsbatch.node.monitorlink import MONITOR_SILENCE_S, MonitorLink
from rmsbatch.node.trash import Trash

log = logging.getLogger("rmsbatch.noded")

try:   # the supervisors' end-of-job sweep uses it: load it once, not per job
    import psutil  # noqa: F401
except ImportError:
    pass
# What every forked supervisor uses to isolate its job: imported here once, not by each
# supervisor (devfilter alone costs a launch ~10 ms of CPU).
from rmsbatch.node import cgroup as _cgroup, devfilter as _devfilter  # noqa: E402,F401
from rmsbatch.node import lease as _lease  # noqa: E402,F401

LaunchError = launching.LaunchError


class NodeDaemon(MonitorLink):
    def __init__(self, config: Config, node: str, loop: Loop | None = None):
        if node not in config.nodes:
            raise ValueError(f"node {node!r} is not in {config.directory}/cluster.toml "
                             f"(nodes: {', '.join(list(config.nodes)[:8])}): use --node NAME")
        self.config = config
        self.node = node
        self.loop = loop or Loop()
        self.state_dir = os.path.join(config.node_state_dir, node)
        self.jobs_dir = os.path.join(self.state_dir, "jobs")
        self.trash = Trash(os.path.join(self.state_dir, "gone"))
        self.notify_path = os.path.join(self.state_dir, "rmsd.sock")
        self.lease_path = os.path.join(self.state_dir, "leases.json")
        self.privileged = os.geteuid() == 0
        self.spawner = None     # rmsbatch.node.spawner.Spawner: rmsd sets one
        self.controller: Conn | None = None
        self.next_connect = 0.0
        self.controller_via: str | None = None     # "tcp:HOST:PORT" when not the socket
        self.backoff = 0.1
        self.last_heartbeat = 0.0
        self.last_scan = 0.0
        self.unacked: dict[str, float] = {}  # run -> when its outcome was last sent
        self.hello_ended: list[str] = []
        self.registered = False
        self.heartbeat_seq = 0
        self.gpus: discovery.Inventory | None = None
        # Jobs running as their users must be able to reach their own job dir.
        from rmsbatch.core.daemon import ensure_dir
        for d in (config.node_state_dir, self.state_dir, self.jobs_dir):
            ensure_dir(d, 0o711)
        self.derive()
        self.loop.listen(self.notify_path, "notify", mode=0o600)
        self.host_cpus = sorted(os.sched_getaffinity(0))
        self.cpus_in_use: dict[str, list[int]] = {}
        self.step_launchers: dict[str, set[int]] = {}   # run -> pids (rmsbatch.node.step)
        self.gpu_usage: dict[str, GpuUsage] = {}
        self.trash.sweep()
        for run in self.runs():
            job = read_json(os.path.join(self.job_dir(run), "job.json")) or {}
            spec = job.get("isolation")
            if spec and spec.get("cpus"):
                self.cpus_in_use[run] = spec["cpus"]
            if job.get("gpus"):
                self.gpu_usage[run] = GpuUsage.load(self.job_dir(run), job["gpus"],
                                                    **self.usage_settings())
        self.sweep_cgroups()
        prolog.sweep(self)
        # Accelerators: declared ones are known now; detected ones when the monitor
        # reports, and rmsd registers only then (or when discovery times out).
        self.discovery_deadline = time.time() + config.cluster.node_daemon.gpu_discovery_timeout
        self.init_monitor()

    def derive(self) -> None:
        """What the daemon derives from its configuration: at start and on reload."""
        nd = self.config.nodes[self.node]
        self.isolation_mode = self.config.cluster.node_daemon.isolation
        self.cgroup_parent = cgroup_parent(self.config.cluster.name, self.node, self.state_dir)
        self.layout = None
        self.isolation_problem = ""
        if self.privileged and self.isolation_mode != "off":
            from rmsbatch.node import cgroup
            try:
                self.layout = cgroup.detect()
            except Exception as exc:   # noqa: BLE001 - said below, and on the node
                self.isolation_problem = f"no usable cgroups: {exc}"
            else:
                lacking = [n for n in ("memory", "pids", "kill")
                           if self.layout.mechanisms.get(n) in (None, "signal")]
                if lacking:
                    self.isolation_problem = (f"cgroups lack {', '.join(lacking)} (mounted "
                                              "controllers: "
                                              f"{', '.join(sorted(self.layout.v1)) or 'none'})")
            if self.isolation_problem:
                log.warning("node %s: %s", self.node, self.isolation_problem)
        self.gpu_mode = nd.gpu_detect
        if self.gpu_mode == "static":
            self.gpus = discovery.static_inventory(nd.gpus)
        # srun, scontrol, ... in jobs (rmsbatch.node.slurmcommands)
        self.slurm_bin = (slurmcommands.install(self.state_dir)
                          if self.config.cluster.node_daemon.slurm_commands else None)

    def reload(self, config: Config) -> None:
        """A new configuration: re-derive, and register again with what it says."""
        if self.node not in config.nodes:
            raise ValueError(f"node {self.node} is no longer in {config.directory}/cluster.toml")
        self.config = config
        self.derive()
        idle_util = self.usage_settings()["idle_util"]
        for usage in self.gpu_usage.values():
            usage.set_idle_util(idle_util)
        if self.monitor is not None:
            # the monitor read its settings (backends, interval, thresholds) at start
            self.stop_monitor()
        self.monitor_idle, self.monitor_starts, self.monitor_next_start = "", 0, 0.0
        if self.controller is not None and not self.controller.closed:
            self.loop.close(self.controller)     # the next hello carries the new inventory
        log.info("node %s: configuration reloaded", self.node)

    def usage_settings(self) -> dict:
        """How runs' GpuUsage judge idle GPUs: the threshold, and the silence that ends
        a streak (as long as the monitor may be quiet before it counts as stuck)."""
        interval = self.config.cluster.node_daemon.gpu_sample_interval
        return {"idle_util": self.config.cluster.accounting.idle_gpu_util,
                "gap_s": max(MONITOR_SILENCE_S, 5 * interval)}

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
        line = "uid " + " ".join(f"{need}({how})" for need, how in have.items())
        if self.isolation_mode == "best-effort":
            line += " [best-effort]"
        missing = self.missing_device_files()
        if missing:
            line += f" (no device file: {', '.join(missing[:4])})"
        return line

    @property
    def address(self) -> str:
        """Where the tasks of job steps on this node are reached (MASTER_ADDR, rrun)."""
        configured = self.config.cluster.node_daemon.address
        if configured:
            return configured.replace("%n", self.node)
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
            return str(infos[0][4][0])
        except (OSError, IndexError):
            return "127.0.0.1"

    def missing_device_files(self) -> list[str]:
        return [p for d in self.devices for p in d.device_files if not os.path.exists(p)]

    @property
    def fenced(self) -> bool:
        """Will jobs see only their own accelerators?"""
        return bool(self.layout is not None and self.layout.mechanisms.get("devices"))

    @property
    def devices(self) -> list[record.Accelerator]:
        return self.gpus.devices if self.gpus else []

    def inventory(self) -> dict:
        nd = self.config.nodes[self.node]
        gpus = self.gpus or discovery.Inventory()
        notes = list(gpus.notes)
        missing = self.missing_device_files()
        if missing:
            notes.append(f"device file(s) missing, so not fenced: {', '.join(missing[:8])}")
        inv = {"cpus": nd.cpus, "mem_mb": nd.mem_mb, "features": list(nd.features),
               "gpus": [d.to_dict() for d in gpus.devices], "gpu_mode": self.gpu_mode,
               "gpu_problems": gpus.problems, "gpu_notes": notes,
               "gpu_backends": gpus.backends, "protections": self.protections,
               "pid": os.getpid(), "address": self.address}
        if self.isolation_problem and self.isolation_mode == "auto":
            inv["isolation_problem"] = self.isolation_problem
        if not self.privileged:
            inv["single_user_uid"] = os.geteuid()
        return inv

    # -- job directories ------------------------------------------------------------
    # A run is one start of a job: a requeued job runs again under the same id,
    # so directories and messages name the run, "<job id>.<restart count>".
    def job_dir(self, run: str) -> str:
        return os.path.join(self.jobs_dir, run)

    def runs(self) -> list[str]:
        return sorted(n for n in os.listdir(self.jobs_dir) if parse_run(n))

    def job_cgroup(self, run: str):
        """The run's cgroups (which may not exist), or None without cgroups."""
        if self.layout is None:
            return None
        job_id, _ = parse_run(run)
        legacy = os.path.exists(os.path.join(self.job_dir(run), LEGACY_PID_FILE))
        # a run started before the upgrade that named cgroups per cluster and node
        parent = _cgroup.DEFAULT_PARENT if legacy else self.cgroup_parent
        return _cgroup.JobCgroup(job_id, self.layout, parent, name=f"job_{run}")

    def sweep_cgroups(self) -> None:
        """Remove the empty cgroups of runs this node no longer has (a crash)."""
        if self.layout is None:
            return
        try:
            removed = _cgroup.cleanup_stale(self.cgroup_parent, self.layout,
                                            keep={f"job_{r}" for r in self.runs()})
        except Exception as exc:   # noqa: BLE001 - a sweep is a nicety
            log.warning("node %s: stale cgroup sweep failed: %s", self.node, exc)
            return
        if removed:
            log.info("node %s: removed %d stale job cgroup(s)", self.node, len(removed))

    def kill_run(self, run: str) -> bool:
        """Kill what is left of a run without a supervisor: True once nothing of it lives."""
        cg = self.job_cgroup(run)
        if cg is not None:
            if not cg.exists():
                return True
            empty = cg.kill()
            if empty:
                try:
                    cg.remove()
                except _cgroup.CgroupError as exc:
                    log.warning("job %s: cgroup not removed: %s", run, exc)
            return empty
        # Without cgroups (single-user mode): the job's session, processes no older than it
        info = JobDir(self.job_dir(run)).pid_info() or {}
        sid, started = info.get("pid"), info.get("start_time")
        if not isinstance(sid, int) or not isinstance(started, (int, float)):
            return True
        import psutil
        alive = False
        for proc in psutil.process_iter(["pid", "create_time"]):
            try:
                if os.getsid(proc.pid) == sid and proc.info["create_time"] >= started - 1:
                    proc.kill()
                    alive = True
            except (OSError, psutil.Error):
                pass
        return not alive

    def ended_or_lost(self, run: str) -> dict | None:
        """The run's outcome if it has ended, also when its supervisor died (then what is
        left of the job is killed first); None while it runs."""
        jd = JobDir(self.job_dir(run))
        out = jd.outcome()
        if out is None:
            if jd.supervisor_alive():
                return None
            out = jd.outcome()   # it may have finished writing just now
        if out is None:
            if jd.pid_info() is None:
                # The supervisor died (or rmsd did, mid-launch) before the job started:
                # it never ran, so it is launched again (requeued), and no node is blamed.
                self.kill_run(run)
                out = {"state": "FAILED", "exit_code": 1, "signal": 0, "end_time": time.time(),
                       "reason": "launch interrupted before the job started",
                       "launch_failed": "launch interrupted before the job started",
                       "node_fault": False}
            else:
                if not self.kill_run(run):
                    log.warning("job %s: supervisor gone, job processes still dying", run)
                    return None
                out = {"state": "FAILED", "exit_code": 1, "signal": 0, "end_time": time.time(),
                       "reason": "job supervisor died (killed?); the job was killed with it"}
                log.warning("job %s: supervisor died; job killed", run)
            prolog.remove_for_run(self, run)     # the supervisor would have
            jd.write_outcome(out)
        job_id, restart = parse_run(run)
        return {**out, "job_id": job_id, "run": restart}

    # -- launching -------------------------------------------------------------------
    def launch(self, job: dict) -> None:
        job_id = job["job_id"]
        run = f"{job_id}.{job['restart_count']}"
        until = job.get("lease_until")
        if isinstance(until, (int, float)) and until <= time.time():
            # The order waited past its lease (rmsd stopped, a slow link): rmsctld may be
            # starting the job elsewhere already. Starting it here could run it twice.
            log.warning("job %d: launch order arrived after its lease ran out: not started",
                        job_id)
            return
        jobdir = self.job_dir(run)
        try:
            os.mkdir(jobdir, 0o711)
        except FileExistsError:
            log.info("job %d: already launched here", job_id)
            self._report_started(run)
            return
        try:
            try:
                failpoint.hit("rmsd.launch.setup")      # tests: this node cannot set up jobs
            except failpoint.InjectedFault as exc:
                raise LaunchError(f"{exc}: injected setup failure") from None
            launching.prepare(self, job, jobdir)
            failpoint.hit("rmsd.launch.before_spawn")   # tests: rmsd dies mid-launch
            pid = launching.spawn_supervisor(jobdir, self.spawner)
        except (LaunchError, OSError) as exc:
            fault = getattr(exc, "node_fault", True)
            why = str(exc) if isinstance(exc, LaunchError) else \
                f"cannot set up the job directory {jobdir}: {exc.strerror or exc}"
            log.error("job %d: launch failed: %s", job_id, why)
            now = time.time()
            try:
                write_json(os.path.join(jobdir, "outcome.json"), {
                    "job_id": job_id, "state": "FAILED", "exit_code": 1, "signal": 0,
                    "start_time": now, "end_time": now, "reason": why,
                    **({"launch_failed": why, "node_fault": True} if fault else {})})
            except OSError as err:      # a full disk: say so without the file
                log.error("job %d: cannot write its outcome: %s", job_id, err)
                self.send({"op": "job_ended", "node": self.node, "outcome": {
                    "job_id": job_id, "run": job["restart_count"], "state": "FAILED",
                    "reason": why, "launch_failed": why, "node_fault": True}})
                return
            self.report_outcome(run)
            return
        log.info("job %d: launched for %s (supervisor pid %s)", job_id, job["user"],
                 pid or "unknown")
        self._report_started(run)

    def launch_step(self, order: dict) -> None:
        """Start this node's tasks of a job step (rrun) under a launcher of their own."""
        from rmsbatch.node import step
        run = f"{order['job_id']}.{order['run']}"
        try:
            pid = step.spawn(self, order)
        except (OSError, KeyError, TypeError) as exc:
            log.error("job %s: step %s not launched: %s", order.get("job_id"),
                      order.get("step_id"), exc)
            return
        self.step_launchers.setdefault(run, set()).add(pid)
        log.info("job %d: step %d: %d task(s) launched (launcher pid %d)", order["job_id"],
                 order["step_id"], len(order["tasks"]), pid)

    def _report_started(self, run: str) -> None:
        job_id, restart = parse_run(run)
        self.send({"op": "job_started", "node": self.node, "job_id": job_id, "run": restart,
                   "protections": self.protections})

    # -- signals and cancel: through the supervisor ------------------------------------
    def cancel(self, run: str, now: bool = False) -> None:
        for pid in self.step_launchers.get(run, ()):
            try:                 # they end their tasks, then themselves
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass
        jd = JobDir(self.job_dir(run))
        if not os.path.isdir(jd.path):
            return
        try:
            jd.control({"op": "cancel", "now": now})
            log.info("job %s: cancelling%s", run, " now (superseded)" if now else "")
        except SupervisorGone:
            self.report_outcome(run)     # kills what is left, then reports

    def signal_job(self, run: str, signum: int, scope: str = "children") -> None:
        jd = JobDir(self.job_dir(run))
        try:
            reply = jd.control({"op": "signal", "signal": signum, "scope": scope})
            log.info("job %s: signal %d to %s processes (%s)", run, signum,
                     reply.get("signalled", 0), scope)
        except SupervisorGone as exc:
            log.warning("%s: signal %d not delivered", exc, signum)

    def set_time_limit(self, run: str, seconds: int) -> None:
        """A new time limit (rcontrol update) for a running job's supervisor."""
        try:
            JobDir(self.job_dir(run)).control({"op": "time_limit", "seconds": seconds})
        except SupervisorGone as exc:
            log.warning("%s: new time limit of %d s not delivered", exc, seconds)

    # -- reporting -------------------------------------------------------------------
    def report_outcome(self, run: str) -> None:
        out = self.ended_or_lost(run)
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
        self.step_launchers.pop(run, None)
        self.trash.discard(self.job_dir(run))

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
            for pids in self.step_launchers.values():
                pids.discard(pid)
            if self.monitor is not None and pid == self.monitor.pid:
                self.monitor.returncode = os.waitstatus_to_exitcode(status)
                self._monitor_gone()

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
        try:
            sock, self.controller_via = tcp.daemon_socket(self.config)
        except (OSError, ClientError) as exc:
            self.next_connect = now + self.backoff
            if self.backoff >= 1.6:
                log.warning("node %s: cannot reach rmsctld (%s); retrying", self.node,
                            exc.strerror if isinstance(exc, OSError) and exc.strerror else exc)
            self.backoff = min(self.backoff * 2, 2.0)
            return False
        self.backoff = 0.1
        self.controller = self.loop.add(sock, {"peer": "rmsctld"})
        self.registered = False
        running, ended = [], []
        for run in self.runs():
            out = self.ended_or_lost(run)
            if out is None:
                running.append(list(parse_run(run)))
            else:
                ended.append(out)
                self.unacked[run] = now
        self.send({"op": "node_hello", "node": self.node, "inventory": self.inventory(),
                   "running": running, "ended": ended, "config": self.config.cluster_digest})
        self.hello_ended = [f"{o['job_id']}.{o['run']}" for o in ended]
        self.last_heartbeat = now
        log.info("node %s: connected to rmsctld (%d running, %d to report)",
                 self.node, len(running), len(ended))
        return True

    def heartbeat(self) -> None:
        """Tell rmsctld we live, and which runs we supervise: it renews their leases."""
        running = [list(parse_run(r)) for r in self.runs()
                   if not os.path.exists(os.path.join(self.job_dir(r), "outcome.json"))]
        self.heartbeat_seq += 1
        idle = self.idle_report(running)
        self.send({"op": "heartbeat", "node": self.node, "seq": self.heartbeat_seq,
                   "running": running, **({"gpus": self.telemetry} if self.telemetry else {}),
                   **({"idle": idle} if idle else {})})

    def idle_report(self, running: list[list[int]]) -> list[list]:
        """[job id, run, idle since or None, seconds idle] of the running runs whose
        idle GPUs are tracked (rmsbatch.ctld.idlegpu)."""
        now, out = time.time(), []
        for job_id, restart in running:
            usage = self.gpu_usage.get(f"{job_id}.{restart}")
            figures = usage.idle(now) if usage is not None else None
            if figures is not None:
                out.append([job_id, restart, *figures])
        return out

    def renewed(self, reply: dict) -> None:
        """rmsctld renewed leases: pass the new deadline on to the supervisors."""
        until = reply.get("lease_until")
        runs = [f"{j}.{r}" for j, r in reply.get("renewed") or []
                if isinstance(j, int) and isinstance(r, int)]
        if not isinstance(until, (int, float)) or not runs:
            return
        try:
            write_json(self.lease_path, {"until": until, "runs": runs}, durable=False)
        except OSError as exc:
            log.error("node %s: cannot write %s: %s", self.node, self.lease_path, exc)

    def on_message(self, conn: Conn, msg: dict) -> None:
        if conn.listener == "notify":
            if conn.meta.get("monitor") or msg.get("op") == "monitor_hello":
                self.on_monitor(conn, msg)
                return
            if msg.get("op") == "ready" and isinstance(msg.get("run"), str) \
                    and parse_run(msg["run"]) is not None:
                job_id, restart = parse_run(msg["run"])
                self.send({"op": "part_ready", "node": self.node, "job_id": job_id,
                           "run": restart})
                return
            if msg.get("op") == "ended" and isinstance(msg.get("job_id"), int):
                for run in self.runs():
                    if parse_run(run)[0] == msg["job_id"]:
                        self.report_outcome(run)
            return
        if "op" in msg:  # an order from the controller
            self.order(msg)
            return
        if not msg.get("ok"):
            log.error("node %s: rmsctld refused: %s", self.node, msg.get("error"))
            if "not in cluster.toml" in str(msg.get("error")):
                raise SystemExit(f"rmsd: error: {msg.get('error')}")
            if not self.registered:
                # the registration itself was refused: try again on a fresh connection
                # (a file that differs waits for an admin: no need to ask every second)
                self.loop.close(conn)
                differs = "cluster.toml differs" in str(msg.get("error"))
                self.next_connect = time.time() + (10.0 if differs else 1.0)
            return
        if "orders" in msg:  # reply to node_hello
            self.registered = True
            self.renewed(msg)
            for run in self.hello_ended:
                self.acknowledged(run)
            self.hello_ended = []
            for order in msg["orders"]:
                self.order(order)
            self.reported_health = None
            self.report_health()
        elif msg.get("ack") == "heartbeat":
            self.renewed(msg)
        elif msg.get("ack") == "job_ended":
            self.acknowledged(f"{msg['job_id']}.{msg['run']}")
        elif msg.get("rehello"):
            self.loop.close(conn)

    def order(self, msg: dict) -> None:
        op = msg.get("op")
        if op == "launch":
            self.launch(msg["job"])
        elif op == "cancel":
            self.cancel(f"{msg['job_id']}.{msg['run']}", now=bool(msg.get("now")))
        elif op == "signal":
            self.signal_job(f"{msg['job_id']}.{msg['run']}", msg["signal"],
                            msg.get("scope", "children"))
        elif op == "time_limit":
            self.set_time_limit(f"{msg['job_id']}.{msg['run']}", msg["seconds"])
        elif op == "step_launch":
            self.launch_step(msg)
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
                log.warning("node %s: lost rmsctld; reconnecting (jobs keep running)",
                            self.node)
                self.controller = None
                self.unacked.clear()
                self.reported_health = None
            if self.gpus is not None:
                self.connect()
        interval = self.config.cluster.controller.heartbeat_interval
        messages = self.loop.poll(0 if self.trash.piled else min(timeout, interval))
        for conn, msg in messages:
            self.on_message(conn, msg)
        if not messages and self.trash.piled:
            self.trash.empty(0.02)
        for conn in self.loop.closed:
            if conn is self.monitor_conn:
                self.monitor_conn = None
        self.loop.closed.clear()
        now = time.time()
        if self.controller is not None and now - self.last_heartbeat >= interval:
            self.heartbeat()
            self.last_heartbeat = now
        self.reap()
        self.check_monitor(now)
        if now - self.last_scan >= 1.0:
            self.last_scan = now
            if self.controller is not None:
                self.scan()

    def stop_jobs(self) -> int:
        """Cancel every run (used by `rmsd --stop-jobs`); returns how many were asked."""
        count = 0
        for run in self.runs():
            try:
                JobDir(self.job_dir(run)).control({"op": "cancel"})
                count += 1
            except SupervisorGone:
                pass
        return count
