"""rinfo: partitions and nodes, like sinfo.

One "nodes" request; nodes and partitions come back together; the reservations come
with a second one (nodes in an active MAINT reservation show as `maint`), and alone for
`-T`.
"""
from __future__ import annotations

import argparse

from rmsbatch.net import client
from rmsbatch.cli.arguments import CommandParser, add_output_options, comma_list
from rmsbatch.cli.layout import render_json
from rmsbatch.cli.nodetables import (
    gpu_rows, node_rows, parse_node_state, partition_rows, reason_rows, render_gpus,
    render_node_rows, render_partitions, render_reasons,
)
from rmsbatch.cli.common import CommandError, emit, exit_with
from rmsbatch.core.hostlist import HostlistError, expand

PROG = "rinfo"

EXAMPLES = """
  rinfo                       partitions, one line per node state (default partition has *)
  rinfo -N                    one line per node: CPUs, memory and GPUs allocated/total
  rinfo -N -l -n gpu[01-04]   four nodes in detail
  rinfo -p gpu -t idle,mix    where a job could start now in partition gpu
  rinfo -R                    down and drained nodes (and drained GPUs), and why
  rinfo --gpus                one line per GPU: type, memory, job, utilization, health
  rinfo --gpus -l -n gpu01    ... with model, NUMA node and UUID
  rinfo -T                    reservations: name, state, start, end, duration, nodes
  rinfo --json
"""


def _hostlist_arg(text: str) -> str:
    try:
        if not expand(text):
            raise argparse.ArgumentTypeError("expected a host list such as gpu[01-04]")
    except HostlistError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _node_states(text: str) -> list[str]:
    try:
        return [parse_node_state(item) for item in comma_list(text)]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROG, short_help=False, examples=EXAMPLES,
        description="Show partitions and nodes (like sinfo).\n"
                    "Node states: idle, mix (partly allocated), alloc, drng (draining:\n"
                    "jobs still running), drain, down, maint (in an active MAINT\n"
                    "reservation).")
    view = parser.add_argument_group("view")
    view.add_argument("-N", "--Node", dest="node_view", action="store_true",
                      help="one line per node (and partition)")
    view.add_argument("-l", "--long", action="store_true", help="more columns")
    view.add_argument("-R", "--list-reasons", dest="reasons", action="store_true",
                      help="down and drained nodes with the reason")
    view.add_argument("-G", "--gpus", action="store_true",
                      help="one line per GPU: type, memory, allocation, telemetry, health")
    view.add_argument("-T", "--reservation", dest="reservations", action="store_true",
                      help="reservations: name, state, start, end, duration, nodes")
    sel = parser.add_argument_group("which nodes")
    sel.add_argument("-p", "--partition", dest="partitions", action="extend",
                     type=comma_list, metavar="PARTITION[,...]")
    sel.add_argument("-n", "--nodes", type=_hostlist_arg, metavar="HOSTLIST",
                     help="these nodes, e.g. gpu[01-04]")
    sel.add_argument("-t", "--states", dest="states", action="extend", type=_node_states,
                     metavar="STATE[,...]", help="nodes in these states (idle, mix, alloc, ...)")
    out = parser.add_argument_group("output")
    add_output_options(out)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def request(args: argparse.Namespace) -> dict:
    return {"names": args.nodes, **({"devices": True} if args.gpus else {})}


def select(nodes: list[dict], partitions: list[dict], args: argparse.Namespace):
    """Apply -p, -n and -t to the controller's answer."""
    if args.partitions:
        wanted = set(args.partitions)
        partitions = [p for p in partitions if p["name"] in wanted]
        nodes = [n for n in nodes if wanted.intersection(n.get("partitions") or [])]
    if args.nodes:
        names = set(expand(args.nodes))
        nodes = [n for n in nodes if n["name"] in names]
    if args.states:
        states = set(args.states)
        nodes = [n for n in nodes if (n.get("state") or "").upper() in states]
    return nodes, partitions


def render(nodes: list[dict], partitions: list[dict], args: argparse.Namespace) -> str:
    nodes, partitions = select(nodes, partitions, args)
    header = not args.noheader
    if args.json:
        return render_json("nodes", nodes, partitions=partitions)
    if args.gpus:
        return render_gpus(gpu_rows(nodes), long=args.long, header=header)
    if args.reasons:
        return render_reasons(reason_rows(nodes), header=header)
    if args.node_view:
        rows = node_rows(nodes, partitions)
        return render_node_rows(rows, long=args.long, header=header)
    rows = partition_rows(nodes, partitions)
    if args.nodes or args.states:
        rows = [r for r in rows if r["state"] != "n/a"]
    return render_partitions(rows, long=args.long, header=header)


def body(argv: list[str]) -> int:
    from rmsbatch.cli import reservations
    args = parse_args(argv)
    if args.reservations:
        found = client.call("reservations").get("reservations") or []
        if args.json:
            return emit(render_json("reservations", found))
        return emit(reservations.render_table(found, header=not args.noheader))
    reply = client.call("nodes", **request(args))
    maint = reservations.maint_nodes(client.call("reservations").get("reservations") or [])
    for node in reply.get("nodes") or []:
        if node["name"] in maint and node.get("state") in ("IDLE", "MIXED", "ALLOCATED"):
            node["state"] = "MAINT"
    partitions = reply.get("partitions") or []
    if args.partitions:
        known = {p["name"] for p in partitions}
        unknown = [name for name in args.partitions if name not in known]
        if unknown:
            raise CommandError(f"no partition named {unknown[0]!r} "
                               f"(partitions: {', '.join(sorted(known)) or 'none'})")
    return emit(render(reply.get("nodes") or [], partitions, args))


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
