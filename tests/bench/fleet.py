"""Figure 12 (rmsbatch only): one controller for many nodes.

32, 64 and 128 nodes x 8 GPUs, played by one `rms-fleet` process (rmsbatch.node.fleet:
each node registers, heartbeats every 2 s and reports its jobs as rmsd does, but starts
no process), against a real rmsctld on its own spool. A churn of one-GPU jobs of one
second, three per GPU, goes through; measured: the controller's CPU share while only
heartbeats come in, and during the churn; its memory; its scheduling passes (from the
`stats` request); and jobs per second from the submission to the last end.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from tests.bench import util
from tests.bench.rms import command
from tests.bench.util import Measurement

SIZES = (32, 64, 128)
JOBS_PER_GPU = 3
RUN_S = 1.0
IDLE_S = 6.0


def _cluster(directory: str, nodes: int) -> None:
    util.run([command("rms-local"), "up", "--dir", directory, "--gpus", "8", "--cpus", "64",
              "--memory", "512G"])
    util.run([command("rms-local"), "down", "--dir", directory])
    path = os.path.join(directory, "cluster.toml")
    with open(path) as fh:
        text = fh.read()
    text = re.sub(r'(\[\[nodes\]\]\nnames = )"[^"]*"', f'\\1"gpu[0001-{nodes:04d}]"', text,
                  count=1)
    with open(path, "w") as fh:
        fh.write(text)


def _one_size(nodes: int, env: dict) -> dict:
    import psutil

    from rmsbatch.net import client
    directory = tempfile.mkdtemp(prefix=f"rms-fleet-{nodes}-")
    procs = []
    try:
        _cluster(directory, nodes)
        env = dict(env, RMS_CONF_DIR=directory)
        env.pop("RMS_CONTROLLER", None)
        log = open(os.path.join(directory, "daemons.log"), "ab")
        procs.append(subprocess.Popen([sys.executable, "-m", "rmsbatch.ctld.rmsctld",
                                       "--conf-dir", directory], env=env, stdout=log,
                                      stderr=log, start_new_session=True))
        sock = os.path.join(directory, "run", "rmsctld.sock")
        util.wait_until(lambda: os.path.exists(sock), 30, what="rmsctld")
        procs.append(subprocess.Popen([sys.executable, "-m", "rmsbatch.node.fleet",
                                       "--conf-dir", directory, "--nodes",
                                       f"gpu[0001-{nodes:04d}]", "--run", str(RUN_S)],
                                      env=env, stdout=log, stderr=log,
                                      start_new_session=True))

        def stats():
            return client.Client(sock, timeout=60).call("stats")["stats"]
        util.wait_until(lambda: stats()["nodes_connected"] == nodes, 60,
                        what=f"{nodes} fleet nodes")
        ctld = psutil.Process(procs[0].pid)
        time.sleep(2.0)                 # the registrations settle
        cpu0, t0 = sum(ctld.cpu_times()[:2]), time.monotonic()
        time.sleep(IDLE_S)
        idle = (sum(ctld.cpu_times()[:2]) - cpu0) / (time.monotonic() - t0)

        jobs = nodes * 8 * JOBS_PER_GPU
        before = stats()
        cpu0, t0 = sum(ctld.cpu_times()[:2]), time.monotonic()
        util.run([command("rsub"), f"--array=1-{jobs}", "--gpus", "1", "-t", "1",
                  "-o", "/dev/null", "--wrap", "true"], env=env)
        util.wait_until(lambda: (lambda s: s["pending"] == 0 and s["running"] == 0)(stats()),
                        600, interval=0.2, what="the churn to drain")
        wall = time.monotonic() - t0
        busy = (sum(ctld.cpu_times()[:2]) - cpu0) / wall
        after = stats()
        passes = after["passes"] - before["passes"]
        return {"nodes": nodes, "jobs": jobs, "jobs_per_s": jobs / wall,
                "cpu_idle": idle * 100, "cpu_churn": busy * 100,
                "rss_mib": after["rss_kb"] / 1024,
                "pass_mean_s": (after["pass_s_total"] - before["pass_s_total"]) / max(1, passes),
                "pass_max_s": after["pass_s_max"], "passes": passes}
    finally:
        for proc in reversed(procs):
            try:
                os.killpg(proc.pid, 15)
                proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(directory, ignore_errors=True)


def many_nodes(ctx) -> None:
    rows = {}
    for n in SIZES:
        rows[n] = [
            ctx.row("fleet", f"12 {n} nodes x 8 GPUs: end to end, {n * 8 * JOBS_PER_GPU} "
                             f"one-GPU jobs of {RUN_S:g} s", "jobs/s", higher_better=True),
            ctx.row("fleet", f"12 {n} nodes: rmsctld CPU, heartbeats only", "%"),
            ctx.row("fleet", f"12 {n} nodes: rmsctld CPU, during the churn", "%"),
            ctx.row("fleet", f"12 {n} nodes: rmsctld memory after the churn", "MiB"),
            ctx.row("fleet", f"12 {n} nodes: scheduling pass, mean", "ms"),
            ctx.row("fleet", f"12 {n} nodes: scheduling pass, max", "ms"),
        ]

    class Rms:
        label = "rmsbatch"
    env = dict(ctx.rms.env if ctx.rms is not None else os.environ)
    for n in SIZES:
        def run(n=n):
            r = _one_size(n, env)
            util.log(f"fleet: {n} nodes: {r['jobs']} jobs at {r['jobs_per_s']:.0f} jobs/s, "
                     f"rmsctld {r['cpu_idle']:.1f}% idle / {r['cpu_churn']:.0f}% busy, "
                     f"{r['rss_mib']:.0f} MiB, {r['passes']} passes "
                     f"(mean {r['pass_mean_s'] * 1e3:.1f} ms)")
            return (Measurement([r["jobs_per_s"]], extra=r), Measurement([r["cpu_idle"]]),
                    Measurement([r["cpu_churn"]]), Measurement([r["rss_mib"]]),
                    Measurement([r["pass_mean_s"]]), Measurement([r["pass_max_s"]]))
        ctx.measure(Rms(), rows[n], run)
    for group in rows.values():
        for r in group:
            r.cells["Slurm"] = "n/a"
