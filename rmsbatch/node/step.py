"""The step launcher: one process per node of a job step (rrun), forked by rmsd on
the controller's `step_launch` order.

rmsd works out what needs its own state (the run's job.json, its cgroup, which
devices each task sees) and forks; the launcher leaves rmsd's session (so it never
blocks rmsd's loop, and outlives a restart of rmsd), joins the job's cgroup on this
node while still root, drops to the job's user, connects back to rrun (the token
proves it is the launcher rrun asked for), and starts one process per task with the
step's environment: Slurm's (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID,
SLURM_STEP_ID, ...), ours (RMS_*), and torch.distributed's (MASTER_ADDR,
MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE). It streams each
task's stdout and stderr to rrun as they come, then its exit status and usage
(rmsbatch.net.stepio). When rrun goes away (the batch script was cancelled) or
asks, or rmsd stops the run (SIGTERM), the tasks are killed: SIGTERM, then SIGKILL
after KILL_GRACE_S.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time

from rmsbatch.net import stepio
from rmsbatch.node import jobprocess, procs
from rmsbatch.node.devices import record
from rmsbatch.node.jobdir import JOB_FILE, OUTCOME_FILE, PID_FILE
from rmsbatch.node.jobfile import JobFileError, load_job

log = logging.getLogger("rmsbatch.noded")

KILL_GRACE_S = 2.0
CONNECT_TIMEOUT_S = 10.0
SETUP_WAIT_S = 10.0
VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                   "ZE_AFFINITY_MASK", "GPU_DEVICE_ORDINAL")


def task_visibility(devices, job_gpus: list[int], task_gpus: list[int] | None,
                    fenced: bool) -> dict[str, str]:
    """The visibility variables of one task: the job's, narrowed to the task's GPUs.
    Fenced, the job's device cgroup lets the runtime see all the job's devices, so a
    task's devices keep the numbers the job gives them."""
    env = record.visibility(devices, job_gpus, fenced)
    if task_gpus is None:
        return env
    by_index = {d.index: d for d in devices}
    keep = set(task_gpus)
    for var in list(env):
        if var == "CUDA_DEVICE_ORDER":
            continue
        ids = env[var].split(",") if env[var] else []
        mine = [i for i in sorted(job_gpus) if i in by_index and by_index[i].env == var]
        env[var] = ",".join(v for i, v in zip(mine, ids) if i in keep)
    return env


def prepare(nd, order: dict) -> dict:
    """What the launcher needs from rmsd's state; `error` set when this node cannot
    run the step's tasks (the launcher still tells rrun so)."""
    run = f"{order['job_id']}.{order['run']}"
    jobdir = nd.job_dir(run)
    plan = {"order": order, "node": nd.node, "error": "", "job": None, "cgroup": None,
            "visibility": [], "jobdir": jobdir}
    try:
        if os.path.exists(os.path.join(jobdir, OUTCOME_FILE)):
            raise JobFileError("it has ended there")
        plan["job"] = load_job(os.path.join(jobdir, JOB_FILE))
    except JobFileError as exc:
        plan["error"] = (f"node {nd.node} holds no running allocation of job "
                         f"{order['job_id']} ({exc})")
        return plan
    plan["cgroup"] = nd.job_cgroup(run)
    plan["required"] = bool(plan["job"].isolation) and nd.isolation_mode == "auto" \
        and nd.privileged
    plan["visibility"] = [task_visibility(nd.devices, order["job_gpus"], g, nd.fenced)
                          for g in order["gpus"]]
    return plan


def spawn(nd, order: dict) -> int:
    """Fork the launcher for one node's part of a step; returns its pid."""
    plan = prepare(nd, order)
    pid = os.fork()
    if pid:
        return pid
    try:
        procs.detach()
        Launcher(plan).main()
        os._exit(0)
    except BaseException:
        os._exit(1)


class Launcher:
    def __init__(self, plan: dict):
        self.plan = plan
        self.order = plan["order"]
        self.sock: socket.socket | None = None
        self.tasks: dict[int, dict] = {}      # task id -> pid, pipes, status, usage
        self.by_fd: dict[int, tuple[int, int]] = {}
        self.kill_at: float | None = None
        self.killed = False
        self.wake_r = self.wake_w = -1

    # -- setting up --------------------------------------------------------------
    def connect(self) -> None:
        host, port = self.order["rrun"]
        self.sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
        self.sock.settimeout(None)
        self.send(self.order["tasks"][0] if self.order["tasks"] else 0, stepio.HELLO,
                  {"token": self.order["token"], "node": self.plan["node"],
                   "tasks": self.order["tasks"]})

    def send(self, task: int, kind: int, payload=b"") -> None:
        if self.sock is None:
            return
        try:
            self.sock.sendall(stepio.frame(task, kind, payload))
        except OSError:
            self.sock = None       # rrun is gone: the tasks go too
            self.stop(signal.SIGKILL)

    def enter(self) -> str:
        """Into the job's cgroup (as root), then the job's user; '' or what failed."""
        job, cg = self.plan["job"], self.plan["cgroup"]
        # A step may follow its job's start closely: the run's supervisor here may still
        # be setting up the cgroup. It has once the run's process is recorded.
        deadline = time.monotonic() + SETUP_WAIT_S
        while not any(os.path.exists(os.path.join(self.plan["jobdir"], f))
                      for f in (PID_FILE, OUTCOME_FILE)):
            if time.monotonic() > deadline:
                return (f"job {job.job_id}'s allocation on {self.plan['node']} was not set up "
                        f"within {SETUP_WAIT_S:.0f} s")
            time.sleep(0.02)
        if os.path.exists(os.path.join(self.plan["jobdir"], OUTCOME_FILE)):
            return f"job {job.job_id}'s allocation on {self.plan['node']} has ended"
        if cg is not None:
            try:
                if not cg.exists():
                    raise OSError("the job's cgroup is gone")
                cg.attach_self()
            except Exception as exc:   # noqa: BLE001 - said to rrun
                if self.plan.get("required"):
                    return f"cannot enter job {job.job_id}'s cgroup on {self.plan['node']}: {exc}"
        if os.geteuid() == 0:
            try:
                jobprocess.become(job)
            except OSError as exc:
                return f"cannot switch to uid {job.uid}: {exc.strerror or exc}"
        elif job.uid != os.geteuid():
            return f"rmsd on {self.plan['node']} cannot start tasks for uid {job.uid}"
        return ""

    def environment(self, task: int, local: int) -> dict[str, str]:
        o = self.order
        env = {k: v for k, v in o["env"].items() if k not in VISIBILITY_VARS}
        env.update(self.plan["visibility"][local])
        node = self.plan["node"]
        ours = {
            "STEP_ID": o["step_id"], "STEPID": o["step_id"], "PROCID": task,
            "LOCALID": local, "NODEID": o["node_index"], "NTASKS": o["ntasks"],
            "NPROCS": o["ntasks"], "STEP_NUM_TASKS": o["ntasks"],
            "STEP_NUM_NODES": o["nnodes"], "STEP_NODELIST": o["nodelist"],
            "STEP_TASKS_PER_NODE": o["tasks_per_node"], "TASKS_PER_NODE": o["tasks_per_node"],
            "GTIDS": ",".join(map(str, o["tasks"])), "NODENAME": node,
            "CPUS_ON_NODE": o["cpus"], "JOB_GPUS": ",".join(map(str, o["job_gpus"])),
            "GPUS_ON_NODE": len(o["job_gpus"]),
        }
        for key, value in ours.items():
            env[f"SLURM_{key}"] = env[f"RMS_{key}"] = str(value)
        env["SLURMD_NODENAME"] = node
        env.update(MASTER_ADDR=o["master_addr"], MASTER_PORT=str(o["master_port"]),
                   WORLD_SIZE=str(o["ntasks"]), RANK=str(task), LOCAL_RANK=str(local),
                   LOCAL_WORLD_SIZE=str(len(o["tasks"])))
        return env

    def start(self, task: int, local: int) -> None:
        job = self.plan["job"]
        env = self.environment(task, local)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
                    signal.signal(sig, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out_w, 1)
                os.dup2(err_w, 2)
                os.closerange(3, 65536)
                env["SLURM_TASK_PID"] = env["RMS_TASK_PID"] = str(os.getpid())
                jobprocess.inherit(job)
                argv = self.order["argv"]
                try:
                    os.chdir(self.order["cwd"])
                except OSError as exc:
                    os.write(2, f"rrun: error: task {task}: cannot chdir to "
                                f"{self.order['cwd']}: {exc.strerror}\n".encode())
                    os._exit(1)
                try:
                    os.execvpe(argv[0], argv, env)
                except OSError as exc:
                    os.write(2, f"rrun: error: task {task}: cannot execute {argv[0]}: "
                                f"{exc.strerror}\n".encode())
                    os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
            finally:
                os._exit(127)
        os.close(out_w)
        os.close(err_w)
        self.tasks[task] = {"pid": pid, "fds": {out_r, err_r}, "status": None,
                            "cpu_s": 0.0, "rss_kb": 0, "reaped_at": None}
        self.by_fd[out_r] = (task, stepio.OUT)
        self.by_fd[err_r] = (task, stepio.ERR)

    # -- running ------------------------------------------------------------------
    def stop(self, sig: int = signal.SIGTERM) -> None:
        for t in self.tasks.values():
            if t["status"] is None:
                try:
                    os.killpg(t["pid"], sig)
                except OSError:
                    pass
        if sig == signal.SIGKILL:
            self.killed = True
        elif self.kill_at is None:
            self.kill_at = time.monotonic() + KILL_GRACE_S

    def _on_term(self, signum, frame) -> None:
        pass                    # the wakeup fd wakes the loop; nothing else to do

    def reap(self) -> None:
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for t in self.tasks.values():
                if t["pid"] == pid:
                    t["status"] = status
                    t["cpu_s"] = ru.ru_utime + ru.ru_stime
                    t["rss_kb"] = int(ru.ru_maxrss)
                    t["reaped_at"] = time.monotonic()

    def finish_task(self, task: int) -> None:
        t = self.tasks[task]
        for fd in t["fds"]:
            self.by_fd.pop(fd, None)
            os.close(fd)
        t["fds"] = set()
        status = t["status"]
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
        self.send(task, stepio.EXIT, {"exit_code": code, "signal": sig,
                                      "cpu_s": round(t["cpu_s"], 3), "max_rss_kb": t["rss_kb"]})
        t["sent"] = True

    def main(self) -> None:
        try:
            self.connect()
        except OSError:
            return              # rrun is gone already: nothing to run for
        if self.plan["error"]:
            self.send(self.order["tasks"][0], stepio.ERROR, self.plan["error"])
            return
        why = self.enter()
        if why:
            self.send(self.order["tasks"][0], stepio.ERROR, why)
            return
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        term = []
        signal.signal(signal.SIGTERM, lambda s, f: term.append(s))
        signal.signal(signal.SIGCHLD, self._on_term)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        # `rcancel --signal` reaches every process in the job's cgroup, the tasks and
        # this launcher alike: the tasks act on it, the launcher must not die of it
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
                    signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH):
            signal.signal(sig, self._on_term)
        for local, task in enumerate(self.order["tasks"]):
            try:
                self.start(task, local)
            except OSError as exc:
                self.send(task, stepio.ERROR, f"cannot start task {task} on "
                                              f"{self.plan['node']}: {exc.strerror or exc}")
                self.stop(signal.SIGKILL)
                break
        reader = stepio.Reader()
        while True:
            self.reap()
            if term and self.kill_at is None:
                self.stop()
            now = time.monotonic()
            if self.kill_at is not None and not self.killed and now >= self.kill_at:
                self.stop(signal.SIGKILL)
            for task, t in self.tasks.items():
                # output first, then the exit; a daemonized grandchild holding the
                # pipes open does not hold the task's end for long
                if t["status"] is not None and not t.get("sent") and (
                        not t["fds"] or now - t["reaped_at"] > 2.0):
                    self.finish_task(task)
            if all(t.get("sent") for t in self.tasks.values()):
                break
            fds = [self.wake_r, *self.by_fd] + ([self.sock] if self.sock else [])
            ready, _, _ = select.select(fds, [], [], 0.5)
            for fd in ready:
                if fd is self.sock:
                    data = b""
                    try:
                        data = self.sock.recv(65536)
                        frames = reader.feed(data) if data else None
                    except (OSError, stepio.FrameError):
                        frames = None
                    if not frames and not data:
                        self.sock = None
                        self.stop(signal.SIGKILL)     # rrun is gone
                    for _, kind, _ in frames or ():
                        if kind == stepio.KILL:
                            self.stop()
                elif fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                else:
                    task, kind = self.by_fd.get(fd, (None, None))
                    if task is None:
                        continue
                    data = os.read(fd, 65536)
                    if data:
                        self.send(task, kind, data)
                    else:
                        self.by_fd.pop(fd)
                        self.tasks[task]["fds"].discard(fd)
                        os.close(fd)
        self.send(0, stepio.DONE)
        if self.sock is not None:
            self.sock.close()
