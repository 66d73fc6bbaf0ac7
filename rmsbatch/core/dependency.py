"""Job dependencies, as sbatch's --dependency takes them, and whether they hold.

`afterok:12:13`, `afternotok:12`, `afterany:12`, `after:12` (started or ended;
`after:12+5`: five minutes after it started), `aftercorr:12` (task N of this array
after task N of array 12 succeeded), `singleton` (after every earlier job of the same
name and user has ended); several joined by `,` (all must hold) or `?` (any one).
An id names a job, a whole array (its master id) or one task (`12_7`).

`parse` checks and normalises; `evaluate` says, from the states the caller gives it,
whether a dependency is satisfied (OK), may still be (WAIT) or never can be (NEVER).
Pure and standard library only: rsub, rmsctld and the scheduler core share it.
"""
from __future__ import annotations

KINDS = ("after", "afterany", "afterok", "afternotok", "aftercorr", "singleton")
OK, WAIT, NEVER = "ok", "wait", "never"
ACTIVE = frozenset({"PENDING", "RUNNING", "COMPLETING"})
MAX_TARGETS = 1000


class DependencyError(ValueError):
    """The dependency is malformed; the message says how to write it."""


class Target:
    """One id in a dependency: a job or array (`task` None) or one task of an array."""
    __slots__ = ("job_id", "task", "minutes")

    def __init__(self, job_id: int, task: int | None = None, minutes: int = 0):
        self.job_id, self.task, self.minutes = job_id, task, minutes

    def __repr__(self) -> str:
        return self.text()

    def __eq__(self, other) -> bool:
        return isinstance(other, Target) and self.text() == other.text()

    def text(self) -> str:
        out = str(self.job_id) if self.task is None else f"{self.job_id}_{self.task}"
        return out + (f"+{self.minutes}" if self.minutes else "")


class Dependency:
    """`clauses` ([(kind, [Target, ...]), ...]) all of which (`any_of` False) or one of
    which (`any_of` True) must hold."""
    __slots__ = ("clauses", "any_of")

    def __init__(self, clauses: list, any_of: bool = False):
        self.clauses, self.any_of = clauses, any_of

    def text(self) -> str:
        parts = [kind if kind == "singleton" else kind + ":" + ":".join(t.text() for t in ts)
                 for kind, ts in self.clauses]
        return ("?" if self.any_of else ",").join(parts)

    @property
    def singleton(self) -> bool:
        return any(kind == "singleton" for kind, _ in self.clauses)

    @property
    def corresponding(self) -> bool:
        """Whether it means something different to each task of an array (aftercorr)."""
        return any(kind == "aftercorr" for kind, _ in self.clauses)

    def job_ids(self) -> set[int]:
        """Every job or array id named."""
        return {t.job_id for _, targets in self.clauses for t in targets}


_HOW = ("use afterok:ID[:ID...], afternotok, afterany, after, aftercorr or singleton, "
        "joined by ',' (all) or '?' (any), e.g. afterok:12:13")


def parse(text: str) -> Dependency:
    if not isinstance(text, str) or not text.strip():
        raise DependencyError(f"empty dependency: {_HOW}")
    text = text.strip()
    if "," in text and "?" in text:
        raise DependencyError(f"{text!r} mixes ',' and '?': use one of them (',': all "
                              "must hold, '?': any one)")
    any_of = "?" in text
    clauses = []
    count = 0
    for item in text.split("?" if any_of else ","):
        item = item.strip()
        kind, colon, rest = item.partition(":")
        kind = kind.strip().lower()
        if kind not in KINDS:
            raise DependencyError(f"unknown dependency type {kind!r} in {text!r}: {_HOW}")
        if kind == "singleton":
            if colon:
                raise DependencyError("singleton takes no job ids")
            clauses.append((kind, []))
            continue
        if not colon or not rest.strip():
            raise DependencyError(f"{kind} needs job ids, e.g. {kind}:12 or {kind}:12:13")
        targets = [_target(word, kind, text) for word in rest.split(":")]
        count += len(targets)
        if count > MAX_TARGETS:
            raise DependencyError(f"more than {MAX_TARGETS} job ids in one dependency")
        clauses.append((kind, targets))
    return Dependency(clauses, any_of)


def _target(word: str, kind: str, whole: str) -> Target:
    word = word.strip()
    head, plus, minutes = word.partition("+")
    job, underscore, task = head.partition("_")
    if plus and kind != "after":
        raise DependencyError(f"{word!r}: +MINUTES is only for after (after:ID+MINUTES)")
    for part, present in ((job, True), (task, underscore), (minutes, plus)):
        if present and (not part.isascii() or not part.isdigit() or len(part) > 18):
            raise DependencyError(f"invalid job id {word!r} in {whole!r}: expected a job id "
                                  "such as 12, an array task such as 12_7 (or, for after, "
                                  "12+5 for five minutes after it started)")
    if int(job) < 1:
        raise DependencyError(f"invalid job id {word!r}: job ids start at 1")
    return Target(int(job), int(task) if underscore else None, int(minutes) if plus else 0)


# -- evaluation ----------------------------------------------------------------------
# `jobs`: job id -> (state, start_time, array_job_id, array_task_id) for every job the
# dependency names and every task of the arrays it names; `arrays`: array master id ->
# {task id: job id} of its tasks.

def members(target: Target, jobs: dict, arrays: dict, my_task: int | None = None,
            corr: bool = False) -> list[int]:
    """The job ids a target stands for (none: it no longer exists)."""
    tasks = arrays.get(target.job_id)
    task = my_task if corr and target.task is None and my_task is not None else target.task
    if tasks is None:
        return [target.job_id] if target.job_id in jobs and task is None else []
    if task is None:
        return list(tasks.values())
    return [tasks[task]] if task in tasks else []


def _clause(kind: str, targets, jobs, arrays, my_task, now) -> str:
    states = []
    for target in targets:
        for i in members(target, jobs, arrays, my_task, kind == "aftercorr"):
            state, start = jobs[i][0], jobs[i][1]
            if kind == "after":
                if state == "PENDING":
                    return WAIT
                if target.minutes and start is not None and state in ACTIVE \
                        and now < start + 60 * target.minutes:
                    return WAIT
                continue
            states.append(state)
    if kind == "after":
        return OK
    if kind in ("afterok", "aftercorr") and any(s not in ACTIVE and s != "COMPLETED"
                                                 for s in states):
        return NEVER
    if any(s in ACTIVE for s in states):
        return WAIT
    if kind == "afternotok":
        return OK if any(s != "COMPLETED" for s in states) or not states else NEVER
    return OK


def evaluate(dep: Dependency, jobs: dict, arrays: dict, *, my_task: int | None = None,
             now: float = 0.0, singleton_free: bool = True) -> str:
    """OK, WAIT or NEVER. `singleton_free`: no earlier job of the same name and user is
    still active (the caller knows the queue)."""
    results = []
    for kind, targets in dep.clauses:
        if kind == "singleton":
            results.append(OK if singleton_free else WAIT)
        else:
            results.append(_clause(kind, targets, jobs, arrays, my_task, now))
    if dep.any_of:
        if OK in results:
            return OK
        return NEVER if all(r == NEVER for r in results) else WAIT
    if NEVER in results:
        return NEVER
    return OK if all(r == OK for r in results) else WAIT


def wake_time(dep: Dependency, jobs: dict, arrays: dict) -> float | None:
    """When an `after:ID+MINUTES` clause will next hold by the clock alone."""
    times = []
    for kind, targets in dep.clauses:
        if kind != "after":
            continue
        for t in targets:
            if t.minutes:
                for i in members(t, jobs, arrays):
                    if jobs[i][1] is not None and jobs[i][0] in ACTIVE:
                        times.append(jobs[i][1] + 60 * t.minutes)
    return min(times) if times else None
