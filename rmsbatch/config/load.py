"""Cluster configuration: the files under the config dir, validated on load.

Three TOML files, each a pydantic model (rmsbatch.config.models) with unknown keys
rejected, then cross-checked into one `Config`. Errors name the file and the dotted
key. Relative paths are relative to the config dir. Only daemons and `rms-local`
import this (pydantic is heavy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from pydantic import ValidationError

from rmsbatch.config.models import (ClusterFile, PartitionSection, QosFile, QosSection,
                                    AccountSection, TenantsFile)
from rmsbatch.core import hostlist

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib


class ConfigError(Exception):
    """A config file is missing, malformed or inconsistent; says which and where."""


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
    # -- what real job scripts ask of a node beyond CPUs, memory and GPUs
    threads_per_core: int = 1
    tmp_mb: int = 0
    gres: dict = field(default_factory=dict)


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
    # cluster.toml key by key (rmsbatch.config.digest): node daemons must match it
    cluster_digest: dict[str, str] = field(default_factory=dict)

    def path(self, value: str) -> str:
        return os.path.join(self.directory, value)

    @property
    def socket(self) -> str:
        return self.path(self.cluster.controller.socket)

    @property
    def tcp_address(self) -> tuple[str, int] | None:
        """Where other hosts reach rmsctld (cluster.toml [controller] address)."""
        from rmsbatch.net.tcp import parse_address
        c = self.cluster.controller
        return parse_address(c.address) if c.address else None

    @property
    def tcp_listen(self) -> tuple[str, int] | None:
        """Where rmsctld listens for them: `listen`, or every address on address's port."""
        from rmsbatch.net.tcp import parse_address
        c = self.cluster.controller
        if c.listen:
            return parse_address(c.listen)
        address = self.tcp_address
        return ("0.0.0.0", address[1]) if address else None

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


def _expand(text: str, path: str, key: str) -> list[str]:
    try:
        return hostlist.expand(text)
    except hostlist.HostlistError as exc:
        raise ConfigError(f"{path}: {key}: {exc} (write host lists such as "
                          "gpu[001-004,010])") from None


def load(directory: str) -> Config:
    """The configuration in `directory`, checked as a whole. Every problem is one
    ConfigError naming the file and the key: a daemon reloading on SIGHUP keeps its
    old configuration rather than die of a typo."""
    try:
        return _load(directory)
    except ConfigError:
        raise
    except Exception as exc:   # noqa: BLE001 - a check we did not foresee: still one line
        raise ConfigError(f"{os.path.abspath(directory)}: cannot load the configuration: "
                          f"{type(exc).__name__}: {exc}") from None


def _load(directory: str) -> Config:
    directory = os.path.abspath(directory)
    cluster = _read(directory, "cluster.toml", ClusterFile)
    tenants = _read(directory, "tenants.toml", TenantsFile)
    qos = _read(directory, "qos.toml", QosFile)
    cfile = os.path.join(directory, "cluster.toml")

    nodes: dict[str, NodeDef] = {}
    for i, group in enumerate(cluster.nodes):
        names = _expand(group.names, cfile, f"nodes.{i}.names")
        gpus: list[GpuDef] = []
        for j, g in enumerate(group.gpus):
            files = _expand(g.files, cfile, f"nodes.{i}.gpus.{j}.files") if g.files \
                else [None] * g.count
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
            nodes[name].threads_per_core = group.threads_per_core
            nodes[name].tmp_mb, nodes[name].gres = group.tmp_disk, dict(group.gres)

    partitions: dict[str, PartitionSection] = {}
    partition_nodes: dict[str, list[str]] = {}
    defaults = []
    for i, part in enumerate(cluster.partitions):
        if part.name in partitions:
            raise ConfigError(f"{cfile}: partitions.{i}.name: partition {part.name} is declared twice")
        members = list(nodes) if part.nodes.upper() == "ALL" else \
            _expand(part.nodes, cfile, f"partitions.{i}.nodes")
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

    _check_reservations(cluster, nodes, account_names, cfile)
    _check_limit_names(cluster, qos, account_names, qos_names, cfile, qfile)
    from rmsbatch.config.digest import digest
    return Config(directory, cluster, tenants, qos, nodes, partitions, partition_nodes,
                  defaults[0] if defaults else next(iter(partitions)), digest(cluster))


def _check_reservations(cluster: ClusterFile, nodes: dict, accounts: list[str],
                        cfile: str) -> None:
    seen = set()
    for i, res in enumerate(cluster.reservations):
        if res.name in seen:
            raise ConfigError(f"{cfile}: reservations.{i}.name: reservation {res.name} is "
                              "declared twice")
        seen.add(res.name)
        unknown = [n for n in _expand(res.nodes, cfile, f"reservations.{i}.nodes")
                   if n not in nodes]
        if unknown:
            raise ConfigError(f"{cfile}: reservations.{i}.nodes: unknown node(s) "
                              f"{hostlist.compress(unknown)} (declare them under [[nodes]])")
        bad = [a for a in res.accounts if a not in accounts]
        if bad:
            raise ConfigError(f"{cfile}: reservations.{i}.accounts: no account named "
                              f"{bad[0]!r} in tenants.toml")


def _check_limit_names(cluster: ClusterFile, qos: QosFile, accounts: list[str],
                       qos_names: set[str], cfile: str, qfile: str) -> None:
    """A misspelt name in an allow list would lock everyone out of a partition."""
    for i, part in enumerate(cluster.partitions):
        bad = [a for a in part.allow_accounts if a not in accounts]
        if bad:
            raise ConfigError(f"{cfile}: partitions.{i}.allow_accounts: no account named "
                              f"{bad[0]!r} in tenants.toml")
        bad = [q for q in part.allow_qos if q not in qos_names]
        if bad:
            raise ConfigError(f"{cfile}: partitions.{i}.allow_qos: no QoS named {bad[0]!r} "
                              "in qos.toml")
    for i, level in enumerate(qos.qos):
        bad = [q for q in level.preempt if q not in qos_names]
        if bad:
            raise ConfigError(f"{qfile}: qos.{i}.preempt: no QoS named {bad[0]!r}")
