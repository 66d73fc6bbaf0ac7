"""A run's node-local setup and teardown: its TMPDIR, and the node prolog and epilog
of cluster.toml's [node_daemon] (rmsbatch-cluster.toml(5), rmsd(8)).

rmsd writes what the run needs into JOBDIR/prolog.json when it prepares the launch
(`write_plan`); the run's supervisor, on every node where one runs, calls
`before_job` before it sets up the job's cgroup and forks the job, and `after_job`
once the job and everything it left behind are dead. So neither program ever runs in
rmsd's event loop, and both run again on a node where a requeued job runs again.

    TMPDIR   <tmp_base>/rmsbatch-<node>-<tag>/job-<id>.<run>, owned by the job's user,
             mode 0700, removed with its content when the run ends. <tag> tells apart
             node daemons that share a host and a tmp_base (test clusters, several
             nodes on one machine); the per-node directory is root's, mode 0711, so
             users reach their own job's directory but list no one's.
    prolog   runs as root with the job's variables (below); a non-zero exit, a
             signal or running past prolog_timeout: the job does not start, it is
             requeued and the node drained ("prolog failed: exit 3").
    epilog   the same after the job; failing, it drains the node and leaves the
             job's state as it was.

The programs' environment: PATH, SLURM_SCRIPT_CONTEXT (prolog_slurmd or
epilog_slurmd, as Slurm) and the job's variables under their SLURM_ and RMS_ names
(SLURM_JOB_ID, SLURM_JOB_USER, SLURM_JOB_UID, SLURM_JOB_NODELIST, ...), RMS_JOB_TMPDIR,
and each site option the job gave as RMS_SITE_OPTION_<NAME> (upper case, every
character but a letter or digit made `_`). Their first lines of output go to the rmsd
log (and the run's supervisor.log), never into the job's output.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time

from rmsbatch.node import jobenv
from rmsbatch.node.jobdir import write_json

log = logging.getLogger("rmsbatch.prolog")
_opened: list[logging.Handler] = []     # the handlers attach_logs opened (rmsd's log file)

PLAN_FILE = "prolog.json"
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOGGED_LINES = 20               # of a program's output, into the logs
RUN_NAME = re.compile(r"^job-(\d+)\.(\d+)$")
# The job's variables a prolog gets (as SLURM_<name> and RMS_<name>).
HOOK_NAMES = ("JOB_ID", "JOBID", "JOB_NAME", "JOB_USER", "JOB_UID", "JOB_GID",
              "JOB_NODELIST", "NODELIST", "JOB_NUM_NODES", "NNODES", "JOB_PARTITION",
              "JOB_ACCOUNT", "JOB_QOS", "CLUSTER_NAME", "JOB_GPUS", "RESTART_COUNT",
              "SUBMIT_DIR", "SUBMIT_HOST", "JOB_CPUS_PER_NODE", "CPUS_ON_NODE",
              "JOB_START_TIME", "JOB_END_TIME")


class NodeSetupError(Exception):
    """The node could not set up the run (TMPDIR, prolog): the node is at fault, so
    the job is requeued and the node drained."""


# --------------------------------------------------------------------------
# rmsd's side: where things go, and the plan for the supervisor

def tmp_parent(nd) -> str:
    """This node daemon's directory of job TMPDIRs."""
    base = nd.config.path(nd.config.cluster.node_daemon.tmp_base)
    tag = hashlib.sha1(os.path.realpath(nd.state_dir).encode()).hexdigest()[:8]
    return os.path.join(base, f"rmsbatch-{nd.node}-{tag}")


def tmpdir_for(nd, run: str) -> str:
    return os.path.join(tmp_parent(nd), f"job-{run}")


def site_variable(name: str) -> str:
    return "RMS_SITE_OPTION_" + re.sub(r"[^A-Z0-9]", "_", name.upper())


def hook_environment(nd, job: dict, tmpdir: str) -> dict[str, str]:
    ours = jobenv.job_variables(job)
    env = jobenv.twins({k: ours[k] for k in HOOK_NAMES if k in ours})
    env.update(jobenv.twins({"JOB_GID": str(job["gid"])}))
    env.update(PATH=HOOK_PATH, SLURMD_NODENAME=nd.node, RMS_NODENAME=nd.node,
               RMS_JOB_TMPDIR=tmpdir)
    for name, value in ((job.get("spec") or {}).get("site_options") or {}).items():
        env[site_variable(name)] = str(value)
    return env


def _rmsd_log_file() -> str | None:
    """The file rmsd logs to, if it logs to a file: the supervisor appends to it."""
    for handler in logging.getLogger().handlers:
        try:
            path = os.readlink(f"/proc/self/fd/{handler.stream.fileno()}")
        except (AttributeError, OSError, ValueError):
            continue
        if path.startswith("/") and os.path.isfile(path):
            return path
    return None


def write_plan(nd, job: dict, jobdir: str) -> None:
    """JOBDIR/prolog.json: what the run's supervisor sets up and runs around the job."""
    ndc = nd.config.cluster.node_daemon
    run = os.path.basename(jobdir)
    tmpdir = tmpdir_for(nd, run)
    write_json(os.path.join(jobdir, PLAN_FILE), {
        "job_id": job["job_id"], "uid": job["uid"], "gid": job["gid"],
        "tmpdir": tmpdir,
        "prolog": nd.config.path(ndc.prolog) if ndc.prolog else None,
        "epilog": nd.config.path(ndc.epilog) if ndc.epilog else None,
        "prolog_timeout": ndc.prolog_timeout, "epilog_timeout": ndc.epilog_timeout,
        "env": hook_environment(nd, job, tmpdir), "log_file": _rmsd_log_file(),
    }, durable=False)       # the run it serves does not outlive the machine either


def load_plan(jobdir: str) -> dict | None:
    """The run's plan; None for a run prepared by an rmsd that wrote none."""
    try:
        with open(os.path.join(jobdir, PLAN_FILE), encoding="utf-8") as fh:
            plan = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise NodeSetupError(f"cannot read {PLAN_FILE}: {exc}") from None
    if not isinstance(plan, dict) or not isinstance(plan.get("job_id"), int):
        raise NodeSetupError(f"{PLAN_FILE} is malformed")
    return plan


def remove_tmpdir(path: str | None) -> None:
    if not path:
        return
    try:
        os.rmdir(path)          # most jobs leave it empty: one call, not rmtree's walk
        return
    except FileNotFoundError:
        return
    except OSError:
        pass                    # not empty, or not a directory: below
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            log.warning("%s: not removed", path)


def remove_for_run(nd, run: str) -> None:
    """rmsd's cleanup of a run whose supervisor died before it could clean up."""
    try:
        plan = load_plan(nd.job_dir(run)) or {}
    except NodeSetupError:
        plan = {}
    remove_tmpdir(plan.get("tmpdir") or tmpdir_for(nd, run))


def sweep(nd) -> None:
    """At rmsd's start: remove the TMPDIRs of runs this node no longer has (a crash)."""
    parent = tmp_parent(nd)
    try:
        names = os.listdir(parent)
    except OSError:
        return
    keep = set(nd.runs())
    stale = [n for n in names if RUN_NAME.match(n) and n[len("job-"):] not in keep]
    for name in stale:
        remove_tmpdir(os.path.join(parent, name))
    if stale:
        log.info("node %s: removed %d stale job TMPDIR(s) from %s", nd.node, len(stale), parent)


def release(nd) -> None:
    """rmsd stopping: its directory of TMPDIRs goes when no job has one (test clusters
    come and go by the hundred); a supervisor about to make one there makes it again."""
    try:
        os.rmdir(tmp_parent(nd))
    except OSError:
        pass


# --------------------------------------------------------------------------
# the supervisor's side

def _own_dir(path: str, mode: int) -> None:
    """`path` exists as our own directory that nobody else can write to; created when
    missing. A base that users can write to (/tmp) may hold a squatter's link."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    except OSError as exc:
        raise NodeSetupError(f"cannot create {path}: {exc.strerror or exc}: check "
                             "node_daemon.tmp_base in cluster.toml") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise NodeSetupError(f"{path} is not a directory of uid {os.geteuid()} that only "
                             "it can write to: remove it")
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def make_tmpdir(plan: dict) -> str:
    path = plan["tmpdir"]
    parent = os.path.dirname(path)
    base = os.path.dirname(parent)
    if not os.path.isdir(base):
        raise NodeSetupError(f"tmp_base {base} does not exist: create it or set "
                             "node_daemon.tmp_base in cluster.toml")
    remove_tmpdir(path)         # left by a run of the same name that crashed
    for attempt in (1, 2):
        _own_dir(parent, 0o711)
        try:
            os.mkdir(path, 0o700)
            if os.geteuid() == 0:
                os.chown(path, plan["uid"], plan["gid"])
            return path
        except FileNotFoundError:
            if attempt == 1:
                continue        # a stopping rmsd removed the empty parent just now
            why = "its directory vanished"
        except OSError as exc:
            why = exc.strerror or str(exc)
        remove_tmpdir(path)
        raise NodeSetupError(f"cannot create TMPDIR {path}: {why}")
    return path


def attach_logs(plan: dict, supervisor_log: logging.Logger) -> None:
    """In the supervisor: this module's lines go to the run's supervisor.log and to
    rmsd's log file."""
    log.propagate = False
    log.setLevel(logging.INFO)
    for handler in supervisor_log.handlers:
        log.addHandler(handler)
    if plan.get("log_file"):
        try:
            handler = logging.FileHandler(plan["log_file"])
        except OSError:
            return
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        _opened.append(handler)


def detach_logs() -> None:
    """The run is over: its handlers go (a worker of the spawner supervises the next
    run in the same process), and the one attach_logs opened is closed."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
    while _opened:
        _opened.pop().close()


def run_hook(plan: dict, kind: str, serve=None) -> str:
    """Run the prolog or epilog; "" when it succeeded (or there is none), else why not.
    `serve(seconds)` waits that long at most while answering the supervisor's control
    socket, so that rmsd is never kept waiting on a cancel while a prolog runs."""
    path = plan.get(kind)
    if not path:
        return ""
    job_id = plan["job_id"]
    timeout = float(plan.get(f"{kind}_timeout") or 300)
    env = dict(plan.get("env") or {}, SLURM_SCRIPT_CONTEXT=f"{kind}_slurmd",
               RMS_SCRIPT_CONTEXT=kind)
    started = time.monotonic()
    # Output to a file, not a pipe: a program that leaves a child holding the pipe
    # open must not keep the job waiting.
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen([path], env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, cwd="/",
                                    start_new_session=True)
        except OSError as exc:
            why = f"{kind} failed: cannot run {path}: {exc.strerror or exc}"
            log.error("job %s: %s", job_id, why)
            return why
        timed_out = False
        deadline = started + timeout
        try:
            while serve is not None and proc.poll() is None and time.monotonic() < deadline:
                serve(min(0.5, max(0.0, deadline - time.monotonic())))
            status = proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            status = proc.wait()
        took = time.monotonic() - started
        out.seek(0)
        lines = out.read(64 * 1024).decode("utf-8", "replace").splitlines()
    if timed_out:
        why = f"{kind} timed out after {timeout:g} s"
    elif status < 0:
        why = f"{kind} failed: killed by signal {-status}"
    elif status > 0:
        why = f"{kind} failed: exit {status}"
    else:
        why = ""
    say = log.error if why else log.info
    say("job %s: %s %s %s (%.1f s)", job_id, kind, path,
        why[len(kind) + 1:] if why else "succeeded", took)
    for line in lines[:LOGGED_LINES]:
        say("job %s: %s: %s", job_id, kind, line)
    if len(lines) > LOGGED_LINES:
        say("job %s: %s: (%d more lines)", job_id, kind, len(lines) - LOGGED_LINES)
    return why


def before_job(jobdir: str, supervisor_log: logging.Logger, serve=None) -> dict | None:
    """TMPDIR, then the prolog; returns the plan for `after_job`. Raises
    NodeSetupError when the job must not start. `serve`: as for run_hook."""
    plan = load_plan(jobdir)
    if plan is None:
        return None
    attach_logs(plan, supervisor_log)
    make_tmpdir(plan)
    why = run_hook(plan, "prolog", serve)
    if why:
        remove_tmpdir(plan["tmpdir"])
        raise NodeSetupError(why)
    return plan


def after_job(plan: dict | None, serve=None) -> str:
    """The epilog, then away with TMPDIR. Returns why the node must be drained, or "".
    `serve`: as for run_hook."""
    if plan is None:
        return ""
    try:
        return run_hook(plan, "epilog", serve)
    finally:
        remove_tmpdir(plan.get("tmpdir"))
