"""Ops on the cluster: ping, list nodes and partitions, drain, resume, reconfigure."""
from __future__ import annotations

import logging

from rmsbatch.core import hostlist
from rmsbatch.ctld import requests
from rmsbatch.ctld.nodestate import NOT_RESPONDING, node_state
from rmsbatch.ctld.ops import OPERATOR, USER, op
from rmsbatch.ctld.requests import RequestError

log = logging.getLogger("rmsbatch.controller")


@op("ping", model=requests.Empty, role=USER)
def ping(ctl, conn, req) -> dict:
    from rmsbatch import __version__
    return {"version": __version__, "cluster": ctl.config.cluster.name, "uid": conn.uid}


@op("stats", model=requests.Empty, role=USER)
def stats(ctl, conn, req) -> dict:
    """The scheduler's passes (count, times), the queue and rmsctld's memory."""
    return {"stats": {**ctl.pass_stats.record(), "pending": len(ctl.pending),
                      "running": len(ctl.running),
                      "nodes_connected": len(ctl.node_conns),
                      "listings_read": ctl.listings.misses,
                      "listings_served_again": ctl.listings.hits, **ctl.acct.stats()}}


def node_names(ctl, spec: str | None) -> list[str]:
    if not spec:
        raise RequestError("name the nodes (a hostlist such as gpu[001-004])")
    try:
        names = hostlist.expand(spec)
    except ValueError as exc:
        raise RequestError(f"nodes: {exc}") from None
    unknown = [n for n in names if n not in ctl.config.nodes]
    if unknown:
        raise RequestError(f"node {unknown[0]} not found (nodes: "
                           f"{hostlist.compress(list(ctl.config.nodes))})")
    return names


def busy_gpus(ctl, name: str) -> set[int]:
    return {i for alloc in ctl.running.values() if name in alloc for i in alloc[name].gpus}


@op("nodes", model=requests.Nodes, role=USER)
def nodes(ctl, conn, req: requests.Nodes) -> dict:
    names = node_names(ctl, req.names) if req.names else list(ctl.config.nodes)
    jobs_on: dict[str, list[int]] = {}
    owners: dict[str, dict[int, int]] = {}      # node -> GPU index -> job
    for job_id, alloc in ctl.running.items():
        for n, a in alloc.items():
            jobs_on.setdefault(n, []).append(job_id)
            owners.setdefault(n, {}).update(dict.fromkeys(a.gpus, job_id))
    out = []
    for name in names:
        nd, view, st = ctl.config.nodes[name], ctl.nodes[name], ctl.node_status[name]
        counts: dict[str, int] = {}
        for g in view.gpus.values():
            counts[g.type] = counts.get(g.type, 0) + 1
        owner = owners.get(name, {})
        drains = {int(i): drain_text(d, st.recheck is not None) for i, d in st.gpu_drain.items()}
        reason = st.reason
        if st.up and not st.responding and not reason:
            reason = NOT_RESPONDING
        record = {
            "name": name, "state": node_state(st, view).value, "reason": reason,
            "responding": st.responding, "cpus": nd.cpus,
            "alloc_cpus": nd.cpus - view.free_cpus, "mem_mb": nd.mem_mb,
            "alloc_mem_mb": nd.mem_mb - view.free_mem, "gpus": len(view.gpus),
            "alloc_gpus": len(owner), "gpus_drained": len(view.drained),
            "gpu_type": ",".join(sorted(counts)), "gpu_counts": counts,
            "gpu_drain": {str(i): r for i, r in sorted(drains.items())},
            "gpu_reason": "; ".join(f"GPU {i}: {r}" for i, r in sorted(drains.items())),
            "gpu_mode": nd.gpu_detect,
            "gpu_notes": st.gpu_notes + list(st.inventory.get("gpu_notes") or [])[:10],
            "gpu_backends": dict(st.inventory.get("gpu_backends") or {}),
            "features": list(nd.features), "partitions": nd.partitions,
            "last_heartbeat": st.last_heartbeat, "jobs": sorted(jobs_on.get(name, [])),
            "protections": st.inventory.get("protections", ""),
            "connected": name in ctl.node_conns,
        }
        if req.devices:
            record["devices"] = _device_rows(ctl, name, drains, owner)
        out.append(record)
    partitions = [{
        "name": p.name, "nodes": hostlist.compress(ctl.config.partition_nodes[p.name]),
        "node_names": ctl.config.partition_nodes[p.name],
        "default": p.name == ctl.config.default_partition, "state": p.state,
        "default_time": p.default_time, "max_time": p.max_time,
    } for p in ctl.config.partitions.values()]
    return {"nodes": out, "partitions": partitions}


def _device_rows(ctl, name: str, drains: dict[int, str], owner: dict[int, int]) -> list[dict]:
    """One row per accelerator: what it is, who has it, how it is doing."""
    st = ctl.node_status[name]
    rows = []
    for d in st.devices or []:
        i = d.index
        rows.append({
            "index": i, "type": d.type, "model": d.model, "vendor": d.vendor,
            "mem_mb": d.mem_mb, "uuid": d.uuid, "bdf": d.bdf, "numa_node": d.numa_node,
            "profile": d.profile, "parent": d.parent, "device_files": d.device_files,
            "state": "drained" if i in drains else ("alloc" if i in owner else "idle"),
            "job": owner.get(i), "health": drains.get(i) or "ok",
            **{k: v for k, v in (st.telemetry.get(str(i)) or {}).items() if k != "lost"},
        })
    return rows


@op("drain", model=requests.Drain, role=OPERATOR, audit=True)
def drain(ctl, conn, req: requests.Drain) -> dict:
    reason = (req.reason or "").strip()
    if not reason:
        raise RequestError("drain needs a reason (reason=\"...\")")
    names = node_names(ctl, req.nodes)
    for name in names:
        ctl.set_node(name, drain=True, reason=reason[:200])
        log.info("node %s: drained by uid %d: %s", name, conn.uid, reason)
    return {"nodes": names}


@op("resume", model=requests.NodeNames, role=OPERATOR, audit=True)
def resume(ctl, conn, req: requests.NodeNames) -> dict:
    """Nodes back in service; their drained GPUs once judged again. The reply names
    the GPUs that stay drained until then (node -> index -> why drained)."""
    names = node_names(ctl, req.nodes)
    pending: dict[str, dict[str, str]] = {}
    for name in names:
        st = ctl.node_status[name]
        ctl.set_node(name, drain=False, reason="" if st.up else st.reason, gpu_notes=[])
        if st.gpu_drain and name in ctl.node_conns:
            # Drained devices stay out until the node's monitor has judged them
            # afresh: a fault that persists keeps them out, and no job lands on a
            # device that is still broken in between.
            st.health_seq += 1
            st.recheck = st.health_seq
            drains = {i: {**{k: v for k, v in d.items() if k != "rechecked"}, "recheck": True}
                      for i, d in st.gpu_drain.items()}
            ctl.set_node(name, gpu_drain=drains)
            ctl.send(ctl.node_conns[name], {"op": "health_reset", "seq": st.health_seq})
            pending[name] = {i: d.get("reason", "") for i, d in sorted(
                drains.items(), key=lambda kv: int(kv[0]))}
        elif st.gpu_drain:
            ctl.nodes[name].undrain_gpus(busy_gpus(ctl, name))
            ctl.set_node(name, gpu_drain={})
        log.info("node %s: resumed by uid %d", name, conn.uid)
    return {"nodes": names, "gpus_drained": pending}


def drain_text(d: dict, pending: bool) -> str:
    """A drained device's reason, and where `rcontrol resume` left it (`pending`: the
    node's answer is awaited; a restarted rmsctld no longer waits for it)."""
    reason = d.get("reason", "")
    if d.get("recheck") and pending:
        return f"{reason} [resumed: being judged again]"
    if d.get("rechecked"):
        return f"{reason} [still so after resume]"
    return reason


@op("reconfigure", model=requests.Empty, role=OPERATOR, audit=True)
def reconfigure(ctl, conn, req) -> dict:
    from rmsbatch.config import ConfigError, load
    try:
        config = load(ctl.config.directory)
    except ConfigError as exc:
        raise RequestError(f"configuration not reloaded (the old one stays): {exc}") from None
    ctl.reconfigure(config)
    log.info("configuration reloaded by uid %d", conn.uid)
    return {}
