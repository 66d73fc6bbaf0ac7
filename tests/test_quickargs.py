"""rq reads its common command lines without argparse (rmsbatch.cli.quickargs): the
namespace must be the one argparse builds, and everything else must reach argparse,
which words the usage errors."""
from __future__ import annotations

import pytest

from rmsbatch.cli import quickargs, rq

READ_QUICKLY = [
    [],
    ["-j", "42"],
    ["-j42"],
    ["--jobs=42,43", "-j", "12_[1-3]"],
    ["-h", "-o", "%i %t"],
    ["--noheader", "--format", "%.10i %.2t %.8u %j"],
    ["-o", ""],
    ["-u", "alice,bob", "-u", "carol", "--me"],
    ["-A", "physics", "-p", "gpu,cpu", "-n", "train"],
    ["-l", "-r", "--start"],
    ["--json", "-u", "alice"],
    ["-o", "a", "-o", "%i"],
    ["--format=jobid,name:30"],
]

LEFT_TO_ARGPARSE = [
    ["--help"], ["--version"],
    ["-hl"],                        # clustered short flags
    ["--jo", "42"],                 # an abbreviated long option
    ["-j"], ["-j", "-5"],           # a missing or option-like value
    ["-j", "x"], ["--jobs="],       # a bad value: argparse words the error
    ["-t", "PD"], ["-w", "n1"], ["--priority"], ["--watch"], ["-O", "JobID"],
    ["--json=1"], ["--", "-j"], ["stray"], ["--nonsense"],
]


def argparse_namespace(argv):
    return vars(rq.build_parser().parse_args(argv))


@pytest.mark.parametrize("argv", READ_QUICKLY, ids=" ".join)
def test_the_quick_reading_is_argparses(argv):
    quick = vars(quickargs.read(argv, rq.QUICK, rq.QUICK_DEFAULTS))
    assert quick == argparse_namespace(argv)


@pytest.mark.parametrize("argv", LEFT_TO_ARGPARSE, ids=" ".join)
def test_other_lines_go_to_argparse(argv):
    with pytest.raises(quickargs.Unread):
        quickargs.read(argv, rq.QUICK, rq.QUICK_DEFAULTS)


def test_a_bad_format_read_quickly_still_gets_argparses_error():
    from rmsbatch.cli.common import UsageError
    with pytest.raises(UsageError, match="-o/--format"):
        rq.parse_args(["-o", "nosuchfield"])
    with pytest.raises(UsageError, match="invalid job id 'x'"):
        rq.parse_args(["-j", "x"])
