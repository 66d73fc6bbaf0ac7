"""The common command lines of a hot command, read without argparse.

`rq -j 42`, `rq -h -o '%i %t' -u alice`, `rq --me`: what scripts and people type most
is a handful of options. argparse (with the `re` and `enum` it imports) takes about as
long to load as everything else rq does before it asks the controller, so these lines
are read here, into the same namespace argparse would build, and anything else --
`--help`, an abbreviated long option, clustered short flags, a bad value, an unknown
option -- goes to the command's argparse parser, which stays the one place that
explains a usage error. tests/test_quickargs.py checks both readings agree.
"""
from __future__ import annotations

import sys

# types.SimpleNamespace, which the types module itself defines this way: importing
# `types` would cost rq about 0.7 ms.
SimpleNamespace = type(sys.implementation)


class Unread(Exception):
    """Not a line this reader takes: hand it to argparse."""


class Option:
    """One option: its flags, where it goes, and how its value is read (`convert`;
    None: a flag that is true when given). A list option extends its list, as
    argparse's action="extend"."""

    def __init__(self, flags: tuple[str, ...], dest: str, convert=None, extend=False):
        self.flags, self.dest, self.convert, self.extend = flags, dest, convert, extend


def read(argv: list[str], options: list[Option], defaults: dict) -> SimpleNamespace:
    """The namespace for `argv`, or Unread when argparse should read it."""
    by_flag = {flag: o for o in options for flag in o.flags}
    ns = dict(defaults)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        value = None
        if arg.startswith("--") and "=" in arg:
            arg, value = arg.split("=", 1)
        elif not arg.startswith("--") and len(arg) > 2 and arg[:2] in by_flag \
                and by_flag[arg[:2]].convert is not None:
            arg, value = arg[:2], arg[2:]           # -j42
        option = by_flag.get(arg)
        if option is None:
            raise Unread(arg)
        if option.convert is None:
            if value is not None:
                raise Unread(arg)
            ns[option.dest] = True
            continue
        if value is None:
            if i >= len(argv) or (argv[i].startswith("-") and len(argv[i]) > 1):
                raise Unread(arg)       # argparse says what is missing
            value = argv[i]
            i += 1
        try:
            converted = option.convert(value)
        except ValueError:
            raise Unread(arg) from None      # argparse words the error
        if option.extend:
            ns[option.dest] = (ns[option.dest] or []) + converted
        else:
            ns[option.dest] = converted
    return SimpleNamespace(**ns)
