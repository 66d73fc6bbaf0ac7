"""rinfo's tables: partitions, nodes, down/drained reasons and GPUs (sinfo's views).

Each view is built as rows of ready strings from the node and partition records
(`partition_rows`, `node_rows`, `reason_rows`, `gpu_rows`), then rendered as a
table whose columns fit their contents (`render_partitions`, ...).
"""
from __future__ import annotations

from rmsbatch.cli.layout import Column, Layout, getter, memory, time_limit
from rmsbatch.core.hostlist import compress, expand, natural_key


# -- node states --------------------------------------------------------------

NODE_STATE_SHORT = {
    "IDLE": "idle", "MIXED": "mix", "ALLOCATED": "alloc",
    "DOWN": "down", "DRAIN": "drain", "DRAINING": "drng",
}
_STATE_ORDER = {name: i for i, name in enumerate(NODE_STATE_SHORT)}
UNUSABLE = ("DOWN", "DRAIN", "DRAINING")


def node_state_short(node: dict) -> str:
    """`idle`, `mix`, ...; with a trailing `*` while the node is not responding (as in
    sinfo): it gets no new work, its jobs keep running."""
    state = (node.get("state") or "").upper()
    short = NODE_STATE_SHORT.get(state, state.lower())
    return short + "*" if node.get("responding") is False and state != "DOWN" else short


def parse_node_state(text: str) -> str:
    """`idle`, `IDLE`, `mix`, `drng`... -> the full upper-case name."""
    key = text.strip().lower()
    for full, short in NODE_STATE_SHORT.items():
        if key in (full.lower(), short):
            return full
    if key in ("drained",):
        return "DRAIN"
    names = ", ".join(NODE_STATE_SHORT.values())
    raise ValueError(f"unknown node state {text!r} (use one of {names})")


def node_gres(node: dict) -> str:
    gpus = node.get("gpus") or 0
    if not gpus:
        return "none"
    # "gpu:a100:1,gpu:1g.10gb:2", as Slurm's Gres; "gpu" is the type of GPUs declared
    # without a model: no need to say it twice
    counts = node.get("gpu_counts") or {node.get("gpu_type") or "gpu": gpus}
    return ",".join(f"gpu:{t}:{n}" if t != "gpu" else f"gpu:{n}"
                    for t, n in sorted(counts.items()))


def _gpu_counts(node: dict) -> str:
    """Allocated/total, and how many are drained: "2/8", "2/8(1 drained)"."""
    text = f"{node.get('alloc_gpus') or 0}/{node.get('gpus') or 0}"
    if node.get("gpus_drained"):
        text += f"({node['gpus_drained']} drained)"
    return text


def _row_layout(spec: list[tuple[str, str, bool]]) -> Layout:
    return Layout([Column(header, getter(key), None, right) for header, key, right in spec])


_PARTITION_COLUMNS = [
    ("PARTITION", "partition", False), ("AVAIL", "avail", False),
    ("TIMELIMIT", "timelimit", True), ("NODES", "nodes", True), ("STATE", "state", False),
    ("GPUS", "gres", False), ("NODELIST", "nodelist", False),
]
_PARTITION_LONG_COLUMNS = [
    ("PARTITION", "partition", False), ("AVAIL", "avail", False),
    ("TIMELIMIT", "timelimit", True), ("DEFAULTTIME", "defaulttime", True),
    ("NODES", "nodes", True), ("STATE", "state", False), ("CPUS(A/T)", "cpus", True),
    ("GPUS(A/T)", "gpus", True), ("GPUS", "gres", False), ("NODELIST", "nodelist", False),
]
_NODE_COLUMNS = [
    ("NODELIST", "nodelist", False), ("NODES", "nodes", True),
    ("PARTITION", "partition", False), ("STATE", "state", False),
    ("CPUS(A/T)", "cpus", True), ("MEMORY", "memory", True), ("GPUS(A/T)", "gpus", True),
    ("REASON", "reason", False),
]
_NODE_LONG_COLUMNS = _NODE_COLUMNS[:6] + [
    ("ALLOCMEM", "allocmem", True), ("GPUS(A/T)", "gpus", True), ("GRES", "gres", False),
    ("FEATURES", "features", False), ("PROTECTIONS", "protections", False),
    ("REASON", "reason", False),
]
_REASON_COLUMNS = [
    ("REASON", "reason", False), ("NODES", "nodes", True), ("STATE", "state", False),
    ("NODELIST", "nodelist", False),
]


def _partition_label(part: dict) -> str:
    return part["name"] + ("*" if part.get("default") else "")


def partition_members(part: dict) -> list[str]:
    names = part.get("node_names")
    if names is None:
        names = expand(part.get("nodes") or "")
    return names


def partition_rows(nodes: list[dict], partitions: list[dict]) -> list[dict]:
    """sinfo's summary: one row per partition and (node state, GPUs per node)."""
    by_name = {n["name"]: n for n in nodes}
    rows = []
    for part in partitions:
        names = partition_members(part)
        base = {
            "partition": _partition_label(part),
            "avail": (part.get("state") or "UP").lower(),
            "timelimit": time_limit(part.get("max_time")),
            "defaulttime": time_limit(part.get("default_time")),
        }
        if not names:
            rows.append({**base, "nodes": "0", "state": "n/a", "cpus": "0/0", "gpus": "0/0",
                         "gres": "none", "nodelist": ""})
            continue
        groups: dict[tuple[str, str], list[dict]] = {}
        for name in names:
            node = by_name.get(name)
            if node is not None:
                key = ((node.get("state") or "").upper(), node_gres(node),
                       node_state_short(node).endswith("*"))
                groups.setdefault(key, []).append(node)
        for state, gres, silent in sorted(groups, key=lambda k: (_STATE_ORDER.get(k[0], 99), k)):
            members = groups[(state, gres, silent)]
            rows.append({
                **base,
                "nodes": str(len(members)),
                "state": NODE_STATE_SHORT.get(state, state.lower()) + ("*" if silent else ""),
                "cpus": f"{sum(n.get('alloc_cpus') or 0 for n in members)}/"
                        f"{sum(n.get('cpus') or 0 for n in members)}",
                "gpus": f"{sum(n.get('alloc_gpus') or 0 for n in members)}/"
                        f"{sum(n.get('gpus') or 0 for n in members)}",
                "gres": gres,
                "nodelist": compress(n["name"] for n in members),
            })
    return rows


def node_rows(nodes: list[dict], partitions: list[dict]) -> list[dict]:
    """sinfo -N: one row per node and listed partition, nodes in natural order."""
    labels = {p["name"]: _partition_label(p) for p in partitions}
    rows = []
    for node in sorted(nodes, key=lambda n: natural_key(n["name"])):
        common = {
            "nodelist": node["name"], "nodes": "1", "state": node_state_short(node),
            "cpus": f"{node.get('alloc_cpus') or 0}/{node.get('cpus') or 0}",
            "memory": str(node.get("mem_mb") or 0),
            "allocmem": str(node.get("alloc_mem_mb") or 0),
            "gpus": _gpu_counts(node),
            "gres": node_gres(node),
            "features": ",".join(node.get("features") or []) or "none",
            "protections": node.get("protections") or "none",
            "reason": node.get("reason") or "none",
        }
        mine = node.get("partitions") or []
        if not mine:
            rows.append({**common, "partition": "n/a"})
        for part in mine:
            if part in labels:          # partitions not listed were filtered out
                rows.append({**common, "partition": labels[part]})
    return rows


def reason_rows(nodes: list[dict]) -> list[dict]:
    """sinfo -R: down, drained and not responding nodes, grouped by reason and state;
    then drained GPUs (state gpu-drain) and GPU notes (state note) of nodes in service."""
    groups: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        state = (node.get("state") or "").upper()
        if state in UNUSABLE:
            groups.setdefault((node.get("reason") or "none", state), []).append(node["name"])
        elif node_state_short(node).endswith("*"):   # not responding: no new work
            groups.setdefault((node.get("reason") or "Not responding",
                               node_state_short(node)), []).append(node["name"])
        if node.get("gpu_reason"):      # devices out of service on a node still in use
            groups.setdefault((node["gpu_reason"], "gpu-drain"), []).append(node["name"])
        for note in node.get("gpu_notes") or []:   # what the admin should know: no drain
            groups.setdefault((note, "note"), []).append(node["name"])
    rows = []
    for (reason, state), names in sorted(groups.items(),
                                          key=lambda kv: natural_key(min(kv[1], key=natural_key))):
        rows.append({"reason": reason, "nodes": str(len(names)),
                     "state": NODE_STATE_SHORT.get(state, state.lower()),
                     "nodelist": compress(names)})
    return rows


def render_partitions(rows: list[dict], long: bool = False, header: bool = True) -> str:
    return _row_layout(_PARTITION_LONG_COLUMNS if long else _PARTITION_COLUMNS).render(
        rows, 0, header)


def render_node_rows(rows: list[dict], long: bool = False, header: bool = True) -> str:
    return _row_layout(_NODE_LONG_COLUMNS if long else _NODE_COLUMNS).render(rows, 0, header)


def render_reasons(rows: list[dict], header: bool = True) -> str:
    return _row_layout(_REASON_COLUMNS).render(rows, 0, header)


# -- rinfo --gpus: one row per accelerator -------------------------------------
_GPU_COLUMNS = [
    ("NODE", "node", False), ("GPU", "index", True), ("TYPE", "type", False),
    ("MEMORY", "memory", True), ("STATE", "state", False), ("JOBID", "job", True),
    ("UTIL", "util", True), ("MEMUSED", "memused", True), ("TEMP", "temp", True),
    ("POWER", "power", True), ("HEALTH", "health", False),
]
_GPU_LONG_COLUMNS = _GPU_COLUMNS[:3] + [("MODEL", "model", False)] + _GPU_COLUMNS[3:-1] + [
    ("NUMA", "numa", True), ("ID", "id", False), ("HEALTH", "health", False)]


def _reading(value, unit: str = "") -> str:
    """A telemetry value with its unit, "-" where the device does not report it."""
    if value is None:
        return "-"
    return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"


def gpu_rows(nodes: list[dict]) -> list[dict]:
    rows = []
    for node in sorted(nodes, key=lambda n: natural_key(n["name"])):
        for dev in node.get("devices") or []:
            def num(key, unit="", dev=dev):
                return _reading(dev.get(key), unit)
            rows.append({
                "node": node["name"], "index": str(dev.get("index")), "type": dev.get("type") or "",
                "model": dev.get("model") or "", "memory": memory(dev.get("mem_mb") or None) or "-",     # 0: unknown
                "state": dev.get("state") or "", "job": "-" if dev.get("job") is None else str(dev["job"]),
                "util": num("util_pct", "%"), "memused": num("mem_used_mb", "M"),
                "temp": num("temp_c", "C"), "power": num("power_w", "W"),
                "numa": num("numa_node"), "id": dev.get("uuid") or dev.get("bdf") or "-",
                "health": dev.get("health") or "ok",
            })
    return rows


def render_gpus(rows: list[dict], long: bool = False, header: bool = True) -> str:
    return _row_layout(_GPU_LONG_COLUMNS if long else _GPU_COLUMNS).render(rows, 0, header)

