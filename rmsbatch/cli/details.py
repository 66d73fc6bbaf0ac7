"""rcontrol show: one record as scontrol's `Key=Value` lines (jobs, nodes, partitions)."""
from __future__ import annotations

import time

from rmsbatch.cli.jobfields import elapsed, job_cpus, job_exit_code, job_reason
from rmsbatch.cli.layout import NULL, clock, energy, memory, percent, time_limit, timestamp
from rmsbatch.cli.nodetables import node_gres, partition_members
from rmsbatch.core.hostlist import compress


def _or_null(value) -> str:
    return NULL if value is None or value == "" else str(value)


def _yes_no(value) -> str:
    return "YES" if value else "NO"


def job_detail(job: dict, now: float | None = None) -> list[str]:
    """scontrol show job: the first line, then indented `Key=Value` lines."""
    now = time.time() if now is None else now
    limit = job.get("time_limit") or 0
    end = job.get("end_time")
    if end is None and job.get("start_time") and limit and job.get("state") in (
            "RUNNING", "COMPLETING"):
        end = job["start_time"] + limit          # the latest it will end, as scontrol shows
    indices = job.get("gpu_indices") or []
    constraint = job.get("constraint", job.get("constraint_expr"))
    return [
        f"JobId={job.get('id')} JobName={_or_null(job.get('name'))}",
        f"UserId={job.get('user')}({job.get('uid')}) Account={_or_null(job.get('account'))} "
        f"QOS={_or_null(job.get('qos'))}",
        f"Priority={job.get('priority') or 0} Nice={job.get('nice') or 0} "
        f"Hold={_yes_no(job.get('hold'))}",
        f"JobState={job.get('state')} Reason={job_reason(job)} "
        f"ExitCode={job_exit_code(job, now)}"
        + (f" Reasons={','.join(job['reasons'])}" if len(job.get("reasons") or ()) > 1 else ""),
        f"RunTime={clock(elapsed(job, now))} TimeLimit={time_limit(limit, clock)}",
        f"SubmitTime={timestamp(job.get('submit_time'))} "
        # a waiting job's StartTime is the scheduler's estimate, as in scontrol
        f"StartTime={timestamp(job.get('start_time') or job.get('est_start'))} "
        f"EndTime={timestamp(end)}",
        f"Partition={_or_null(job.get('partition'))} NodeList={_or_null(job.get('nodelist'))}",
        f"NumNodes={job.get('nodes') or 0} NumCPUs={job_cpus(job, now)} "
        f"NumTasks={job.get('ntasks') or 0} CPUs/Task={job.get('cpus_per_task') or 0}",
        f"ReqMem={memory(job.get('req_mem_mb')) or NULL} GPUs={job.get('req_gpus') or 0} "
        f"GPUType={_or_null(job.get('gpu_type'))} "
        + (f"GPUMem={memory(job['gpu_mem_mb'])} " if job.get("gpu_mem_mb") else "") +
        f"GPUIndices={','.join(str(i) for i in indices) or NULL}",
        f"Features={_or_null(constraint)} Exclusive={_yes_no(job.get('exclusive'))} "
        f"Requeue={1 if job.get('requeue') else 0} Restarts={job.get('restart_count') or 0}",
        f"SubmitHost={_or_null(job.get('submit_host'))} Command={_or_null(job.get('command'))}",
        f"WorkDir={_or_null(job.get('workdir'))}",
        f"StdOut={_or_null(job.get('stdout'))}",
        f"StdErr={_or_null(job.get('stderr'))}",
        f"Protections={job.get('protections') or 'none'}",
    ] + ([f"GPUUtil={percent(job.get('gpu_util')) or NULL} "
          f"MaxGPUMem={memory(job.get('gpu_mem_peak_mb')) or NULL} "
          f"GPUEnergy={energy(job.get('gpu_energy_j')) or NULL}"]
         # a GPU job without figures (too short to measure) says so: (null), not nothing
         if job.get("req_gpus") or indices or any(
             job.get(k) is not None for k in ("gpu_util", "gpu_mem_peak_mb", "gpu_energy_j"))
         else [])


def node_detail(node: dict) -> list[str]:
    """scontrol show node."""
    lines = [
        f"NodeName={node['name']} State={node.get('state')}",
        f"CPUAlloc={node.get('alloc_cpus') or 0} CPUTot={node.get('cpus') or 0}",
        f"RealMemory={node.get('mem_mb') or 0} AllocMem={node.get('alloc_mem_mb') or 0}",
        f"Gres={node_gres(node)} GPUsAlloc={node.get('alloc_gpus') or 0} "
        f"GPUTot={node.get('gpus') or 0} GPUsDrained={node.get('gpus_drained') or 0} "
        f"GPUDetect={node.get('gpu_mode') or 'static'}",
        f"Features={','.join(node.get('features') or []) or NULL} "
        f"Partitions={','.join(node.get('partitions') or []) or NULL}",
        f"LastHeartbeat={timestamp(node.get('last_heartbeat'))} "
        f"Jobs={','.join(str(j) for j in node.get('jobs') or []) or NULL}",
        f"Protections={node.get('protections') or 'none'}",
    ]
    if node.get("reason"):
        lines.append(f"Reason={node['reason']}")
    for index, why in (node.get("gpu_drain") or {}).items():
        lines.append(f"GPU{index}=DRAIN Reason={why}")
    if node.get("gpu_mode") in ("auto", "check") and node.get("gpu_backends"):
        lines.append("GPUBackends=" + "; ".join(f"{k}: {v}" for k, v in node["gpu_backends"].items()))
    for note in node.get("gpu_notes") or []:
        lines.append(f"GPUNote={note}")
    for dev in node.get("devices") or []:
        lines.append(device_line(dev))
    return lines


def device_line(dev: dict) -> str:
    """scontrol show node -d: one line per accelerator."""
    parts = [f"GPU{dev.get('index')}={dev.get('type')}", f"Model={_or_null(dev.get('model'))}",
             f"Memory={memory(dev.get('mem_mb') or None) or NULL}", f"State={dev.get('state')}"]
    if dev.get("job") is not None:
        parts.append(f"Job={dev['job']}")
    for key, label in (("uuid", "UUID"), ("bdf", "PCI"), ("numa_node", "NUMA"),
                       ("profile", "Profile")):
        if dev.get(key) is not None:
            parts.append(f"{label}={dev[key]}")
    for key, label, unit in (("util_pct", "Util", "%"), ("mem_used_mb", "MemUsed", "M"),
                             ("temp_c", "Temp", "C"), ("power_w", "Power", "W")):
        if dev.get(key) is not None:
            parts.append(f"{label}={dev[key]}{unit}")
    if dev.get("health") and dev["health"] != "ok":
        parts.append(f"Health={dev['health']}")
    return " ".join(parts)


def partition_detail(part: dict, nodes: list[dict]) -> list[str]:
    """scontrol show partition; totals over the nodes given that belong to it."""
    names = set(partition_members(part))
    members = [n for n in nodes if n["name"] in names]
    return [
        f"PartitionName={part['name']}",
        f"Default={_yes_no(part.get('default'))} State={part.get('state') or 'UP'}",
        f"DefaultTime={time_limit(part.get('default_time'), clock)} "
        f"MaxTime={time_limit(part.get('max_time'), clock)}",
        f"Nodes={part.get('nodes') or compress(names) or NULL}",
        f"TotalNodes={len(names)} TotalCPUs={sum(n.get('cpus') or 0 for n in members)} "
        f"TotalGPUs={sum(n.get('gpus') or 0 for n in members)}",
    ]


def render_details(blocks: list[list[str]], oneliner: bool = False) -> str:
    """Records separated by blank lines, continuation lines indented (or one line each)."""
    if oneliner:
        return "\n".join(" ".join(lines) for lines in blocks)
    return "\n\n".join("\n   ".join(lines) for lines in blocks)

