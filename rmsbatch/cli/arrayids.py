"""Array jobs as the listings show them: `12_7` for a task, `12_[5-99%10]` for the
pending tasks of an array folded into one line (as squeue and sacct write them)."""
from __future__ import annotations

ARRAY_KEYS = ("array_job_id", "array_task_id", "array_throttle", "state")


def task_label(record: dict) -> str:
    return f"{record['array_job_id']}_{record['array_task_id']}"


def label_tasks(records: list[dict]) -> list[dict]:
    """Each array task's id shown as `12_7` (the records are changed in place)."""
    for rec in records:
        if rec.get("array_job_id") is not None and rec.get("array_task_id") is not None:
            rec["id"] = task_label(rec)
    return records


def fold_pending(records: list[dict]) -> list[dict]:
    """Running and ended tasks one per line (`12_7`); the pending tasks of each array
    on one line, where its first pending task is (`12_[5-99%10]`)."""
    from rmsbatch.core.arrayspec import fold
    out: list[dict] = []
    folded: dict[int, tuple[dict, list[int]]] = {}
    for rec in records:
        array_id = rec.get("array_job_id")
        if array_id is None or rec.get("array_task_id") is None:
            out.append(rec)
            continue
        if rec.get("state") != "PENDING":
            rec["id"] = task_label(rec)
            out.append(rec)
            continue
        if array_id in folded:
            folded[array_id][1].append(rec["array_task_id"])
            continue
        line = dict(rec)
        folded[array_id] = (line, [rec["array_task_id"]])
        out.append(line)
    for array_id, (line, tasks) in folded.items():
        if len(tasks) == 1:
            line["id"] = f"{array_id}_{tasks[0]}"
            continue
        throttle = line.get("array_throttle") or 0
        line["id"] = f"{array_id}_[{fold(tasks)}{f'%{throttle}' if throttle else ''}]"
    return out
