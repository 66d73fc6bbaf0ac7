"""Operator-pinned priorities of jobs stored before the spool recorded them (schema 8).

Until schema 8 a job counted as pinned when its stored priority was not what admission
stores (its QoS's plus its partition's priority, minus nice). Migration 8 cannot apply
that rule, which needs the configuration, so it marks the active jobs of an older
spool "not known yet" (spool.PIN_UNKNOWN). The controller applies the old rule to
them once, when it starts, and stores the answer: from then on the flag is the truth,
and a later change of a QoS's or partition's priority in the configuration pins
nothing. (Run with the configuration the jobs were stored under, the rule is right
except for a pin at exactly the admission value, which it cannot tell apart.)
"""
from __future__ import annotations

import logging

log = logging.getLogger("rmsbatch.controller")


def guessed_pin(row: dict, qos_priority: dict[str, int],
                partition_priority: dict[str, int]) -> bool:
    """The rule before schema 8: a stored priority other than admission's was pinned."""
    admitted = (qos_priority.get(row["qos"], 0) + partition_priority.get(row["partition"], 0)
                - (row["nice"] or 0))
    return row["priority"] != admitted


def settle(spool, config) -> int:
    """Judge, once, the pins an older spool's migration left unknown; how many there were."""
    rows = spool.unjudged_pins()
    if not rows:
        return 0
    qos = {q.name: q.priority for q in config.qos.qos}
    parts = {p.name: p.priority for p in config.partitions.values()}
    pins = {r["id"]: guessed_pin(r, qos, parts) for r in rows}
    with spool.transaction():
        spool.set_pins(pins)
    log.info("priority pins of %d job(s) from before spool schema 8 judged from their stored "
             "priority: %d pinned by an operator", len(pins), sum(pins.values()))
    return len(pins)
