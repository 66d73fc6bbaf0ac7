"""rmsbatch as the benchmark sees it: a single-host cluster started with `rms-local up`.

The node is declared like Slurm's: 64 CPUs, 512 GB, 8 stand-in GPUs. The clients
are the installed console scripts next to this interpreter (not a pyenv shim,
which would add ~40 ms to every call), with RMS_CONF_DIR pointing at the cluster.
"""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import sys
import threading
import time

from tests.bench import synthetic, util
from tests.bench.system import System

BIN = os.path.dirname(sys.executable)


def command(name: str) -> str:
    path = os.path.join(BIN, name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name}: not installed (pip install -e . in the repository)")
    return found


RMS_COLUMNS = (
    "id", "name", "user", "uid", "gid", "account", "partition", "qos", "state",
    "submit_time", "start_time", "end_time", "time_limit", "nodes", "ntasks", "cpus_per_task",
    "req_cpus", "req_mem_mb", "req_gpus", "gpus_per_node", "gpu_type", "alloc", "nodelist",
    "alloc_cpus", "alloc_gpus", "launched", "exit_code", "exit_signal", "max_rss_kb",
    "total_cpu_s", "command", "workdir", "stdout", "stderr", "submit_host", "protections",
    "gpu_util", "billing", "alloc_mem_mb", "alloc_gpu_type", "tenant_path", "gpu_idle_s")


def rms_row(first_id: int, job: synthetic.Job, workdir: str) -> tuple:
    """A synthetic job as the controller would have left it in the spool."""
    per_node = {"cpus": job.cpus // job.nodes, "mem_mb": job.mem_mb // job.nodes,
                "gpus": list(range(job.gpus // job.nodes)), "exclusive": False}
    alloc = json.dumps(dict.fromkeys(synthetic.node_names(job.nodelist), per_node))
    out = os.path.join(workdir, "slurm-%j.out")
    return (first_id + job.index, job.name, job.user, job.uid, job.uid, job.account,
            job.partition, "normal", job.state, job.submit, job.start, job.end,
            job.time_limit_min * 60, job.nodes, job.nodes, job.cpus // job.nodes,
            job.cpus, job.mem_mb // job.nodes, job.gpus, job.gpus // job.nodes,
            job.gpu_type, alloc, job.nodelist, job.cpus, job.gpus, 1, job.exit_code,
            job.exit_signal, job.max_rss_kb, job.total_cpu_s, job.name, workdir, out, out,
            "login01", "memory(v2) cpuset(v2) pids(v2) devices(v2) kill(v2)", job.gpu_util,
            job.billing, job.mem_mb, job.gpu_type, job.tenant, job.gpu_idle_s)


class StatsPoller:
    """The controller's scheduling passes over a stretch of time, from the `stats`
    request on a connection of its own: pass_s_last read every `interval` seconds (a
    sample each time the pass count moved), and the exact count and mean from the
    totals before and after."""

    def __init__(self, conn, interval: float):
        self.conn = conn
        self.before = conn.call("stats")["stats"]
        self.sampled: list[float] = []
        self.missed = 0
        self._last = self.before["passes"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self._look()

    def _look(self) -> dict:
        st = self.conn.call("stats")["stats"]
        if st["passes"] != self._last:
            self.sampled.append(st["pass_s_last"])
            self.missed += st["passes"] - self._last - 1
            self._last = st["passes"]
        return st

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        try:
            after = self._look()
        finally:
            self.conn.close()
        count = after["passes"] - self.before["passes"]
        total = after["pass_s_total"] - self.before["pass_s_total"]
        return {"passes": count, "mean_s": total / count if count else None,
                # the maximum since rmsctld started grew: this stretch's maximum
                "max_s": after["pass_s_max"] if after["pass_s_max"] > self.before["pass_s_max"]
                else None, "missed": self.missed, "sampled": self.sampled,
                "rss_kib": after.get("rss_kb")}


class Rms(System):
    label = "rmsbatch"
    family = "rmsbatch"

    def __init__(self, root: str, processes: util.Processes):
        self.dir = os.path.join(root, "cluster")
        super().__init__(os.path.join(root, "work"),
                         dict(os.environ, RMS_CONF_DIR=self.dir, PYTHONUNBUFFERED="1"))
        self.env.pop("RMS_DEBUG", None)
        # An installed package has its bytecode compiled; let Python cache it here too
        # (this environment sets PYTHONDONTWRITEBYTECODE, which recompiles every edited
        # module on every call).
        self.env.pop("PYTHONDONTWRITEBYTECODE", None)
        self.processes = processes
        self.user = getpass.getuser()
        self._conn = None
        self._spec = None

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        util.run([command("rms-local"), "up", "--dir", self.dir, "--gpus", "8",
                  "--cpus", "64", "--memory", "512G"], env=self.env, timeout=120)
        for name, path in (("rmsctld", "run/rmsctld.pid"),
                           ("rmsd", f"run/rmsd-{self._node()}.pid")):
            with open(os.path.join(self.dir, path)) as fh:
                self.processes.adopt(name, int(fh.read().strip()))
        util.log(f"rmsbatch up in {self.dir} (rmsctld pid {self.controller_pid()})")

    def _node(self) -> str:
        return socket.gethostname().split(".")[0]

    def stop(self) -> None:
        self.close()
        try:
            util.run([command("rms-local"), "down", "--dir", self.dir], env=self.env, timeout=60)
        except Exception as exc:  # noqa: BLE001 - the PIDs are stopped below anyway
            util.log(f"rms-local down failed: {exc}")
        self.processes.stop("rmsd")
        self.processes.stop("rmsctld")

    def version(self) -> str:
        return util.run([command("rsub"), "--version"], env=self.env, check=False).stdout.strip() \
            or "rmsbatch"

    def restart_controller(self, meanwhile=None) -> float:
        """Stop rmsctld (rmsd stays), run `meanwhile()`, start it again with `rms-local up`;
        the seconds from that call until it answers with the node up."""
        self.close()
        self.processes.stop("rmsctld")
        if meanwhile is not None:
            meanwhile()
        began = time.perf_counter()
        util.run([command("rms-local"), "up", "--dir", self.dir], env=self.env, timeout=900)
        took = time.perf_counter() - began
        with open(os.path.join(self.dir, "run", "rmsctld.pid")) as fh:
            self.processes.adopt("rmsctld", int(fh.read().strip()))
        return took

    # -- figure 8's synthetic records --------------------------------------------------
    def add_finished(self, count: int, start: float, now: float) -> dict:
        """`count` synthetic finished jobs (tests.bench.synthetic) written into the spool's
        jobs table with rmsctld stopped, in one transaction; rmsctld started again after.
        Their ids follow the spool's last one. Returns timings."""
        out: dict = {}

        def insert():
            from rmsbatch.ctld.spool import Spool
            began = time.perf_counter()
            spool = Spool(os.path.join(self.dir, "spool"))    # the real schema, migrated
            try:
                first = 1 + spool.db.execute(
                    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0),"
                    " COALESCE((SELECT MAX(id) FROM jobs), 0))").fetchone()[0]
                marks = ", ".join("?" * len(RMS_COLUMNS))
                with spool.transaction():
                    spool.db.executemany(
                        f"INSERT INTO jobs ({', '.join(RMS_COLUMNS)}) VALUES ({marks})",
                        (rms_row(first, job, self.workdir)
                         for job in synthetic.jobs(count, start, now)))
                out["insert_s"] = time.perf_counter() - began
                began = time.perf_counter()
                spool.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                out["checkpoint_s"] = time.perf_counter() - began
            finally:
                spool.close()
            out["first_id"] = first
            out["spool_mib"] = os.path.getsize(os.path.join(self.dir, "spool", "rmsbatch.db")) / 2**20

        out["restart_s"] = self.restart_controller(insert)
        util.log(f"rmsbatch: {count:,} synthetic jobs written in {out['insert_s']:.1f} s "
                 f"(+ {out['checkpoint_s']:.1f} s checkpoint; spool {out['spool_mib']:.0f} MiB); "
                 f"rmsctld up again in {out['restart_s']:.1f} s")
        return out

    # -- the library client (for setting the stage; never timed as a figure) -------------
    def client(self):
        if self._conn is None:
            from rmsbatch.net import client
            self._conn = client.Client(client.socket_path(self.dir), timeout=300).connect()
        return self._conn

    def stats_poller(self, interval: float = 0.02) -> "StatsPoller":
        from rmsbatch.net import client
        return StatsPoller(client.Client(client.socket_path(self.dir), timeout=60).connect(),
                           interval)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def call(self, op: str, **fields) -> dict:
        try:
            return self.client().call(op, **fields)
        except Exception:
            self.close()    # a fresh connection next time
            raise

    def spec(self, *args: str) -> dict:
        """The job spec `rsub ARGS` would send."""
        from rmsbatch.cli import jobscript
        sub = jobscript.parse_rsub(list(args), stdin_text=None, environ=dict(self.env),
                                   cwd=self.workdir, hostname=socket.gethostname())
        return sub.spec.to_dict()

    def held_spec(self) -> dict:
        if self._spec is None:
            self._spec = self.spec("-H", "--wrap", "true")
        return self._spec

    def _ids(self, **query) -> list[int]:
        """Job ids only (the "fields" projection), or from full records on a
        controller that does not project."""
        try:
            reply = self.call("jobs", fields=["id"], **query)
        except Exception as exc:  # noqa: BLE001 - RequestRejected on an older controller
            if "field" not in str(exc) and "bad request" not in str(exc):
                raise
            reply = self.call("jobs", **query)
        if "rows" in reply:
            return [row[0] if isinstance(row, (list, tuple)) else row["id"]
                    for row in reply["rows"]]
        return [j["id"] for j in reply["jobs"]]

    # -- System ---------------------------------------------------------------------
    def submit_held(self) -> list[str]:
        return [command("rsub"), "-H", "--wrap", "true"]

    def submit(self, *args: str) -> list[str]:
        return [command("rsub"), *args]

    def queue_default(self) -> list[str]:
        return [command("rq")]

    def queue_format(self) -> list[str]:
        return [command("rq"), "-h", "-o", "%i %t"]

    def queue_one(self, job_id: int) -> list[str]:
        return [command("rq"), "-j", str(job_id)]

    def cancel_all(self) -> list[str]:
        return [command("rcancel"), "-u", self.user]

    def acct_list(self, since: str, until: str) -> list[str]:
        return [command("rsacct"), "-a", "-S", since, "-E", until, "-X", "-n", "-P",
                "-o", synthetic.FIELDS]

    def acct_report(self, since: str, until: str) -> list[str]:
        return [command("rsacct"), "report", "--by", "tenant,user", "-S", since, "-E", until,
                "--csv"]

    def active_ids(self) -> list[int]:
        return self._ids(active=True)

    def cancel_ids(self, ids: list[int]) -> None:
        for i in range(0, len(ids), 5000):
            self.call("cancel", ids=ids[i:i + 5000])

    def controller_pid(self) -> int:
        with open(os.path.join(self.dir, "run", "rmsctld.pid")) as fh:
            return int(fh.read().strip())

    def fill_held(self, count: int) -> None:
        """Through the client library on one connection: ~10x faster than rsub calls."""
        spec = self.held_spec()
        for _ in range(count):
            self.call("submit", spec=spec)
