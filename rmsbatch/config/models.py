"""The three configuration files as pydantic models, unknown keys rejected.

  cluster.toml   ClusterFile: controller, node daemon, nodes (hostlist ranges), partitions
  tenants.toml   TenantsFile: admins/operators, accounts and their users, visibility
  qos.toml       QosFile: QoS levels

Each field validates its own value; what needs several files at once (a partition
naming an unknown node, an account naming an unknown QoS) is checked in `load`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from rmsbatch.core import hostlist, units


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


def _time(value) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a time such as '1:00:00' or 'UNLIMITED'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value * 60  # bare numbers are minutes, as in Slurm
    return units.parse_time(str(value))


def _seconds(value) -> int:
    """Like _time, but a bare number is seconds (for daemon timings)."""
    if isinstance(value, bool):
        raise ValueError("expected seconds, or a time such as '5:00'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return int(value)
    return units.parse_time(str(value))


def _limit(value):
    """A count limit: None (none), or 0 or more (0: nothing may run)."""
    if value is not None and value < 0:
        raise ValueError("must not be negative (leave it out for no limit)")
    return value


def _memory(value) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size such as '512G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    return units.parse_memory(str(value))


class ControllerSection(_Model):
    socket: str = "/run/rmsbatch/rmsctld.sock"
    spool_dir: str = "/var/spool/rmsbatch"
    log_file: str | None = None
    pid_file: str | None = None
    heartbeat_interval: float = 5.0   # seconds between node heartbeats
    node_timeout: float = 30.0        # seconds of silence before a node gets no new work
    node_fail_timeout: float = 300.0  # seconds of silence before a node is DOWN
    # A running job's lease (see rmsd(8)): renewed by its node daemon's heartbeats, or
    # by its supervisor while the node daemon is away; a supervisor that cannot renew
    # kills its job when it runs out, and the controller gives the job up as lost
    # (requeue or NODE_FAIL) lease_margin seconds later.
    job_lease: float = 20.0
    lease_margin: float = 5.0
    kill_grace: int = 30              # seconds between SIGTERM and SIGKILL
    default_mem_per_cpu: int | str = 1024   # MB per CPU when a job gives no --mem
    max_jobs: int = 200_000           # active jobs the controller accepts
    # Slurm's MaxArraySize: array task ids must be below it.
    max_array_size: int = 10_001
    # Slurm's kill_invalid_depend: cancel a job whose dependency can never be met.
    kill_invalid_depend: bool = False
    # What one user may hold in rmsctld (root and the controller's own uid: no count).
    # 256 connections: workflow tools run many `rsub --wait` at once, each holding one.
    max_connections_per_user: int = 256
    max_buffered_per_user: int | str = "32M"   # unfinished requests, all connections
    max_request: int | str = "4M"     # any request but a job submission or a node's report
    request_timeout: float = 30.0     # seconds from a request's first byte to its end
    # Other hosts (login nodes, compute nodes) reach rmsctld over TCP at `address`
    # ("HOST:PORT"), proving who they are with MUNGE; rmsctld listens on `listen`
    # ("ADDR:PORT"; default: every address, address's port). Neither: Unix socket only.
    address: str | None = None
    listen: str | None = None
    munge_socket: str | None = None   # munged's socket (default: munge's own)

    @field_validator("address", "listen")
    @classmethod
    def _host_port(cls, v):
        if v is not None:
            from rmsbatch.net.tcp import parse_address
            parse_address(v)
        return v

    @field_validator("default_mem_per_cpu")
    @classmethod
    def _mem(cls, v):
        return _memory(v)

    @field_validator("max_buffered_per_user", "max_request")
    @classmethod
    def _request_size(cls, v):
        v = _memory(v)
        if v < 1:
            raise ValueError("must be at least 1M")
        return v

    @field_validator("max_connections_per_user")
    @classmethod
    def _connections(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("max_array_size")
    @classmethod
    def _array_size(cls, v):
        if not 1 <= v <= 4_000_001:
            raise ValueError("must be between 1 and 4000001")
        return v

    @field_validator("heartbeat_interval", "node_timeout", "request_timeout", "job_lease",
                     "lease_margin", "node_fail_timeout")
    @classmethod
    def _positive(cls, v):
        if v <= 0:
            raise ValueError("must be positive")
        return v


    @model_validator(mode="after")
    def _timeout_covers_heartbeats(self):
        if self.node_timeout < 2 * self.heartbeat_interval:
            raise ValueError(f"node_timeout ({self.node_timeout:g} s) must be at least twice "
                             f"heartbeat_interval ({self.heartbeat_interval:g} s), or nodes "
                             "flap between up and down")
        if self.node_fail_timeout < self.node_timeout:
            raise ValueError(f"node_fail_timeout ({self.node_fail_timeout:g} s) must be at least "
                             f"node_timeout ({self.node_timeout:g} s)")
        if self.job_lease < 3 * self.heartbeat_interval:
            raise ValueError(f"job_lease ({self.job_lease:g} s) must be at least three times "
                             f"heartbeat_interval ({self.heartbeat_interval:g} s), or a late "
                             "heartbeat kills jobs")
        if self.max_buffered_per_user < self.max_request:
            raise ValueError(f"max_buffered_per_user ({self.max_buffered_per_user}M) must be at "
                             f"least max_request ({self.max_request}M)")
        return self


class NodeDaemonSection(_Model):
    # Not under the controller's spool_dir: jobs must reach their own job
    # directory here, and the spool is private to the daemons.
    state_dir: str = "/var/spool/rmsd"
    log_file: str | None = None
    pid_file: str | None = None
    pids_max: int = 4096               # processes per job (cgroup pids controller)
    # Cgroups and device fencing per job. auto: as root, a job whose protections cannot
    # be applied does not run (the node is drained, the job requeued); best-effort: it
    # runs with what could be applied, and its record says what was missing; off: none.
    isolation: Literal["auto", "best-effort", "off"] = "auto"
    # What a job inherits from its submitter (as Slurm's PropagateResourceLimits): the
    # umask, and these soft resource limits. MEMLOCK is left out: a login node's small
    # locked-memory limit breaks RDMA and NCCL on compute nodes.
    propagate_umask: bool = True
    propagate_rlimits: list[Literal["CORE", "CPU", "DATA", "FSIZE", "MEMLOCK", "NOFILE",
                                    "NPROC", "RSS", "STACK", "AS"]] = [
        "CORE", "CPU", "DATA", "FSIZE", "NOFILE", "NPROC", "RSS", "STACK", "AS"]
    # Slurm's command names (srun, scontrol, squeue, ...) first on jobs' PATH, as rmsbatch's.
    slurm_commands: bool = True
    # The accelerator monitor (rmsbatch.node.devices.monitor): telemetry and health.
    gpu_monitor: bool = True
    gpu_sample_interval: float = 5.0   # seconds; NVML holds a driver lock, so not faster than 1
    gpu_backends: list[Literal["nvml", "amdsmi", "sysfs"]] = ["nvml", "amdsmi", "sysfs"]
    gpu_discovery_timeout: float = 60.0   # seconds rmsd waits for auto-detection
    gpu_thermal_drain: int | str = "5:00"  # sustained thermal throttling that drains; 0 never
    gpu_xid_ignore: list[int] = [13, 31, 43, 45, 68, 109]   # application XIDs: not a fault
    device_root: str = "/"             # where /dev, /proc and /sys are (a container's /host)
    # Where a node's job step tasks are reached (rrun, MASTER_ADDR); "%n" is the node's
    # name. Empty: the address the host's own name resolves to.
    address: str = ""

    @field_validator("gpu_sample_interval")
    @classmethod
    def _interval(cls, v):
        if v < 1:
            raise ValueError("must be at least 1 second (NVML holds a driver-wide lock)")
        return v

    @field_validator("gpu_discovery_timeout")
    @classmethod
    def _discovery(cls, v):
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("gpu_thermal_drain")
    @classmethod
    def _thermal(cls, v):
        return _seconds(v)

    # -- a job's node-local setup (rmsbatch.node.prolog) --
    # Each run gets TMPDIR, a private directory under tmp_base, removed when it ends.
    tmp_base: str = "/tmp"
    # Programs run as root on every node of a job, before it starts and after it ends;
    # a failing prolog requeues the job, a failing one of either drains the node.
    prolog: str | None = None
    epilog: str | None = None
    prolog_timeout: int | str = 300    # seconds, or a time such as "5:00"
    epilog_timeout: int | str = 300

    @field_validator("prolog_timeout", "epilog_timeout")
    @classmethod
    def _hook_timeout(cls, v):
        v = _seconds(v)
        if v < 1:
            raise ValueError("must be at least 1 second")
        return v

    @field_validator("tmp_base", "prolog", "epilog")
    @classmethod
    def _hook_path(cls, v):
        if v is not None and (not v.strip() or "\0" in v):
            raise ValueError("expected a path")
        return v


class GpuGroup(_Model):
    type: str = "gpu"
    count: int
    files: str | None = None          # e.g. "/dev/nvidia[0-7]": one file per device
    env: str = "CUDA_VISIBLE_DEVICES"
    vendor: Literal["nvidia", "amd", "other"] | None = None   # None: from env
    memory: int | str | None = None   # per device, MB or a size ("80G"): for --gpu-mem
    cpus: str | None = None           # CPUs local to these devices, e.g. "0-31"

    @field_validator("memory")
    @classmethod
    def _mem(cls, v):
        return None if v is None else _memory(v)

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v):
        if v is None:
            return v
        try:
            from rmsbatch.node.cgroup import parse_cpus
            if not parse_cpus(v):
                raise ValueError
        except ValueError:
            raise ValueError("expected a CPU list such as '0-31' or '0-15,32-47'") from None
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v):
        if not v or not (v[0].isalpha() or v[0] == "_") or not all(c.isalnum() or c == "_" for c in v):
            raise ValueError("expected an environment variable name such as CUDA_VISIBLE_DEVICES")
        return v

    @property
    def vendor_name(self) -> str:
        if self.vendor:
            return self.vendor
        return {"CUDA_VISIBLE_DEVICES": "nvidia", "ROCR_VISIBLE_DEVICES": "amd"}.get(self.env, "other")

    @field_validator("count")
    @classmethod
    def _count(cls, v):
        if v < 0 or v > 1024:
            raise ValueError("must be between 0 and 1024")
        return v

    @field_validator("type")
    @classmethod
    def _type(cls, v):
        return v.lower()


def _gres_count(value) -> int:
    """A generic resource count: a number, or a size-like count ("80G" = 80 x 1024^3),
    as Slurm counts GRES (K, M, G, T are multiples of 1024)."""
    from rmsbatch.core.resources import parse_count
    if isinstance(value, bool):
        raise ValueError("expected a count such as 1 or '80G'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    return parse_count(str(value))


def _resource_name(name: str, extra: str = "") -> str:
    from rmsbatch.core.resources import check_name
    return check_name(name, "resource", extra)


class NodeGroup(_Model):
    names: str
    cpus: int
    memory: int | str                  # MB, or a size with a unit
    features: list[str] = []
    # static: the devices are the [[nodes.gpus]] tables; auto: rmsd finds them (NVML, AMD
    # SMI, sysfs), plus the tables of vendor "other"; check: found, and compared with the
    # tables (a mismatch drains the node).
    gpu_detect: Literal["static", "auto", "check"] = "static"
    gpus: list[GpuGroup] = []

    @field_validator("memory")
    @classmethod
    def _mem(cls, v):
        return _memory(v)

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("names")
    @classmethod
    def _names(cls, v):
        hostlist.expand(v)
        return v

    # -- what jobs may ask of these nodes beyond CPUs, memory and GPUs (rsub --hint,
    # --tmp, --gres): `cpus` counts hardware threads; a --hint=nomultithread job gets
    # whole cores, threads_per_core logical CPUs for each CPU it asks for.
    threads_per_core: int = 1
    tmp_disk: int | str = 0            # node-local scratch (rsub --tmp), MB or a size
    gres: dict[str, int | str] = {}    # generic resources other than GPUs: {nvme = 1}

    @field_validator("threads_per_core")
    @classmethod
    def _threads(cls, v):
        if not 1 <= v <= 16:
            raise ValueError("must be between 1 and 16")
        return v

    @field_validator("tmp_disk")
    @classmethod
    def _tmp(cls, v):
        return _memory(v)

    @field_validator("gres")
    @classmethod
    def _gres(cls, v):
        out = {}
        for name, count in v.items():
            if _resource_name(name).lower() == "gpu":
                raise ValueError("declare GPUs with [[nodes.gpus]] tables, not in gres")
            out[name] = _gres_count(count)
        return out


class PartitionSection(_Model):
    name: str
    nodes: str = "ALL"
    default: bool = False
    default_time: int | str = "UNLIMITED"
    max_time: int | str = "UNLIMITED"
    state: Literal["UP", "DOWN"] = "UP"
    priority: int = 0
    # -- limits (rmsbatch.sched.limits): who may submit here; empty lists admit all
    allow_accounts: list[str] = []
    allow_qos: list[str] = []

    @field_validator("default_time", "max_time")
    @classmethod
    def _t(cls, v):
        return _time(v)


def _epoch(value) -> float:
    """A reservation's start or end: a TOML date-time (local time if it has no offset)."""
    import datetime
    if isinstance(value, datetime.datetime):
        return value.timestamp()
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day).timestamp()
    if isinstance(value, str):
        try:
            return datetime.datetime.fromisoformat(value).timestamp()
        except ValueError:
            pass
    raise ValueError("expected a date and time such as 2026-12-24T08:00:00")


class ReservationSection(_Model):
    name: str
    nodes: str                          # host list
    users: list[str] = []               # "*": everyone
    accounts: list[str] = []
    start: object = None                # None: active from now on
    end: object = None                  # None: until removed from the file

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        return _resource_name(v)

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v):
        hostlist.expand(v)
        return v

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v):
        return None if v is None else _epoch(v)

    @model_validator(mode="after")
    def _window(self):
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"reservation {self.name}: end is not after start")
        if not self.users and not self.accounts:
            raise ValueError(f"reservation {self.name}: name the users or accounts that may "
                             "use it")
        return self


class SchedulerSection(_Model):
    # EASY backfill: a job may start ahead of higher-priority ones when it delays
    # none of the reservations made for them. false: strict priority order (FIFO).
    backfill: bool = True
    # How many waiting jobs a pass plans for (reservations, estimated starts).
    backfill_depth: int = 500
    # true: a job may also preempt running jobs of partitions of a lower priority
    # (tier) on the same nodes; QoS preemption (qos.toml preempt) is always on.
    partition_preemption: bool = False

    @field_validator("backfill_depth")
    @classmethod
    def _depth(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v


class SubmitSection(_Model):
    # Options of the site's submit plugins (SPANK in Slurm) that rsub accepts and
    # records for them, without the leading dashes: ["image", "module"].
    site_options: list[str] = []

    @field_validator("site_options")
    @classmethod
    def _names(cls, v):
        for name in v:
            if not name or name.startswith("-") or not all(c.isalnum() or c in "_-" for c in name):
                raise ValueError(f"invalid option name {name!r} (write it without dashes)")
        return v


# -- multifactor priority and fair-share (rmsbatch.sched.priority, .fairshare) --------
class PrioritySection(_Model):
    # A pending job's priority: the sum of each weight times its factor (each factor
    # from 0 to 1), minus the job's nice value. Not zero, as Slurm ships them: on by
    # default. Fair-share and QoS weigh most, so a tenant far over its share yields to
    # one under it, and a QoS level still says what it says.
    weight_age: int = 1000
    weight_fairshare: int = 10000
    weight_qos: int = 10000
    weight_partition: int = 1000
    weight_job_size: int = 1000
    max_age: int | str = "7-00:00:00"      # pending this long: the age factor is 1
    # The job-size factor grows with the share of the cluster's CPUs or GPUs a job asks
    # for (big jobs first: small ones fit in the gaps); true turns that round.
    favor_small: bool = False
    # Fair-share usage halves every half_life; 0: usage never decays.
    half_life: int | str = "7-00:00:00"
    # Usage is billed resource-seconds: per allocated CPU, per GiB of memory and per
    # GPU (billing_gpu_types by GPU type, else billing_gpu) each second a job runs.
    billing_cpu: float = 1.0
    billing_mem_gib: float = 0.25
    billing_gpu: float = 32.0
    billing_gpu_types: dict[str, float] = {}

    @field_validator("max_age", "half_life")
    @classmethod
    def _span(cls, v):
        return _seconds(v)

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, v):
        if v < 1:
            raise ValueError("must be at least 1 second")
        return v

    @field_validator("weight_age", "weight_fairshare", "weight_qos", "weight_partition",
                     "weight_job_size")
    @classmethod
    def _weight(cls, v):
        if not 0 <= v <= 1_000_000:
            raise ValueError("must be between 0 and 1000000")
        return v

    @field_validator("billing_cpu", "billing_mem_gib", "billing_gpu")
    @classmethod
    def _billing(cls, v):
        if v < 0:
            raise ValueError("must not be negative")
        return v

    @field_validator("billing_gpu_types")
    @classmethod
    def _billing_types(cls, v):
        out = {}
        for name, weight in v.items():
            if weight < 0:
                raise ValueError(f"{name}: must not be negative")
            out[name.lower()] = weight
        return out


# -- accounting (rmsbatch.acct): idle GPUs and retention -----------------------------
class AccountingSection(_Model):
    # A running job whose allocated GPUs' mean utilization stays under idle_gpu_util
    # percent for idle_gpu_after is flagged idle (rq's reason column, rsacct's IdleGPU).
    # 0 turns the check off. The action then: "flag" only; "cancel" or "requeue" the
    # job once it has stayed idle idle_gpu_grace longer (its owner sees the flag and
    # the time meanwhile).
    idle_gpu_util: float = 0.0
    idle_gpu_after: int | str = "1:00:00"
    idle_gpu_action: Literal["flag", "cancel", "requeue"] = "flag"
    idle_gpu_grace: int | str = "15:00"
    # Retention: finished jobs and audit records older than archive_after (days, or a
    # time such as "365-00:00:00"; 0: kept forever) are copied to one SQLite file per
    # month in archive_dir (relative paths: under the spool directory) and then
    # removed from the spool.
    archive_after: int | str = 0
    archive_dir: str = "archive"

    @field_validator("idle_gpu_util")
    @classmethod
    def _util(cls, v):
        if not 0 <= v <= 100:
            raise ValueError("must be a percentage from 0 to 100")
        return v

    @field_validator("idle_gpu_after", "idle_gpu_grace")
    @classmethod
    def _span(cls, v):
        return _seconds(v)

    @field_validator("archive_after")
    @classmethod
    def _days(cls, v):
        if isinstance(v, bool):
            raise ValueError("expected days, or a time such as '365-00:00:00'")
        if isinstance(v, (int, float)):
            if v < 0:
                raise ValueError("must not be negative (0 keeps records forever)")
            return int(v * 86400)
        return units.parse_time(str(v))


class ClusterFile(_Model):
    name: str = "cluster"
    controller: ControllerSection = ControllerSection()
    node_daemon: NodeDaemonSection = NodeDaemonSection()
    nodes: list[NodeGroup]
    partitions: list[PartitionSection]
    # -- what real job scripts ask for beyond nodes: rsub -L, --reservation, site options
    licenses: dict[str, int] = {}      # cluster-wide counted licenses: matlab = 10
    reservations: list[ReservationSection] = []
    submit: SubmitSection = SubmitSection()
    scheduler: SchedulerSection = SchedulerSection()
    priority: PrioritySection = PrioritySection()
    accounting: AccountingSection = AccountingSection()

    @field_validator("licenses")
    @classmethod
    def _licenses(cls, v):
        for name, count in v.items():
            _resource_name(name, "@")      # remote licenses: name@server
            if count < 0:
                raise ValueError(f"{name}: must not be negative")
        return v


class AccountSection(_Model):
    name: str
    description: str = ""
    users: list[str] = []              # "*" admits every user
    shares: int = 1
    qos: list[str] = []                # empty: every QoS
    default_qos: str | None = None
    # -- limits (rmsbatch.sched.limits): over all the account's jobs together, unset
    # (None) for none; enforced as soon as they are set
    max_gpus: int | None = None        # GPUs its running jobs hold
    max_cpus: int | None = None        # CPUs its running jobs hold
    max_mem: int | str | None = None   # memory its running jobs hold, MB or a size
    max_jobs: int | None = None        # running jobs
    max_submit: int | None = None      # pending and running jobs (each array task counts)

    @field_validator("max_gpus", "max_cpus", "max_jobs", "max_submit")
    @classmethod
    def _limit(cls, v):
        return _limit(v)

    @field_validator("max_mem")
    @classmethod
    def _mem_limit(cls, v):
        return None if v is None else _memory(v)
    # -- fair-share tree: a sub-account splits its parent's share with the parent's
    # other sub-accounts and users; a user's share within this account (default 1).
    parent: str | None = None
    user_shares: dict[str, int] = {}
    # -- budget (rmsbatch.ctld.budgets): GPU-hours, or billing units (hours times the
    # [priority] billing weights), per calendar period, over the account's jobs and its
    # sub-accounts'. Spent: its pending jobs wait (BudgetExhausted) and running ones
    # finish. From budget_warn (a fraction) on, rq and rsacct report warn its users.
    budget_gpu_hours: float | None = None
    budget_billing: float | None = None
    budget_period: Literal["day", "week", "month", "quarter", "year"] = "month"
    budget_warn: float = 0.8

    @field_validator("budget_gpu_hours", "budget_billing")
    @classmethod
    def _budget(cls, v):
        if v is not None and v < 0:
            raise ValueError("must not be negative (leave it out for no budget)")
        return v

    @field_validator("budget_warn")
    @classmethod
    def _warn(cls, v):
        if not 0 <= v <= 1:
            raise ValueError("must be a fraction from 0 to 1 (0.8: warn at 80%)")
        return v


class UserSection(_Model):
    default_account: str


class TenantsFile(_Model):
    admins: list[str] = ["root"]
    operators: list[str] = []
    private_jobs: bool = False         # True: rq shows users only their own jobs
    private_accounting: bool = True    # True: rsacct -a only for operators and admins
    accounts: list[AccountSection]
    users: dict[str, UserSection] = {}

    @model_validator(mode="after")
    def _account_tree(self):
        names = {a.name for a in self.accounts}
        parents = {a.name: a.parent for a in self.accounts}
        for a in self.accounts:
            if a.parent is not None and a.parent not in names:
                raise ValueError(f"account {a.name}: parent {a.parent!r} is not an account "
                                 "in this file")
            if a.shares < 0 or any(v < 0 for v in a.user_shares.values()):
                raise ValueError(f"account {a.name}: shares must not be negative")
            seen, up = {a.name}, a.parent
            while up is not None:
                if up in seen:
                    raise ValueError(f"account {a.name}: its parents loop back to {up}")
                seen.add(up)
                up = parents.get(up)
        return self


class QosSection(_Model):
    name: str
    description: str = ""
    priority: int = 0
    max_time: int | str = "UNLIMITED"
    # -- limits (rmsbatch.sched.limits), unset (None) for none; enforced once set.
    # Per user, over that user's jobs of this QoS:
    max_gpus_per_user: int | None = None     # GPUs held by running jobs
    max_cpus_per_user: int | None = None     # CPUs held by running jobs
    max_jobs_per_user: int | None = None     # running jobs
    max_submit_per_user: int | None = None   # pending and running jobs
    # Over every user's jobs of this QoS together (Slurm's Grp limits):
    max_gpus: int | None = None
    max_cpus: int | None = None
    # Fair-share: the usage of its jobs is multiplied by this.
    usage_factor: float = 1.0
    # -- preemption: the QoS levels whose running jobs this one's may preempt, and how
    # this level's own jobs are preempted (requeue, cancel, or off: never), after a
    # signal and grace_time seconds, once they have run min_runtime seconds.
    preempt: list[str] = []
    preempt_mode: Literal["off", "requeue", "cancel"] = "requeue"
    grace_time: int | str = 60
    min_runtime: int | str = 0

    @field_validator("max_time")
    @classmethod
    def _t(cls, v):
        return _time(v)

    @field_validator("max_gpus_per_user", "max_cpus_per_user", "max_jobs_per_user",
                     "max_submit_per_user", "max_gpus", "max_cpus")
    @classmethod
    def _limit(cls, v):
        return _limit(v)

    @field_validator("usage_factor")
    @classmethod
    def _factor(cls, v):
        if v < 0:
            raise ValueError("must not be negative")
        return v

    @field_validator("grace_time", "min_runtime")
    @classmethod
    def _preempt_times(cls, v):
        return _seconds(v)

    @model_validator(mode="after")
    def _not_self(self):
        if self.name in self.preempt:
            raise ValueError(f"qos {self.name}: preempt names the level itself")
        return self


class QosFile(_Model):
    default: str = "normal"
    qos: list[QosSection]
