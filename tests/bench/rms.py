"""rmsbatch as the benchmark sees it: a single-host cluster started with `rms-local up`.

The node is declared like Slurm's: 64 CPUs, 512 GB, 8 stand-in GPUs. The clients
are the installed console scripts next to this interpreter (not a pyenv shim,
which would add ~40 ms to every call), with RMS_CONF_DIR pointing at the cluster.
"""
from __future__ import annotations

import getpass
import os
import shutil
import socket
import sys

from tests.bench import util
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

    # -- the library client (for setting the stage; never timed as a figure) -------------
    def client(self):
        if self._conn is None:
            from rmsbatch.net import client
            self._conn = client.Client(client.socket_path(self.dir), timeout=300).connect()
        return self._conn

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

    def acct_all(self) -> list[str]:
        return [command("rsacct"), "-a", "-S", "2020-01-01", "-X", "-n", "-P",
                "-o", "jobid,state"]

    def active_ids(self) -> list[int]:
        return self._ids(active=True)

    def cancel_ids(self, ids: list[int]) -> None:
        for i in range(0, len(ids), 5000):
            self.call("cancel", ids=ids[i:i + 5000])

    def finished_count(self) -> int:
        return len(self._ids(finished=True))

    def controller_pid(self) -> int:
        with open(os.path.join(self.dir, "run", "rmsctld.pid")) as fh:
            return int(fh.read().strip())

    def fill_held(self, count: int) -> None:
        """Through the client library on one connection: ~10x faster than rsub calls."""
        spec = self.held_spec()
        for _ in range(count):
            self.call("submit", spec=spec)
