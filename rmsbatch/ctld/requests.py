"""What each API request may carry: one pydantic model per op.

A request is validated whole before its handler runs, so a handler never meets a
malformed field half-way through its changes. Every list and string is bounded and
every integer fits the spool's 64-bit columns: a job id of 10**23 is a clean
rejection, not an overflow inside SQLite.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

MAX_ID = 2 ** 63 - 1          # SQLite INTEGER
MAX_LIST = 1_000_000
MAX_TEXT = 4096


def _comma_split(value):
    """Filters arrive as lists; a comma-separated string is accepted too."""
    if isinstance(value, str):
        return [v for v in value.split(",") if v]
    return value


def _no_nulls(value):
    return [] if value is None else value


JobId = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
Run = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
Int64 = Annotated[int, Field(strict=True, ge=-MAX_ID, le=MAX_ID)]
Name = Annotated[str, Field(max_length=MAX_TEXT)]
Names = Annotated[list[Name], BeforeValidator(_no_nulls), BeforeValidator(_comma_split),
                  Field(max_length=MAX_LIST)]
Ids = Annotated[list[JobId], BeforeValidator(_no_nulls), Field(max_length=MAX_LIST)]
Epoch = Annotated[float, Field(ge=0, le=1e12)]
TaskId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]
# (array id, task id) pairs: `12_7` on a command line
Tasks = Annotated[list[tuple[JobId, TaskId]], BeforeValidator(_no_nulls),
                  Field(max_length=MAX_LIST)]


class RequestError(Exception):
    """The request cannot be honoured; the message goes back to the caller."""


class Request(BaseModel):
    # Newer clients may send fields an older controller does not know: ignored.
    model_config = ConfigDict(extra="ignore", frozen=True)
    op: str


class Empty(Request):
    pass


class Submit(Request):
    spec: dict[str, Any]


class JobFilter(Request):
    ids: Ids = []                   # jobs, or whole arrays by their array id
    array_tasks: Tasks = []         # single tasks of arrays
    users: Names = []
    accounts: Names = []
    partitions: Names = []
    states: Names = []
    names: Names = []


class Jobs(JobFilter):
    nodes: Names = []
    fields: Names = []
    active: bool = False
    finished: bool = False
    all_users: bool | None = None       # set by rsacct: accounting-style visibility
    start_after: Epoch | None = None
    end_before: Epoch | None = None


class Wait(Request):
    job_id: JobId


class Cancel(JobFilter):
    signal: Annotated[str | int, Field(union_mode="left_to_right")] | None = None
    # Who gets a signal: "children" (the job's processes but not the batch shell,
    # as scancel without -b/-f), "batch" (the batch shell only) or "full" (all).
    scope: Annotated[str, Field(pattern="^(children|batch|full)$")] = "children"


class Requeue(Request):
    ids: Annotated[Ids, Field(min_length=1)]
    hold: bool = False                  # requeuehold: back to PENDING, held


class UpdateJob(Request):
    """rcontrol update JobId=...: the fields given change, the others stay."""
    ids: Annotated[Ids, Field(min_length=1)]
    time_limit: Annotated[int, Field(strict=True, ge=0, le=1 << 40)] | None = None
    # TimeLimit=+T / -T: seconds added to (or taken from) each job's present limit
    time_limit_change: Annotated[int, Field(strict=True, ge=-(1 << 40), le=1 << 40)] | None = None
    partition: Name | None = None
    qos: Name | None = None
    account: Name | None = None
    # a number pins the job's priority there; "reset" returns it to its factors
    priority: Annotated[int, Field(strict=True, ge=0, le=1 << 31)] | Literal["reset"] | None = None
    nice: Annotated[int, Field(strict=True, ge=-10000, le=10000)] | None = None


class Nodes(Request):
    names: Name | None = None
    devices: bool = False


class NodeNames(Request):
    nodes: Name


class Drain(NodeNames):
    reason: Annotated[str, Field(max_length=MAX_TEXT)] | None = None


class NodeMessage(Request):
    node: Name


class NodeHello(NodeMessage):
    inventory: dict[str, Any] = {}
    # Runs the node still supervises, as [job id, run] pairs.
    running: Annotated[list[tuple[JobId, Run]], Field(max_length=MAX_LIST)] = []
    # Outcomes of runs that ended while the controller was not listening.
    ended: Annotated[list[dict[str, Any]], Field(max_length=MAX_LIST)] = []
    # Its cluster.toml, key by key (rmsbatch.config.digest); None: an rmsd before it
    config: Annotated[dict[str, str], Field(max_length=MAX_LIST)] | None = None


Seconds = Annotated[float, Field(ge=0, le=1e12)]


class Heartbeat(NodeMessage):
    gpus: dict[str, Any] | None = None
    running: Annotated[list[tuple[JobId, Run]], Field(max_length=MAX_LIST)] | None = None
    seq: Int64 = 0
    # Idle GPUs of running runs (rmsbatch.ctld.idlegpu): [job id, run, start of the
    # current idle streak or None, seconds idle so far].
    idle: Annotated[list[tuple[JobId, Run, Epoch | None, Seconds]],
                    Field(max_length=MAX_LIST)] | None = None


class NodeHealth(NodeMessage):
    unhealthy: dict[str, Any] = {}
    problems: Annotated[list[Any], Field(max_length=1000)] = []
    seq: Int64 | None = None


class JobStarted(NodeMessage):
    job_id: JobId
    run: Run
    protections: Annotated[str, Field(max_length=MAX_TEXT)] = ""


class PartReady(NodeMessage):
    job_id: JobId
    run: Run


class Outcome(BaseModel):
    """What a node says of a run that ended (supervisor's outcome.json)."""
    model_config = ConfigDict(extra="ignore", frozen=True)
    job_id: JobId
    run: Run
    state: Name = "FAILED"
    exit_code: Int64 | None = None
    signal: Int64 | None = None
    start_time: Epoch | None = None
    end_time: Epoch | None = None
    max_rss_kb: Int64 | None = None
    total_cpu_s: Annotated[float, Field(ge=0)] | None = None
    gpu_util: float | None = None
    gpu_mem_peak_mb: Int64 | None = None
    gpu_energy_j: float | None = None
    gpu_idle_s: Seconds | None = None
    reason: Annotated[str, Field(max_length=100_000)] = ""
    protections: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    # Set when the run never reached the user's program because the node could not
    # set it up (isolation, user, files): the job did not run, so it is requeued.
    launch_failed: Annotated[str, Field(max_length=MAX_TEXT)] = ""
    node_fault: bool = True             # ...and the node is to blame: drain it
    # The run ended as `state` says, but left the node unfit (its epilog failed):
    # drain the node with this reason; the job's record stands.
    drain: Annotated[str, Field(max_length=MAX_TEXT)] = ""


class JobEnded(NodeMessage):
    outcome: Outcome


class Lease(NodeMessage):
    """A supervisor renewing its run's lease itself while its rmsd is away."""
    job_id: JobId
    run: Run


# -- job steps (rrun) -------------------------------------------------------------------
Count = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
StepId = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]


class StepCreate(Request):
    job_id: JobId
    ntasks: Count | None = None
    nodes: Count | None = None
    nodelist: Names = []
    cpus_per_task: Count = 1
    ntasks_per_node: Count | None = None
    gpus_per_task: Count | None = None
    gpu_bind: Annotated[str, Field(max_length=1000)] | None = None
    name: Name = ""


class StepLaunch(Request):
    job_id: JobId
    step_id: StepId
    host: Annotated[str, Field(max_length=255)]
    port: Annotated[int, Field(strict=True, ge=1, le=65535)]
    token: Annotated[str, Field(min_length=16, max_length=128)]
    master_port: Annotated[int, Field(strict=True, ge=1, le=65535)]
    argv: Annotated[list[Annotated[str, Field(max_length=100_000)]],
                    Field(min_length=1, max_length=10_000)]
    env: Annotated[dict[str, Annotated[str, Field(max_length=1_000_000)]],
                   Field(max_length=100_000)] = {}
    cwd: Annotated[str, Field(max_length=MAX_TEXT)] = "/"


class StepEnd(Request):
    job_id: JobId
    step_id: StepId
    state: Annotated[str, Field(pattern="^(COMPLETED|FAILED|CANCELLED)$")]
    exit_code: Annotated[int, Field(strict=True, ge=0, le=255)] = 0
    signal: Annotated[int, Field(strict=True, ge=0, le=128)] = 0
    total_cpu_s: Annotated[float, Field(ge=0, le=1e15)] = 0.0
    max_rss_kb: Annotated[int, Field(strict=True, ge=0, le=MAX_ID)] = 0


class Steps(Request):
    job_ids: Ids = []


# -- accounting (rmsbatch.ctld.ops.acct), answered by the accounting workers ----------
Limit = Annotated[int, Field(strict=True, ge=1, le=100_000)]
Cursor = Annotated[int, Field(strict=True, ge=0, le=MAX_ID)]


class AcctFilter(JobFilter):
    qos: Names = []
    nodes: Names = []
    all_users: bool = False


class AcctJobs(AcctFilter):
    fields: Annotated[Names, Field(min_length=1, max_length=200)]
    start_after: Epoch | None = None
    end_before: Epoch | None = None
    after: Cursor = 0                   # the last job id of the previous page
    limit: Limit = 20_000


class AcctLines(AcctFilter):
    """rsacct -X -P: lines built by the accounting worker (rmsbatch.acct.lines)."""
    show: Annotated[Names, Field(min_length=1, max_length=100)]    # sacct field names
    sep: Annotated[str, Field(max_length=8)] = "|"
    trailing: bool = False
    start_after: Epoch | None = None
    end_before: Epoch | None = None
    after: Cursor = 0
    before: Cursor | None = None        # ids below this only (a client reading halves)
    limit: Limit = 20_000


class AcctSteps(Request):
    job_ids: Annotated[Ids, Field(max_length=100_000)] = []


class AcctReport(AcctFilter):
    group_by: Annotated[Names, Field(max_length=4)] = []
    start: Epoch
    end: Epoch


class AcctAudit(Request):
    users: Names = []
    ops: Names = []
    target: Name | None = None
    start: Epoch | None = None
    end: Epoch | None = None
    failed: bool = False
    all_users: bool = False
    after: Cursor = 0
    limit: Limit = 20_000


class Budgets(Request):
    accounts: Names = []


def describe(exc: ValidationError) -> str:
    """One line naming the first bad field."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "request"
    msg = err["msg"]
    if err["type"] in ("less_than_equal", "greater_than_equal") and "id" in where:
        msg = f"out of range (job ids go from 1 to {MAX_ID})"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"bad request: {where}: {msg}{more}"
