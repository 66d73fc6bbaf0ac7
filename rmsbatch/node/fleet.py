"""rms-fleet: many node daemons' protocol in one process, for testing a controller at
scale (128 nodes on a laptop). A test mode, not a node daemon: it starts no job.

Each node of the fleet connects to rmsctld as rmsd does (the Unix socket on this host,
or TCP with a MUNGE credential: RMS_CONTROLLER), registers with the inventory its
cluster.toml gives it and the configuration digest, sends real heartbeats with the
runs it holds, answers a launch with `job_started`, and after `--run` seconds reports
the run ended (COMPLETED, exit 0); a cancel ends it at once. So the controller does
all its work -- scheduling, leases, heartbeats, state changes in the spool -- while
the machine runs no job process. Used by the benchmark's scale figure
(tests/bench/fleet.py).

    python -m rmsbatch.node.fleet --conf-dir DIR --nodes 'gpu[0001-0128]' --run 1
"""
from __future__ import annotations

import argparse
import heapq
import logging
import os
import sys
import time

from rmsbatch import config as configmod
from rmsbatch.core import hostlist
from rmsbatch.net import tcp
from rmsbatch.net.loop import Loop

log = logging.getLogger("rmsbatch.fleet")


class FleetNode:
    def __init__(self, name: str):
        self.name = name
        self.conn = None
        self.registered = False
        self.seq = 0
        self.running: dict[tuple[int, int], float] = {}     # (job, run) -> start
        self.next_heartbeat = 0.0


class Fleet:
    def __init__(self, cfg, names: list[str], run_s: float):
        self.cfg = cfg
        self.run_s = run_s
        self.nodes = {n: FleetNode(n) for n in names}
        self.loop = Loop()
        self.ends: list[tuple[float, str, int, int]] = []   # (when, node, job, run)
        self.started = self.ended = 0

    def connect(self, node: FleetNode) -> None:
        node.conn = self.loop.add(tcp.daemon_socket(self.cfg)[0], {"node": node.name})
        node.registered = False
        nd = self.cfg.nodes[node.name]
        inventory = {"cpus": nd.cpus, "mem_mb": nd.mem_mb, "features": list(nd.features),
                     "gpus": [], "gpu_mode": "static", "gpu_problems": [], "gpu_notes": [],
                     "gpu_backends": {"static": "used"}, "protections": "",
                     "pid": os.getpid(), "address": ""}
        self.loop.send(node.conn, {
            "op": "node_hello", "node": node.name, "inventory": inventory,
            "running": [list(r) for r in node.running], "ended": [],
            "config": self.cfg.cluster_digest})

    def on_message(self, node: FleetNode, msg: dict, now: float) -> None:
        if "op" in msg:
            self.order(node, msg, now)
        elif "orders" in msg:
            node.registered = True
            for order in msg["orders"]:
                self.order(node, order, now)
        elif not msg.get("ok"):
            log.error("node %s: rmsctld refused: %s", node.name, msg.get("error"))

    def order(self, node: FleetNode, msg: dict, now: float) -> None:
        op = msg.get("op")
        if op == "launch":
            job = msg["job"]
            key = (job["job_id"], job["restart_count"])
            if key in node.running:
                return
            node.running[key] = now
            self.started += 1
            self.loop.send(node.conn, {"op": "job_started", "node": node.name,
                                       "job_id": key[0], "run": key[1], "protections": ""})
            heapq.heappush(self.ends, (now + self.run_s, node.name, *key))
        elif op == "cancel":
            key = (msg["job_id"], msg["run"])
            if key in node.running:
                self.end(node, key, now, "CANCELLED")

    def end(self, node: FleetNode, key: tuple[int, int], now: float, state: str) -> None:
        start = node.running.pop(key, None)
        if start is None:
            return
        self.ended += 1
        self.loop.send(node.conn, {"op": "job_ended", "node": node.name, "outcome": {
            "job_id": key[0], "run": key[1], "state": state,
            "exit_code": 0 if state == "COMPLETED" else None, "signal": 0,
            "start_time": start, "end_time": now}})

    def run_once(self, timeout: float = 0.05) -> None:
        now = time.time()
        interval = self.cfg.cluster.controller.heartbeat_interval
        for node in self.nodes.values():
            if node.conn is None or node.conn.closed:
                try:
                    self.connect(node)
                except OSError as exc:
                    log.warning("node %s: cannot reach rmsctld: %s", node.name, exc)
                    node.conn = None
                    continue
                node.next_heartbeat = now + interval
            elif node.registered and now >= node.next_heartbeat:
                node.seq += 1
                node.next_heartbeat = now + interval
                self.loop.send(node.conn, {"op": "heartbeat", "node": node.name,
                                           "seq": node.seq,
                                           "running": [list(r) for r in node.running]})
        while self.ends and self.ends[0][0] <= now:
            _, name, job_id, run = heapq.heappop(self.ends)
            self.end(self.nodes[name], (job_id, run), now, "COMPLETED")
        wait = timeout if not self.ends else max(0.0, min(timeout, self.ends[0][0] - now))
        for conn, msg in self.loop.poll(wait):
            node = self.nodes.get(conn.meta.get("node"))
            if node is not None:
                self.on_message(node, msg, time.time())
        self.loop.closed.clear()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rms-fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--conf-dir", default=os.environ.get("RMS_CONF_DIR", "/etc/rmsbatch"))
    p.add_argument("--nodes", required=True, help="the nodes to play, a hostlist of "
                   "cluster.toml's nodes")
    p.add_argument("--run", type=float, default=1.0, help="seconds each job runs")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        cfg = configmod.load(args.conf_dir)
        names = hostlist.expand(args.nodes)
    except (configmod.ConfigError, ValueError) as exc:
        print(f"rms-fleet: error: {exc}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in cfg.nodes]
    if unknown:
        print(f"rms-fleet: error: node {unknown[0]} is not in cluster.toml", file=sys.stderr)
        return 2
    fleet = Fleet(cfg, names, args.run)
    try:
        while True:
            fleet.run_once()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
