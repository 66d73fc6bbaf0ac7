"""Job records as clients see them, and allocations as the spool stores them."""
from __future__ import annotations

import json

from rmsbatch.ctld.spool import JOB_COLUMNS
from rmsbatch.sched.placement import NodeAlloc

# Spool columns that stay inside the controller. (Whether an operator pinned a pending
# job's priority reaches clients through the "priorities" op, as its "pinned".)
HIDDEN = ("alloc", "launched", "cancel_requested", "gid", "mem_whole_node", "gpus_per_node",
          "constraint_expr", "payload_id", "preempt_until", "preempt_for", "preempt_mode",
          "priority_pinned")

# Record fields a listing may ask for by name (stored as they are shown).
PROJECTABLE = frozenset(c for c in JOB_COLUMNS if c not in HIDDEN
                        and c not in ("hold", "requeue", "exclusive"))


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


def alloc_from_json(text: str | None) -> dict[str, NodeAlloc]:
    if not text:
        return {}
    return {n: NodeAlloc(a["cpus"], a["mem_mb"], a["gpus"], a.get("exclusive", False),
                         a.get("tmp_mb", 0), a.get("gres") or {}, a.get("licenses") or {})
            for n, a in json.loads(text).items()}


def alloc_to_json(alloc: dict[str, NodeAlloc]) -> str:
    out = {}
    for n, a in alloc.items():
        out[n] = {"cpus": a.cpus, "mem_mb": a.mem_mb, "gpus": a.gpus, "exclusive": a.exclusive}
        # only when booked: allocations of plain jobs read as before
        out[n].update({k: v for k, v in (("tmp_mb", a.tmp_mb), ("gres", a.gres),
                                         ("licenses", a.licenses)) if v})
    return json.dumps(out)


def batch_node(alloc: dict) -> str | None:
    """The node that runs the batch script: the first of the allocation (as Slurm)."""
    return next(iter(alloc), None)
