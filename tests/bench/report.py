"""Rows of results, the targets from the issue, the printed table and the JSON file."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from tests.bench.util import Measurement, percentile

SCALE = {"ms": 1e3, "µs": 1e6, "s": 1.0, "jobs/s": 1.0, "MiB": 1.0, "%": 1.0}
SLURM_COLUMNS = ("Slurm", "Slurm bsd0")     # bsd0: SchedulerParameters=batch_sched_delay=0


@dataclass
class Target:
    """A goal from the issue. kind: ratio_max, ratio_min, abs_max (in the row's base
    unit) or floor_max (rmsbatch minus the `python3 -c pass` floor, base unit)."""
    kind: str
    value: float
    text: str


@dataclass
class Row:
    key: str                      # the figure's --only name
    label: str
    unit: str                     # display unit; samples are in seconds for ms/µs/s
    higher_better: bool = False
    stat: str = "median"          # or p90 / p99: the number shown and compared
    target: Target | None = None
    cells: dict = field(default_factory=dict)   # column -> Measurement | str
    others: float | None = None   # share of the CPUs other people's work used meanwhile

    def value(self, column: str) -> float | None:
        cell = self.cells.get(column)
        if not isinstance(cell, Measurement) or not cell.samples:
            return None
        if self.stat == "median":
            return cell.median
        return percentile(cell.samples, float(self.stat[1:]))

    def slurm_best(self) -> tuple[str | None, float | None]:
        found = [(c, self.value(c)) for c in SLURM_COLUMNS if self.value(c) is not None]
        if not found:
            return None, None
        pick = max if self.higher_better else min
        return pick(found, key=lambda cv: cv[1])

    def ratio(self) -> float | None:
        mine = self.value("rmsbatch")
        _, best = self.slurm_best()
        if mine is None or not best:
            return None
        return mine / best

    def met(self, floor: float | None) -> bool | None:
        t = self.target
        if t is None:
            return None
        mine = self.value("rmsbatch")
        if t.kind in ("ratio_max", "ratio_min"):
            r = self.ratio()
            if r is None:
                return None
            return r <= t.value if t.kind == "ratio_max" else r >= t.value
        if mine is None:
            return None
        if t.kind == "abs_max":
            return mine <= t.value
        if t.kind == "floor_max":
            cell = self.cells.get("rmsbatch")
            own = cell.extra.get("floor") if isinstance(cell, Measurement) else None
            floor = own if own is not None else floor       # timed alongside, if it was
            return None if floor is None else mine - floor <= t.value
        raise ValueError(t.kind)

    def to_json(self, floor: float | None) -> dict:
        cells = {c: (v.to_json() if isinstance(v, Measurement) else {"error": str(v)})
                 for c, v in self.cells.items()}
        best_col, _ = self.slurm_best()
        return {"figure": self.key, "label": self.label, "unit": self.unit, "stat": self.stat,
                "higher_is_better": self.higher_better, "cells": cells,
                "ratio_rmsbatch_over_slurm_best": self.ratio(), "slurm_best": best_col,
                "target": self.target.text if self.target else None, "met": self.met(floor),
                "others_cpu": self.others}


def fmt_num(x: float) -> str:
    a = abs(x)
    if a >= 1000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def fmt_cell(row: Row, column: str) -> str:
    cell = row.cells.get(column)
    if cell is None:
        return ""
    if not isinstance(cell, Measurement):
        return str(cell)[:24] + ("…" if len(str(cell)) > 24 else "")
    k = SCALE[row.unit]
    v = row.value(column) * k
    if len(cell.samples) == 1:
        return fmt_num(v)
    return f"{fmt_num(v)} ({fmt_num(cell.low * k)}–{fmt_num(cell.high * k)})"


def table(rows: list[Row], floor: float | None) -> str:
    columns = ["rmsbatch", *[c for c in SLURM_COLUMNS if any(c in r.cells for r in rows)]]
    head = ["figure", *columns, "rms/Slurm", "target", "met", "other"]
    body = []
    for r in rows:
        ratio = r.ratio()
        met = r.met(floor)
        body.append([f"{r.label} [{r.unit}{'' if r.stat == 'median' else ', ' + r.stat}]",
                     *[fmt_cell(r, c) for c in columns],
                     "" if ratio is None else f"{ratio:.2f}",
                     r.target.text if r.target else "",
                     {True: "yes", False: "NO", None: "" if not r.target else "?"}[met],
                     "" if r.others is None else f"{r.others:.0%}"])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in body]
    return "\n".join(lines)


def write_json(path: str, document: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(document, fh, indent=1, default=str)
        fh.write("\n")
    os.rename(path + ".tmp", path)
