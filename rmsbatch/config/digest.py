"""What a host's cluster.toml says, key by key, in a form two hosts can compare.

Every host of a cluster reads the same cluster.toml (distributed by the site's
configuration management). A node daemon whose copy differs would place jobs on
devices, limits and timeouts the controller does not believe in, so it sends this
digest when it registers and the controller refuses it, naming the keys that differ.
Only keys the file sets count (not defaults), so a node running a newer rmsbatch with
other defaults still matches while its file does; values are compared as read and
checked, so layout, comments and the order of keys do not matter. `[node_daemon]` is
left out: those settings are rmsd's alone (the controller decides nothing by them), and
an admin rolls a change of them out node by node with SIGHUP.
"""
from __future__ import annotations

import hashlib
import json

NODE_ONLY = "node_daemon"


def digest(model) -> dict[str, str]:
    """{"controller.heartbeat_interval": "3f2a...", "nodes[0].gpus[0].count": ...}"""
    out: dict[str, str] = {}
    data = model.model_dump(exclude_unset=True, mode="json")
    data.pop(NODE_ONLY, None)
    _flatten(data, "", out)
    return out


def _flatten(value, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out)
    else:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        out[prefix] = hashlib.sha256(text.encode()).hexdigest()[:16]


def differences(ours: dict[str, str], theirs: dict[str, str]) -> list[str]:
    """The keys set differently (or only on one side), in order."""
    return sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
