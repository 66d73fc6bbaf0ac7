"""Cluster configuration: the files under the config dir, validated on load.

Three TOML files, each a pydantic model with unknown keys rejected:
  cluster.toml   controller, node daemon, nodes (hostlist ranges), partitions
  tenants.toml   admins/operators, accounts and their users, visibility
  qos.toml       QoS levels
Errors name the file and the dotted key. Relative paths are relative to the
config dir. Only daemons and `rms-local` import this (pydantic is heavy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from rmsbatch import hostlist, units

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


class ConfigError(Exception):
    """A config file is missing, malformed or inconsistent; says which and where."""


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
    node_timeout: float = 30.0        # seconds of silence before a node is DOWN
    kill_grace: int = 30              # seconds between SIGTERM and SIGKILL
    default_mem_per_cpu: int | str = 1024   # MB per CPU when a job gives no --mem
    max_jobs: int = 200_000           # active jobs the controller accepts

    @field_validator("default_mem_per_cpu")
    @classmethod
    def _mem(cls, v):
        return _memory(v)

    @field_validator("heartbeat_interval", "node_timeout")
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
        return self


class NodeDaemonSection(_Model):
    # Not under the controller's spool_dir: jobs must reach their own job
    # directory here, and the spool is private to the daemons.
    state_dir: str = "/var/spool/rmsd"
    log_file: str | None = None
    pid_file: str | None = None
    pids_max: int = 4096               # processes per job (cgroup pids controller)
    isolation: Literal["auto", "off"] = "auto"   # cgroups and device fencing per job
    # The accelerator monitor (rmsbatch.devices.monitor): telemetry and health.
    gpu_monitor: bool = True
    gpu_sample_interval: float = 5.0   # seconds; NVML holds a driver lock, so not faster than 1
    gpu_backends: list[Literal["nvml", "amdsmi", "sysfs"]] = ["nvml", "amdsmi", "sysfs"]
    gpu_discovery_timeout: float = 60.0   # seconds rmsd waits for auto-detection
    gpu_thermal_drain: int | str = "5:00"  # sustained thermal throttling that drains; 0 never
    gpu_xid_ignore: list[int] = [13, 31, 43, 45, 68, 109]   # application XIDs: not a fault
    device_root: str = "/"             # where /dev, /proc and /sys are (a container's /host)

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
            from rmsbatch.cgroup import parse_cpus
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


class PartitionSection(_Model):
    name: str
    nodes: str = "ALL"
    default: bool = False
    default_time: int | str = "UNLIMITED"
    max_time: int | str = "UNLIMITED"
    state: Literal["UP", "DOWN"] = "UP"
    priority: int = 0

    @field_validator("default_time", "max_time")
    @classmethod
    def _t(cls, v):
        return _time(v)


class ClusterFile(_Model):
    name: str = "cluster"
    controller: ControllerSection = ControllerSection()
    node_daemon: NodeDaemonSection = NodeDaemonSection()
    nodes: list[NodeGroup]
    partitions: list[PartitionSection]


class AccountSection(_Model):
    name: str
    description: str = ""
    users: list[str] = []              # "*" admits every user
    shares: int = 1
    qos: list[str] = []                # empty: every QoS
    default_qos: str | None = None


class UserSection(_Model):
    default_account: str


class TenantsFile(_Model):
    admins: list[str] = ["root"]
    operators: list[str] = []
    private_jobs: bool = False         # True: rq shows users only their own jobs
    private_accounting: bool = True    # True: rsacct -a only for operators and admins
    accounts: list[AccountSection]
    users: dict[str, UserSection] = {}


class QosSection(_Model):
    name: str
    description: str = ""
    priority: int = 0
    max_time: int | str = "UNLIMITED"

    @field_validator("max_time")
    @classmethod
    def _t(cls, v):
        return _time(v)


class QosFile(_Model):
    default: str = "normal"
    qos: list[QosSection]


# -- the loaded, cross-checked configuration ----------------------------------

@dataclass(frozen=True)
class GpuDef:
    index: int          # per node, 0..n-1: what RMS_JOB_GPUS lists
    type: str
    file: str | None
    env: str
    vendor: str = "nvidia"
    mem_mb: int = 0
    cpus: str | None = None


@dataclass
class NodeDef:
    name: str
    cpus: int
    mem_mb: int
    features: tuple[str, ...]
    gpus: tuple[GpuDef, ...]
    partitions: list[str] = field(default_factory=list)
    gpu_detect: str = "static"


@dataclass
class Config:
    directory: str
    cluster: ClusterFile
    tenants: TenantsFile
    qos: QosFile
    nodes: dict[str, NodeDef]
    partitions: dict[str, PartitionSection]
    partition_nodes: dict[str, list[str]]
    default_partition: str

    def path(self, value: str) -> str:
        return os.path.join(self.directory, value)

    @property
    def socket(self) -> str:
        return self.path(self.cluster.controller.socket)

    @property
    def spool_dir(self) -> str:
        return self.path(self.cluster.controller.spool_dir)

    @property
    def node_state_dir(self) -> str:
        return self.path(self.cluster.node_daemon.state_dir)

    def qos_named(self, name: str) -> QosSection | None:
        return next((q for q in self.qos.qos if q.name == name), None)

    def account_named(self, name: str) -> AccountSection | None:
        return next((a for a in self.tenants.accounts if a.name == name), None)

    def accounts_of(self, user: str) -> list[str]:
        return [a.name for a in self.tenants.accounts if user in a.users or "*" in a.users]

    def default_account(self, user: str) -> str | None:
        entry = self.tenants.users.get(user)
        if entry:
            return entry.default_account
        explicit = [a.name for a in self.tenants.accounts if user in a.users]
        if explicit:
            return explicit[0]
        anyone = [a.name for a in self.tenants.accounts if "*" in a.users]
        return anyone[0] if anyone else None

    def is_operator(self, user: str) -> bool:
        return user in self.tenants.operators or user in self.tenants.admins

    def is_admin(self, user: str) -> bool:
        return user in self.tenants.admins


def _read(directory: str, filename: str, model):
    path = os.path.join(directory, filename)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (create it, or set RMS_CONF_DIR "
                          "to a directory holding cluster.toml, tenants.toml and qos.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        more = f" (and {len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
        raise ConfigError(f"{path}: {key}: {msg}{more}") from None


def load(directory: str) -> Config:
    directory = os.path.abspath(directory)
    cluster = _read(directory, "cluster.toml", ClusterFile)
    tenants = _read(directory, "tenants.toml", TenantsFile)
    qos = _read(directory, "qos.toml", QosFile)
    cfile = os.path.join(directory, "cluster.toml")

    nodes: dict[str, NodeDef] = {}
    for i, group in enumerate(cluster.nodes):
        names = hostlist.expand(group.names)
        gpus: list[GpuDef] = []
        for j, g in enumerate(group.gpus):
            files = hostlist.expand(g.files) if g.files else [None] * g.count
            if len(files) != g.count:
                raise ConfigError(f"{cfile}: nodes.{i}.gpus.{j}.files: names {len(files)} "
                                  f"device files but count is {g.count}")
            for f in files:
                gpus.append(GpuDef(len(gpus), g.type, f, g.env, g.vendor_name, g.memory or 0,
                                   g.cpus))
        for name in names:
            if name in nodes:
                raise ConfigError(f"{cfile}: nodes.{i}.names: node {name} is declared twice")
            nodes[name] = NodeDef(name, group.cpus, group.memory, tuple(group.features), tuple(gpus),
                                  gpu_detect=group.gpu_detect)

    partitions: dict[str, PartitionSection] = {}
    partition_nodes: dict[str, list[str]] = {}
    defaults = []
    for i, part in enumerate(cluster.partitions):
        if part.name in partitions:
            raise ConfigError(f"{cfile}: partitions.{i}.name: partition {part.name} is declared twice")
        members = list(nodes) if part.nodes.upper() == "ALL" else hostlist.expand(part.nodes)
        unknown = [n for n in members if n not in nodes]
        if unknown:
            raise ConfigError(f"{cfile}: partitions.{i}.nodes: unknown node(s) "
                              f"{hostlist.compress(unknown)} (declare them under [[nodes]])")
        if part.max_time and part.default_time and part.default_time > part.max_time:
            raise ConfigError(f"{cfile}: partitions.{i}.default_time: longer than max_time")
        partitions[part.name] = part
        partition_nodes[part.name] = members
        for n in members:
            nodes[n].partitions.append(part.name)
        if part.default:
            defaults.append(part.name)
    if not partitions:
        raise ConfigError(f"{cfile}: partitions: declare at least one partition")
    if len(defaults) > 1:
        raise ConfigError(f"{cfile}: partitions: more than one default partition "
                          f"({', '.join(defaults)}); mark only one with default = true")

    tfile = os.path.join(directory, "tenants.toml")
    qfile = os.path.join(directory, "qos.toml")
    qos_names = {q.name for q in qos.qos}
    if len(qos_names) != len(qos.qos):
        raise ConfigError(f"{qfile}: qos: a QoS name is declared twice")
    if qos.default not in qos_names:
        raise ConfigError(f"{qfile}: default: no QoS named {qos.default!r}")
    account_names = [a.name for a in tenants.accounts]
    if len(set(account_names)) != len(account_names):
        raise ConfigError(f"{tfile}: accounts: an account name is declared twice")
    for i, acct in enumerate(tenants.accounts):
        for q in acct.qos + ([acct.default_qos] if acct.default_qos else []):
            if q not in qos_names:
                raise ConfigError(f"{tfile}: accounts.{i}: unknown QoS {q!r} (qos.toml has "
                                  f"{', '.join(sorted(qos_names))})")
    for user, entry in tenants.users.items():
        if entry.default_account not in account_names:
            raise ConfigError(f"{tfile}: users.{user}.default_account: no account named "
                              f"{entry.default_account!r}")

    return Config(directory, cluster, tenants, qos, nodes, partitions, partition_nodes,
                  defaults[0] if defaults else next(iter(partitions)))
