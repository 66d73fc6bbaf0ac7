"""The controller's picture of each node: what the spool keeps of it, what its rmsd
last said, and the placement view (`NodeView`) the scheduler allocates from.

A node is *up* once its rmsd has registered and until it is declared failed
(DOWN). Independently, it is *responding* while heartbeats arrive: a node that
stops responding gets no new work, but its jobs keep their state; they end only
when their leases run out (see rmsbatch.ctld.leases), which no restart of rmsd
causes.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rmsbatch.core.states import NodeState
from rmsbatch.sched.placement import Gpu, NodeView

PCIE_SWITCH = 20      # NVML_TOPOLOGY_MULTIPLE: GPUs behind one tree of PCIe switches
PCIE_NODE = 40        # NVML_TOPOLOGY_NODE: GPUs under host bridges of one NUMA node
NOT_REGISTERED = "Not registered"
NOT_RESPONDING = "Not responding"


@dataclass
class NodeStatus:
    name: str
    up: bool = False                  # registered and not declared failed
    drain: bool = False
    reason: str = ""
    last_heartbeat: float | None = None
    responding: bool = False
    inventory: dict = field(default_factory=dict)
    gpu_drain: dict = field(default_factory=dict)     # str(index) -> {reason, fatal, since}
    telemetry: dict = field(default_factory=dict)
    gpu_notes: list = field(default_factory=list)
    devices: list | None = None       # accelerator records; None until a detecting node reports
    health_seq: int = 0
    recheck: int | None = None        # the health_reset whose answer re-judges drained GPUs

    @classmethod
    def from_spool(cls, name: str, stored: dict, now: float) -> "NodeStatus":
        up = bool(stored.get("up"))
        return cls(
            name=name, up=up, drain=bool(stored.get("drain")),
            reason=stored.get("reason", "") or ("" if up else NOT_REGISTERED),
            # A node that was up gets a fresh grace period to reconnect.
            last_heartbeat=now if up else stored.get("last_heartbeat"),
            responding=up, inventory=stored.get("inventory") or {},
            gpu_drain=stored.get("gpu_drain") or {})

    @property
    def usable(self) -> bool:
        return self.up and self.responding and not self.drain


def node_state(st: NodeStatus, view: NodeView) -> NodeState:
    if not st.up:
        return NodeState.DOWN
    if st.drain:
        return NodeState.DRAINING if view.jobs else NodeState.DRAIN
    if view.jobs == 0:
        return NodeState.IDLE
    full = view.free_cpus <= 0 or view.exclusive or (view.gpus and not view.free_gpus)
    return NodeState.ALLOCATED if full else NodeState.MIXED


def records(devices) -> list:
    """Accelerator records from an inventory's dicts (an rmsd's report, or the spool)."""
    from rmsbatch.node.devices.record import Accelerator
    out = []
    for d in devices:
        if not isinstance(d, dict) or not isinstance(d.get("index"), int):
            continue
        try:
            out.append(Accelerator.from_dict(d))
        except TypeError:
            continue      # a record from an incompatible rmsd: not allocatable
    return out


def gpus(recs: list) -> dict[int, Gpu]:
    """Placement's view of a node's accelerator records."""
    from rmsbatch.node.devices.record import short_type
    index_of = {r.key: r.index for r in recs}

    def links(r) -> tuple:
        # NVLink/XGMI lanes; GPUs behind one PCIe switch count as a thin link
        weights = {index_of[k]: int(w) for k, w in (r.links or {}).items() if k in index_of}
        for k, level in (r.pcie or {}).items():
            if k in index_of and index_of[k] not in weights and int(level) <= PCIE_SWITCH:
                weights[index_of[k]] = 1
        return tuple(sorted(weights.items()))
    near = _pcie_groups(recs)

    def numa(r):
        if isinstance(r.numa_node, int):
            return r.numa_node
        return near.get(r.parent if r.is_partition else r.key)
    return {r.index: Gpu(str(r.type), int(r.mem_mb or 0),
                         short_type(r.model) if r.is_partition else "", r.is_partition,
                         numa(r), links(r))
            for r in recs}


def _pcie_groups(recs: list) -> dict[str, int]:
    """Where a GPU's NUMA node is unknown: GPUs no farther apart on PCIe than
    NVML_TOPOLOGY_NODE share one (SYSTEM crosses the link between sockets). Device key
    -> a group number, negative so that it never passes for a real node id."""
    unknown = {r.key: r for r in recs if r.numa_node is None and r.pcie and not r.is_partition}
    group: dict[str, int] = {}
    for start in unknown:
        if start in group:
            continue
        number = -1 - len(set(group.values()))
        todo = [start]
        while todo:
            key = todo.pop()
            if key in group:
                continue
            group[key] = number
            todo.extend(k for k, level in unknown[key].pcie.items()
                        if k in unknown and k not in group and int(level) <= PCIE_NODE)
    return group


def devices_of(nd, st: NodeStatus) -> list | None:
    """The node's accelerator records: declared ones from cluster.toml, detected ones
    as the node last reported them; None until a detecting node has."""
    if nd.gpu_detect == "static":
        from rmsbatch.node.devices.discovery import static_inventory
        return static_inventory(nd.gpus).devices
    inv = st.inventory
    if inv.get("gpu_mode") not in ("auto", "check") or not isinstance(inv.get("gpus"), list):
        return None
    return records(inv["gpus"])


def view_of(nd, st: NodeStatus) -> NodeView:
    """A fresh placement view of an empty node (callers take running allocations)."""
    devs = st.devices
    gpu_map = {} if devs is None else gpus(devs)
    drained = {int(i) for i in st.gpu_drain if int(i) in gpu_map}
    return NodeView(nd.name, nd.cpus, nd.mem_mb, gpu_map, frozenset(nd.features),
                    usable=st.usable, drained=drained, gpus_known=devs is not None,
                    tmp_mb=nd.tmp_mb, gres=dict(nd.gres))
