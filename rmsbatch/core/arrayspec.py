"""Job array specifications, as sbatch's --array takes them, and their folded form.

`0-99`, `1,5,9`, `500-17000:1000`, any of them with a `%N` throttle (at most N tasks
run at once). `parse` gives the task ids and the throttle; `fold` writes a set of task
ids back the way squeue shows them (`5-99`, `1,3,5-7`, with `:step` runs).

Shared by rsub (to refuse a bad spec before sending it) and rmsctld (which trusts
nothing a client sends): standard library only.
"""
from __future__ import annotations

# Slurm's MaxArraySize default: task ids must be below it.
DEFAULT_MAX_ARRAY_SIZE = 1001
# Far above any configured maximum: a spec never expands into more ids than this.
HARD_MAX_TASKS = 4_000_001


class ArraySpecError(ValueError):
    """The array specification is malformed; the message says how to write it."""


def parse(text: str, max_size: int | None = None) -> tuple[list[int], int]:
    """`"500-17000:1000%26"` -> ([500, 1500, ..., 16500], 26); throttle 0: none.

    With `max_size`, every task id must be below it (Slurm's MaxArraySize)."""
    if not isinstance(text, str) or not text.strip():
        raise ArraySpecError("empty array specification: use e.g. 0-99, 1,5,9 or 0-99%10")
    body, pct, limit = text.strip().partition("%")
    throttle = 0
    if pct:
        if not limit.isascii() or not limit.isdigit() or int(limit) < 1:
            raise ArraySpecError(f"invalid throttle %{limit}: %N needs a positive number of "
                                 "tasks that may run at once, e.g. 0-99%10")
        throttle = int(limit)
    ids: set[int] = set()
    for item in body.split(","):
        item = item.strip()
        if not item:
            raise ArraySpecError(f"empty element in {text!r}: write ids and ranges joined "
                                 "by commas, e.g. 1,5,9 or 0-9,20-29")
        rng, colon, step_text = item.partition(":")
        low_text, dash, high_text = rng.partition("-")
        low = _number(low_text, text)
        high = _number(high_text, text) if dash else low
        step = _number(step_text, text) if colon else 1
        if colon and not dash:
            raise ArraySpecError(f"{item!r}: a step needs a range, e.g. 0-100:10")
        if high < low:
            raise ArraySpecError(f"{item!r}: the range ends before it starts")
        if step < 1:
            raise ArraySpecError(f"{item!r}: the step must be at least 1")
        if max_size is not None and high >= max_size:
            raise ArraySpecError(f"task id {high} is not below the cluster's maximum array "
                                 f"size {max_size} (max_array_size in cluster.toml): use "
                                 f"task ids 0-{max_size - 1}")
        if (high - low) // step + 1 + len(ids) > HARD_MAX_TASKS:
            raise ArraySpecError(f"{text!r} has more than {HARD_MAX_TASKS - 1} tasks")
        ids.update(range(low, high + 1, step))
    return sorted(ids), throttle


def _number(text: str, whole: str) -> int:
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise ArraySpecError(f"invalid array specification {whole!r}: expected task ids "
                             "and ranges such as 0-99, 1,5,9, 500-17000:1000 or 0-99%10")
    return int(text)


def fold(ids) -> str:
    """Task ids as squeue folds them: `[1, 2, 3, 5, 7, 9]` -> `"1-3,5-9:2"`."""
    ordered = sorted(set(ids))
    parts: list[str] = []
    i, n = 0, len(ordered)
    while i < n:
        j = i
        if i + 1 < n:
            step = ordered[i + 1] - ordered[i]
            while j + 1 < n and ordered[j + 1] - ordered[j] == step:
                j += 1
            # a run of two with a gap is clearer as "a,b" than as "a-b:gap"
            if step > 1 and j - i < 2:
                j = i
        else:
            step = 1
        if j == i:
            parts.append(str(ordered[i]))
        elif step == 1:
            parts.append(f"{ordered[i]}-{ordered[j]}")
        else:
            parts.append(f"{ordered[i]}-{ordered[j]}:{step}")
        i = j + 1
    return ",".join(parts)


def summary(ids: list[int]) -> dict[str, int]:
    """COUNT, MIN, MAX and STEP of an array's task ids (what the job environment says:
    STEP is the stride when the ids are evenly spaced, else 1)."""
    ordered = sorted(ids)
    steps = {b - a for a, b in zip(ordered, ordered[1:])}
    return {"COUNT": len(ordered), "MIN": ordered[0], "MAX": ordered[-1],
            "STEP": steps.pop() if len(steps) == 1 else 1}
