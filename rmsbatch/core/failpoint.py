"""Failure injection for tests that must show a failure in the middle of an operation
changes nothing (the way FreeBSD's fail(9) or TiKV's fail-rs do it).

    RMS_FAILPOINTS="node_hello.after_ended=1,other.point"

in a daemon's environment makes `hit("node_hello.after_ended")` raise InjectedFault
the first time it is reached (`=N`: the first N times; no count: every time). Without
the variable, `hit` is one dictionary lookup in an empty dict.
"""
from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    """Raised where a test asked for a failure."""


def _parse(text: str) -> dict[str, int]:
    points = {}
    for item in text.split(","):
        name, _, count = item.strip().partition("=")
        if name:
            points[name] = int(count) if count.isdigit() else -1
    return points


_POINTS = _parse(os.environ.get("RMS_FAILPOINTS", ""))


def hit(name: str) -> None:
    left = _POINTS.get(name)
    if left is None or left == 0:
        return
    if left > 0:
        _POINTS[name] = left - 1
    raise InjectedFault(f"failpoint {name}")
