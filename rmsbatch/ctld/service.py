"""The controller service: API requests in, spool updates and node orders out.

A testable object with no socket of its own: `handle(conn, message)` answers
one request, `schedule(now)` runs a scheduling pass, `check_nodes(now)`
notices silent nodes. The daemon shell (daemons/rmsctld.py) owns the event
loop and calls these. Everything the controller keeps in memory (pending
jobs, node views, running allocations) is rebuilt from the spool on start.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import time

from rmsbatch.core import hostlist
from rmsbatch.sched import placement
from rmsbatch.sched import plan as scheduler
from rmsbatch.config import Config
from rmsbatch.core.jobspec import JobSpec, SpecError
from rmsbatch.sched.placement import Gpu, NodeAlloc, NodeView, Request
from rmsbatch.net.loop import Conn, Loop
from rmsbatch.ctld.spool import JOB_COLUMNS, Spool
from rmsbatch.core.states import FINISHED, JobState, NodeState, parse_state

log = logging.getLogger("rmsbatch.controller")

ACTIVE_STATES = [JobState.PENDING.value, JobState.RUNNING.value, JobState.COMPLETING.value]
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15,
           "CONT": 18, "STOP": 19, "TSTP": 20, "ALRM": 14}
HIDDEN = ("alloc", "launched", "cancel_requested", "gid", "mem_whole_node", "gpus_per_node",
          "constraint_expr")


PCIE_SWITCH = 20      # NVML_TOPOLOGY_MULTIPLE: GPUs behind one tree of PCIe switches

# Record fields a listing may ask for by name (stored as they are shown).
PROJECTABLE = frozenset(c for c in JOB_COLUMNS if c not in HIDDEN
                        and c not in ("hold", "requeue", "exclusive"))


class RequestError(Exception):
    """The request cannot be honoured; the message goes back to the caller."""


def job_record(row: dict) -> dict:
    """A spool row as clients see it."""
    rec = {k: v for k, v in row.items() if k not in HIDDEN}
    alloc = json.loads(row["alloc"]) if row.get("alloc") else {}
    rec["gpu_indices"] = sorted(i for a in alloc.values() for i in a["gpus"])
    rec["hold"] = bool(row["hold"])
    rec["requeue"] = bool(row["requeue"])
    rec["exclusive"] = bool(row["exclusive"])
    rec["constraint"] = row["constraint_expr"]
    return rec


def default_output(spec) -> str:
    """Where a job's output goes when it names no file: the submit directory."""
    submit_dir = spec["submit_dir"] if isinstance(spec, dict) else spec.submit_dir
    return os.path.join(submit_dir, "rms-%j.out")


def _records(devices) -> list:
    """Accelerator records from an inventory's dicts (an rmsd's report, or the spool)."""
    from rmsbatch.node.devices.record import Accelerator
    records = []
    for d in devices:
        if not isinstance(d, dict) or not isinstance(d.get("index"), int):
            continue
        try:
            records.append(Accelerator.from_dict(d))
        except TypeError:
            continue      # a record from an incompatible rmsd: not allocatable
    return records


def _gpus(records: list) -> dict[int, Gpu]:
    """Placement's view of a node's accelerator records."""
    from rmsbatch.node.devices.record import short_type
    index_of = {r.key: r.index for r in records}

    def links(r) -> tuple:
        # NVLink/XGMI lanes; GPUs behind one PCIe switch count as a thin link
        weights = {index_of[k]: int(w) for k, w in (r.links or {}).items() if k in index_of}
        for k, level in (r.pcie or {}).items():
            if k in index_of and index_of[k] not in weights and int(level) <= PCIE_SWITCH:
                weights[index_of[k]] = 1
        return tuple(sorted(weights.items()))
    return {r.index: Gpu(str(r.type), int(r.mem_mb or 0),
                         short_type(r.model) if r.is_partition else "", r.is_partition,
                         r.numa_node if isinstance(r.numa_node, int) else None, links(r))
            for r in records}


def _alloc_from_json(text: str | None) -> dict[str, NodeAlloc]:
    if not text:
        return {}
    return {n: NodeAlloc(a["cpus"], a["mem_mb"], a["gpus"], a.get("exclusive", False))
            for n, a in json.loads(text).items()}


def _alloc_to_json(alloc: dict[str, NodeAlloc]) -> str:
    return json.dumps({n: {"cpus": a.cpus, "mem_mb": a.mem_mb, "gpus": a.gpus,
                           "exclusive": a.exclusive} for n, a in alloc.items()})


class Controller:
    def __init__(self, config: Config, spool: Spool, loop: Loop | None = None,
                 clock=time.time):
        self.config = config
        self.spool = spool
        self.loop = loop or Loop()
        self.clock = clock
        self.my_uid = os.geteuid()
        self.node_conns: dict[str, Conn] = {}
        self.waiters: dict[int, list[Conn]] = {}
        self.dirty = True                  # a full scheduling pass is due
        self.fresh: list[int] = []         # jobs submitted since the last pass
        self.blocked_at: dict[str, tuple] = {}
        self.outbox: list[tuple[Conn, dict]] = []
        self._users: dict[int, str] = {}
        self.rebuild()

    def _send(self, conn: Conn, message: dict) -> None:
        # Held until the daemon has committed: nobody hears of a change that
        # a crash could still undo.
        self.outbox.append((conn, message))

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        for conn, message in outbox:
            self.loop.send(conn, message)

    # -- state from the spool ---------------------------------------------------
    def rebuild(self) -> None:
        now = self.clock()
        stored = self.spool.nodes()
        self.node_status: dict[str, dict] = {}
        self.nodes: dict[str, NodeView] = {}
        for name, nd in self.config.nodes.items():
            st = stored.get(name, {})
            # A node that was up gets a fresh grace period to reconnect.
            self.node_status[name] = {
                "up": bool(st.get("up")), "drain": bool(st.get("drain")),
                "reason": st.get("reason", "") or ("Not registered" if not st.get("up") else ""),
                "last_heartbeat": now if st.get("up") else st.get("last_heartbeat"),
                "inventory": st.get("inventory", {}),
                "gpu_drain": st.get("gpu_drain", {}), "telemetry": {}, "gpu_notes": [],
            }
            self.node_status[name]["devices"] = self._devices(name)
            self.nodes[name] = self._view(name)
        self.pending: dict[int, scheduler.PendingJob] = {}
        self.reasons: dict[int, str] = {}
        self.running: dict[int, dict[str, NodeAlloc]] = {}
        for row in self.spool.active_jobs():
            if row["state"] == JobState.PENDING.value:
                self.pending[row["id"]] = self._pending(row)
                self.reasons[row["id"]] = row["reason"]
            else:
                alloc = _alloc_from_json(row["alloc"])
                self.running[row["id"]] = alloc
                placement.take(self.nodes, alloc)
        self.dirty = True

    def _view(self, name: str) -> NodeView:
        nd = self.config.nodes[name]
        st = self.node_status[name]
        devices = st["devices"]
        gpus = {} if devices is None else _gpus(devices)
        drained = {int(i) for i in st["gpu_drain"] if int(i) in gpus}
        return NodeView(name, nd.cpus, nd.mem_mb, gpus, frozenset(nd.features),
                        usable=st["up"] and not st["drain"], drained=drained,
                        gpus_known=devices is not None)

    def _devices(self, name: str) -> list | None:
        """The node's accelerator records: declared ones from cluster.toml, detected ones
        as the node last reported them; None until a detecting node has."""
        nd = self.config.nodes[name]
        if nd.gpu_detect == "static":
            from rmsbatch.node.devices.discovery import static_inventory
            return static_inventory(nd.gpus).devices
        inv = self.node_status[name]["inventory"]
        if inv.get("gpu_mode") not in ("auto", "check") or not isinstance(inv.get("gpus"), list):
            return None
        return _records(inv["gpus"])

    def _refresh_view(self, name: str) -> None:
        """A new view of one node (new inventory), with its running jobs on it."""
        self.node_status[name]["devices"] = self._devices(name)
        self.nodes[name] = self._view(name)
        for alloc in self.running.values():
            if name in alloc:
                placement.take(self.nodes, {name: alloc[name]})

    def _pending(self, row: dict) -> scheduler.PendingJob:
        return scheduler.PendingJob(
            row["id"], row["partition"], row["priority"], row["submit_time"],
            Request(row["nodes"], -(-row["req_cpus"] // row["nodes"]), row["req_mem_mb"],
                    bool(row["mem_whole_node"]), row["gpus_per_node"], row["gpu_type"],
                    bool(row["exclusive"]), row["constraint_expr"], row["gpu_mem_mb"] or 0),
            row["hold"])

    def reconfigure(self, config: Config) -> None:
        self.config = config
        with self.spool.transaction():
            self.rebuild()
        log.info("configuration reloaded from %s", config.directory)

    # -- identity ---------------------------------------------------------------
    def user_name(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                raise RequestError(f"uid {uid} has no user name on the controller host") from None
        return self._users[uid]

    def _is_daemon(self, conn: Conn) -> bool:
        return conn.uid in (0, self.my_uid)

    def _require_operator(self, conn: Conn, what: str) -> None:
        if conn.uid == 0 or conn.uid == self.my_uid:
            return
        if not self.config.is_operator(self.user_name(conn.uid)):
            raise RequestError(f"{what}: permission denied (only operators and admins named "
                               "in tenants.toml may do this)")

    # -- dispatch -----------------------------------------------------------------
    def handle(self, conn: Conn, msg: dict) -> dict | None:
        """Answer one message; None means the reply comes later (wait)."""
        op = msg.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown request {op!r}"}
        try:
            with self.spool.transaction():
                reply = handler(conn, msg)
        except RequestError as exc:
            return {"ok": False, "error": str(exc)}
        except (SpecError, ValueError, TypeError, KeyError) as exc:
            log.debug("bad request %r: %s", op, exc)
            return {"ok": False, "error": f"{exc}" if isinstance(exc, SpecError) else f"bad request: {exc}"}
        except Exception:  # a bug: keep serving everyone else, and say so
            log.exception("request %r from pid %d failed", op, conn.pid)
            return {"ok": False, "error": f"internal error in rmsctld handling {op!r} (see its log)"}
        if reply is None:
            return None
        reply.setdefault("ok", True)
        return reply

    def op_ping(self, conn: Conn, msg: dict) -> dict:
        from rmsbatch import __version__
        return {"version": __version__, "cluster": self.config.cluster.name, "uid": conn.uid}

    # -- submit ---------------------------------------------------------------------
    def op_submit(self, conn: Conn, msg: dict) -> dict:
        user = self.user_name(conn.uid)
        spec = JobSpec.from_dict(msg.get("spec"))
        if spec.nice < 0 and not (self._is_daemon(conn) or self.config.is_operator(user)):
            raise RequestError(f"--nice={spec.nice}: only operators and admins may raise a "
                               "job's priority; use a value of 0 or more")
        row = self.admit(spec, user, conn.uid, conn.gid)
        if len(self.pending) + len(self.running) >= self.config.cluster.controller.max_jobs:
            raise RequestError(f"the queue is full ({self.config.cluster.controller.max_jobs} "
                               "active jobs): try again later")
        job_id = self.spool.insert_job(row, spec.to_dict())
        row["id"] = job_id
        self.pending[job_id] = self._pending(row)
        self.reasons[job_id] = row["reason"]
        if not spec.hold:
            self.fresh.append(job_id)
        log.info("job %d: submitted by %s (%s, partition %s)", job_id, user, row["name"],
                 row["partition"])
        return {"job_id": job_id}

    def admit(self, spec: JobSpec, user: str, uid: int, gid: int) -> dict:
        """Check a spec against the configuration; the job row to insert."""
        cfg = self.config
        partition = spec.partition or cfg.default_partition
        if partition not in cfg.partitions:
            raise RequestError(f"invalid partition {partition!r} (partitions: "
                               f"{', '.join(cfg.partitions)})")
        part = cfg.partitions[partition]
        account = spec.account or cfg.default_account(user)
        if account is None:
            raise RequestError(f"user {user} has no account: ask an admin to add you to an "
                               "account in tenants.toml")
        acct = cfg.account_named(account)
        if acct is None:
            raise RequestError(f"invalid account {account!r} (your accounts: "
                               f"{', '.join(cfg.accounts_of(user)) or 'none'})")
        if user not in acct.users and "*" not in acct.users:
            raise RequestError(f"user {user} may not use account {account!r} (your accounts: "
                               f"{', '.join(cfg.accounts_of(user)) or 'none'})")
        qos_name = spec.qos or acct.default_qos or cfg.qos.default
        qos = cfg.qos_named(qos_name)
        if qos is None:
            raise RequestError(f"invalid QoS {qos_name!r} (QoS levels: "
                               f"{', '.join(q.name for q in cfg.qos.qos)})")
        if acct.qos and qos_name not in acct.qos:
            raise RequestError(f"account {account} may not use QoS {qos_name!r} (allowed: "
                               f"{', '.join(acct.qos)})")
        limit = spec.time_limit
        if limit is None:
            limit = part.default_time or part.max_time
        for cap, what in ((part.max_time, f"partition {partition}"), (qos.max_time, f"QoS {qos_name}")):
            if cap and (limit == 0 or limit > cap):
                from rmsbatch.core.units import format_time
                asked = "UNLIMITED" if limit == 0 else format_time(limit)
                raise RequestError(f"time limit {asked} exceeds the maximum of {what} "
                                   f"({format_time(cap)}): ask for less with --time")
        if spec.gpus_per_node is not None and spec.gpus and spec.gpus != spec.gpus_per_node * spec.nodes:
            gpus_node = max(spec.gpus_per_node, spec.gpus_on_node())
        else:
            gpus_node = spec.gpus_on_node()
        members = [self.nodes[n] for n in cfg.partition_nodes[partition]]
        mem_whole = spec.mem_mb == 0
        smallest = min((n.mem_mb for n in members), default=0)
        mem_node = spec.mem_on_node(smallest, cfg.cluster.controller.default_mem_per_cpu)
        gpu_mem = (spec.gpu_mem_mb or 0) if gpus_node else 0
        request = Request(spec.nodes, spec.cpus_on_node(), 0 if mem_whole else mem_node,
                          mem_whole, gpus_node, spec.gpu_type, spec.exclusive, spec.constraint,
                          gpu_mem)
        try:
            placement.check_feasible(request, members, partition)
        except placement.InfeasibleRequest as exc:
            raise RequestError(f"request can never run: {exc}") from None
        name = spec.name or "job"
        return {
            "name": name, "user": user, "uid": uid, "gid": gid, "account": account,
            "partition": partition, "qos": qos_name, "state": JobState.PENDING.value,
            "reason": scheduler.HELD_USER if spec.hold else "None",
            "priority": qos.priority + part.priority - spec.nice, "nice": spec.nice,
            "hold": 1 if spec.hold else 0, "submit_time": self.clock(), "time_limit": limit,
            "nodes": spec.nodes, "ntasks": spec.ntasks, "cpus_per_task": spec.cpus_per_task,
            "req_cpus": spec.cpus_total, "req_mem_mb": 0 if mem_whole else mem_node,
            "req_gpus": gpus_node * spec.nodes, "gpus_per_node": gpus_node,
            "mem_whole_node": int(mem_whole), "gpu_type": spec.gpu_type, "gpu_mem_mb": gpu_mem,
            "constraint_expr": spec.constraint, "exclusive": int(spec.exclusive),
            "requeue": int(spec.requeue), "command": name, "workdir": spec.workdir,
            "stdout": spec.output or default_output(spec),
            "stderr": spec.error or spec.output or default_output(spec),
            "submit_host": spec.submit_host,
        }

    # -- queries -------------------------------------------------------------------
    def op_jobs(self, conn: Conn, msg: dict) -> dict:
        caller = self.user_name(conn.uid)
        privileged = self._is_daemon(conn) or self.config.is_operator(caller)
        users = _str_list(msg.get("users"), "users")
        ids = _int_list(msg.get("ids"), "ids")
        own_only = False
        if "all_users" in msg:   # accounting-style query: own jobs unless asked
            if not msg["all_users"] and not users and not ids:
                users = [caller]
            if not privileged and self.config.tenants.private_accounting:
                if msg["all_users"] or set(users) - {caller}:
                    raise RequestError("only operators and admins may see other users' "
                                       "jobs (tenants.toml: private_accounting)")
                own_only = True
        elif self.config.tenants.private_jobs and not privileged:
            own_only = True
        states = [parse_state(s).value for s in _str_list(msg.get("states"), "states")]
        if msg.get("active") and not states:
            states = ACTIVE_STATES
        if msg.get("finished") and not states:
            states = [s.value for s in FINISHED]
        query = dict(
            ids=ids, users=[caller] if own_only else users,
            accounts=_str_list(msg.get("accounts"), "accounts"),
            partitions=_str_list(msg.get("partitions"), "partitions"),
            states=states, names=_str_list(msg.get("names"), "names"),
            start_after=_float(msg.get("start_after")), end_before=_float(msg.get("end_before")))
        nodes = _str_list(msg.get("nodes"), "nodes")
        fields = _str_list(msg.get("fields"), "fields")
        if fields and not nodes:
            # Listings of thousands of jobs: only the columns asked for, as rows.
            unknown = [f for f in fields if f not in PROJECTABLE]
            if unknown:
                raise RequestError(f"unknown job field(s): {', '.join(unknown)}")
            rows = self.spool.jobs(**query, columns=fields)
            return {"columns": fields, "rows": rows}
        rows = self.spool.jobs(**query)
        if nodes:
            wanted = set(n for spec in nodes for n in hostlist.expand(spec))
            rows = [r for r in rows if set(hostlist.expand(r["nodelist"])) & wanted]
        return {"jobs": [job_record(r) for r in rows]}

    def op_wait(self, conn: Conn, msg: dict) -> dict | None:
        job_id = _int(msg.get("job_id"), "job_id")
        row = self.spool.job(job_id)
        if row is None:
            raise RequestError(f"job {job_id} not found")
        if JobState(row["state"]).is_finished:
            return {"job": job_record(row)}
        self.waiters.setdefault(job_id, []).append(conn)
        return None

    # -- cancel, hold, release ---------------------------------------------------------
    def _select_jobs(self, conn: Conn, msg: dict, verb: str) -> tuple[list[dict], list[str]]:
        ids = _int_list(msg.get("ids"), "ids")
        filters = {k: _str_list(msg.get(k), k) for k in ("users", "accounts", "partitions", "names")}
        states = [parse_state(s).value for s in _str_list(msg.get("states"), "states")]
        if not ids and not any(filters.values()) and not states:
            raise RequestError(f"{verb}: name job ids or a filter")
        rows = self.spool.jobs(ids=ids, states=states or ACTIVE_STATES, **filters)
        errors = []
        found = {r["id"] for r in rows}
        for i in ids:
            if i not in found:
                row = self.spool.job(i)
                errors.append(f"job {i} not found" if row is None
                              else f"job {i} has already finished ({row['state']})")
        caller = self.user_name(conn.uid)
        privileged = self._is_daemon(conn) or self.config.is_operator(caller)
        mine = []
        for r in rows:
            if r["user"] != caller and not privileged:
                if ids:  # only complain about jobs named explicitly
                    errors.append(f"{verb} job {r['id']}: permission denied (job belongs to "
                                  f"{r['user']}; you may {verb} only your own jobs)")
                continue
            mine.append(r)
        return mine, errors

    def op_cancel(self, conn: Conn, msg: dict) -> dict:
        rows, errors = self._select_jobs(conn, msg, "cancel")
        sig = msg.get("signal")
        signum = _signal_number(sig) if sig else None
        now = self.clock()
        cancelled, signalled = [], []
        for row in rows:
            job_id = row["id"]
            state = JobState(row["state"])
            if signum is not None:
                if state is JobState.PENDING:
                    errors.append(f"job {job_id} is pending: it has no processes to signal")
                    continue
                self._to_nodes(row, {"op": "signal", "job_id": job_id,
                                     "run": row["restart_count"], "signal": signum})
                signalled.append(job_id)
                continue
            if state is JobState.PENDING:
                if self.spool.transition(job_id, JobState.CANCELLED, end_time=now,
                                         reason="None", end_reason="cancelled while pending"):
                    self.pending.pop(job_id, None)
                    self.reasons.pop(job_id, None)
                    self._ended(job_id)
                    cancelled.append(job_id)
            elif state is JobState.RUNNING:
                if self.spool.transition(job_id, JobState.COMPLETING, cancel_requested=1):
                    self._to_nodes(row, {"op": "cancel", "job_id": job_id,
                                         "run": row["restart_count"]})
                    cancelled.append(job_id)
            else:
                cancelled.append(job_id)  # already completing
        if cancelled:
            log.info("jobs %s: cancelled by uid %d", ",".join(map(str, cancelled)), conn.uid)
        self.dirty = True
        return {"cancelled": cancelled, "signalled": signalled, "errors": errors}

    def _set_hold(self, conn: Conn, msg: dict, hold: bool) -> dict:
        verb = "hold" if hold else "release"
        rows, errors = self._select_jobs(conn, msg, verb)
        caller = self.user_name(conn.uid)
        admin = self._is_daemon(conn) or self.config.is_operator(caller)
        changed = []
        for row in rows:
            if row["state"] != JobState.PENDING.value:
                errors.append(f"job {row['id']} is not pending ({row['state']})")
                continue
            if not hold and row["hold"] == 2 and not admin:
                errors.append(f"job {row['id']} was held by an administrator: ask one to release it")
                continue
            value = (2 if admin and row["user"] != caller else 1) if hold else 0
            reason = {0: "None", 1: scheduler.HELD_USER, 2: scheduler.HELD_ADMIN}[value]
            self.spool.update_job(row["id"], hold=value, reason=reason)
            self.pending[row["id"]].hold = value
            self.reasons[row["id"]] = reason
            changed.append(row["id"])
        self.dirty = True
        return {"changed": changed, "errors": errors}

    def op_hold(self, conn: Conn, msg: dict) -> dict:
        return self._set_hold(conn, msg, True)

    def op_release(self, conn: Conn, msg: dict) -> dict:
        return self._set_hold(conn, msg, False)

    # -- nodes ------------------------------------------------------------------------
    def node_state(self, name: str) -> NodeState:
        st, view = self.node_status[name], self.nodes[name]
        if not st["up"]:
            return NodeState.DOWN
        if st["drain"]:
            return NodeState.DRAINING if view.jobs else NodeState.DRAIN
        if view.jobs == 0:
            return NodeState.IDLE
        full = view.free_cpus <= 0 or view.exclusive or (view.gpus and not view.free_gpus)
        return NodeState.ALLOCATED if full else NodeState.MIXED

    def op_nodes(self, conn: Conn, msg: dict) -> dict:
        names = list(self.config.nodes)
        if msg.get("names"):
            wanted = hostlist.expand(str(msg["names"]))
            unknown = [n for n in wanted if n not in self.config.nodes]
            if unknown:
                raise RequestError(f"node {unknown[0]} not found")
            names = wanted
        jobs_on: dict[str, list[int]] = {}
        owners: dict[str, dict[int, int]] = {}      # node -> GPU index -> job
        for job_id, alloc in self.running.items():
            for n, a in alloc.items():
                jobs_on.setdefault(n, []).append(job_id)
                owners.setdefault(n, {}).update(dict.fromkeys(a.gpus, job_id))
        nodes = []
        for name in names:
            nd, view, st = self.config.nodes[name], self.nodes[name], self.node_status[name]
            counts: dict[str, int] = {}
            for g in view.gpus.values():
                counts[g.type] = counts.get(g.type, 0) + 1
            owner = owners.get(name, {})
            drains = {int(i): d.get("reason", "") for i, d in st["gpu_drain"].items()}
            record = {
                "name": name, "state": self.node_state(name).value, "reason": st["reason"],
                "cpus": nd.cpus, "alloc_cpus": nd.cpus - view.free_cpus, "mem_mb": nd.mem_mb,
                "alloc_mem_mb": nd.mem_mb - view.free_mem, "gpus": len(view.gpus),
                "alloc_gpus": len(owner), "gpus_drained": len(view.drained),
                "gpu_type": ",".join(sorted(counts)), "gpu_counts": counts,
                "gpu_drain": {str(i): r for i, r in sorted(drains.items())},
                "gpu_reason": "; ".join(f"GPU {i}: {r}" for i, r in sorted(drains.items())),
                "gpu_mode": nd.gpu_detect, "gpu_notes": st["gpu_notes"] + list(
                    st["inventory"].get("gpu_notes") or [])[:10],
                "gpu_backends": dict(st["inventory"].get("gpu_backends") or {}),
                "features": list(nd.features), "partitions": nd.partitions,
                "last_heartbeat": st["last_heartbeat"], "jobs": sorted(jobs_on.get(name, [])),
                "protections": st["inventory"].get("protections", ""),
                "connected": name in self.node_conns,
            }
            if msg.get("devices"):
                record["devices"] = self._device_rows(name, drains, owner)
            nodes.append(record)
        partitions = [{
            "name": p.name, "nodes": hostlist.compress(self.config.partition_nodes[p.name]),
            "node_names": self.config.partition_nodes[p.name],
            "default": p.name == self.config.default_partition, "state": p.state,
            "default_time": p.default_time, "max_time": p.max_time,
        } for p in self.config.partitions.values()]
        return {"nodes": nodes, "partitions": partitions}

    def _busy(self, name: str) -> set[int]:
        return {i for alloc in self.running.values() if name in alloc for i in alloc[name].gpus}

    def _device_rows(self, name: str, drains: dict[int, str], owner: dict[int, int]) -> list[dict]:
        """One row per accelerator: what it is, who has it, how it is doing."""
        telemetry = self.node_status[name]["telemetry"]
        rows = []
        for d in self.node_status[name]["devices"] or []:
            i = d.index
            rows.append({
                "index": i, "type": d.type, "model": d.model, "vendor": d.vendor,
                "mem_mb": d.mem_mb, "uuid": d.uuid, "bdf": d.bdf, "numa_node": d.numa_node,
                "profile": d.profile, "parent": d.parent, "device_files": d.device_files,
                "state": "drained" if i in drains else ("alloc" if i in owner else "idle"),
                "job": owner.get(i), "health": drains.get(i) or "ok",
                **{k: v for k, v in (telemetry.get(str(i)) or {}).items() if k != "lost"},
            })
        return rows

    def _node_names(self, msg: dict) -> list[str]:
        spec = msg.get("nodes")
        if not isinstance(spec, str) or not spec:
            raise RequestError("name the nodes (a hostlist such as gpu[001-004])")
        names = hostlist.expand(spec)
        unknown = [n for n in names if n not in self.config.nodes]
        if unknown:
            raise RequestError(f"node {unknown[0]} not found (nodes: "
                               f"{hostlist.compress(list(self.config.nodes))})")
        return names

    def op_drain(self, conn: Conn, msg: dict) -> dict:
        self._require_operator(conn, "drain")
        reason = msg.get("reason")
        if not isinstance(reason, str) or not reason.strip():
            raise RequestError("drain needs a reason (reason=\"...\")")
        names = self._node_names(msg)
        for name in names:
            self._set_node(name, drain=True, reason=reason.strip()[:200])
            log.info("node %s: drained by uid %d: %s", name, conn.uid, reason)
        return {"nodes": names}

    def op_resume(self, conn: Conn, msg: dict) -> dict:
        self._require_operator(conn, "resume")
        names = self._node_names(msg)
        for name in names:
            st = self.node_status[name]
            self._set_node(name, drain=False, reason="" if st["up"] else st["reason"])
            st["gpu_notes"] = []
            if st["gpu_drain"] and name in self.node_conns:
                # Drained devices stay out until the node's monitor has judged them
                # afresh: a fault that persists keeps them out, and no job lands on a
                # device that is still broken in between.
                st["health_seq"] = st.get("health_seq", 0) + 1
                st["recheck"] = st["health_seq"]
                self._send(self.node_conns[name], {"op": "health_reset", "seq": st["health_seq"]})
            elif st["gpu_drain"]:
                self.nodes[name].undrain_gpus(self._busy(name))
                self._set_node(name, gpu_drain={})
            log.info("node %s: resumed by uid %d", name, conn.uid)
        return {"nodes": names}

    def op_reconfigure(self, conn: Conn, msg: dict) -> dict:
        self._require_operator(conn, "reconfigure")
        from rmsbatch.config import ConfigError, load
        try:
            config = load(self.config.directory)
        except ConfigError as exc:
            raise RequestError(f"configuration not reloaded: {exc}") from None
        self.config = config
        self.rebuild()
        log.info("configuration reloaded by uid %d", conn.uid)
        return {}

    def _set_node(self, name: str, **fields) -> None:
        self.node_status[name].update(fields)
        self.spool.upsert_node(name, **{k: int(v) if isinstance(v, bool) else v
                                        for k, v in fields.items()})
        self.nodes[name].usable = self.node_status[name]["up"] and not self.node_status[name]["drain"]
        self.dirty = True

    # -- node daemon messages ------------------------------------------------------------
    def _node_conn(self, conn: Conn, msg: dict) -> str:
        if not self._is_daemon(conn):
            raise RequestError("permission denied: only the node daemon may send this")
        name = msg.get("node") or conn.meta.get("node")
        if name not in self.config.nodes:
            raise RequestError(f"node {name!r} is not in cluster.toml: add it under [[nodes]]")
        return name

    def op_node_hello(self, conn: Conn, msg: dict) -> dict:
        name = self._node_conn(conn, msg)
        old = self.node_conns.get(name)
        if old is not None and old is not conn:
            self.loop.close(old)
        conn.meta["node"] = name
        self.node_conns[name] = conn
        st = self.node_status[name]
        reason = "" if st["reason"] in ("Not responding", "Not registered") else st["reason"]
        inventory = msg.get("inventory") if isinstance(msg.get("inventory"), dict) else {}
        self._set_node(name, up=True, reason=reason, last_heartbeat=self.clock(),
                       inventory=inventory)
        if self.config.nodes[name].gpu_detect != "static":
            self._refresh_view(name)
        problems = [str(p) for p in inventory.get("gpu_problems") or []][:20]
        if problems:
            why = "; ".join(problems)[:200]
            if not (st["drain"] and st["reason"] == why):
                self._set_node(name, drain=True, reason=why)
                log.warning("node %s: drained: %s", name, why)
        log.info("node %s: registered (pid %d, %d accelerators)", name, conn.pid,
                 len(self.nodes[name].gpus))
        ended = msg.get("ended") or []
        for outcome in ended:
            self.job_ended(name, outcome)
        reported = {(o.get("job_id"), o.get("run")) for o in ended}
        running_there = set()
        for pair in msg.get("running") or []:
            if not (isinstance(pair, list) and len(pair) == 2):
                raise RequestError("running: expected [job id, run] pairs")
            running_there.add((_int(pair[0], "running"), _int(pair[1], "running")))
        orders = []
        current = set()
        for job_id, alloc in list(self.running.items()):
            if not alloc or next(iter(alloc)) != name:   # not this node's batch script
                continue
            row = self.spool.job(job_id)
            run = (job_id, row["restart_count"])
            current.add(run)
            if run in running_there:
                if not row["launched"]:
                    self.spool.update_job(job_id, launched=1)
                if row["cancel_requested"]:
                    orders.append({"op": "cancel", "job_id": job_id, "run": run[1]})
            elif row["launched"] and run not in reported:
                self._finish(job_id, JobState.NODE_FAIL, end_reason=f"job lost on node {name}")
            elif not row["launched"]:
                orders.append(self.launch_message(row, name))
        for job_id, run in running_there - current:
            # a run the cluster has given up on (node failed, job requeued): stop it
            orders.append({"op": "cancel", "job_id": job_id, "run": run})
        return {"orders": orders}

    def op_heartbeat(self, conn: Conn, msg: dict) -> dict:
        name = self._node_conn(conn, msg)
        now = self.clock()
        self.node_status[name]["last_heartbeat"] = now
        telemetry = msg.get("gpus")
        if isinstance(telemetry, dict) and len(telemetry) <= 1024:
            self.node_status[name]["telemetry"] = {
                str(k): v for k, v in telemetry.items() if isinstance(v, dict)}
        if not self.node_status[name]["up"]:
            return {"rehello": True}
        self.spool.upsert_node(name, last_heartbeat=now)
        return {}

    def op_node_health(self, conn: Conn, msg: dict) -> dict:
        """The node's monitor judged devices unfit: drain them; end the jobs on a device
        that failed outright (NODE_FAIL, or requeued when they asked for it)."""
        name = self._node_conn(conn, msg)
        st, view = self.node_status[name], self.nodes[name]
        st["gpu_notes"] = [str(p)[:200] for p in msg.get("problems") or []][:10]
        unhealthy = msg.get("unhealthy") if isinstance(msg.get("unhealthy"), dict) else {}
        now = self.clock()
        drains = dict(st["gpu_drain"])
        recheck = st.get("recheck")
        if recheck and isinstance(msg.get("seq"), int) and msg["seq"] >= recheck:
            # the first judgement since `rcontrol resume`: what it finds healthy is back
            healthy = [int(i) for i in drains if i not in unhealthy]
            view.undrain_gpus(self._busy(name), healthy)
            for i in healthy:
                drains.pop(str(i))
                log.info("node %s: GPU %d back in service", name, i)
            st["recheck"] = None
        for key, verdict in unhealthy.items():
            try:
                index = int(key)
            except ValueError:
                continue
            if index not in view.gpus or str(index) in drains or not isinstance(verdict, dict):
                continue
            reason = str(verdict.get("reason") or "unhealthy")[:200]
            drains[str(index)] = {"reason": reason, "fatal": bool(verdict.get("fatal")),
                                  "since": now}
            view.drain_gpu(index)
            log.warning("node %s: GPU %d drained: %s", name, index, reason)
            if verdict.get("fatal"):
                for job_id, alloc in list(self.running.items()):
                    if name in alloc and index in alloc[name].gpus:
                        self._node_failed(job_id, now, f"GPU {index} on {name} failed: {reason}")
        if drains != st["gpu_drain"]:
            self._set_node(name, gpu_drain=drains)
        return {"ack": "node_health"}

    def op_job_started(self, conn: Conn, msg: dict) -> dict:
        self._node_conn(conn, msg)
        job_id = _int(msg.get("job_id"), "job_id")
        row = self.spool.job(job_id)
        if row and row["restart_count"] == msg.get("run") and job_id in self.running:
            self.spool.update_job(job_id, launched=1,
                                  protections=str(msg.get("protections") or "")[:200])
        return {"ack": "job_started", "job_id": job_id}

    def op_job_ended(self, conn: Conn, msg: dict) -> dict:
        name = self._node_conn(conn, msg)
        outcome = msg.get("outcome") or {}
        self.job_ended(name, outcome)
        return {"ack": "job_ended", "job_id": outcome.get("job_id"), "run": outcome.get("run")}

    def job_ended(self, node: str, outcome: dict) -> None:
        job_id = _int(outcome.get("job_id"), "job_id")
        row = self.spool.job(job_id)
        if row is None or JobState(row["state"]).is_finished or job_id not in self.running \
                or outcome.get("run") != row["restart_count"]:
            return  # already recorded, or the end of an earlier run of a requeued job
        try:
            state = JobState(outcome.get("state"))
        except ValueError:
            state = JobState.FAILED
        if row["cancel_requested"] and state is not JobState.TIMEOUT:
            state = JobState.CANCELLED
        self._finish(job_id, state,
                     start_time=_float(outcome.get("start_time")) or row["start_time"],
                     end_time=_float(outcome.get("end_time")) or self.clock(),
                     exit_code=_opt_int(outcome.get("exit_code")),
                     exit_signal=_opt_int(outcome.get("signal")),
                     max_rss_kb=_opt_int(outcome.get("max_rss_kb")),
                     total_cpu_s=_float(outcome.get("total_cpu_s")),
                     gpu_util=_float(outcome.get("gpu_util")),
                     gpu_mem_peak_mb=_opt_int(outcome.get("gpu_mem_peak_mb")),
                     gpu_energy_j=_float(outcome.get("gpu_energy_j")),
                     end_reason=str(outcome.get("reason") or "")[:500],
                     **({"protections": str(outcome["protections"])[:500]}
                        if outcome.get("protections") else {}))
        log.info("job %d: %s on %s (exit %s:%s)", job_id, state.value, node,
                 outcome.get("exit_code"), outcome.get("signal"))

    def _finish(self, job_id: int, state: JobState, **fields) -> None:
        fields.setdefault("end_time", self.clock())
        if not self.spool.transition(job_id, state, **fields):
            return
        alloc = self.running.pop(job_id, {})
        placement.take(self.nodes, alloc, -1)
        self._ended(job_id)
        self.dirty = True

    def _ended(self, job_id: int) -> None:
        conns = self.waiters.pop(job_id, [])
        if conns:
            record = job_record(self.spool.job(job_id))
            for c in conns:
                self._send(c, {"ok": True, "job": record})

    # -- scheduling ---------------------------------------------------------------------
    @property
    def needs_pass(self) -> bool:
        return self.dirty or bool(self.fresh)

    def _fresh_jobs_wait(self) -> bool:
        """Settle new submissions without a full pass when nothing changed but
        their arrival and each lands behind its partition's blocked job."""
        reasons = {}
        for job_id in self.fresh:
            job = self.pending.get(job_id)
            if job is None or job.hold:
                continue
            blocker = self.blocked_at.get(job.partition)
            if blocker is None or scheduler.order_key(job) < blocker:
                return False
            reasons[job_id] = scheduler.PRIORITY
        with self.spool.transaction():
            self.spool.set_reasons(reasons)
        self.reasons.update(reasons)
        return True

    def schedule(self, now: float | None = None) -> int:
        """One scheduling pass; returns how many jobs started."""
        now = self.clock() if now is None else now
        if not self.dirty and self._fresh_jobs_wait():
            self.fresh = []
            return 0
        self.dirty = False
        self.fresh = []
        eligible = [j for j in self.pending.values() if not j.hold]
        if not eligible:
            self.blocked_at = {}
            return 0
        parts = {p.name: scheduler.PartitionView(p.name, p.state == "UP",
                                                 self.config.partition_nodes[p.name])
                 for p in self.config.partitions.values()}
        decisions = scheduler.schedule(eligible, self.nodes, parts, now)
        self.blocked_at = decisions.blocked
        with self.spool.transaction():
            for job_id, alloc in decisions.starts:
                names = list(alloc)
                ok = self.spool.transition(
                    job_id, JobState.RUNNING, start_time=now, reason="None",
                    alloc=_alloc_to_json(alloc), nodelist=hostlist.compress(names),
                    alloc_cpus=sum(a.cpus for a in alloc.values()),
                    alloc_gpus=sum(len(a.gpus) for a in alloc.values()))
                if not ok:
                    placement.take(self.nodes, alloc, -1)
                    continue
                self.pending.pop(job_id)
                self.reasons.pop(job_id, None)
                self.running[job_id] = alloc
            changed = {i: r for i, r in decisions.reasons.items() if self.reasons.get(i) != r}
            if changed:
                self.spool.set_reasons(changed)
                self.reasons.update(changed)
        for job_id, alloc in decisions.starts:
            if job_id in self.running:
                row = self.spool.job(job_id)
                log.info("job %d: started on %s", job_id, row["nodelist"])
                # The batch script runs on the first node only, as in Slurm; the
                # others are held for the job's own launchers (srun, mpirun, ...).
                batch = next(iter(alloc))
                if batch in self.node_conns:
                    self._send(self.node_conns[batch], self.launch_message(row, batch))
        return len(decisions.starts)

    def launch_message(self, row: dict, node: str) -> dict:
        spec = self.spool.job_spec(row["id"])
        alloc = json.loads(row["alloc"])
        return {"op": "launch", "job": {
            "job_id": row["id"], "name": row["name"], "user": row["user"], "uid": row["uid"],
            "gid": row["gid"], "account": row["account"], "partition": row["partition"],
            "qos": row["qos"], "script": spec["script"], "argv": spec["argv"],
            "workdir": spec["workdir"], "submit_dir": spec["submit_dir"],
            "submit_host": spec["submit_host"],
            "output": spec["output"] or default_output(spec), "error": spec["error"],
            "environment": spec["environment"], "export": spec["export"],
            "time_limit": row["time_limit"], "ntasks": row["ntasks"],
            "cpus_per_task": row["cpus_per_task"], "nodes": row["nodes"],
            "nodelist": row["nodelist"], "alloc": alloc[node],
            "restart_count": row["restart_count"], "cluster": self.config.cluster.name,
            "kill_grace": self.config.cluster.controller.kill_grace,
        }}

    def _to_nodes(self, row: dict, message: dict) -> None:
        for name in json.loads(row["alloc"] or "{}"):
            if name in self.node_conns:
                self._send(self.node_conns[name], message)

    def check_nodes(self, now: float | None = None) -> None:
        """Mark nodes DOWN after missed heartbeats; fail or requeue their jobs."""
        now = self.clock() if now is None else now
        timeout = self.config.cluster.controller.node_timeout
        for name, st in self.node_status.items():
            if not st["up"] or st["last_heartbeat"] is None or now - st["last_heartbeat"] <= timeout:
                continue
            with self.spool.transaction():
                self._set_node(name, up=False, reason="Not responding")
                log.warning("node %s: not responding for %.0f s: marked DOWN", name,
                            now - st["last_heartbeat"])
                for job_id, alloc in list(self.running.items()):
                    if name in alloc:
                        self._node_failed(job_id, now, f"node {name} stopped responding")
            conn = self.node_conns.pop(name, None)
            if conn is not None:
                self.loop.close(conn)

    def _node_failed(self, job_id: int, now: float, why: str) -> None:
        """The job's node (or one of its devices) failed: requeue it if it asked, else
        NODE_FAIL; whatever still runs of it is told to stop."""
        row = self.spool.job(job_id)
        stop = {"op": "cancel", "job_id": job_id, "run": row["restart_count"]}
        if row["requeue"] and not row["cancel_requested"]:
            if self.spool.transition(job_id, JobState.PENDING, start_time=None, alloc=None,
                                     nodelist="", alloc_cpus=0, alloc_gpus=0, launched=0,
                                     reason="None", restart_count=row["restart_count"] + 1):
                placement.take(self.nodes, self.running.pop(job_id), -1)
                self.pending[job_id] = self._pending(self.spool.job(job_id))
                self._to_nodes(row, stop)
                log.warning("job %d: %s: requeued", job_id, why)
                return
        self._finish(job_id, JobState.NODE_FAIL, end_time=now, end_reason=why[:500])
        self._to_nodes(row, stop)
        log.warning("job %d: NODE_FAIL (%s)", job_id, why)

    def connection_closed(self, conn: Conn) -> None:
        for conns in self.waiters.values():
            if conn in conns:
                conns.remove(conn)
        name = conn.meta.get("node")
        if name and self.node_conns.get(name) is conn:
            del self.node_conns[name]
            log.info("node %s: connection closed (the node stays up until node_timeout)", name)


# -- request field helpers ----------------------------------------------------------------
def _int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{key}: expected an integer")
    return value


def _opt_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError("expected a number")
    return float(value)


def _int_list(value, key: str) -> list[int]:
    if not value:
        return []
    if not isinstance(value, list) or len(value) > 1_000_000:
        raise RequestError(f"{key}: expected a list of integers")
    return [_int(v, key) for v in value]


def _str_list(value, key: str) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(f"{key}: expected a list of strings")
    return [v for v in value if v]


def _signal_number(sig) -> int:
    if isinstance(sig, int) and not isinstance(sig, bool):
        if 1 <= sig <= 64:
            return sig
    elif isinstance(sig, str):
        name = sig.upper().removeprefix("SIG")
        if name.isdigit() and 1 <= int(name) <= 64:
            return int(name)
        if name in SIGNALS:
            return SIGNALS[name]
    raise RequestError(f"invalid signal {sig!r} (use a name such as USR1 or a number)")
