"""The query commands' command lines: argparse with the project's conventions.

`CommandParser` (usage errors as UsageError, `--help`, `--version`, an `Examples:`
epilog), the option types the commands share (`comma_list`, `job_id_list`,
`job_state_list`) and `add_output_options` (--json, --noheader). rsub has its
own option table: rmsbatch.cli.rsub_options.
"""
from __future__ import annotations

import argparse
import os

from rmsbatch import __version__
from rmsbatch.cli.common import UsageError


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The terminal's width from os, not shutil: argparse builds a formatter for
    every add_argument, and `import shutil` costs every command ~4 ms."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            try:
                width = int(os.environ.get("COLUMNS") or os.get_terminal_size(1).columns)
            except (ValueError, OSError):
                width = 80
            width -= 2
        super().__init__(prog, indent_increment, max_help_position, width)


class CommandParser(argparse.ArgumentParser):
    """argparse with the project's conventions.

    Usage errors raise UsageError, which `rmsbatch.cli.common.run_main` prints
    as one `prog: error: ...` line plus a hint, with exit status 2. `--help`
    is always there; `-h` too unless the command uses it for --noheader, as
    squeue and sinfo do. The epilog (an `Examples:` block) keeps its layout.
    """

    def __init__(self, *args, examples: str | None = None, short_help: bool = True,
                 version: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        kwargs["add_help"] = False
        if examples:
            kwargs["epilog"] = "Examples:\n" + examples.strip("\n")
        super().__init__(*args, **kwargs)
        flags = ["-h", "--help"] if short_help else ["--help"]
        self.add_argument(*flags, action="help", help="show this help and exit")
        if version:
            self.add_argument("--version", action="version",
                              version=f"%(prog)s (rmsbatch) {__version__}")

    def error(self, message: str):
        raise UsageError(" ".join(message.split("\n")))


def comma_list(text: str) -> list[str]:
    """`a,b,,c` -> ["a", "b", "c"]: the value of options like -u and -p."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


# The spool keeps job ids in SQLite INTEGER columns: larger ids cannot name a job.
MAX_JOB_ID = 2 ** 63 - 1


def job_id_list(text: str) -> list[int]:
    """`12,13` -> [12, 13]; anything else is a usage error naming the bad id."""
    ids = []
    for item in comma_list(text):
        if not item.isdigit() or not item.strip("0"):
            raise argparse.ArgumentTypeError(f"invalid job id {item!r}: expected a number such as 42")
        # the length first: int() refuses strings of more than 4,300 digits
        if len(item.lstrip("0")) > len(str(MAX_JOB_ID)) or int(item) > MAX_JOB_ID:
            raise argparse.ArgumentTypeError(
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
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    for item in items:
        head, underscore, tasks = item.partition("_")
        job = job_id_list(head)[0] if head else None
        if job is None or "," in head:
            raise argparse.ArgumentTypeError(f"invalid job id {item!r}: expected a number "
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
            raise argparse.ArgumentTypeError(
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
            raise argparse.ArgumentTypeError(str(exc)) from None
    return states


def add_output_options(parser: argparse.ArgumentParser, noheader_flags=("-h", "--noheader")):
    """--json and --noheader, the same in every query command."""
    parser.add_argument(*noheader_flags, dest="noheader", action="store_true",
                        help="do not print the header line")
    parser.add_argument("--json", action="store_true",
                        help="print the records as JSON instead of a table")


def current_user() -> str:
    import pwd
    import os
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
