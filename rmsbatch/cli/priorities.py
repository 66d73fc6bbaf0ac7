"""Pending jobs' priorities and their factors, as `rq --priority` and `rcontrol show
job` show them (the controller's "priorities" op, rmsbatch.ctld.ops.shares)."""
from __future__ import annotations

FACTORS = (("age", "AGE"), ("fairshare", "FAIRSHARE"), ("qos", "QOS"),
           ("partition", "PARTITION"), ("job_size", "JOBSIZE"))
KEYS = {"age": "Age", "fairshare": "FairShare", "qos": "QOS", "partition": "Partition",
        "job_size": "JobSize"}


def job_label(job: dict) -> str:
    if job.get("array_job_id") is not None and job.get("array_task_id") is not None:
        return f"{job['array_job_id']}_{job['array_task_id']}"
    return str(job["id"])


def _days(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min"


def legend(reply: dict) -> str:
    """The weights in plain words: what each column can add at most."""
    w = reply.get("weights") or {}
    size = "small jobs first" if reply.get("favor_small") else "big jobs first"
    return ("Each factor adds its weight times a value from 0 to 1: "
            f"age up to {w.get('age', 0)} (full after {_days(reply.get('max_age') or 0)} "
            f"pending), fair-share up to {w.get('fairshare', 0)} (1 unused, 0.5 at its "
            f"share), QoS up to {w.get('qos', 0)}, partition up to {w.get('partition', 0)}, "
            f"job size up to {w.get('job_size', 0)} ({size}); nice is subtracted.")


def render_priorities(reply: dict, args) -> str:
    jobs = reply.get("jobs") or []
    if getattr(args, "json", False):
        from rmsbatch.cli.layout import render_json
        return render_json("jobs", jobs, weights=reply.get("weights"),
                           max_age=reply.get("max_age"), favor_small=reply.get("favor_small"))
    header = ("JOBID", "PARTITION", "USER", "ACCOUNT", "PRIORITY",
              *(title for _, title in FACTORS), "NICE", "NOTE")
    table = [] if getattr(args, "noheader", False) else [header]
    for j in sorted(jobs, key=lambda j: (-j["priority"], j["id"])):
        cells = [job_label(j), j["partition"], j["user"], j["account"], str(j["priority"])]
        cells += [f"{j['weighted'][k]}({j['factors'][k]:.2f})" for k, _ in FACTORS]
        cells += [str(-j["nice"]) if j["nice"] else "0",
                  "pinned by an operator" if j.get("pinned") else ""]
        table.append(cells)
    if not table:
        return ""
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [" ".join(c.rjust(widths[i]) if 4 <= i < len(header) - 1 else c.ljust(widths[i])
                      for i, c in enumerate(row)).rstrip() for row in table]
    if not getattr(args, "noheader", False) and jobs:
        lines.append(legend(reply))
    return "\n".join(lines)


def detail_lines(job: dict) -> list[str]:
    """rcontrol show job: the factors behind Priority, in points and as factors."""
    if job.get("pinned"):
        return [f"PriorityFactors=pinned by an operator (Priority={job['priority']})"]
    parts = " ".join(f"{KEYS[k]}={job['weighted'][k]}({job['factors'][k]:.2f})"
                     for k, _ in FACTORS)
    return [f"PriorityFactors={parts} Nice={-job['nice'] if job['nice'] else 0}"]
