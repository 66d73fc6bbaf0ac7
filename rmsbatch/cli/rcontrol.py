"""rcontrol: look at and administer jobs, nodes and partitions, like scontrol.

    rcontrol show job 42 | show jobs | show node gpu01 | show nodes
    rcontrol show partition [NAME] | show hostnames [LIST] | show hostlist NAMES
    rcontrol drain gpu[01-02] reason="bad fan"      rcontrol resume gpu[01-02]
    rcontrol update NodeName=gpu01 State=DRAIN Reason="bad fan"
    rcontrol hold 42 43    rcontrol release 42    rcontrol reconfigure
    rcontrol requeue 42    rcontrol requeuehold 42
    rcontrol update JobId=42 TimeLimit=30 Nice=10   (or: update job 42 ...)
    rcontrol create reservation ReservationName=maint StartTime=now Duration=2:00:00
             Nodes=gpu[001-004] Users=alice Accounts=vision Flags=MAINT,IGNORE_JOBS
    rcontrol update reservation ReservationName=maint Duration=4:00:00
    rcontrol delete reservation maint    rcontrol show reservation [NAME]

Sub-commands and `update` keys are case-insensitive, as in scontrol.
"""
from __future__ import annotations

import argparse
import os
import sys

from rmsbatch.net import client
from rmsbatch.cli.arguments import CommandParser, id_fields, job_id_list, job_ref_list
from rmsbatch.cli import reservations
from rmsbatch.cli.details import job_detail, node_detail, partition_detail, render_details
from rmsbatch.cli.jobupdate import is_job_update, parse_job_update
from rmsbatch.cli.layout import render_json
from rmsbatch.cli.common import CommandError, exit_with
from rmsbatch.core.hostlist import HostlistError, compress, expand

PROG = "rcontrol"

EXAMPLES = """
  rcontrol show job 42                  everything about job 42
  rcontrol -o show jobs                 active jobs, one line each
  rcontrol show node gpu01              a node's CPUs, memory, GPUs and jobs
  rcontrol show -d node gpu01           ... and each GPU: model, job, health, telemetry
  rcontrol show partition gpu
  rcontrol show hostnames 'gpu[01-03]'  one name per line
  rcontrol show hostnames               inside a job: its nodes ($SLURM_JOB_NODELIST)
  rcontrol drain 'gpu[01-02]' reason="replacing a fan"
  rcontrol update NodeName=gpu01 State=RESUME
  rcontrol hold 42 && rcontrol release 42
  rcontrol requeue 42                   stop job 42 and queue it again (same id)
  rcontrol update JobId=42 TimeLimit=30 lower a job's time limit to 30 minutes
  rcontrol update job 42 Priority=5000  pin job 42's priority (operators; Priority=reset
                                        returns it to its factors)
  rcontrol create reservation ReservationName=maint StartTime=now Duration=2:00:00 \
           Nodes=gpu01 Users=alice Flags=MAINT      keep gpu01 for alice for two hours
  rcontrol show reservation             every reservation (rinfo -T: one line each)
  rcontrol delete reservation maint
"""

ENTITIES = {
    "job": "job", "jobs": "job", "jobid": "job",
    "node": "node", "nodes": "node", "nodename": "node",
    "partition": "partition", "partitions": "partition", "part": "partition",
    "hostnames": "hostnames", "hostlist": "hostlist",
    "reservation": "reservation", "reservations": "reservation", "res": "reservation",
    "reservationname": "reservation",
}
COMMANDS = ("show", "drain", "resume", "update", "hold", "release", "reconfigure",
            "requeue", "requeuehold", "create", "delete")
UPDATE_STATES = {"drain": "drain", "resume": "resume", "undrain": "resume", "idle": "resume"}


def _entity(text: str) -> str:
    key = text.lower()
    if key not in ENTITIES:
        raise argparse.ArgumentTypeError(
            f"cannot show {text!r}: use job, node, partition, reservation, hostnames or "
            "hostlist")
    return ENTITIES[key]


def _hostlist_arg(text: str) -> str:
    try:
        if not expand(text):
            raise argparse.ArgumentTypeError("expected a host list such as gpu[01-04]")
    except HostlistError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _settings(parser: argparse.ArgumentParser, items: list[str], allowed: tuple[str, ...]
              ) -> dict[str, str]:
    """["NodeName=gpu01", "reason=bad fan"] -> {"nodename": "gpu01", "reason": "bad fan"}."""
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            parser.error(f"expected KEY=VALUE, got {item!r} "
                         f"(quote values with spaces: reason=\"bad fan\")")
        key = key.strip().lower()
        if key not in allowed:
            parser.error(f"unknown key {key!r} (use {', '.join(allowed)})")
        out[key] = value
    return out


def build_parser() -> CommandParser:
    parser = CommandParser(
        prog=PROG, examples=EXAMPLES,
        description="Show and administer jobs, nodes, partitions and reservations "
                    "(like scontrol).")
    parser.add_argument("-o", "--oneliner", action="store_true",
                        help="show each record on one line")
    parser.add_argument("--json", action="store_true", help="show records as JSON")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    show = sub.add_parser("show", help="show job, node, partition or reservation records",
                          version=False,
                          description="Show records: job [ID], node [NAME], partition [NAME], "
                                      "reservation [NAME]; or expand / compress host lists.")
    show.add_argument("entity", type=_entity, metavar="ENTITY",
                      help="job, node, partition, reservation, hostnames or hostlist (plural "
                           "works too)")
    show.add_argument("name", nargs="?", metavar="NAME",
                      help="a job id, node list, partition, reservation, or host list")
    # Also after the sub-command (`rcontrol show job 4 -o`); SUPPRESS keeps
    # the top-level value when they are not repeated here.
    show.add_argument("-o", "--oneliner", action="store_true", default=argparse.SUPPRESS,
                      help="each record on one line")
    show.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                      help="records as JSON")
    show.add_argument("-d", "--details", action="store_true",
                      help="nodes: one line per GPU (model, job, health, telemetry)")

    drain = sub.add_parser("drain", help="stop scheduling jobs on nodes (reason required)",
                           version=False)
    drain.add_argument("nodelist", type=_hostlist_arg, metavar="NODELIST")
    drain.add_argument("settings", nargs="*", metavar='reason="TEXT"')
    drain.add_argument("--reason", help="why the nodes are drained")

    resume = sub.add_parser("resume", help="let drained nodes take jobs again", version=False)
    resume.add_argument("nodelist", type=_hostlist_arg, metavar="NODELIST")

    update = sub.add_parser("update", version=False,
                            help="NodeName=X State=DRAIN|RESUME [Reason=TEXT], or JobId=ID "
                                 "TimeLimit=T Partition=P QOS=Q Account=A Priority=N|reset "
                                 "Nice=N, "
                                 "or reservation ReservationName=NAME KEY=VALUE...")
    update.add_argument("settings", nargs="+", metavar="KEY=VALUE")

    for name, text in (("hold", "keep pending jobs from starting"),
                       ("release", "let held jobs start")):
        cmd = sub.add_parser(name, help=text, version=False)
        cmd.add_argument("job_ids", nargs="+", type=job_id_list, metavar="JOBID")

    add_requeue_commands(sub)
    add_reservation_commands(sub)
    sub.add_parser("reconfigure", help="make rmsctld re-read its configuration", version=False)
    parser.subcommands = sub.choices
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse and check; the result's `action` says what to do."""
    argv = list(argv)
    for i, arg in enumerate(argv):           # scontrol takes SHOW as well as show
        if not arg.startswith("-"):
            if arg.lower() in COMMANDS:
                argv[i] = arg.lower()
            break
    parser = build_parser()
    args = parser.parse_args(argv)
    sub = parser.subcommands[args.command]
    if args.command == "show":
        if args.entity == "job" and args.name is not None:
            try:
                args.job_refs = job_ref_list(args.name)
            except argparse.ArgumentTypeError:
                sub.error(f"invalid job id {args.name!r}: expected a number such as 42, "
                          "or an array task such as 42_7")
            args.job_id = int(args.name) if args.name.isdigit() else args.name
        if args.entity == "hostnames" and not args.name:
            # inside a job, as scontrol: the job's own nodes
            args.name = os.environ.get("SLURM_JOB_NODELIST") or \
                os.environ.get("RMS_JOB_NODELIST") or None
            if not args.name:
                sub.error("show hostnames needs a host list, e.g. 'gpu[01-04]' (inside a "
                          "job it reads SLURM_JOB_NODELIST, which is not set here)")
        if args.entity == "hostlist" and not args.name:
            sub.error(f"show {args.entity} needs a host list, e.g. 'gpu[01-04]'")
        if args.entity in ("node", "hostnames", "hostlist") and args.name:
            _check_hostlist(sub, args.name)
    elif args.command == "drain":
        settings = _settings(sub, args.settings, ("reason",))
        args.reason = args.reason or settings.get("reason")
        if not args.reason or not args.reason.strip():
            sub.error('drain needs a reason: rcontrol drain NODELIST reason="why"')
    elif args.command in ("create", "delete") or (
            args.command == "update" and reservations.is_reservation(args.settings)):
        parse_reservation_args(sub, args)
    elif args.command == "update" and is_job_update(args.settings):
        try:
            args.update = parse_job_update(args.settings)
        except ValueError as exc:
            sub.error(str(exc))
        args.command = "update_job"
    elif args.command == "update":
        settings = _settings(sub, args.settings, ("nodename", "state", "reason"))
        if "nodename" not in settings:
            sub.error("update needs NodeName=NODELIST (only nodes can be updated)")
        _check_hostlist(sub, settings["nodename"])
        state = settings.get("state", "").lower()
        if state not in UPDATE_STATES:
            sub.error(f"update needs State=DRAIN or State=RESUME, got {settings.get('state')!r}")
        args.command = UPDATE_STATES[state]
        args.nodelist = settings["nodename"]
        args.reason = settings.get("reason")
        if args.command == "drain" and not (args.reason or "").strip():
            sub.error('State=DRAIN needs a reason: Reason="why"')
    elif args.command in ("hold", "release", "requeue", "requeuehold"):
        args.ids = [i for group in args.job_ids for i in group]
    return args


def _check_hostlist(parser, text: str) -> None:
    try:
        if not expand(text):
            parser.error("expected a host list such as gpu[01-04]")
    except HostlistError as exc:
        parser.error(str(exc))


# -- show ---------------------------------------------------------------------

def render_show(args: argparse.Namespace, reply: dict, now: float | None = None) -> str:
    """The text for `show ...` given the controller's reply (jobs or nodes op)."""
    entity = args.entity
    if entity == "job":
        jobs = [with_output_paths(job) for job in reply.get("jobs") or []]
        if args.json:
            return render_json("jobs", jobs)
        if not jobs:
            return "No jobs in the system"
        return render_details([_with_factor_line(job_detail(job, now), job)
                               + task_model_detail(job) for job in jobs], args.oneliner)
    nodes = reply.get("nodes") or []
    partitions = reply.get("partitions") or []
    if entity == "node":
        if args.json:
            return render_json("nodes", nodes)
        return render_details([node_detail(n) for n in nodes], args.oneliner)
    if args.name:
        partitions = [p for p in partitions if p["name"] == args.name]
    if args.json:
        return render_json("partitions", partitions)
    return render_details([partition_detail(p, nodes) for p in partitions], args.oneliner)


def _with_priority_factors(jobs: list[dict]) -> None:
    """Pending jobs get `priority_factors`: the priority the scheduler uses now and
    what it is made of (`priority` stays as stored: set at submit or by an operator)."""
    pending = [j["id"] for j in jobs if j.get("state") == "PENDING"]
    if not pending:
        return
    found = {p["id"]: p for p in client.call("priorities", ids=pending).get("jobs") or []}
    for job in jobs:
        if job["id"] in found:
            job["priority_factors"] = found[job["id"]]


def _with_factor_line(lines: list[str], job: dict) -> list[str]:
    """Priority= as the scheduler has it now, and the factors on the next line."""
    shown = job.get("priority_factors")
    if not shown:
        return lines
    from rmsbatch.cli.priorities import detail_lines
    at = next(i for i, line in enumerate(lines) if line.startswith("Priority="))
    lines[at] = f"Priority={shown['priority']}" + lines[at][lines[at].index(" "):]
    return lines[:at + 1] + detail_lines(shown) + lines[at + 1:]


def with_output_paths(job: dict) -> dict:
    """StdOut/StdErr as scontrol shows them: absolute, with %j, %x, %u, %A and %a
    replaced; %N stays until the job has a node to name."""
    from rmsbatch.node.jobfile import expand_pattern
    import os.path

    job = dict(job)
    for key in ("stdout", "stderr"):
        pattern = job.get(key)
        if not pattern:
            continue
        path = expand_pattern(pattern, job_id=job["id"], name=job.get("name") or "",
                              user=job.get("user") or "", node="%N",
                              array_job_id=job.get("array_job_id"),
                              array_task_id=job.get("array_task_id"))
        job[key] = os.path.join(job.get("workdir") or "/", path)
    return job


def task_model_detail(job: dict) -> list[str]:
    """What scontrol shows of the task model and of what a job names beyond its nodes."""
    import json

    def listed(text, sep: str = ":") -> str:
        counts = json.loads(text) if text else {}
        return ",".join(f"{k}{sep}{v}" if v != "" else k
                        for k, v in counts.items()) or "(null)"

    nodes = str(job.get("nodes") or 0)
    if job.get("nodes_max"):
        nodes += f"-{job['nodes_max']}"
    per_task = f"gres/gpu:{job['gpus_per_task']}" if job.get("gpus_per_task") else "(null)"
    return [
        f"ReqNodes={nodes} NtasksPerN:B:S:C={job.get('ntasks_per_node') or 0}:0:*:"
        f"{job.get('ntasks_per_core') or '*'} ThreadsPerCore={job.get('threads_per_core') or 1} "
        f"Hint={job.get('hint') or '(null)'}",
        f"TresPerTask={per_task} CpusPerGpu={job.get('cpus_per_gpu') or 0} "
        f"GpuBind={job.get('gpu_bind') or '(null)'} Gres={listed(job.get('gres'))}",
        f"ReqNodeList={job.get('req_nodelist') or '(null)'} "
        f"ExcNodeList={job.get('exclude') or '(null)'} "
        f"MinTmpDiskNode={job.get('tmp_mb') or 0}M WaitAllNodes={job.get('wait_all_nodes') or 0}",
        f"Licenses={listed(job.get('licenses'))} Reservation={job.get('reservation') or '(null)'} "
        f"SiteOptions={listed(job.get('site_options'), '=')}",
    ]


def show(args: argparse.Namespace) -> str:
    entity, name = args.entity, args.name
    if entity == "hostnames":
        return "\n".join(expand(name))
    if entity == "hostlist":
        return compress(expand(name))
    if entity == "reservation":
        reply = client.call("reservations", **({"name": name} if name else {}))
        return reservations.render_show(reply.get("reservations") or [], args.json,
                                        args.oneliner)
    if entity == "job":
        if name is None:
            reply = client.call("jobs", active=True)
        else:
            reply = client.call("jobs", **id_fields(args.job_refs))
            if not reply.get("jobs"):
                raise CommandError(f"job {args.job_id} not found")
        _with_priority_factors(reply.get("jobs") or [])
        return render_show(args, reply)
    reply = client.call("nodes", names=name if entity == "node" else None,
                        **({"devices": True} if entity == "node" and args.details else {}))
    if entity == "node" and name and not reply.get("nodes"):
        raise CommandError(f"node {name} not found")
    if entity == "partition" and name and not any(
            p["name"] == name for p in reply.get("partitions") or []):
        known = ", ".join(p["name"] for p in reply.get("partitions") or []) or "none"
        raise CommandError(f"partition {name} not found (partitions: {known})")
    return render_show(args, reply)


def render_resume(reply: dict) -> str:
    """The GPUs that stay drained after a resume, until their node's monitor has judged
    them again (it does so at once; `rcontrol show node` then shows the outcome)."""
    lines = []
    for node, gpus in (reply.get("gpus_drained") or {}).items():
        for index, why in gpus.items():
            lines.append(f"{node}: GPU {index} stays drained until its monitor has judged it "
                         f"again (drained for: {why}); see: rcontrol show node {node}")
    return "\n".join(lines)


def body(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.command == "show":
        text = show(args)
        if text:
            sys.stdout.write(text + "\n")
        return 0
    if args.command == "drain":
        client.call("drain", nodes=args.nodelist, reason=args.reason.strip())
        return 0
    if args.command == "resume":
        reply = client.call("resume", nodes=args.nodelist)
        text = render_resume(reply)
        if text:
            sys.stdout.write(text + "\n")
        return 0
    if args.command in ("hold", "release"):
        reply = client.call(args.command, ids=args.ids)
        errors = reply.get("errors") or []
        for text in errors:
            print(f"{PROG}: error: {text}", file=sys.stderr)
        return 1 if errors else 0
    if args.command in ("requeue", "requeuehold", "update_job"):
        return job_control(args)
    if args.command.endswith("_reservation"):
        return reservation_control(args)
    if args.command == "reconfigure":
        client.call("reconfigure")
        return 0
    raise CommandError(f"unknown command {args.command!r}")    # not reached: argparse checks


# -- requeue, requeuehold, update job ----------------------------------------------

def add_requeue_commands(sub) -> None:
    for name, text in (("requeue", "stop running or ended jobs and queue them again (same id)"),
                       ("requeuehold", "requeue jobs and hold them")):
        cmd = sub.add_parser(name, help=text, version=False)
        cmd.add_argument("job_ids", nargs="+", type=job_id_list, metavar="JOBID")


def job_control(args: argparse.Namespace) -> int:
    if args.command == "update_job":
        client.call("update_job", **args.update)
        return 0
    reply = client.call("requeue", ids=args.ids, hold=args.command == "requeuehold")
    errors = reply.get("errors") or []
    for text in errors:
        print(f"{PROG}: error: {text}", file=sys.stderr)
    return 1 if errors else 0


# -- create, update, delete reservation -------------------------------------------------

def add_reservation_commands(sub) -> None:
    for name, text in (("create", "create reservation ReservationName=NAME StartTime=T "
                                  "Duration=T|EndTime=T Nodes=LIST Users=U Accounts=A Flags=F"),
                       ("delete", "delete reservation NAME")):
        cmd = sub.add_parser(name, help=text, version=False)
        cmd.add_argument("settings", nargs="+", metavar="KEY=VALUE")


def parse_reservation_args(sub, args: argparse.Namespace) -> None:
    verb = args.command
    items = list(args.settings)
    if items and items[0].lower() in ("reservation", "reservations", "res"):
        items = items[1:]
    elif verb != "update" and not reservations.is_reservation(items):
        sub.error(f"{verb} what? rcontrol {verb} reservation ... (only reservations can be "
                  f"{verb}d)")
    if verb == "delete":
        if len(items) != 1:
            sub.error("delete reservation takes one name: rcontrol delete reservation NAME")
        key, eq, value = items[0].partition("=")
        if eq and key.strip().lower() not in ("reservationname", "reservation", "name"):
            sub.error(f"unknown key {key!r} on delete reservation: give the name alone")
        args.fields = {"name": (value if eq else key).strip()}
    else:
        try:
            args.fields = reservations.parse(items, verb)
        except reservations.ReservationArgError as exc:
            sub.error(str(exc))
        if verb == "update" and len(args.fields) == 1:
            sub.error("update reservation: nothing to change: give StartTime=, EndTime=, "
                      "Duration=, Nodes=, Users=, Accounts= or Flags=")
    args.command = f"{verb}_reservation"


def reservation_control(args: argparse.Namespace) -> int:
    reply = client.call(args.command, **args.fields)
    if args.command == "create_reservation":
        print(f"Reservation created: {reply['reservation']['name']}")
    elif args.command == "delete_reservation" and reply.get("waiting_jobs"):
        jobs = ",".join(map(str, reply["waiting_jobs"]))
        print(f"{PROG}: warning: job(s) {jobs} still ask for reservation "
              f"{reply['deleted']}: they wait with reason Reservation until updated or "
              "cancelled", file=sys.stderr)
    return 0


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
