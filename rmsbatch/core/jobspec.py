"""JobSpec: what a submission asks for, parsed at the edge and passed inward.

`rsub` builds one from the command line and the script's directives
(`rmsbatch.cli.jobscript`), sends it to the controller as a plain dict, and the
controller rebuilds it with `JobSpec.from_dict`, validating every field again:
nothing a client sends is trusted.

Kept free of heavy imports: `rsub` loads this on every call.
"""
from __future__ import annotations

# Bounds applied on both sides of the socket.
MAX_SCRIPT_BYTES = 4 * 1024 * 1024
MAX_ENV_BYTES = 1024 * 1024
MAX_NAME = 200
MAX_PATH = 4096
MAX_COUNT = 1_000_000


class SpecError(ValueError):
    """A field of a JobSpec is malformed; the message names the field."""


# (name, default) of every field; a callable default makes a fresh value.
FIELDS: tuple = (
    ('script', ""),  # full script text, starting with "#!"
    ('argv', list),  # arguments after the script name
    ('name', None),  # None: script basename, or "wrap"
    ('partition', None),  # None: the default partition
    ('account', None),  # None: the user's default account
    ('qos', None),  # None: the account's default QoS
    ('time_limit', None),  # seconds; 0 = unlimited; None = partition default
    ('nodes', 1),
    ('ntasks', 1),
    ('cpus_per_task', 1),
    ('mem_mb', None),  # per node; 0 = all of the node's memory
    ('mem_per_cpu_mb', None),
    ('mem_per_gpu_mb', None),
    ('gpus', 0),  # total over the job
    ('gpus_per_node', None),
    ('gpu_type', None),  # lower-cased model name, e.g. "a100", or a MIG profile "1g.10gb"
    ('gpu_mem_mb', None),  # memory each GPU must have
    ('constraint', None),
    ('exclusive', False),
    ('output', None),  # pattern, relative to workdir unless absolute
    ('error', None),
    ('workdir', ""),  # absolute
    ('submit_dir', ""),  # absolute
    ('submit_host', ""),
    ('hold', False),
    ('nice', 0),
    ('export', "ALL"),  # as given to --export, for the record
    ('environment', dict),  # the job's env, resolved by rsub
    ('requeue', False),
    ('umask', None),  # the submitter's umask (the job's files get the same modes)
    ('rlimits', None),  # the submitter's resource limits: {"NOFILE": [soft, hard], ...}
    # -- the task model (Slurm's names) --
    ('ntasks_given', False),  # -n or --ntasks-per-node was given (Slurm sets SLURM_NTASKS then)
    ('ntasks_per_node', None),
    ('ntasks_per_gpu', None),
    ('ntasks_per_core', None),
    ('cpus_per_gpu', None),
    ('gpus_per_task', None),
    ('nodes_max', None),  # -N MIN-MAX: the most nodes; None: exactly `nodes`
    ('nodes_given', False),  # -N was given; without it the node count follows the request
    ('hint', None),  # "nomultithread", "multithread", "compute_bound", "memory_bound"
    ('gpu_bind', None),  # as written: "closest", "single:1", "none", "map_gpu:0,1", ...
    ('nodelist', None),  # hostlist the job must run on (-w)
    ('exclude', None),  # hostlist it must not run on (-x)
    ('tmp_mb', None),  # node-local disk per node
    ('wait_all_nodes', False),
    ('licenses', dict),  # cluster-wide counted resources: name -> count
    ('gres', dict),  # generic resources other than GPUs, per node: name -> count
    # -- arrays, dependencies, control --
    ('array', None),  # as written and checked: "0-99%10", "1,5,9", "500-17000:1000"
    ('dependency', None),  # as written and checked: "afterok:12:13,singleton", "a?b"
    ('begin', None),  # epoch seconds: not before then
    ('kill_on_invalid_dep', None),  # None: as cluster.toml says (kill_invalid_depend)
    ('signal', None),  # {"signal": 10, "seconds": 60, "batch": true}: before the time limit
    ('open_mode', None),  # "append" or "truncate"; None: truncate, append on a requeue
    ('reservation', None),
    ('clusters', None),  # must name this cluster
    ('site_options', dict),  # site plugin options the cluster accepts: name -> value
)
RLIMIT_NAMES = ("CORE", "CPU", "DATA", "FSIZE", "MEMLOCK", "NOFILE", "NPROC", "RSS", "STACK",
                "AS")


class JobSpec:
    # A plain class, not a dataclass: dataclasses import inspect, which costs
    # every rsub call several milliseconds.
    __slots__ = tuple(name for name, _ in FIELDS)

    def __init__(self, **values):
        unknown = set(values) - set(self.__slots__)
        if unknown:
            raise TypeError(f"unknown job spec field(s): {', '.join(sorted(unknown))}")
        for name, default in FIELDS:
            if name in values:
                setattr(self, name, values[name])
            else:
                setattr(self, name, default() if callable(default) else default)

    def __eq__(self, other) -> bool:
        return isinstance(other, JobSpec) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n, _ in FIELDS if n != "environment")
        return f"JobSpec({shown})"

    def to_dict(self) -> dict:
        data = {name: getattr(self, name) for name, _ in FIELDS}
        data["argv"] = list(self.argv)
        for key in ("environment", "licenses", "gres", "site_options"):
            data[key] = dict(getattr(self, key))
        if self.signal is not None:
            data["signal"] = dict(self.signal)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "JobSpec":
        """Rebuild and validate a spec received from a client."""
        if not isinstance(data, dict):
            raise SpecError("job spec must be an object")
        unknown = sorted(set(data) - set(cls.__slots__))
        if unknown:
            raise SpecError(f"unknown job spec field(s): {', '.join(unknown)}")
        spec = cls(**data)
        spec.validate()
        return spec

    # -- validation -------------------------------------------------------
    def validate(self) -> None:
        _check_str("script", self.script, MAX_SCRIPT_BYTES)
        if len(self.script.encode("utf-8", "surrogateescape")) > MAX_SCRIPT_BYTES:
            raise SpecError(f"script is larger than {MAX_SCRIPT_BYTES // (1024 * 1024)} MiB")
        if not self.script.startswith("#!"):
            raise SpecError("script must start with '#!' (e.g. #!/bin/bash)")
        if "\0" in self.script:
            raise SpecError("script contains a NUL byte (is it a binary file?)")
        if not isinstance(self.argv, list) or not all(isinstance(a, str) for a in self.argv):
            raise SpecError("argv must be a list of strings")
        if sum(len(a) for a in self.argv) > MAX_PATH * 16:
            raise SpecError("script arguments are too long")
        for key in ("name", "partition", "account", "qos", "gpu_type", "constraint", "hint",
                    "gpu_bind", "nodelist", "exclude", "array", "dependency", "open_mode",
                    "reservation", "clusters"):
            value = getattr(self, key)
            if value is not None:
                _check_str(key, value, MAX_NAME)
                if not value or any(c in value for c in "\n\r\t\0"):
                    raise SpecError(f"{key}: must be a non-empty single-line string")
        for key in ("output", "error"):
            value = getattr(self, key)
            if value is not None:
                _check_str(key, value, MAX_PATH)
                if not value or "\0" in value or "\n" in value:
                    raise SpecError(f"{key}: not a usable file name")
        for key in ("workdir", "submit_dir"):
            value = getattr(self, key)
            _check_str(key, value, MAX_PATH)
            if not value.startswith("/") or "\0" in value:
                raise SpecError(f"{key}: must be an absolute path")
        _check_str("submit_host", self.submit_host, 256)
        _check_str("export", self.export, MAX_PATH)
        for key in ("nodes", "ntasks", "cpus_per_task"):
            _check_int(key, getattr(self, key), minimum=1)
        _check_int("gpus", self.gpus, minimum=0)
        for key in ("gpus_per_node", "mem_per_cpu_mb", "mem_per_gpu_mb", "gpu_mem_mb",
                    "ntasks_per_node", "ntasks_per_gpu", "ntasks_per_core", "cpus_per_gpu",
                    "gpus_per_task", "nodes_max"):
            value = getattr(self, key)
            if value is not None:
                _check_int(key, value, minimum=1)
        if self.nodes_max is not None and self.nodes_max < self.nodes:
            raise SpecError(f"nodes: the most nodes ({self.nodes_max}) is fewer than the "
                            f"least ({self.nodes})")
        if self.tmp_mb is not None:
            _check_int("tmp_mb", self.tmp_mb, minimum=0, maximum=1 << 40)
        if self.open_mode not in (None, "append", "truncate"):
            raise SpecError("open_mode: must be append or truncate")
        if self.begin is not None and (isinstance(self.begin, bool)
                                       or not isinstance(self.begin, (int, float))
                                       or not 0 <= self.begin < 1 << 40):
            raise SpecError("begin: must be a time in seconds since the epoch")
        if self.signal is not None:
            sig = self.signal
            if not isinstance(sig, dict) or set(sig) != {"signal", "seconds", "batch"} \
                    or not isinstance(sig["batch"], bool):
                raise SpecError("signal: expected {signal, seconds, batch}")
            _check_int("signal.signal", sig["signal"], minimum=1, maximum=64)
            _check_int("signal.seconds", sig["seconds"], minimum=0, maximum=65535)
        for key in ("licenses", "gres"):
            _check_counts(key, getattr(self, key))
        if not isinstance(self.site_options, dict) or len(self.site_options) > 64 or not all(
                isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= MAX_NAME
                and len(v) <= MAX_PATH for k, v in self.site_options.items()):
            raise SpecError("site_options must map option names to strings")
        if self.mem_mb is not None:
            _check_int("mem_mb", self.mem_mb, minimum=0, maximum=1 << 40)
        if self.time_limit is not None:
            _check_int("time_limit", self.time_limit, minimum=0, maximum=1 << 40)
        _check_int("nice", self.nice, minimum=-10000, maximum=10000)
        for key in ("exclusive", "hold", "requeue", "ntasks_given", "wait_all_nodes",
                    "nodes_given"):
            if not isinstance(getattr(self, key), bool):
                raise SpecError(f"{key}: must be true or false")
        if self.kill_on_invalid_dep not in (None, True, False):
            raise SpecError("kill_on_invalid_dep: must be true, false or null")
        if not isinstance(self.environment, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.environment.items()
        ):
            raise SpecError("environment must map strings to strings")
        size = sum(len(k) + len(v) + 2 for k, v in self.environment.items())
        if size > MAX_ENV_BYTES:
            raise SpecError(f"environment is larger than {MAX_ENV_BYTES // 1024} KiB")
        if self.umask is not None:
            _check_int("umask", self.umask, minimum=0, maximum=0o777)
        if self.rlimits is not None:
            if not isinstance(self.rlimits, dict) or set(self.rlimits) - set(RLIMIT_NAMES):
                raise SpecError(f"rlimits: expected limits named {', '.join(RLIMIT_NAMES)}")
            for name, pair in self.rlimits.items():
                if not isinstance(pair, list) or len(pair) != 2:
                    raise SpecError(f"rlimits.{name}: expected [soft, hard]")
                for value in pair:      # -1: unlimited
                    _check_int(f"rlimits.{name}", value, minimum=-1, maximum=(1 << 63) - 1)
        set_mem = [k for k in ("mem_mb", "mem_per_cpu_mb", "mem_per_gpu_mb")
                   if getattr(self, k) is not None]
        if len(set_mem) > 1:
            raise SpecError("--mem, --mem-per-cpu and --mem-per-gpu are mutually exclusive")

    # -- derived values ---------------------------------------------------
    @property
    def cpus_total(self) -> int:
        return self.ntasks * self.cpus_per_task

    def gpus_on_node(self) -> int:
        """GPUs each allocated node must provide."""
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        return -(-self.gpus // self.nodes) if self.gpus else 0

    def cpus_on_node(self) -> int:
        return -(-self.cpus_total // self.nodes)

    def mem_on_node(self, node_mem_mb: int, default_mem_per_cpu_mb: int) -> int:
        """Memory (MB) each node must provide; node_mem_mb answers --mem=0."""
        if self.mem_mb is not None:
            return node_mem_mb if self.mem_mb == 0 else self.mem_mb
        if self.mem_per_cpu_mb is not None:
            return self.mem_per_cpu_mb * self.cpus_on_node()
        if self.mem_per_gpu_mb is not None:
            return self.mem_per_gpu_mb * max(1, self.gpus_on_node())
        return default_mem_per_cpu_mb * self.cpus_on_node()


def _check_counts(key: str, value) -> None:
    """A map of resource names to counts (licenses, generic resources)."""
    if not isinstance(value, dict) or len(value) > 64:
        raise SpecError(f"{key}: expected a map of names to counts")
    for name, count in value.items():
        # licenses served remotely are `name@server`
        extra = "@" if key == "licenses" else ""
        if not isinstance(name, str) or not name or len(name) > MAX_NAME or not all(
                c.isalnum() or c in "_-." + extra for c in name):
            raise SpecError(f"{key}: invalid name {str(name)[:40]!r}")
        # GRES may count bytes (gpumem:80G), so their counts go far beyond MAX_COUNT
        _check_int(f"{key}.{name}", count, minimum=0,
                   maximum=MAX_COUNT if key == "licenses" else 1 << 50)


def _check_str(key: str, value, limit: int) -> None:
    if not isinstance(value, str):
        raise SpecError(f"{key}: must be a string")
    if len(value) > limit:
        raise SpecError(f"{key}: longer than {limit} characters")


def _check_int(key: str, value, minimum: int = 0, maximum: int = MAX_COUNT) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{key}: must be an integer")
    if value < minimum or value > maximum:
        raise SpecError(f"{key}={value}: must be between {minimum} and {maximum}")
