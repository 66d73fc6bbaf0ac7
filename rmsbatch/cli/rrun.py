"""rrun: run a job step's tasks inside a job, like srun in a batch script.

    rrun [options] COMMAND [ARGS...]

rrun asks rmsctld for a step (`step_create`: the layout of its tasks on the job's
nodes), listens on its node's address for the step's launchers, asks rmsctld to
start them (`step_launch`), prints the tasks' output as it arrives (`-l`: each line
labelled with its task), and ends with the worst task's exit status (a signal N:
128+N), which it also reports (`step_end`) for rsacct. When rrun dies, the
launchers see its connection close and kill the tasks.
"""
from __future__ import annotations

import os
import secrets
import select
import signal
import socket
import sys
import time

from rmsbatch.cli.arguments import CommandParser
from rmsbatch.cli.common import CommandError, UsageError, exit_with
from rmsbatch.net import stepio

PROG = "rrun"
CONNECT_WAIT_S = 30.0           # how long the nodes' launchers may take to call back
MAX_PARTIAL = 1 << 20           # a "line" longer than this is passed on unfinished

EXAMPLES = """
  rrun hostname                    one task per node of the job
  rrun -n 8 -l python train.py     8 tasks, output lines labelled "3: ..."
  rrun -N 1 -n 1 ./prepare.sh      one task on the job's first node
  rrun --gpus-per-task=1 -n 4 ./worker
  rrun -K -n 4 ./mpi_like_app      a task failing kills the others
  rrun -n1 ./a & rrun -n1 ./b & wait   two steps at once
"""


def build_parser() -> CommandParser:
    p = CommandParser(prog=PROG, examples=EXAMPLES, usage="%(prog)s [options] COMMAND [ARGS...]",
                      description="Run a job step: COMMAND as parallel tasks on the nodes of "
                                  "the job rrun runs in (like srun inside sbatch).")
    p.add_argument("-n", "--ntasks", type=int, metavar="N",
                   help="tasks to run (default: the job's $SLURM_NTASKS unless -N, -w or "
                        "--ntasks-per-node shape the step; else one per node)")
    p.add_argument("-N", "--nodes", type=int, metavar="N", help="nodes of the job to use")
    p.add_argument("-w", "--nodelist", metavar="HOSTLIST", help="these nodes of the job")
    p.add_argument("-c", "--cpus-per-task", type=int, metavar="N",
                   help="CPUs per task: how many tasks fit a node (not enforced per task)")
    p.add_argument("--ntasks-per-node", type=int, metavar="N", help="tasks on each node")
    p.add_argument("--gpus-per-task", type=int, metavar="N", help="GPUs each task sees, its own")
    p.add_argument("--gpu-bind", metavar="HOW",
                   help="closest (default), none (all the job's), single:N (N tasks per "
                        "GPU), map_gpu:ID[,ID...] (per local task)")
    p.add_argument("-l", "--label", action="store_true", help="prefix each line with its task id")
    p.add_argument("-u", "--unbuffered", action="store_true",
                   help="pass output on as it arrives, not in whole lines")
    p.add_argument("-K", "--kill-on-bad-exit", nargs="?", type=int, const=1, default=None,
                   choices=(0, 1), metavar="0|1",
                   help="a task exiting non-zero kills the others")
    p.add_argument("-J", "--job-name", metavar="NAME", help="the step's name (rsacct)")
    p.add_argument("--export", metavar="ALL|NONE|VAR[,VAR=VALUE...]",
                   help="environment of the tasks (default ALL: rrun's own)")
    for flag in ("--overlap", "--exact"):
        p.add_argument(flag, action="store_true", help="accepted; steps always share the "
                                                        "allocation's CPUs")
    p.add_argument("--mpi", metavar="TYPE", help="accepted, not used (no PMI)")
    p.add_argument("--cpu-bind", metavar="HOW", help="accepted, not enforced")
    return p


def split_command(parser: CommandParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """rrun's options, then the command: the first word that is not an option or an
    option's value (the command's own options are not rrun's)."""
    takes_value = {s for a in parser._actions if a.nargs is None and a.option_strings
                   for s in a.option_strings}
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[:i], argv[i + 1:]
        if not word.startswith("-") or word == "-":
            break
        if word in takes_value:
            i += 1
        i += 1
    return argv[:i], argv[i:]


def _env_int(env: dict, *names: str) -> int | None:
    for name in names:
        text = env.get(name, "")
        head = text.split("(")[0].split(",")[0]
        if head.isdigit():
            return int(head)
    return None


def task_environment(spec: str | None, env: dict) -> dict[str, str]:
    """--export: ALL (rrun's environment), NONE (only the job's SLURM_/RMS_ variables),
    or named variables and VAR=VALUE assignments (with ALL among them, added to it)."""
    if not spec or spec.upper() == "ALL":
        return dict(env)
    items = [s for s in spec.split(",") if s]
    keep = {k: v for k, v in env.items() if k.startswith(("SLURM_", "RMS_"))}
    if items and items[0].upper() == "ALL":
        keep, items = dict(env), items[1:]
    elif items and items[0].upper() == "NONE":
        items = items[1:]
    for item in items:
        name, eq, value = item.partition("=")
        if not name or not (name[0].isalpha() or name[0] == "_"):
            raise UsageError(f"argument --export: {item!r} is not VAR or VAR=VALUE")
        if eq:
            keep[name] = value
        elif name in env:
            keep[name] = env[name]
    return keep


def parse(argv: list[str], env: dict) -> tuple:
    parser = build_parser()
    options, command = split_command(parser, argv)
    args = parser.parse_args(options)
    if not command:
        parser.error("no command to run: rrun [options] COMMAND [ARGS...]")
    for name in ("ntasks", "nodes", "cpus_per_task", "ntasks_per_node", "gpus_per_task"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"argument --{name.replace('_', '-')}: must be at least 1, not {value}")
    # The job's task count is the default only when the command line does not shape
    # the step itself (-N, -w, --ntasks-per-node): `rrun -N1 hostname` is one task.
    shaped = args.nodes is not None or args.nodelist or args.ntasks_per_node is not None
    if args.ntasks is None and not shaped:
        args.ntasks = _env_int(env, "SLURM_NTASKS", "SLURM_NPROCS")
        args.ntasks_per_node = _env_int(env, "SLURM_NTASKS_PER_NODE")
    if args.cpus_per_task is None:
        args.cpus_per_task = _env_int(env, "SLURM_CPUS_PER_TASK") or 1
    if args.gpus_per_task is None:
        args.gpus_per_task = _env_int(env, "SLURM_GPUS_PER_TASK")
    if args.gpu_bind is None:
        args.gpu_bind = env.get("SLURM_GPU_BIND") or None
    return args, command


def job_of(env: dict) -> int:
    for name in ("RMS_JOB_ID", "SLURM_JOB_ID", "SLURM_JOBID"):
        text = env.get(name, "")
        if text.isdigit() and int(text) > 0:
            return int(text)
    raise CommandError("not inside a job (RMS_JOB_ID and SLURM_JOB_ID are not set): run "
                       "rrun from a job script submitted with rsub")


def free_port(address: str) -> int:
    """A port free on `address` now (when it is one of this host's), else one derived
    from the process id that is free here."""
    for host in (address, ""):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, 0))
            except OSError:
                continue
            return s.getsockname()[1]
    return 20000 + os.getpid() % 20000


class Step:
    """rrun's side of a running step: the launchers' connections, the tasks' output
    and ends."""

    def __init__(self, reply: dict, token: str, label: bool, kill_on_bad_exit: bool,
                 unbuffered: bool = False):
        self.nodes = {n["node"]: n["tasks"] for n in reply["nodes"]}
        self.token = token
        self.label = label
        self.unbuffered = unbuffered and not label
        self.kill_on_bad_exit = kill_on_bad_exit
        self.conns: dict[socket.socket, dict] = {}     # -> {"node", "reader"}
        self.exits: dict[int, dict] = {}
        self.partial: dict[tuple[int, int], bytes] = {}
        self.pending = set(self.nodes)                 # nodes whose launcher has not called
        self.finished: set[str] = set()
        self.killing = False
        self.bad: dict | None = None                   # the first task that failed
        self.errors: list[str] = []

    @property
    def ntasks(self) -> int:
        return sum(len(t) for t in self.nodes.values())

    def write(self, task: int, kind: int, data: bytes, final: bool = False) -> None:
        """Whole lines, so that the tasks' lines never run into each other (as srun);
        with -u, bytes as they come."""
        out = sys.stdout.buffer if kind == stepio.OUT else sys.stderr.buffer
        if self.unbuffered:
            out.write(data)
            out.flush()
            return
        prefix = b"%d: " % task if self.label else b""
        key = (task, kind)
        text = self.partial.pop(key, b"") + data
        lines = text.split(b"\n")
        rest = lines.pop()
        for line in lines:
            out.write(prefix + line + b"\n")
        if rest and (final or len(rest) > MAX_PARTIAL):
            out.write(prefix + rest + (b"\n" if self.label else b""))
        elif rest:
            self.partial[key] = rest
        out.flush()

    def kill(self) -> None:
        if self.killing:
            return
        self.killing = True
        for conn in self.conns:
            try:
                conn.sendall(stepio.frame(0, stepio.KILL, str(int(signal.SIGTERM))))
            except OSError:
                pass

    def on_frame(self, conn: socket.socket, task: int, kind: int, payload: bytes) -> None:
        import json
        info = self.conns[conn]
        if info.get("node") is None:
            hello = json.loads(payload) if kind == stepio.HELLO else {}
            if not isinstance(hello, dict) or not secrets.compare_digest(
                    str(hello.get("token")), self.token) or hello.get("node") not in self.pending:
                raise stepio.FrameError("not a launcher of this step")
            info["node"] = hello["node"]
            self.pending.discard(hello["node"])
            return
        if kind in (stepio.OUT, stepio.ERR):
            self.write(task, kind, payload)
        elif kind == stepio.EXIT:
            for k in (stepio.OUT, stepio.ERR):
                if (task, k) in self.partial:
                    self.write(task, k, b"", final=True)
            end = json.loads(payload)
            end["killed"] = self.killing
            self.exits[task] = end
            failed = end.get("exit_code") or end.get("signal")
            if failed and not self.killing and self.bad is None:
                self.bad = end
                if self.kill_on_bad_exit:
                    self.kill()
        elif kind == stepio.ERROR:
            self.errors.append(payload.decode("utf-8", "replace"))
            sys.stderr.write(f"{PROG}: error: {self.errors[-1]}\n")
            for t in self.nodes.get(info["node"], ()):
                self.exits.setdefault(t, {"exit_code": 1, "signal": 0, "killed": False})
            if self.bad is None:
                self.bad = {"exit_code": 1, "signal": 0}
            self.kill()
        elif kind == stepio.DONE:
            self.finished.add(info["node"])

    def closed(self, conn: socket.socket) -> None:
        info = self.conns.pop(conn)
        conn.close()
        node = info.get("node")
        if node is None:
            return
        self.finished.add(node)
        for t in self.nodes[node]:
            # the launcher died (its node's allocation was killed): so did its tasks
            self.exits.setdefault(t, {"exit_code": 0, "signal": signal.SIGKILL,
                                      "killed": self.killing})

    @property
    def launchers(self) -> list[socket.socket]:
        """Connections that proved to be this step's launchers (a stranger's
        connection to the port holds nothing up)."""
        return [c for c, info in self.conns.items() if info.get("node")]

    def done(self) -> bool:
        return len(self.exits) >= self.ntasks and not self.launchers

    @staticmethod
    def status_of(end: dict) -> int:
        return 128 + end["signal"] if end.get("signal") else int(end.get("exit_code") or 0)

    def status(self) -> int:
        if self.kill_on_bad_exit and self.bad is not None:
            return self.status_of(self.bad)
        ends = [e for e in self.exits.values() if not e.get("killed")] or \
            list(self.exits.values())
        return max((self.status_of(e) for e in ends), default=1)


def run_step(args, command: list[str], env: dict) -> int:
    from rmsbatch.net.client import Client, ClientError
    job_id = job_of(env)
    client = Client()
    try:
        reply = client.call(
            "step_create", job_id=job_id, ntasks=args.ntasks, nodes=args.nodes,
            nodelist=[args.nodelist] if args.nodelist else [],
            cpus_per_task=args.cpus_per_task, ntasks_per_node=args.ntasks_per_node,
            gpus_per_task=args.gpus_per_task, gpu_bind=args.gpu_bind,
            name=args.job_name or os.path.basename(command[0]))
    except ClientError as exc:
        raise CommandError(f"cannot create a step in job {job_id}: {exc}") from None
    step_id = reply["step_id"]
    here = env.get("RMS_NODENAME") or env.get("SLURMD_NODENAME") or ""
    address = reply["addresses"].get(here) or reply["nodes"][0]["address"]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    token = secrets.token_hex(16)
    step = Step(reply, token, args.label, bool(args.kill_on_bad_exit), args.unbuffered)
    started = time.monotonic()
    try:
        try:
            listener.bind((address, 0))
        except OSError:
            listener.bind(("", 0))       # the node's address is not this host's
        listener.listen(64)
        client.call("step_launch", job_id=job_id, step_id=step_id, host=address,
                    port=listener.getsockname()[1], token=token,
                    master_port=free_port(reply["nodes"][0]["address"]), argv=command,
                    env=task_environment(args.export, env), cwd=os.getcwd())
    except (ClientError, OSError) as exc:
        _end(client, job_id, step_id, "FAILED", 1, 0, step)
        raise CommandError(f"cannot launch step {job_id}.{step_id}: {exc}") from None
    interrupted = []

    def on_signal(signum, frame):
        interrupted.append(signum)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    # `rcancel --signal=USR1` reaches the tasks themselves (every process of the job
    # but the batch shell); rrun, one of those processes, must outlive it
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGWINCH):
        signal.signal(sig, lambda signum, frame: None)
    while not step.done():
        if interrupted:
            step.kill()
        if step.pending and not step.killing and time.monotonic() - started > CONNECT_WAIT_S:
            sys.stderr.write(f"{PROG}: error: step {job_id}.{step_id}: node(s) "
                             f"{','.join(sorted(step.pending))} did not start their tasks "
                             f"within {CONNECT_WAIT_S:.0f} s\n")
            for node in step.pending:
                for t in step.nodes[node]:
                    step.exits[t] = {"exit_code": 1, "signal": 0, "killed": False}
            step.pending.clear()
            step.bad = step.bad or {"exit_code": 1, "signal": 0}
            step.kill()
        if not step.pending and not step.launchers:
            break
        fds = [listener, *step.conns] if step.pending else list(step.conns)
        try:
            ready, _, _ = select.select(fds, [], [], 0.5)
        except InterruptedError:
            continue
        for sock in ready:
            if sock is listener:
                conn, _ = listener.accept()
                step.conns[conn] = {"node": None, "reader": stepio.Reader()}
                if step.killing:        # a late launcher: its tasks go too
                    try:
                        conn.sendall(stepio.frame(0, stepio.KILL, str(int(signal.SIGTERM))))
                    except OSError:
                        pass
                continue
            try:
                data = sock.recv(1 << 16)
                frames = step.conns[sock]["reader"].feed(data) if data else None
                if frames is None:
                    step.closed(sock)
                    continue
                for frame in frames:
                    step.on_frame(sock, *frame)
            except (OSError, ValueError):
                step.closed(sock)
    listener.close()
    for conn in list(step.conns):
        conn.close()
    for task, kind in list(step.partial):      # what tasks that were killed left unfinished
        step.write(task, kind, b"", final=True)
    for task in list(step.nodes.values()):
        for t in task:
            step.exits.setdefault(t, {"exit_code": 0, "signal": signal.SIGKILL})
    status = step.status()
    state = "CANCELLED" if interrupted else ("COMPLETED" if status == 0 else "FAILED")
    worst = step.bad if step.bad is not None and args.kill_on_bad_exit else None
    if worst is None:
        worst = max(step.exits.values(), key=Step.status_of)
    _end(client, job_id, step_id, state, int(worst.get("exit_code") or 0),
         int(worst.get("signal") or 0), step)
    client.close()
    if interrupted and status == 0:
        return 128 + interrupted[0]
    return status


def _end(client, job_id: int, step_id: int, state: str, code: int, sig: int, step: Step) -> None:
    from rmsbatch.net.client import ClientError
    try:
        client.call("step_end", job_id=job_id, step_id=step_id, state=state,
                    exit_code=min(max(code, 0), 255), signal=min(max(sig, 0), 128),
                    total_cpu_s=float(sum(e.get("cpu_s", 0) for e in step.exits.values())),
                    max_rss_kb=int(max((e.get("max_rss_kb", 0) for e in step.exits.values()),
                                       default=0)))
    except ClientError as exc:
        sys.stderr.write(f"{PROG}: warning: step {job_id}.{step_id}: end not recorded: {exc}\n")


def body(argv: list[str]) -> int:
    env = dict(os.environ)
    args, command = parse(argv, env)
    return run_step(args, command, env)


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
