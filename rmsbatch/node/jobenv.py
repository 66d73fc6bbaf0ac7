"""What a job's batch shell finds in its environment.

The submitter's environment (as `--export` chose it), then the job's own variables,
each under its RMS_ name and its Slurm name, so that scripts written for Slurm run
unchanged. A Slurm variable is set exactly when sbatch sets it for the options given:
SLURM_NTASKS only with -n or --ntasks-per-node, SLURM_CPUS_PER_TASK only with -c,
SLURM_MEM_PER_CPU, SLURM_MEM_PER_GPU or SLURM_MEM_PER_NODE after the memory option
that was used. Scripts test for these (`${SLURM_NTASKS:-1}`), so one set too many
changes what they do.

Everything here reads the launch message rmsctld sent (its "spec" is the stored job
spec without script and environment, its "layout" the allocation's CPUs per node in
node list order) and nothing else: the same job gives the same environment.
SLURM_TASK_PID is the exception: only the batch shell's process knows its pid, so it
sets that itself just before exec (rmsbatch.node.jobprocess).
"""
from __future__ import annotations

from rmsbatch.node.arrayenv import array_environment
from rmsbatch.node.devices import record

VISIBILITY_VARS = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES",
                   "ZE_AFFINITY_MASK", "GPU_DEVICE_ORDINAL")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Every name this module may set (as SLURM_<name> and RMS_<name>). The submitter's
# own values of them are dropped first: `rsub` run inside another job would otherwise
# hand this job the other one's SLURM_NTASKS or SLURM_MEM_PER_CPU where this job
# sets none (Slurm then refuses srun: "SLURM_MEM_PER_CPU and SLURM_MEM_PER_NODE are
# mutually exclusive").
OUTPUT_NAMES = frozenset((
    "JOB_ID", "JOBID", "JOB_NAME", "JOB_NODELIST", "NODELIST", "JOB_NUM_NODES", "NNODES",
    "SUBMIT_DIR", "SUBMIT_HOST", "JOB_ACCOUNT", "JOB_PARTITION", "JOB_QOS", "JOB_USER",
    "JOB_UID", "JOB_GID", "CLUSTER_NAME", "RESTART_COUNT", "NODEID", "PROCID", "LOCALID",
    "GTIDS", "CPUS_ON_NODE", "JOB_CPUS_PER_NODE", "TASKS_PER_NODE", "GPUS_ON_NODE",
    "JOB_GPUS", "NTASKS", "NPROCS", "NTASKS_PER_NODE", "CPUS_PER_TASK", "NTASKS_PER_GPU",
    "NTASKS_PER_CORE", "CPUS_PER_GPU", "GPUS_PER_TASK", "GPU_BIND", "JOB_DEPENDENCY",
    "JOB_RESERVATION", "GPUS_PER_NODE", "GPUS", "MEM_PER_CPU", "MEM_PER_GPU",
    "MEM_PER_NODE", "EXPORT_ENV", "JOB_START_TIME", "JOB_END_TIME", "NODENAME",
    "TASK_PID"))


def compress_counts(counts: list[int]) -> str:
    """Slurm's run-length form of a per-node list: [2, 2, 2, 1] -> "2(x3),1"."""
    parts: list[str] = []
    i = 0
    while i < len(counts):
        j = i
        while j + 1 < len(counts) and counts[j + 1] == counts[i]:
            j += 1
        reps = j - i + 1
        parts.append(f"{counts[i]}(x{reps})" if reps > 1 else str(counts[i]))
        i = j + 1
    return ",".join(parts)


def layout(job: dict) -> list[tuple[str, int]]:
    """(node, CPUs) of every node of the job, in node list order. A launch message
    without a layout (from an older rmsctld) has this node's share only."""
    given = job.get("layout")
    if given:
        return [(str(n), int(c)) for n, c in given]
    return [(job.get("node") or "", int(job["alloc"]["cpus"]))]


def tasks_per_node(ntasks: int | None, cpus: list[int], cpus_per_task: int,
                   per_node: int | None = None) -> list[int]:
    """How Slurm lays out a batch job's tasks over its nodes (block distribution): a
    task per node in turn while a node has CPUs for one more (and fewer than
    --ntasks-per-node), then evenly over all of them. Without a task count, as many
    tasks as the CPUs of each node hold, as Slurm does."""
    cpt = max(1, cpus_per_task)
    room = [max(1, c // cpt) for c in cpus]
    if per_node is not None:
        room = [per_node] * len(cpus)
        if ntasks is None:
            return room
    if ntasks is None:
        return room
    counts = [0] * len(cpus)
    placed = 0
    while placed < ntasks:
        before = placed
        for i in range(len(counts)):
            if placed < ntasks and counts[i] < room[i]:
                counts[i] += 1
                placed += 1
        if placed == before:            # every node full: oversubscribe evenly
            for i in range(len(counts)):
                if placed < ntasks:
                    counts[i] += 1
                    placed += 1
    return counts


def job_variables(job: dict) -> dict[str, str]:
    """The job's variables without prefix ("JOB_ID": "42"), for the batch shell on
    the node the launch message went to; the caller sets each as SLURM_<name> and RMS_<name>."""
    spec = job.get("spec") or {}
    alloc = job["alloc"]
    nodes = layout(job)
    cpus = [c for _, c in nodes]
    cpus_per_task = int(job.get("cpus_per_task") or 1)
    given = bool(spec.get("ntasks_given"))
    per_node = spec.get("ntasks_per_node")
    tasks = tasks_per_node(int(job["ntasks"]) if given else None, cpus, cpus_per_task,
                           per_node)
    v: dict[str, object] = {
        "JOB_ID": job["job_id"], "JOBID": job["job_id"], "JOB_NAME": job["name"],
        "JOB_NODELIST": job["nodelist"], "NODELIST": job["nodelist"],
        "JOB_NUM_NODES": job["nodes"], "NNODES": job["nodes"],
        "SUBMIT_DIR": job["submit_dir"], "SUBMIT_HOST": job["submit_host"],
        "JOB_ACCOUNT": job["account"], "JOB_PARTITION": job["partition"],
        "JOB_QOS": job["qos"], "JOB_USER": job["user"], "JOB_UID": job["uid"],
        "CLUSTER_NAME": job["cluster"],
        "RESTART_COUNT": job["restart_count"],
        "NODEID": 0, "PROCID": 0, "LOCALID": 0, "GTIDS": 0,
        "CPUS_ON_NODE": alloc["cpus"],
        "JOB_CPUS_PER_NODE": compress_counts(cpus),
        "TASKS_PER_NODE": compress_counts(tasks),
    }
    if alloc["gpus"]:
        v["GPUS_ON_NODE"] = len(alloc["gpus"])
        v["JOB_GPUS"] = ",".join(map(str, alloc["gpus"]))
    if given:
        v["NTASKS"] = v["NPROCS"] = job["ntasks"]
    if per_node is not None:
        v["NTASKS_PER_NODE"] = per_node
    if cpus_per_task > 1:
        # the spec keeps no trace of `-c 1`; Slurm would set it then too
        v["CPUS_PER_TASK"] = cpus_per_task
    for key, name in (("ntasks_per_gpu", "NTASKS_PER_GPU"),
                      ("ntasks_per_core", "NTASKS_PER_CORE"),
                      ("cpus_per_gpu", "CPUS_PER_GPU"), ("gpus_per_task", "GPUS_PER_TASK"),
                      ("gpu_bind", "GPU_BIND"), ("dependency", "JOB_DEPENDENCY"),
                      ("reservation", "JOB_RESERVATION")):
        if spec.get(key) is not None:
            v[name] = spec[key]
    v.update(_gpu_counts(spec))
    v.update(_memory(spec, alloc, job.get("default_mem_per_cpu")))
    export = spec.get("export", job.get("export"))
    if export and export != "ALL":      # "ALL" is also what no --export leaves
        v["EXPORT_ENV"] = export
    start = job.get("start_time")
    if isinstance(start, (int, float)) and start > 0:
        v["JOB_START_TIME"] = int(start)
        limit = int(job.get("time_limit") or 0)
        if limit > 0:
            v["JOB_END_TIME"] = int(start) + limit
    return {k: str(x) for k, x in v.items()}


def _gpu_counts(spec: dict) -> dict[str, object]:
    """SLURM_GPUS for -G, SLURM_GPUS_PER_NODE for --gpus-per-node (or --gres=gpu),
    each as written: with the type when one was asked for."""
    out: dict[str, object] = {}
    kind = spec.get("gpu_type")
    typed = (lambda n: f"{kind}:{n}") if kind else str
    if spec.get("gpus_per_node") is not None:
        out["GPUS_PER_NODE"] = typed(spec["gpus_per_node"])
    elif spec.get("gpus"):
        out["GPUS"] = typed(spec["gpus"])
    return out


def _memory(spec: dict, alloc: dict, default: int | None) -> dict[str, object]:
    if spec.get("mem_per_cpu_mb") is not None:
        return {"MEM_PER_CPU": spec["mem_per_cpu_mb"]}
    if spec.get("mem_per_gpu_mb") is not None:
        return {"MEM_PER_GPU": spec["mem_per_gpu_mb"]}
    if spec.get("mem_mb") is not None:
        return {"MEM_PER_NODE": alloc["mem_mb"]}   # --mem=0: the node's memory
    # No option: the cluster's default_mem_per_cpu applied, and Slurm, under its
    # DefMemPerCPU, says so as SLURM_MEM_PER_CPU.
    if default is None:
        default = alloc["mem_mb"] // max(1, alloc["cpus"])
    return {"MEM_PER_CPU": default}


def _ours(var: str) -> bool:
    if var == "SLURMD_NODENAME":
        return True
    prefix, _, name = var.partition("_")
    return prefix in ("SLURM", "RMS") and (name in OUTPUT_NAMES or name.startswith("ARRAY_"))


def twins(variables: dict[str, str]) -> dict[str, str]:
    """Each variable as RMS_<name> and SLURM_<name>."""
    out = {}
    for key, value in variables.items():
        out[f"RMS_{key}"] = value
        out[f"SLURM_{key}"] = value
    return out


def environment(nd, job: dict, pw, tmpdir: str | None = None) -> dict[str, str]:
    """The batch shell's environment on node `nd` (the NodeDaemon)."""
    env = dict(job["environment"])
    if job["export"].upper().startswith("NONE") or not env:
        env.setdefault("PATH", DEFAULT_PATH)
    slurm_bin = getattr(nd, "slurm_bin", None)
    if slurm_bin:           # `srun`, `scontrol show hostnames` in job bodies written for Slurm
        rest = [d for d in env.get("PATH", DEFAULT_PATH).split(":") if d != slurm_bin]
        env["PATH"] = ":".join([slurm_bin, *rest])   # once, also when submitted from a job
    env.setdefault("HOME", pw.pw_dir)
    env.setdefault("USER", pw.pw_name)
    env.setdefault("LOGNAME", pw.pw_name)
    env.setdefault("SHELL", pw.pw_shell or "/bin/sh")
    for var in VISIBILITY_VARS:
        env.pop(var, None)   # never inherit another allocation's devices
    for var in [k for k in env if _ours(k)]:
        del env[var]
    env.update(twins(job_variables(job)))
    env["SLURMD_NODENAME"] = env["RMS_NODENAME"] = nd.node
    env.update(array_environment(job))
    if tmpdir:
        env["TMPDIR"] = tmpdir
    # Fenced, a job sees only its own devices, numbered from 0 as the vendor
    # runtime will number them; unfenced, it sees all of them.
    env.update(record.visibility(nd.devices, job["alloc"]["gpus"], nd.fenced))
    return env
