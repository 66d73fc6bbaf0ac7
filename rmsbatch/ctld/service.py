"""The controller service: API requests in, spool updates and node orders out.

A testable object with no socket of its own: `handle_batch(messages)` answers the
requests that arrived together in one transaction, `schedule(now)` runs a scheduling
pass, `check_nodes(now)` notices silent nodes and lost jobs. The daemon shell
(rmsbatch.ctld.rmsctld) owns the event loop and calls these. Everything the
controller keeps in memory (pending jobs, node views, running allocations) is rebuilt
from the spool on start, and again after a request that failed half-way, so a
rollback in the spool is a rollback in memory too.

Requests are dispatched from the table in rmsbatch.ctld.ops; their handlers validate
before they change anything, and queue what they tell others (replies to waiters,
orders to nodes) in an outbox that is sent only once the transaction is committed
and dropped when it is not.
"""
from __future__ import annotations

import logging
import os
import pwd
import sqlite3
import time

from pydantic import ValidationError

from rmsbatch.core import hostlist
from rmsbatch.core.jobspec import SpecError
from rmsbatch.core.states import JobState
from rmsbatch.ctld import requests
from rmsbatch.ctld.requests import RequestError
from rmsbatch.ctld.idlegpu import IdleGpus
from rmsbatch.ctld.leases import Leases
from rmsbatch.ctld.limitstate import RunningCharges
from rmsbatch.ctld.preemption import Preemptions
from rmsbatch.ctld.nodestate import NOT_RESPONDING, NodeStatus, devices_of, view_of
from rmsbatch.ctld.passstats import PassStats
from rmsbatch.ctld.ops import NODE, OPERATOR, OPS
from rmsbatch.ctld import audit, pins
from rmsbatch.ctld.acctlink import AcctLink
from rmsbatch.ctld.budgets import Budgets
from rmsbatch.ctld.retention import Retention
from rmsbatch.ctld.listings import Listings
from rmsbatch.ctld.ops import reservations as resv
from rmsbatch.ctld.records import alloc_from_json, alloc_to_json, batch_node, job_record
from rmsbatch.ctld.spool import Spool
from rmsbatch.ctld import waits as waiting
from rmsbatch.ctld.usage import Usage
from rmsbatch.net.loop import Conn, Loop
from rmsbatch.sched import placement
from rmsbatch.sched import plan as scheduler
from rmsbatch.sched.admission import AdmissionError, default_output
from rmsbatch.sched.jobrequest import pending_from_row, windows
from rmsbatch.sched.placement import NodeAlloc, NodeView

log = logging.getLogger("rmsbatch.controller")

# After submissions settled without a full pass: when the pass that plans their starts runs
ESTIMATE_AFTER_S = 2.0
# A pass this quick (the last one's time) runs inside the transaction of the requests
# that submitted jobs, so that a job that can start at once is committed submitted and
# started with one fsync, and is launched as its submitter is answered. A slower one
# (a long queue) runs after the commit, so that nobody's reply waits for it.
INLINE_PASS_S = 0.002
INLINE_PASS_JOBS = 1000

# What runs on the nodes of an allocation other than the first: nothing of the user's.
# The run holds the node's part of the allocation (cgroup, CPUs, devices, lease) for
# the job's steps until the job ends, as Slurm's "extern" step does with a sleep.
HOLD_SCRIPT = ("#!/bin/sh\n# rmsbatch: holds this node's part of the job's allocation; "
               "the batch script runs on the job's first node\n"
               "PATH=/usr/bin:/bin:$PATH\nexec sleep 2147483647\n")


def allocation_holder() -> dict:
    """The launch fields that make a run an allocation holder."""
    return {"script": HOLD_SCRIPT, "argv": [], "workdir": "/", "output": "/dev/null",
            "error": "/dev/null", "batch": False}


class Controller:
    def __init__(self, config, spool: Spool, loop: Loop | None = None, clock=time.time):
        self.config = config
        self.spool = spool
        self.listings = Listings(spool)     # job listings asked again, unchanged
        self.acct = AcctLink(spool.path, loop)  # accounting queries, in worker processes
        self.retention = Retention()            # old records to monthly archive files
        self.loop = loop or Loop()
        self.clock = clock
        self.my_uid = os.geteuid()
        self.node_conns: dict[str, Conn] = {}
        self.waiters: dict[int, list[Conn]] = {}
        self.dirty = True                  # a full scheduling pass is due
        self.fresh: list[int] = []         # jobs submitted since the last pass
        self.blocked_at: dict[str, tuple] = {}
        # (conn, message), or (None, job id): tell the job's waiters it ended
        self.outbox: list[tuple[Conn | None, object]] = []
        self.changes = 0                   # bumped by every change to in-memory state
        self.backoff_until = 0.0           # after the spool refused a write
        self.wake_at: float | None = None  # a begin time: a pass is due then
        self._users: dict[int, str] = {}
        cc = config.cluster.controller
        self.leases = Leases(cc.job_lease, cc.lease_margin)
        self.node_status: dict[str, NodeStatus] = {}
        self.pass_stats = PassStats()
        # Steps created and not yet launched: (job id, step id) -> their layout
        self.step_layouts: dict[tuple[int, int], dict] = {}
        # Multi-node jobs: when each node of the allocation last renewed the lease
        self.lease_seen: dict[int, dict[str, float]] = {}
        # --wait-all-nodes: job -> the other nodes its batch script still waits for
        self.awaiting: dict[int, set[str]] = {}
        # From the last full pass: when waiting jobs should start, and what else holds them
        self.est_start: dict[int, float] = {}
        self.more_reasons: dict[int, list[str]] = {}
        self.limit_charges = RunningCharges()   # what running jobs hold against limits
        self.preemptions = Preemptions()        # victims on their way out
        self.idle_gpus = IdleGpus()             # jobs whose GPUs sit unused
        pins.settle(spool, config)      # before the jobs are read: a migrated spool's pins
        self.rebuild()

    # -- the outbox -------------------------------------------------------------
    def send(self, conn: Conn, message: dict) -> None:
        """Held until the daemon has committed: nobody hears of a change that a crash
        or a failed request could still undo."""
        self.outbox.append((conn, message))

    def flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        for conn, message in outbox:
            if conn is None:
                self._answer_waiters(message)
            else:
                self.loop.send(conn, message)

    def _answer_waiters(self, job_id: int) -> None:
        conns = self.waiters.pop(job_id, [])
        if conns:
            record = job_record(self.spool.job(job_id))
            for c in conns:
                self.loop.send(c, {"ok": True, "job": record})

    def to_node(self, name: str, message: dict) -> None:
        conn = self.node_conns.get(name)
        if conn is not None:
            self.send(conn, message)

    # -- state from the spool -------------------------------------------------------
    def rebuild(self) -> None:
        """Everything in memory from the spool (start, reconfigure)."""
        now = self.clock()
        sc = self.config.cluster.scheduler
        self.policy = scheduler.Policy(backfill=sc.backfill, depth=sc.backfill_depth)
        stored = self.spool.nodes()
        old = self.node_status
        self.node_status = {}
        for name, nd in self.config.nodes.items():
            st = NodeStatus.from_spool(name, stored.get(name, {}), now)
            if name in old:     # what the node said since, which the spool does not keep
                st.telemetry, st.gpu_notes = old[name].telemetry, old[name].gpu_notes
                st.health_seq, st.recheck = old[name].health_seq, old[name].recheck
                st.last_heartbeat, st.responding = old[name].last_heartbeat, old[name].responding
            st.devices = devices_of(nd, st)
            self.node_status[name] = st
        self.usage = Usage(self.config, self.spool, now)    # fair-share usage, from the spool
        self.budgets = Budgets(self.config, self.spool, now)
        self._reload_jobs(now)

    def _reload_jobs(self, now: float) -> None:
        # runtime reservations (rcontrol create reservation), before the jobs they place
        self.reservations = resv.load(self.spool)
        self.nodes: dict[str, NodeView] = {
            name: view_of(self.config.nodes[name], st) for name, st in self.node_status.items()}
        self.pending: dict[int, scheduler.PendingJob] = {}
        self.reasons: dict[int, str] = {}
        self.running: dict[int, dict[str, NodeAlloc]] = {}
        self.preemptions.going = {}                 # (from the spool, below)
        self.ends: dict[int, float | None] = {}     # start + time limit; None: no limit
        # running job -> (QoS, partition, priority, start): what preemption weighs
        self.run_meta: dict[int, tuple] = {}
        self.awaiting = {}
        for row in self.spool.active_jobs():
            if row["state"] == JobState.PENDING.value:
                self.pending[row["id"]] = self._pending(row)
                self.reasons[row["id"]] = row["reason"]
            else:
                alloc = alloc_from_json(row["alloc"])
                self.running[row["id"]] = alloc
                start = row["start_time"] or now
                self.set_end(row["id"], start, resv.time_limit(
                    self, row["time_limit"], row["reservation"], start))
                self.run_meta[row["id"]] = (row["qos"], row["partition"], row["priority"],
                                            start)
                self.preemptions.resume(self, row)
                self._take(alloc)
                if row["wait_all_nodes"] and not row["launched"] and len(alloc) > 1:
                    # the nodes' next node_hello says again which hold their part
                    self.awaiting[row["id"]] = set(list(alloc)[1:])
        for job_id in list(self.leases.until):
            if job_id not in self.running:
                self.leases.drop(job_id)
        self.lease_seen = {j: seen for j, seen in self.lease_seen.items() if j in self.running}
        for job_id in self.running:
            if job_id not in self.leases.until:
                self.leases.renew(job_id, now)
        self.dirty = True

    def restore(self) -> None:
        """After a request failed half-way (its savepoint rolled back): memory as the
        spool says, keeping what only memory knows (connections, telemetry)."""
        stored = self.spool.nodes()
        for name, st in self.node_status.items():
            s = stored.get(name, {})
            st.up, st.drain = bool(s.get("up")), bool(s.get("drain"))
            st.reason = s.get("reason", "")
            st.inventory, st.gpu_drain = s.get("inventory") or {}, s.get("gpu_drain") or {}
            st.devices = devices_of(self.config.nodes[name], st)
        self._reload_jobs(self.clock())
        self.fresh = []
        self.changes += 1
        log.warning("in-memory state rebuilt from the spool after a failed request")

    def refresh_view(self, name: str) -> None:
        """A new view of one node (new inventory), with its running jobs on it."""
        st = self.node_status[name]
        st.devices = devices_of(self.config.nodes[name], st)
        self.nodes[name] = view_of(self.config.nodes[name], st)
        for alloc in self.running.values():
            if name in alloc:
                placement.take(self.nodes, {name: alloc[name]})
        self.changes += 1

    def _take(self, alloc: dict[str, NodeAlloc], sign: int = 1) -> None:
        """Book (or, sign -1, release) an allocation on the node views; nodes a new
        configuration no longer has are skipped (reconfigure keeps them while jobs run,
        but a spool from an older configuration may still name them)."""
        placement.take(self.nodes, {n: a for n, a in alloc.items() if n in self.nodes}, sign)

    def windows(self) -> tuple:
        """Every reservation: cluster.toml's, then the runtime ones."""
        return windows(self.config, tuple(self.reservations.values()))

    def _pending(self, row: dict) -> scheduler.PendingJob:
        job = pending_from_row(row, self.config, self.windows())
        waiting.fill_pending(job, row)
        return job

    def add_pending(self, row: dict) -> None:
        self.pending[row["id"]] = self._pending(row)
        self.reasons[row["id"]] = row["reason"]
        self.changes += 1

    def add_array(self, row: dict, ids: list[int], task_ids: list[int]) -> None:
        """The tasks of a new array: one PendingJob each, sharing the parsed request."""
        first = self._pending({**row, "id": ids[0], "array_job_id": ids[0],
                               "array_task_id": task_ids[0]})
        for job_id, task in zip(ids, task_ids):
            self.pending[job_id] = waiting.task_of(first, job_id, task)
            self.reasons[job_id] = row["reason"]
        self.changes += 1

    def reconfigure(self, config) -> None:
        """Take a new configuration, unless it would orphan what runs or waits."""
        problems = []
        for job_id, alloc in self.running.items():
            gone = [n for n in alloc if n not in config.nodes]
            if gone:
                problems.append(f"job {job_id} runs on {hostlist.compress(gone)}, which the "
                                "new cluster.toml no longer has")
        for job in self.pending.values():
            if job.partition not in config.partitions:
                problems.append(f"job {job.id} waits in partition {job.partition}, which the "
                                "new cluster.toml no longer has")
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise RequestError(f"configuration not reloaded: {problems[0]}{more}: keep them "
                               "until those jobs have ended (drain the nodes first)")
        old = self.config.cluster.controller
        new = config.cluster.controller
        for key in ("socket", "spool_dir"):
            if getattr(old, key) != getattr(new, key):
                log.warning("controller.%s changed: takes effect when rmsctld restarts", key)
        self.config = config
        self.leases.lease_s, self.leases.margin_s = new.job_lease, new.lease_margin
        for name in list(self.node_conns):
            if name not in config.nodes:
                self.loop.close(self.node_conns.pop(name))
        self.rebuild()
        log.info("configuration reloaded from %s", config.directory)

    # -- identity -----------------------------------------------------------------
    def user_name(self, uid: int) -> str:
        if uid not in self._users:
            try:
                self._users[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                raise RequestError(f"uid {uid} has no user name on the controller host") from None
        return self._users[uid]

    def is_daemon(self, conn: Conn) -> bool:
        return conn.uid in (0, self.my_uid)

    def is_privileged(self, conn: Conn) -> bool:
        return self.is_daemon(conn) or self.config.is_operator(self.user_name(conn.uid))

    def _authorize(self, conn: Conn, role: str, op: str) -> None:
        if role == NODE:
            if not self.is_daemon(conn):
                raise RequestError(f"{op}: permission denied: only the node daemon may send this")
        elif role == OPERATOR:
            if not self.is_privileged(conn):
                raise RequestError(f"{op}: permission denied (only operators and admins "
                                   "named in tenants.toml may do this)")
        else:
            self.user_name(conn.uid)

    # -- dispatch -----------------------------------------------------------------
    def handle_batch(self, messages: list) -> list[tuple[Conn, dict]]:
        """Requests that arrived together, in one transaction (one fsync). A commit
        that fails (a full disk) answers every request of the batch with an error and
        leaves memory as the spool is."""
        replies = []
        try:
            with self.spool.transaction():
                for conn, msg in messages:
                    reply = self.handle(conn, msg)
                    if reply is not None:
                        replies.append((conn, reply))
                if self.fresh and self._inline_pass():
                    self._pass_in_batch()
        except sqlite3.Error as exc:
            log.error("spool %s: cannot commit (%s): %d request(s) refused",
                      self.spool.path, exc, len(messages))
            self.outbox.clear()
            self.restore()
            why = (f"rmsctld cannot write its spool ({exc}): nothing was changed; "
                   "try again, and tell an admin if it persists")
            return [(conn, {"ok": False, "error": why}) for conn, _ in messages]
        return replies

    def _inline_pass(self) -> bool:
        return (self.needs_pass and self.pass_stats.last_s <= INLINE_PASS_S
                and len(self.pending) <= INLINE_PASS_JOBS)

    def _pass_in_batch(self) -> None:
        """The pass the batch's submissions call for, in the batch's transaction. A
        failed write fails the batch (handle_batch answers it); a bug in the pass is
        logged, its part undone, and the pass left to the loop, as before."""
        mark, changes = len(self.outbox), self.changes
        try:
            with self.spool.transaction():
                self.schedule()
        except sqlite3.Error:
            raise
        except Exception:
            log.exception("scheduling pass (after a submission) failed")
            self._undo(mark, changes, force=True)
            self.dirty = True

    def handle(self, conn: Conn, msg: dict) -> dict | None:
        """Answer one message; None means the reply comes later (wait)."""
        name = msg.get("op")
        entry = OPS.get(name) if isinstance(name, str) else None
        if entry is None:
            return {"ok": False, "error": f"unknown request {name!r}"[:300]}
        mark, changes = len(self.outbox), self.changes
        try:
            self._authorize(conn, entry.role, name)
            try:
                req = entry.model.model_validate(msg)
            except ValidationError as exc:
                raise RequestError(requests.describe(exc)) from None
            with self.spool.transaction():
                reply = entry.handler(self, conn, req)
        except (RequestError, AdmissionError, SpecError) as exc:
            self._undo(mark, changes)
            reply = {"ok": False, "error": str(exc)}
            if entry.audit:
                self._audit(conn, name, msg, reply)
            return reply
        except sqlite3.Error:
            self._undo(mark, changes)
            raise               # the batch's transaction is unusable: handle_batch says so
        except Exception:       # a bug: keep serving everyone else, and say so
            log.exception("request %r from pid %d failed", name, conn.pid)
            self._undo(mark, changes, force=True)
            return {"ok": False, "error": f"internal error in rmsctld handling {name!r} "
                                          "(nothing was changed; see its log)"}
        if reply is None:
            return None
        reply.setdefault("ok", True)
        if entry.audit:
            self._audit(conn, name, msg, reply)
        return reply

    def _audit(self, conn: Conn, name: str, msg: dict, reply: dict) -> None:
        try:
            user = self.user_name(conn.uid)
        except RequestError:
            user = f"uid {conn.uid}"
        audit.record(self, conn, name, msg, reply, user)

    def _undo(self, mark: int, changes: int, force: bool = False) -> None:
        del self.outbox[mark:]
        if force or self.changes != changes:
            self.restore()

    # -- job lifecycle ------------------------------------------------------------------
    def finish(self, job_id: int, state: JobState, **fields) -> bool:
        fields.setdefault("end_time", self.clock())
        if not self.spool.transition(job_id, state, **fields):
            return False
        self._release(job_id, fields["end_time"],
                      "CANCELLED" if state is JobState.COMPLETED else state.value)
        self.outbox.append((None, job_id))
        self.changes += 1
        self.dirty = True
        return True

    def _release(self, job_id: int, now: float, steps_state: str) -> None:
        """What a run held, given back (it ended, or was requeued): its nodes, its lease,
        and its steps, which died with it (their rrun cannot report any more)."""
        self._take(self.running.pop(job_id, {}), -1)
        self.ends.pop(job_id, None)
        self.run_meta.pop(job_id, None)
        self.preemptions.forget(job_id)
        self.usage.ended(job_id, now)
        self.budgets.ended(job_id, now)
        self.leases.drop(job_id)
        self.lease_seen.pop(job_id, None)
        self.awaiting.pop(job_id, None)
        self.spool.close_steps(job_id, now, steps_state)
        for key in [k for k in self.step_layouts if k[0] == job_id]:
            del self.step_layouts[key]

    def finish_pending(self, job_ids: list[int], state: JobState, **fields) -> list[int]:
        """End pending jobs in one statement (an array of 10,000 cancelled); the ids
        that were still pending."""
        fields.setdefault("end_time", self.clock())
        done = self.spool.transition_many(job_ids, state, **fields)
        for job_id in done:
            self.pending.pop(job_id, None)
            self.reasons.pop(job_id, None)
            if job_id in self.waiters:
                self.outbox.append((None, job_id))
        self.changes += 1
        self.dirty = True
        return done

    def requeue(self, job_id: int, why: str) -> bool:
        """Back to PENDING with a new run number; whatever still runs of the old run is
        told to stop."""
        row = self.spool.job(job_id)
        if not self.spool.transition(job_id, JobState.PENDING, start_time=None, alloc=None,
                                     nodelist="", alloc_cpus=0, alloc_gpus=0, launched=0,
                                     reason="None", end_reason=why[:500],
                                     restart_count=row["restart_count"] + 1,
                                     preempt_until=None, preempt_for=None,
                                     preempt_mode=None):
            return False
        self._release(job_id, self.clock(), "CANCELLED")
        self.add_pending(self.spool.job(job_id))
        self.stop_run(row, now=True)
        self.dirty = True
        log.warning("job %d: %s: requeued", job_id, why)
        return True

    def lost(self, job_id: int, why: str) -> None:
        """The job's run is known dead without an outcome (its lease ran out, or its
        node lost it, or its GPU failed): requeue it if it asked, else NODE_FAIL."""
        row = self.spool.job(job_id)
        if row is None:
            return
        if row["requeue"] and not row["cancel_requested"] and self.requeue(job_id, why):
            return
        if self.finish(job_id, JobState.NODE_FAIL, end_reason=why[:500]):
            self.stop_run(row, now=True)
            log.warning("job %d: NODE_FAIL (%s)", job_id, why)

    def stop_run(self, row: dict, now: bool = False) -> None:
        """Tell the job's nodes to end its run: with its kill grace (a cancel), or at
        once (`now`: the controller has given the run up, it must not go on)."""
        stop = {"op": "cancel", "job_id": row["id"], "run": row["restart_count"],
                **({"now": True} if now else {})}
        for name in alloc_from_json(row["alloc"]):
            self.to_node(name, stop)

    def renew_lease(self, job_id: int, node: str, now: float) -> float:
        """Word from one node of a running job. A multi-node job's lease runs from the
        node heard from least recently: the job is lost when any of its nodes is (a
        silent first node must not be covered by the others' heartbeats)."""
        alloc = self.running.get(job_id) or {}
        if len(alloc) <= 1:
            return self.leases.renew(job_id, now)
        seen = self.lease_seen.setdefault(job_id, dict.fromkeys(alloc, now))
        seen[node] = now
        if self.awaiting.get(job_id):
            seen[batch_node(alloc)] = now   # nothing runs there yet: nothing to renew
        return self.leases.renew(job_id, min(seen.values()))

    def is_current(self, job_id: int, run: int, node: str) -> bool:
        """Is this run of the job the one the controller has running on `node` (any
        node of its allocation: each holds its part of it)?"""
        alloc = self.running.get(job_id)
        if not alloc or node not in alloc:
            return False
        row = self.spool.job(job_id)
        return row is not None and row["restart_count"] == run

    # -- scheduling ------------------------------------------------------------------
    @property
    def needs_pass(self) -> bool:
        if self.backoff_until and self.clock() < self.backoff_until:
            return False
        if self.wake_at is not None and self.clock() >= self.wake_at:
            self.wake_at = None
            self.dirty = True
        return self.dirty or bool(self.fresh)

    def _fresh_jobs_wait(self) -> bool:
        """Settle new submissions without a full pass when nothing changed but
        their arrival and each lands behind its partition's blocked job."""
        reasons = {}
        room: dict = {}     # (where, request) -> room now: an array's tasks ask alike
        for job_id in self.fresh:
            job = self.pending.get(job_id)
            if job is None or job.hold:
                continue
            if waiting.held_back(job) or job.reservation is not None:
                return False
            blocker = self.blocked_at.get(job.partition)
            if blocker is None or scheduler.order_key(job) < blocker:
                return False
            if self.policy.backfill and self._room_now(job, room):
                return False    # it may start ahead: only a full pass can tell
            reasons[job_id] = scheduler.PRIORITY
        with self.spool.transaction():
            self.spool.set_reasons(reasons)
        self.reasons.update(reasons)
        if self.policy.backfill and reasons:
            # Their start estimates come from the next full pass: soon, and once for a
            # burst of submissions rather than once per job.
            self.wake(self.clock() + ESTIMATE_AFTER_S)
        return True

    def _room_now(self, job: scheduler.PendingJob, seen: dict) -> bool:
        """Does the job fit now? `seen` keeps the answers (and each partition's nodes)
        over one burst of submissions."""
        members = seen.get(job.partition)
        if members is None:
            members = seen[job.partition] = [
                self.nodes[n] for n in self.config.partition_nodes.get(job.partition, ())
                if n in self.nodes]
        candidates, where = scheduler.nodes_for(job, members, self.clock())
        key = (where, job.request)
        if key not in seen:
            try:
                placement.allocate(job.request, candidates)
                seen[key] = True
            except placement.InsufficientResources:
                seen[key] = False
        return seen[key]

    def wake(self, when: float) -> None:
        """A full pass is due at `when` at the latest."""
        if self.wake_at is None or when < self.wake_at:
            self.wake_at = when

    def set_end(self, job_id: int, start: float, time_limit: int) -> None:
        """When a running job's time limit runs out (backfill plans with it)."""
        self.ends[job_id] = start + time_limit if time_limit else None

    def schedule(self, now: float | None = None) -> int:
        """One scheduling pass; returns how many jobs started."""
        now = self.clock() if now is None else now
        self.dirty |= self.usage.prioritize(self.pending, self.running, now)
        if not self.dirty and self._fresh_jobs_wait():
            self.fresh = []
            return 0
        self.dirty = False
        self.fresh = []
        eligible = [j for j in self.pending.values() if not j.hold]
        if not eligible:
            self.blocked_at = {}
            self.est_start, self.more_reasons = {}, {}
            return 0
        parts = {p.name: scheduler.PartitionView(p.name, p.state == "UP",
                                                 self.config.partition_nodes[p.name])
                 for p in self.config.partitions.values()}
        running = [(alloc, self.ends.get(job_id)) for job_id, alloc in self.running.items()]
        began = time.perf_counter()
        decisions = scheduler.schedule(eligible, self.nodes, parts, now,
                                       waiting.snapshot(self.spool, eligible),
                                       limits=self.limit_charges.tally(self),
                                       running=running, policy=self.policy,
                                       preemption=self.preemptions.context(self, now))
        self.pass_stats.add(time.perf_counter() - began, len(eligible))
        self.limit_charges.started(decisions.starts, self.pending)
        self.blocked_at = decisions.blocked
        self.wake_at = decisions.wake_at
        self.est_start = decisions.est_start
        self.more_reasons = decisions.more
        started = []
        with self.spool.transaction():
            for job_id, alloc in decisions.starts:
                names = list(alloc)
                ok = self.spool.transition(
                    job_id, JobState.RUNNING, start_time=now, reason="None", end_reason="",
                    alloc=alloc_to_json(alloc), nodelist=hostlist.compress(names),
                    alloc_cpus=sum(a.cpus for a in alloc.values()),
                    alloc_gpus=sum(len(a.gpus) for a in alloc.values()),
                    **self._charged(alloc), **self._grown(job_id, len(alloc)))
                if not ok:
                    placement.take(self.nodes, alloc, -1)
                    continue
                job = self.pending.pop(job_id)
                self.reasons.pop(job_id, None)
                self.running[job_id] = alloc
                self.set_end(job_id, now, resv.time_limit(
                    self, job.time_limit, job.reservation, now))
                self.run_meta[job_id] = (job.qos, job.partition, job.priority, now)
                self.leases.renew(job_id, now)
                self.lease_seen.pop(job_id, None)
                started.append(job_id)
            changed = {i: r for i, r in decisions.reasons.items() if self.reasons.get(i) != r}
            if changed:
                self.spool.set_reasons(changed)
                self.reasons.update(changed)
            waiting.never_satisfied(self, decisions.never, changed, now)
            self.preemptions.start(self, decisions.preempt, now)
        self.changes += 1
        if started and waiting.any_dependency(self.pending.values()):
            self.dirty = True       # `after:` dependants may start now that these have
        specs: dict[int, dict] = {}     # the tasks of an array share one payload
        for job_id in started:
            row = self.spool.job(job_id)
            log.info("job %d: started on %s", job_id, row["nodelist"])
            self.launch_everywhere(row, specs)
        return len(started)

    def launch_everywhere(self, row: dict, specs: dict | None = None) -> None:
        """Every node sets up and holds its part of the allocation; the batch script
        runs on the first node only, as in Slurm: at once, or (--wait-all-nodes=1) once
        every other node has said its part is set up."""
        alloc = self.running[row["id"]]
        batch = batch_node(alloc)
        others = [n for n in alloc if n != batch]
        if row["wait_all_nodes"] and others:
            self.awaiting[row["id"]] = set(others)
        for node in others:
            self.to_node(node, self.launch_message(row, node, specs))
        if row["id"] not in self.awaiting:
            self.to_node(batch, self.launch_message(row, batch, specs))

    def part_ready(self, job_id: int, node: str) -> None:
        """`node`, not the batch node, has set up its part of the job's allocation; the
        last one a --wait-all-nodes job waits for starts its batch script."""
        waiting = self.awaiting.get(job_id)
        if waiting is None or node not in waiting:
            return
        waiting.discard(node)
        if waiting:
            return
        del self.awaiting[job_id]
        row = self.spool.job(job_id)
        batch = batch_node(self.running[job_id])
        log.info("job %d: every node holds its part: the batch script starts on %s",
                 job_id, batch)
        self.to_node(batch, self.launch_message(row, batch))

    def batch_waits(self, job_id: int) -> bool:
        """Does the job's batch script still wait for other nodes (--wait-all-nodes)?"""
        return bool(self.awaiting.get(job_id))

    def _charged(self, alloc: dict) -> dict:
        """What a run is charged, fixed at its start (a later change of the billing
        weights or of a node's GPUs does not rewrite past bills): billing units per
        hour, memory held, the allocated GPUs' types."""
        types = [self.nodes[n].gpus[i].type if n in self.nodes and i in self.nodes[n].gpus
                 else None for n, a in alloc.items() for i in a.gpus]
        mem = sum(a.mem_mb for a in alloc.values())
        rate = self.usage.billing(sum(a.cpus for a in alloc.values()), mem, types)
        return {"billing": round(rate, 6), "alloc_mem_mb": mem,
                "alloc_gpu_type": ",".join(sorted({t for t in types if t})) or None}

    def _grown(self, job_id: int, nodes: int) -> dict:
        """A job that asked for a range of nodes (-N MIN-MAX) and got more than MIN:
        its node count, and its task count where that follows --ntasks-per-node."""
        job = self.pending[job_id]
        if nodes == job.request.nodes:
            return {}
        row = self.spool.job(job_id)
        grown = {"nodes": nodes}
        per_node = row["ntasks_per_node"]
        if per_node and row["ntasks"] == per_node * row["nodes"]:
            grown["ntasks"] = per_node * nodes
            grown["req_cpus"] = row["req_cpus"] // row["nodes"] * nodes
        return grown

    def launch_message(self, row: dict, node: str, specs: dict | None = None) -> dict:
        """The order that starts the job's part on `node` (its batch script on the
        first node); `specs` caches payloads by payload id over one pass."""
        payload = row.get("payload_id")
        if specs is not None and payload is not None and payload in specs:
            spec = specs[payload]
        else:
            spec = self.spool.job_spec(row["id"])
            if specs is not None and payload is not None:
                specs[payload] = spec
        allocs = alloc_from_json(row["alloc"])
        alloc = allocs[node]
        message = {"op": "launch", "job": {
            "job_id": row["id"], "name": row["name"], "user": row["user"], "uid": row["uid"],
            "gid": row["gid"], "account": row["account"], "partition": row["partition"],
            "qos": row["qos"], "script": spec["script"], "argv": spec["argv"],
            "workdir": spec["workdir"], "submit_dir": spec["submit_dir"],
            "submit_host": spec["submit_host"],
            "output": spec["output"] or default_output(spec), "error": spec["error"],
            "environment": spec["environment"], "export": spec["export"],
            "time_limit": resv.time_limit(self, row["time_limit"], row["reservation"],
                                          row["start_time"] or self.clock()),
            "ntasks": row["ntasks"],
            "cpus_per_task": row["cpus_per_task"], "nodes": len(allocs),
            "nodelist": row["nodelist"],
            "alloc": {"cpus": alloc.cpus, "mem_mb": alloc.mem_mb, "gpus": alloc.gpus,
                      "exclusive": alloc.exclusive},
            "restart_count": row["restart_count"], "cluster": self.config.cluster.name,
            "kill_grace": self.config.cluster.controller.kill_grace,
            "lease_until": self.leases.until.get(row["id"], self.clock()),
            "spec_extra": {"umask": spec.get("umask"), "rlimits": spec.get("rlimits"),
                           "signal": spec.get("signal"), "open_mode": spec.get("open_mode")},
        }}
        # What the job's environment and its node prolog need (rmsbatch.node.jobenv):
        # the options as given, every node's CPUs in node list order, when it started.
        message["job"].update(
            spec={k: v for k, v in spec.items() if k not in ("script", "environment")},
            layout=[[n, a.cpus] for n, a in sorted(allocs.items(),
                                                   key=lambda na: hostlist.natural_key(na[0]))],
            start_time=row["start_time"],
            default_mem_per_cpu=self.config.cluster.controller.default_mem_per_cpu)
        if node != batch_node(allocs):
            message["job"].update(allocation_holder())
        message["job"].update(waiting.array_launch_keys(row))
        return message

    # -- nodes -------------------------------------------------------------------------
    def set_node(self, name: str, **fields) -> None:
        st = self.node_status[name]
        for key, value in fields.items():
            setattr(st, key, value)
        stored = {k: int(v) if isinstance(v, bool) else v for k, v in fields.items()
                  if k in ("up", "drain", "reason", "last_heartbeat", "inventory", "gpu_drain")}
        if stored:
            self.spool.upsert_node(name, **stored)
        self.nodes[name].usable = st.usable
        self.changes += 1
        self.dirty = True

    def check_nodes(self, now: float | None = None) -> None:
        """Silent nodes stop getting work (not responding), then are declared failed
        (DOWN); jobs whose leases ran out are given up as lost. A node daemon that is
        merely restarting costs no job: its supervisors keep their leases."""
        now = self.clock() if now is None else now
        cc = self.config.cluster.controller
        with self.spool.transaction():
            for name, st in self.node_status.items():
                if not st.up or st.last_heartbeat is None:
                    continue
                silent = now - st.last_heartbeat
                if silent > cc.node_fail_timeout:
                    self.set_node(name, up=False, responding=False,
                                  reason=f"{NOT_RESPONDING} for {silent:.0f} s (node_fail_timeout)")
                    log.warning("node %s: silent for %.0f s: marked DOWN", name, silent)
                    conn = self.node_conns.pop(name, None)
                    if conn is not None:
                        self.loop.close(conn)
                elif silent > cc.node_timeout and st.responding:
                    self.set_node(name, responding=False)
                    log.warning("node %s: not responding for %.0f s: no new work until it "
                                "is back; its jobs keep running while their leases hold",
                                name, silent)
            for job_id in self.leases.expired(now):
                alloc = self.running.get(job_id)
                if alloc is None:
                    self.leases.drop(job_id)
                    continue
                seen = self.lease_seen.get(job_id)
                node = min(seen, key=seen.get) if seen else batch_node(alloc)
                self.lost(job_id, f"lease expired: no word from node {node} or the job's "
                                  f"supervisor for {self.leases.lease_s + self.leases.margin_s:.0f} s")
                st = self.node_status.get(node)
                if st is not None and st.responding and st.last_heartbeat is not None and \
                        now - st.last_heartbeat > 2 * cc.heartbeat_interval:
                    # Silent as long as a lease, before node_timeout says so: the job
                    # just given up must not be sent back to a node that cannot hear.
                    self.set_node(node, responding=False)
                    log.warning("node %s: not responding (silent %.0f s, a job's lease ran "
                                "out): no new work until it is back", node,
                                now - st.last_heartbeat)
            resv.tick(self, now)        # reservations that started or ended meanwhile
            self.preemptions.tick(self, now)    # victims at the end of their grace
            self.idle_gpus.tick(self, now)      # flag, cancel or requeue idle-GPU jobs

    def forgive(self, seconds: float) -> None:
        """rmsctld did not run for `seconds` (stopped, or a long request held its one
        thread): nobody could renew a lease or be heard meanwhile, so that time does
        not count against leases and heartbeats."""
        now = self.clock()
        for job_id, until in self.leases.until.items():
            self.leases.until[job_id] = min(until + seconds, now + self.leases.lease_s)
        for seen in self.lease_seen.values():
            for node, when in seen.items():
                seen[node] = min(when + seconds, now)
        for st in self.node_status.values():
            if st.last_heartbeat is not None:
                st.last_heartbeat = min(st.last_heartbeat + seconds, now)
        log.warning("rmsctld did not run for %.0f s: leases and node timeouts extended by "
                    "as much", seconds)

    def connection_closed(self, conn: Conn) -> None:
        for conns in self.waiters.values():
            if conn in conns:
                conns.remove(conn)
        name = conn.meta.get("node")
        if name and self.node_conns.get(name) is conn:
            del self.node_conns[name]
            log.info("node %s: connection closed (its jobs keep running while their leases "
                     "hold)", name)
