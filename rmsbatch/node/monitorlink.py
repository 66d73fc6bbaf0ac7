"""The node daemon's link to its accelerator monitor (rmsbatch.node.devices.monitor):
start it, restart it when it dies or hangs in the driver, take its inventory,
telemetry and health verdicts, and pass them on to rmsctld.

A mixin of NodeDaemon: it uses the daemon's config, node name, loop, notify socket,
GPU usage records and controller connection (`send`).
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

from rmsbatch.net.loop import Conn
from rmsbatch.node.devices import discovery
from rmsbatch.node.jobdir import PID_FILE, read_json

log = logging.getLogger("rmsbatch.noded")

# Telemetry forwarded to rmsctld with each heartbeat (process lists stay on the node).
TELEMETRY_KEYS = ("util_pct", "mem_used_mb", "power_w", "temp_c", "sm_clock_mhz", "thermal",
                  "ecc_uncorrected")
MONITOR_BACKOFF_S = (1, 5, 30, 60)
MONITOR_SILENCE_S = 60      # a monitor quiet for longer than this (and 5 intervals) is stuck


class MonitorLink:
    def init_monitor(self) -> None:
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
            info = read_json(os.path.join(self.job_dir(run), PID_FILE))
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

    def stop_monitor(self) -> None:
        if self.monitor is not None:
            self.monitor_idle = "rmsd stopping"
            try:
                self.monitor.terminate()
                self.monitor.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.monitor.kill()
            self.monitor = None

