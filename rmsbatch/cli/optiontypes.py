"""The values of the query commands' options, read without argparse.

`comma_list`, `job_id_list`, `job_ref_list`, `job_state_list` and `id_fields` turn an
option's text into what a request carries, raising OptionValueError (a ValueError)
with a message for the user. They live apart from rmsbatch.cli.arguments, which wraps
them for argparse, so that rq's quick reading of its common command lines
(rmsbatch.cli.quickargs) needs no argparse: importing it, with the `re` and `enum` it
loads, is most of what a Python command takes beyond the interpreter's own start.
"""
from __future__ import annotations


class OptionValueError(ValueError):
    """An option's value is wrong; the message says what was expected."""


def comma_list(text: str) -> list[str]:
    """`a,b,,c` -> ["a", "b", "c"]: the value of options like -u and -p."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise OptionValueError("expected a comma-separated list")
    return items


# The spool keeps job ids in SQLite INTEGER columns: larger ids cannot name a job.
MAX_JOB_ID = 2 ** 63 - 1


def job_id_list(text: str) -> list[int]:
    """`12,13` -> [12, 13]; anything else is a usage error naming the bad id."""
    ids = []
    for item in comma_list(text):
        if not item.isdigit() or not item.strip("0"):
            raise OptionValueError(f"invalid job id {item!r}: expected a number such as 42")
        # the length first: int() refuses strings of more than 4,300 digits
        if len(item.lstrip("0")) > len(str(MAX_JOB_ID)) or int(item) > MAX_JOB_ID:
            raise OptionValueError(
                f"job id {item} is out of range (job ids go up to {MAX_JOB_ID})")
        ids.append(int(item))
    return ids


def _split_outside_brackets(text: str) -> list[str]:
    """`12_[1,3],14` -> ["12_[1,3]", "14"]."""
    items, depth, word = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            items.append(word)
            word = ""
        else:
            word += ch
    items.append(word)
    return [i.strip() for i in items if i.strip()]


def job_ref_list(text: str) -> list:
    """Job ids and array tasks: `12` (a job, or a whole array), `12_7` (one task),
    `12_[1-5]` or `12_[1,3,8-9]` (several) -> [12, (12, 7), (12, 1), ...]."""
    refs: list = []
    items = _split_outside_brackets(text)
    if not items:
        raise OptionValueError("expected a comma-separated list")
    for item in items:
        head, underscore, tasks = item.partition("_")
        job = job_id_list(head)[0] if head else None
        if job is None or "," in head:
            raise OptionValueError(f"invalid job id {item!r}: expected a number "
                                             "such as 42, or an array task such as 42_7")
        if not underscore:
            refs.append(job)
            continue
        if tasks.startswith("[") and tasks.endswith("]"):
            tasks = tasks[1:-1]
        from rmsbatch.core import arrayspec
        try:
            numbers, _ = arrayspec.parse(tasks)
        except arrayspec.ArraySpecError:
            raise OptionValueError(
                f"invalid array task {item!r}: expected ID_TASK such as 42_7, or "
                "ID_[TASKS] such as 42_[1-5] or 42_[1,3]") from None
        refs.extend((job, n) for n in numbers)
    return refs


def id_fields(refs) -> dict:
    """The request fields for job references from `job_ref_list`: ids, array_tasks."""
    fields: dict = {}
    ids = [r for r in refs or () if isinstance(r, int)]
    tasks = [list(r) for r in refs or () if isinstance(r, tuple)]
    if ids:
        fields["ids"] = ids
    if tasks:
        fields["array_tasks"] = tasks
    return fields


def job_state_list(text: str) -> list[str]:
    """`PD,running` -> ["PENDING", "RUNNING"]; `all` -> ["all"]."""
    from rmsbatch.core.states import parse_state
    states = []
    for item in comma_list(text):
        if item.lower() == "all":
            states.append("all")
            continue
        try:
            states.append(parse_state(item).value)
        except ValueError as exc:
            raise OptionValueError(str(exc)) from None
    return states


def current_user() -> str:
    import pwd
    import os
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
