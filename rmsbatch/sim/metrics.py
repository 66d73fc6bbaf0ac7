"""What a replay measures, as the scheduling literature does.

- wait: start - submit; mean and 95th percentile (nearest rank);
- bounded slowdown: max(1, (wait + run) / max(run, 10 s)), mean -- the 10 s bound keeps
  a 1-second job that waited a minute from counting as a 60x slowdown;
- JCT (job completion time): wait + run, mean;
- utilization: the node-seconds (or GPU-seconds on a GPU trace) jobs held, over what
  the cluster offered from the first submit to the last end;
- per tenant: jobs, resource-seconds used and their share of the whole, against the
  tenant's share of the shares when shares are given.
"""
from __future__ import annotations

import math

BSLD_BOUND_S = 10.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: a value that occurred)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def bounded_slowdown(wait: float, run: float) -> float:
    return max(1.0, (wait + run) / max(run, BSLD_BOUND_S))


def summarize(outcomes, shape, shares: dict[str, float] | None = None) -> dict:
    """The figures of a replay (outcomes: rmsbatch.sim.replay.Outcome)."""
    if not outcomes:
        return {"jobs": 0}
    waits = [o.wait for o in outcomes]
    gpu_trace = any(o.gpus for o in outcomes)
    unit = "gpu_s" if gpu_trace else "node_s"

    def held(o) -> float:
        return o.run * (o.gpus if gpu_trace else o.nodes)
    capacity = shape.gpus if gpu_trace else shape.nodes
    first = min(o.submit for o in outcomes)
    last = max(o.end for o in outcomes)
    span = last - first
    used = sum(held(o) for o in outcomes)
    tenants: dict[str, dict] = {}
    for o in outcomes:
        t = tenants.setdefault(o.tenant or "-", {"jobs": 0, unit: 0.0, "wait_s": 0.0})
        t["jobs"] += 1
        t[unit] += held(o)
        t["wait_s"] += o.wait
    total_shares = sum(shares.values()) if shares else 0
    for name, t in tenants.items():
        t["usage_share"] = round(t[unit] / used, 6) if used else 0.0
        t["mean_wait_s"] = round(t.pop("wait_s") / t["jobs"], 3)
        t[unit] = round(t[unit], 3)
        if total_shares:
            t["share"] = round(shares.get(name, 0) / total_shares, 6)
    return {
        "jobs": len(outcomes),
        "mean_wait_s": round(sum(waits) / len(waits), 3),
        "p95_wait_s": round(percentile(waits, 95), 3),
        "mean_bounded_slowdown": round(
            sum(bounded_slowdown(o.wait, o.run) for o in outcomes) / len(outcomes), 6),
        "mean_jct_s": round(sum(o.wait + o.run for o in outcomes) / len(outcomes), 3),
        "utilization": round(used / (capacity * span), 6) if capacity and span > 0 else 0.0,
        "span_s": round(span, 3),
        "tenants": dict(sorted(tenants.items())),
    }
