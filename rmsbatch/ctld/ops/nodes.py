"""The node protocol: what node daemons (and, while theirs is away, job supervisors)
tell the controller, and what it answers.

A node daemon registers with `node_hello` on its connection, which binds the
connection to the node; `heartbeat`, `job_started` and `node_health` are accepted
only on that connection. `job_ended` and `lease` may also come from a job's
supervisor on a connection of its own (the node daemon is down or restarting); those
name their node, and a report about a job is accepted only for the run the
controller has on that node.

A job runs on every node of its allocation: the first runs the batch script, the
others hold their part of the allocation for the job's steps. The batch run's end is
the job's end (the others are then told to stop); a holder's end is acknowledged and
otherwise ignored, unless it failed to set up (then the job fails to launch as a
whole, and that node is drained).
"""
from __future__ import annotations

import logging

from rmsbatch.config.digest import differences
from rmsbatch.core import failpoint
from rmsbatch.core.states import JobState
from rmsbatch.ctld import requests
from rmsbatch.ctld.nodestate import NOT_REGISTERED, NOT_RESPONDING
from rmsbatch.ctld.ops import NODE, op
from rmsbatch.ctld.ops import reservations as resv
from rmsbatch.ctld.ops.admin import busy_gpus
from rmsbatch.ctld.records import alloc_from_json, batch_node
from rmsbatch.ctld.requests import RequestError

log = logging.getLogger("rmsbatch.controller")


def _node(ctl, conn, req) -> str:
    name = req.node
    if name not in ctl.config.nodes:
        raise RequestError(f"node {name!r} is not in cluster.toml: add it under [[nodes]]")
    bound = conn.meta.get("node")
    if bound is not None and bound != name:
        raise RequestError(f"this connection speaks for node {bound}, not {name}")
    return name


def _registered(ctl, conn, name: str) -> bool:
    return ctl.node_conns.get(name) is conn and ctl.node_status[name].up


@op("node_hello", model=requests.NodeHello, role=NODE)
def node_hello(ctl, conn, req: requests.NodeHello) -> dict:
    name = _node(ctl, conn, req)
    if req.config is not None:
        differ = differences(ctl.config.cluster_digest, req.config)
        if differ:
            more = f" (and {len(differ) - 1} more)" if len(differ) > 1 else ""
            log.warning("node %s: refused: its cluster.toml differs at %s%s", name,
                        differ[0], more)
            raise RequestError(
                f"node {name}: its cluster.toml differs from the controller's at "
                f"{differ[0]}{more}: give every host the same file, then reload it (rmsd: "
                "SIGHUP; rmsctld: rcontrol reconfigure)")
    now = ctl.clock()
    st = ctl.node_status[name]
    ours = st.reason.startswith(NOT_RESPONDING) or st.reason == NOT_REGISTERED
    ctl.set_node(name, up=True, responding=True, reason="" if ours else st.reason,
                 last_heartbeat=now, inventory=req.inventory)
    if ctl.config.nodes[name].gpu_detect != "static":
        ctl.refresh_view(name)
        # A device that failed at discovery is drained by itself, before any job can
        # land on it; the node and its other devices go on.
        drains = dict(st.gpu_drain)
        for dev in st.devices or []:
            if dev.fault:
                _drain_gpu(ctl, name, drains, dev.index, str(dev.fault), True, now)
        if drains != st.gpu_drain:
            ctl.set_node(name, gpu_drain=drains)
    problems = [str(p) for p in req.inventory.get("gpu_problems") or []][:20]
    if req.inventory.get("isolation_problem"):
        # As root with isolation = "auto", a node that cannot protect jobs takes none.
        problems.insert(0, f"isolation unavailable: {req.inventory['isolation_problem']}")
    if problems:
        why = "; ".join(problems)[:200]
        if not (st.drain and st.reason == why):
            ctl.set_node(name, drain=True, reason=why)
            log.warning("node %s: drained: %s", name, why)
    log.info("node %s: registered (pid %d, %d accelerators)", name, conn.pid,
             len(ctl.nodes[name].gpus))
    for outcome in req.ended:
        try:
            ended(ctl, name, requests.Outcome.model_validate(outcome))
        except ValueError as exc:
            log.warning("node %s: unreadable outcome %.200r: %s", name, outcome, exc)
    failpoint.hit("node_hello.after_ended")
    reported = {(o.get("job_id"), o.get("run")) for o in req.ended if isinstance(o, dict)}
    running_there = set(req.running)
    orders, current, renewed = [], set(), []
    for job_id, alloc in list(ctl.running.items()):
        if name not in alloc:
            continue
        row = ctl.spool.job(job_id)
        run = (job_id, row["restart_count"])
        current.add(run)
        if run in running_there:
            ctl.renew_lease(job_id, name, now)
            renewed.append(list(run))
            if not row["launched"] and batch_node(alloc) == name:
                ctl.spool.update_job(job_id, launched=1)
            elif batch_node(alloc) != name:
                ctl.part_ready(job_id, name)        # it runs: its part is set up
            if row["cancel_requested"]:
                orders.append({"op": "cancel", "job_id": job_id, "run": run[1]})
            # A time limit changed (rcontrol update) while the node was away.
            orders.append({"op": "time_limit", "job_id": job_id, "run": run[1],
                           "seconds": resv.time_limit(ctl, row["time_limit"], row["reservation"],
                                                      row["start_time"] or now)})
        elif run in reported:
            continue
        elif batch_node(alloc) == name and ctl.batch_waits(job_id):
            ctl.renew_lease(job_id, name, now)      # its script waits for the other nodes
        elif not row["launched"] or batch_node(alloc) != name:
            # A holder of the allocation that is missing (its order never arrived,
            # or it ended early) is set up again: the batch script is not run twice.
            ctl.renew_lease(job_id, name, now)
            orders.append(ctl.launch_message(row, name))
        else:
            ctl.lost(job_id, f"job lost on node {name} (its node daemon no longer knows it)")
    for job_id, run in running_there - current:
        # a run the cluster has given up on (lease ran out, requeued, cancelled): stop it
        orders.append({"op": "cancel", "job_id": job_id, "run": run, "now": True})
    old = ctl.node_conns.get(name)
    if old is not None and old is not conn:
        ctl.loop.close(old)
    conn.meta["node"] = name
    ctl.node_conns[name] = conn
    return {"orders": orders, "renewed": renewed, "lease_until": now + ctl.leases.lease_s}


@op("heartbeat", model=requests.Heartbeat, role=NODE)
def heartbeat(ctl, conn, req: requests.Heartbeat) -> dict:
    name = _node(ctl, conn, req)
    if not _registered(ctl, conn, name):
        return {"rehello": True}
    now = ctl.clock()
    st = ctl.node_status[name]
    st.last_heartbeat = now
    if not st.responding:
        ctl.set_node(name, responding=True)
        log.info("node %s: responding again", name)
    if req.gpus is not None and len(req.gpus) <= 1024:
        st.telemetry = {str(k): v for k, v in req.gpus.items() if isinstance(v, dict)}
    renewed = []
    for job_id, run in req.running or ():
        if ctl.is_current(job_id, run, name):
            ctl.renew_lease(job_id, name, now)
            renewed.append([job_id, run])
        else:
            ctl.send(conn, {"op": "cancel", "job_id": job_id, "run": run, "now": True})
    if req.idle:
        ctl.idle_gpus.heard_from(name, req.idle, {tuple(r) for r in renewed})
    ctl.spool.upsert_node(name, last_heartbeat=now)
    return {"ack": "heartbeat", "seq": req.seq, "renewed": renewed,
            "lease_until": now + ctl.leases.lease_s}


@op("lease", model=requests.Lease, role=NODE)
def lease(ctl, conn, req: requests.Lease) -> dict:
    """A supervisor renews its own run's lease (its node daemon is away)."""
    name = _node(ctl, conn, req)
    if not ctl.is_current(req.job_id, req.run, name):
        row = ctl.spool.job(req.job_id)
        why = "not found" if row is None else (
            f"{row['state']}" if JobState(row["state"]).is_finished
            else f"now run {row['restart_count']} on {row['nodelist'] or 'no node'}")
        return {"stop": True, "why": f"job {req.job_id} run {req.run} is no longer current "
                                     f"on {name} ({why})"}
    return {"lease_until": ctl.renew_lease(req.job_id, name, ctl.clock())}


@op("node_health", model=requests.NodeHealth, role=NODE)
def node_health(ctl, conn, req: requests.NodeHealth) -> dict:
    """The node's monitor judged devices unfit: drain them; end the jobs on a device
    that failed outright (NODE_FAIL, or requeued when they asked for it)."""
    name = _node(ctl, conn, req)
    if not _registered(ctl, conn, name):
        raise RequestError(f"node {name}: register first (node_hello)")
    st, view = ctl.node_status[name], ctl.nodes[name]
    unhealthy = {}
    for key, verdict in req.unhealthy.items():
        try:
            index = int(key)
        except ValueError:
            continue
        if index in view.gpus and isinstance(verdict, dict):
            unhealthy[index] = verdict
    st.gpu_notes = [str(p)[:200] for p in req.problems][:10]
    now = ctl.clock()
    drains = dict(st.gpu_drain)
    if st.recheck and req.seq is not None and req.seq >= st.recheck:
        # the first judgement since `rcontrol resume`: what it finds healthy is back,
        # what it does not stays out with the fault it finds now
        healthy = [int(i) for i in drains if int(i) not in unhealthy]
        view.undrain_gpus(busy_gpus(ctl, name), healthy)
        for i in healthy:
            drains.pop(str(i))
            log.info("node %s: GPU %d back in service", name, i)
        for index, verdict in unhealthy.items():
            old = drains.get(str(index))
            if old is not None:
                drains[str(index)] = {**{k: v for k, v in old.items() if k != "recheck"},
                                      "reason": str(verdict.get("reason") or old.get("reason"))[:200],
                                      "rechecked": now}
                log.warning("node %s: GPU %d stays drained after resume: %s", name, index,
                            drains[str(index)]["reason"])
        st.recheck = None
    for index, verdict in unhealthy.items():
        _drain_gpu(ctl, name, drains, index, str(verdict.get("reason") or "unhealthy"),
                   bool(verdict.get("fatal")), now)
    if drains != st.gpu_drain:
        ctl.set_node(name, gpu_drain=drains)
    ctl.changes += 1
    return {"ack": "node_health"}


def _drain_gpu(ctl, name: str, drains: dict, index: int, reason: str, fatal: bool,
               now: float) -> None:
    """Take one device out of service (into `drains`, the node's gpu_drain to be);
    a fatal fault also ends the jobs on it (NODE_FAIL, or requeued if they asked)."""
    reason = reason[:200]
    old = drains.get(str(index))
    if old is not None and (old.get("fatal") or not fatal):
        return
    # new, or a drained device that now failed outright: the fatal reason is the one to see
    drains[str(index)] = {**(old or {}), "reason": reason, "fatal": fatal,
                          "since": now if old is None else old.get("since", now)}
    ctl.nodes[name].drain_gpu(index)
    if old is None:
        log.warning("node %s: GPU %d drained: %s", name, index, reason)
    if fatal:
        for job_id, alloc in list(ctl.running.items()):
            if name in alloc and index in alloc[name].gpus:
                ctl.lost(job_id, f"GPU {index} on {name} failed: {reason}")


@op("job_started", model=requests.JobStarted, role=NODE)
def job_started(ctl, conn, req: requests.JobStarted) -> dict:
    name = _node(ctl, conn, req)
    if ctl.is_current(req.job_id, req.run, name):
        ctl.renew_lease(req.job_id, name, ctl.clock())
        if batch_node(ctl.running[req.job_id]) == name:
            ctl.spool.update_job(req.job_id, launched=1, protections=req.protections[:200])
    return {"ack": "job_started", "job_id": req.job_id}


@op("part_ready", model=requests.PartReady, role=NODE)
def part_ready(ctl, conn, req: requests.PartReady) -> dict:
    """A node other than the first has set up its part of a job (--wait-all-nodes)."""
    name = _node(ctl, conn, req)
    if ctl.is_current(req.job_id, req.run, name):
        ctl.part_ready(req.job_id, name)
    return {"ack": "part_ready", "job_id": req.job_id}


@op("job_ended", model=requests.JobEnded, role=NODE)
def job_ended(ctl, conn, req: requests.JobEnded) -> dict:
    name = _node(ctl, conn, req)
    ended(ctl, name, req.outcome)
    return {"ack": "job_ended", "job_id": req.outcome.job_id, "run": req.outcome.run}


def ended(ctl, node: str, out: requests.Outcome) -> None:
    """Record how a run ended; the end of a run the controller no longer has on that
    node (an earlier run of a requeued job, a duplicate) is acknowledged and ignored."""
    job_id = out.job_id
    if out.drain:
        # whichever run it was, the node is unfit for the next job
        why = f"{out.drain} (job {job_id})"[:200]
        ctl.set_node(node, drain=True, reason=why)
        log.error("node %s: drained: %s", node, why)
    if not ctl.is_current(job_id, out.run, node):
        return
    row = ctl.spool.job(job_id)
    holder = batch_node(ctl.running[job_id]) != node
    if holder and not out.launch_failed:
        # A node that only held the allocation: its end is not the job's end.
        log.warning("job %d: its allocation on %s ended (%s) while the job runs", job_id,
                    node, out.reason or out.state)
        return
    if out.launch_failed:
        # The job did not run: it is requeued. When the node could not set it up
        # (isolation, a user it does not know), the node is drained so that neither
        # this job nor the next one lands there again.
        why = f"launch failed on {node}: {out.launch_failed}"[:200]
        if out.node_fault:
            ctl.set_node(node, drain=True, reason=why)
            log.error("node %s: drained: %s", node, why)
        if not row["cancel_requested"] and ctl.requeue(job_id, why):
            return
    if ctl.preemptions.ended(ctl, job_id, row):
        return      # a victim of preemption: requeued or cancelled as its QoS says
    try:
        state = JobState(out.state)
    except ValueError:
        state = JobState.FAILED
    if not state.is_finished:
        state = JobState.FAILED
    if row["cancel_requested"] and state is not JobState.TIMEOUT:
        state = JobState.CANCELLED
    # a cancel that said why (rmsbatch.ctld.idlegpu) keeps its reason
    cancelled_why = row["end_reason"] if row["cancel_requested"] else ""
    fields = dict(start_time=out.start_time or row["start_time"],
                  end_time=out.end_time or ctl.clock(), exit_code=out.exit_code,
                  exit_signal=out.signal, max_rss_kb=out.max_rss_kb,
                  total_cpu_s=out.total_cpu_s, gpu_util=out.gpu_util,
                  gpu_mem_peak_mb=out.gpu_mem_peak_mb, gpu_energy_j=out.gpu_energy_j,
                  end_reason=(cancelled_why or out.reason)[:500],
                  **ctl.idle_gpus.final(ctl, job_id, node, out.gpu_idle_s, row))
    if out.protections:
        fields["protections"] = out.protections[:500]
    if ctl.finish(job_id, state, **fields):
        log.info("job %d: %s on %s (exit %s:%s)", job_id, state.value, node, out.exit_code,
                 out.signal)
        stop = {"op": "cancel", "job_id": job_id, "run": out.run}
        for other in alloc_from_json(row["alloc"]):
            if other != node:
                ctl.to_node(other, stop)     # they release their part of the allocation
