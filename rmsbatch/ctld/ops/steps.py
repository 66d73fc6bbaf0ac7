"""Job steps: what `rrun` asks inside a running job.

    step_create   lay the step's tasks out on the job's allocation, record the step
                  (RUNNING) and answer the layout with each node's address, so that
                  rrun can listen where the step's launchers will reach it
    step_launch   order each node's rmsd to start its tasks (rmsbatch.node.step),
                  which connect back to rrun with the step's output and exit statuses
    step_end      rrun's word on how the step ended (state, worst exit, usage)
    steps         the steps of some jobs, for rsacct

Only the job's owner may create, launch or end its steps, and only while the job
runs; steps still open when the job ends are closed with it (Controller.finish).
"""
from __future__ import annotations

import logging

from rmsbatch.core import hostlist
from rmsbatch.core.states import JobState
from rmsbatch.ctld import requests
from rmsbatch.ctld.ops import USER, op
from rmsbatch.ctld.records import alloc_from_json
from rmsbatch.ctld.requests import RequestError
from rmsbatch.sched.tasklayout import LayoutError, StepRequest, layout

log = logging.getLogger("rmsbatch.controller")


def _own_running_job(ctl, conn, job_id: int) -> dict:
    row = ctl.spool.job(job_id)
    if row is None:
        raise RequestError(f"job {job_id} not found")
    if row["uid"] != conn.uid:
        raise RequestError(f"job {job_id} belongs to {row['user']}: you may run steps only "
                           "in your own jobs")
    if row["state"] != JobState.RUNNING.value or job_id not in ctl.running:
        raise RequestError(f"job {job_id} is {row['state']}, not RUNNING: steps run only "
                           "inside a running job")
    return row


def address_of(ctl, node: str) -> str:
    """Where a node's tasks are reached: what its rmsd said in its hello."""
    return str(ctl.node_status[node].inventory.get("address") or "127.0.0.1")


def tasks_per_node(counts: list[int]) -> str:
    """Slurm's compressed form: 2,2,1 -> "2(x2),1"."""
    parts: list[str] = []
    i = 0
    while i < len(counts):
        j = i
        while j < len(counts) and counts[j] == counts[i]:
            j += 1
        parts.append(f"{counts[i]}(x{j - i})" if j - i > 1 else str(counts[i]))
        i = j
    return ",".join(parts)


@op("step_create", model=requests.StepCreate, role=USER)
def step_create(ctl, conn, req: requests.StepCreate) -> dict:
    row = _own_running_job(ctl, conn, req.job_id)
    alloc = alloc_from_json(row["alloc"])
    try:
        wanted = tuple(n for spec in req.nodelist for n in hostlist.expand(spec))
    except ValueError as exc:
        raise RequestError(f"-w/--nodelist: {exc}") from None
    try:
        placed = layout([(n, a.cpus, list(a.gpus)) for n, a in alloc.items()], StepRequest(
            req.ntasks, req.nodes, wanted, req.cpus_per_task, req.ntasks_per_node,
            req.gpus_per_task, req.gpu_bind))
    except LayoutError as exc:
        raise RequestError(str(exc)) from None
    names = [p.node for p in placed]
    ntasks = sum(len(p.tasks) for p in placed)
    nodelist = hostlist.compress(names)
    step_id = ctl.spool.insert_step(req.job_id, req.name[:200], nodelist, ntasks, ctl.clock())
    nodes = [{"node": p.node, "address": address_of(ctl, p.node), "tasks": p.tasks,
              "gpus": p.gpus} for p in placed]
    ctl.step_layouts[(req.job_id, step_id)] = {
        "run": row["restart_count"], "nodes": nodes, "nodelist": nodelist, "ntasks": ntasks,
        "tasks_per_node": tasks_per_node([len(p.tasks) for p in placed])}
    log.info("job %d: step %d created: %d task(s) on %s", req.job_id, step_id, ntasks, nodelist)
    return {"step_id": step_id, "nodes": nodes, "nodelist": nodelist, "ntasks": ntasks,
            "addresses": {n: address_of(ctl, n) for n in alloc}}


@op("step_launch", model=requests.StepLaunch, role=USER)
def step_launch(ctl, conn, req: requests.StepLaunch) -> dict:
    row = _own_running_job(ctl, conn, req.job_id)
    plan = ctl.step_layouts.get((req.job_id, req.step_id))
    if plan is None or plan["run"] != row["restart_count"]:
        raise RequestError(f"step {req.job_id}.{req.step_id} was not created, or was "
                           "launched already: create it first (step_create)")
    away = [n["node"] for n in plan["nodes"] if n["node"] not in ctl.node_conns]
    if away:
        raise RequestError(f"node {away[0]} of the step is not connected to rmsctld: "
                           "try again when it is back (rinfo)")
    alloc = alloc_from_json(row["alloc"])
    ctl.step_layouts.pop((req.job_id, req.step_id))
    master = plan["nodes"][0]["address"]
    for index, node in enumerate(plan["nodes"]):
        a = alloc[node["node"]]
        ctl.to_node(node["node"], {
            "op": "step_launch", "job_id": req.job_id, "run": plan["run"],
            "step_id": req.step_id, "node_index": index, "tasks": node["tasks"],
            "gpus": node["gpus"], "ntasks": plan["ntasks"], "nnodes": len(plan["nodes"]),
            "nodelist": plan["nodelist"], "tasks_per_node": plan["tasks_per_node"],
            "master_addr": master, "master_port": req.master_port,
            "rrun": [req.host, req.port], "token": req.token, "argv": list(req.argv),
            "env": dict(req.env), "cwd": req.cwd, "cpus": a.cpus, "job_gpus": list(a.gpus)})
    log.info("job %d: step %d launching on %s", req.job_id, req.step_id, plan["nodelist"])
    return {"step_id": req.step_id}


@op("step_end", model=requests.StepEnd, role=USER)
def step_end(ctl, conn, req: requests.StepEnd) -> dict:
    row = ctl.spool.job(req.job_id)
    if row is None or ctl.spool.step(req.job_id, req.step_id) is None:
        raise RequestError(f"step {req.job_id}.{req.step_id} not found")
    if row["uid"] != conn.uid:
        raise RequestError(f"job {req.job_id} belongs to {row['user']}: you may end steps "
                           "only in your own jobs")
    ctl.step_layouts.pop((req.job_id, req.step_id), None)
    # a step whose tasks died with a cancelled job was cancelled, whatever rrun saw first
    state = "CANCELLED" if row["cancel_requested"] else req.state
    if ctl.spool.end_step(req.job_id, req.step_id, state=state, end_time=ctl.clock(),
                          exit_code=req.exit_code, exit_signal=req.signal,
                          total_cpu_s=req.total_cpu_s, max_rss_kb=req.max_rss_kb):
        log.info("job %d: step %d %s (exit %d:%d)", req.job_id, req.step_id, state,
                 req.exit_code, req.signal)
    return {"step_id": req.step_id}


@op("steps", model=requests.Steps, role=USER)
def steps(ctl, conn, req: requests.Steps) -> dict:
    rows = ctl.spool.steps(list(req.job_ids))
    if rows and ctl.config.tenants.private_accounting and not ctl.is_privileged(conn):
        caller = ctl.user_name(conn.uid)
        mine = {r["id"] for r in ctl.spool.jobs(ids=sorted({s["job_id"] for s in rows}),
                                                users=[caller])}
        rows = [s for s in rows if s["job_id"] in mine]
    return {"steps": rows}
