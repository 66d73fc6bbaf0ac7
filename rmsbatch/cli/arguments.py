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
from rmsbatch.cli import optiontypes
from rmsbatch.cli.common import UsageError
from rmsbatch.cli.optiontypes import OptionValueError, id_fields

__all__ = ["CommandParser", "add_output_options", "comma_list", "id_fields", "job_id_list",
           "job_ref_list", "job_state_list"]


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


def _for_argparse(convert):
    """An option type for argparse: its message, not argparse's "invalid value"."""
    def typed(text: str):
        try:
            return convert(text)
        except OptionValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    typed.__name__ = typed.__qualname__ = convert.__name__
    typed.__doc__ = convert.__doc__
    return typed


comma_list = _for_argparse(optiontypes.comma_list)
job_id_list = _for_argparse(optiontypes.job_id_list)
job_ref_list = _for_argparse(optiontypes.job_ref_list)
job_state_list = _for_argparse(optiontypes.job_state_list)


def add_output_options(parser: argparse.ArgumentParser, noheader_flags=("-h", "--noheader")):
    """--json and --noheader, the same in every query command."""
    parser.add_argument(*noheader_flags, dest="noheader", action="store_true",
                        help="do not print the header line")
    parser.add_argument("--json", action="store_true",
                        help="print the records as JSON instead of a table")
