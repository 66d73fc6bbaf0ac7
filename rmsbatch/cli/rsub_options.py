"""rsub's options: the table, the value types, the scan of words and the help text.

One option table serves both the command line and the directives at the top of a script,
with getopt_long's rules (`--opt=value`, `--opt value`, `-o value`, `-ovalue`, flags,
unambiguous prefixes of long names), so a script behaves the same whichever way an option
arrives. Each option says what it sets (its `key` in the settings), how its value is read
(a converter that raises ValueError with a message), and where it may be given; `rsub
--help` is generated from the same table (`usage_text`).

Errors are OptionError, whose message starts with the option as rsub understood it
(`--mem=12Q: `). Imported by `rsub` on every call: standard library only, `difflib` only
when a name is misspelt, `textwrap` only for --help.
"""
from __future__ import annotations

from rmsbatch import __version__
from rmsbatch.core.jobspec import MAX_COUNT
from rmsbatch.core.units import parse_memory, parse_time

TYPE_CHECKING = False   # `typing` is not imported at run time: every rsub loads this file
if TYPE_CHECKING:
    from typing import Callable


class OptionError(ValueError):
    """An option or its value is wrong; the message starts with the option (`--mem=12Q: ...`)."""


# == value converters =======================================================
# Each takes the value as written (None for a flag or an omitted optional value) and
# returns what to store, or raises ValueError with a message that omits the option name.
def _is_template(value: str) -> bool:
    """`<account>`, `{{partition}}`: a template someone forgot to fill in."""
    return (value.startswith("<") and value.endswith(">")) or "{{" in value


def _looks_like_placeholder(value: str) -> bool:
    """A template, or an ALL_CAPS word (`NUM_NODES`) where a number or size belongs.

    Words with digits (`A100`, `4G`) are not placeholders: they get the parser's message.
    """
    word = value.replace("_", "")
    return _is_template(value) or (word.isascii() and word.isalpha() and word.isupper())


def _typed(parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    """Wrap a parser so a forgotten template placeholder gets its own message."""
    def convert(value: str):
        try:
            return parse(value)
        except ValueError:
            if _looks_like_placeholder(value.strip()):
                raise ValueError(
                    f"looks like a template placeholder; replace it with {what}"
                ) from None
            raise
    return convert


def _whole(value: str, minimum: int, what: str) -> int:
    text = value.strip()
    digits = text[1:] if text.startswith("-") else text
    if not digits.isascii() or not digits.isdigit() or len(digits) > 12:
        raise ValueError(f"must be {what}")
    number = int(text)
    if number < minimum:
        raise ValueError(f"must be {what}")
    if number > MAX_COUNT:
        raise ValueError(f"must be at most {MAX_COUNT}")
    return number


def _positive(value: str) -> int:
    return _whole(value, 1, "a positive integer")


def _nodes(value: str) -> tuple[int, int | None]:
    """`4` -> (4, None); `2-4` -> (2, 4): at least 2 nodes, as many as 4 if free."""
    low, dash, high = value.strip().partition("-")
    if dash and low and high:
        least, most = _positive(low), _positive(high)
        if most < least:
            raise ValueError(f"the most nodes ({most}) is fewer than the least ({least})")
        return least, (most if most != least else None)
    return _positive(value), None


def _time(value: str) -> int:
    return parse_time(value)


def _mem(value: str) -> int:
    return parse_memory(value)


def _mem_at_least_1(value: str) -> int:
    mb = parse_memory(value)
    if mb < 1:
        raise ValueError("must be at least 1M")
    return mb


def _gpu_type(text: str) -> str:
    # Types are case-insensitive (A100 = a100), so only an unmistakable placeholder is refused.
    if _is_template(text) or (_looks_like_placeholder(text) and ("_" in text or len(text) == 1)):
        raise ValueError(f"{text!r} looks like a template placeholder; replace it with a GPU type")
    kind = text.strip().lower()
    if not kind or len(kind) > 64 or not all(c.isalnum() or c in "_.-" for c in kind):
        raise ValueError(f"invalid GPU type {text!r} (letters, digits, '_', '-' and '.')")
    return kind


def _gpu_count(text: str) -> int:
    return _whole(text, 0, "a number of GPUs (0 or more)")


def _gpus(value: str) -> tuple[int, str | None]:
    """`--gpus` / `--gpus-per-node`: `N` or `TYPE:N` -> (count, type)."""
    if "," in value:
        raise ValueError("only one GPU type per job is supported (expected N or TYPE:N)")
    kind, colon, count = value.rpartition(":")
    if colon and not kind:
        raise ValueError("expected N or TYPE:N, e.g. 4 or a100:4")
    if not colon and not count.strip().lstrip("-").isdigit():
        raise ValueError("expected N or TYPE:N, e.g. 4 or a100:4")
    return _gpu_count(count), (_gpu_type(kind) if colon else None)


def _gres(value: str) -> tuple[tuple[int, str | None] | None, dict[str, int]]:
    """`gpu:a100:4,nvme:1,gpumem:20g`: GPUs per node, and the other GRES per node."""
    from rmsbatch.core.resources import parse_gres     # only for --gres: not every rsub
    gpu, other = parse_gres(value)
    if gpu is not None and gpu[1] is not None:
        gpu = (gpu[0], _gpu_type(gpu[1]))
    return gpu, other


def _gpus_per_task(value: str) -> tuple[int, str | None]:
    count, kind = _gpus(value)
    if count < 1:
        raise ValueError("must be at least 1 (leave the option out for no GPUs)")
    return count, kind


def _choice(*words: str):
    def convert(value: str) -> str:
        word = value.strip().lower()
        if word not in words:
            raise ValueError(f"must be one of {', '.join(words)}")
        return word
    return convert


def _gpu_bind(value: str) -> str:
    """closest, none, single:N, map_gpu:LIST, mask_gpu:LIST, each after an optional `verbose,`."""
    text = value.strip()
    body = text[len("verbose,"):] if text.lower().startswith("verbose,") else text
    kind, colon, arg = body.partition(":")
    kind = kind.lower()
    if kind in ("closest", "none") and not colon:
        return text
    if kind == "single" and colon and arg.isdigit() and int(arg) > 0:
        return text
    if kind in ("map_gpu", "mask_gpu") and colon and arg and all(
            _bind_item(item, kind) for item in arg.split(",")):
        return text
    raise ValueError("expected closest, none, single:N, map_gpu:0,1,... or mask_gpu:0x1,...")


def _bind_item(item: str, kind: str) -> bool:
    word, star, repeat = item.partition("*")
    if star and not repeat.isdigit():
        return False
    if kind == "map_gpu":
        return word.isdigit()
    digits = word[2:] if word.lower().startswith("0x") else word
    return bool(digits) and all(c in "0123456789abcdefABCDEF" for c in digits)


def _hosts(value: str) -> str:
    """-w/-x: a host list, `gpu[01-04],gpu07`; Slurm reads a value with '/' as a file."""
    text = value.strip()
    if "/" in text:
        raise ValueError("names a file; rsub takes the host list itself: write the names "
                         "(gpu[01-04],gpu07) or use --nodelist=\"$(paste -sd, FILE)\" on "
                         "the command line")
    from rmsbatch.core.hostlist import HostlistError, compress, expand
    try:
        names = expand(text)
    except HostlistError as exc:
        raise ValueError(f"{exc} (write host lists such as gpu[01-04],gpu07)") from None
    if not names:
        raise ValueError("names no hosts")
    return compress(names)


def _tmp(value: str) -> int:
    return parse_memory(value)


def _zero_one(value: str) -> bool:
    if value.strip() not in ("0", "1"):
        raise ValueError("must be 0 or 1")
    return value.strip() == "1"


def _licenses(value: str) -> dict[str, int]:
    from rmsbatch.core.resources import parse_licenses
    return parse_licenses(value)


def _word(value: str) -> str:
    """Partition, account, QoS: one name, no spaces."""
    if _is_template(value):
        raise ValueError("looks like a template placeholder; replace it with a name")
    if not value or any(c.isspace() or c == "," for c in value):
        raise ValueError("must be one name (no spaces or commas)")
    return value


def _text(value: str) -> str:
    if not value or "\n" in value or "\0" in value:
        raise ValueError("must be non-empty text on one line")
    if _is_template(value):
        raise ValueError("looks like a template placeholder; replace it with a value")
    return value


def _command(value: str) -> str:
    if not value.strip():
        raise ValueError("needs a command to run")
    return value


def _nice(value: str | None) -> int:
    if value is None:
        return 100  # Slurm: --nice alone means 100
    return _whole_signed(value, 10000)


def _whole_signed(value: str, bound: int) -> int:
    text = value.strip()
    digits = text[1:] if text[:1] in "+-" else text
    if not text or not digits.isascii() or not digits.isdigit() or len(digits) > 6:
        raise ValueError(f"must be an integer between -{bound} and {bound}")
    number = int(text)
    if abs(number) > bound:
        raise ValueError(f"must be an integer between -{bound} and {bound}")
    return number


def _exclusive(value: str | None) -> bool:
    if value is not None:
        raise ValueError("only plain --exclusive is supported (no user, mcs or topo)")
    return True


def _open_mode(value: str) -> str:
    """`append` or `truncate`, or a prefix of either in any case (Slurm reads only the
    first letter)."""
    word = value.strip().lower()
    for mode in ("append", "truncate"):
        if word and mode.startswith(word):
            return mode
    raise ValueError("must be append or truncate")


def _distribution(value: str) -> str:
    """`block`, `cyclic`, `arbitrary`, `plane=N` or `*`, then `:`-joined levels and
    `,Pack`/`,NoPack`: checked, then dropped (rrun lays tasks out in blocks, Slurm's
    default for most jobs)."""
    first = value.strip().split(",")[0].split(":")[0].lower()
    if first in ("block", "cyclic", "arbitrary", "*") or (
            first.startswith("plane=") and first[6:].isdigit()):
        return value
    raise ValueError("expected block, cyclic, arbitrary or plane=N (optionally :LEVELS)")


_MEM_BIND_WORDS = ("quiet", "verbose", "none", "no", "local", "rank", "sort", "nosort",
                   "prefer", "q", "v", "l", "r", "p")


def _mem_bind(value: str) -> str:
    """Slurm's NUMA memory binding: checked, then dropped (the job's cgroup bounds its
    memory; where on the node it lies is the kernel's choice)."""
    listing = False         # inside map_mem:0,1 the list goes on after a comma
    for word in value.strip().lower().split(","):
        if word.startswith(("map_mem:", "mask_mem:")):
            listing = True
            continue
        if listing and all(c in "0123456789abcdefx*" for c in word) and word:
            continue
        listing = False
        if word not in _MEM_BIND_WORDS:
            raise ValueError(f"unknown memory binding {word!r} (e.g. local, none, "
                             "map_mem:0,1)")
    return value


def _signal(value: str) -> dict:
    """`[{R|B}:]SIG[@SECONDS]`: B: the batch shell only; R: (the reservation's end in
    Slurm) is accepted and means the time limit here, the one end a job has."""
    text = value.strip()
    flags, colon, rest = text.partition(":")
    if not colon:
        flags, rest = "", text
    elif not flags or set(flags.upper()) - {"R", "B"}:
        raise ValueError("expected [B:]SIGNAL[@SECONDS], e.g. B:USR1@60 (only R and B may "
                         "come before the colon)")
    name, at, when = rest.partition("@")
    seconds = 60                            # Slurm's default
    if at:
        when = when.strip()
        if not when.isascii() or not when.isdigit() or int(when) > 65535:
            raise ValueError("the time after @ must be whole seconds up to 65535, "
                             "e.g. USR1@120")
        seconds = int(when)
    return {"signal": _signal_number(name.strip()), "seconds": seconds,
            "batch": "B" in flags.upper()}


def _signal_number(name: str) -> int:
    import signal  # only when --signal is given: keeps rsub's start-up light

    if name.isascii() and name.isdigit():
        if 1 <= int(name) <= 64:
            return int(name)
    else:
        key = name.upper()
        key = key if key.startswith("SIG") else "SIG" + key
        number = signal.Signals.__members__.get(key)
        if number is not None:
            return int(number)
    raise ValueError(f"unknown signal {name!r}: use a name such as USR1 or SIGUSR1, "
                     "or a number from 1 to 64")


def _export(value: str) -> str:
    parse_export(value)
    return value


def parse_export(value: str) -> tuple[bool, list[str], dict[str, str]]:
    """`ALL`, `NONE`, `ALL,A=1,B`, `A,B=2` -> (start from all, names, assignments).

    Commas split the list, but a piece that is not a NAME or NAME=... continues the
    previous value, so `CUDA_VISIBLE_DEVICES=0,1` keeps its comma.
    """
    pieces = value.split(",")
    head = pieces[0].strip().upper()
    every = head == "ALL"
    if head in ("ALL", "NONE"):
        pieces = pieces[1:]
    elif not value.strip():
        raise ValueError("expected ALL, NONE or a list of variables (A,B=value)")
    names: list[str] = []
    assigned: dict[str, str] = {}
    last = None
    for piece in pieces:
        name, equals, text = piece.partition("=")
        if _is_var_name(name):
            if equals:
                assigned[name], last = text, name
            else:
                names.append(name)
                last = None
        elif last is not None:
            assigned[last] += "," + piece
        elif piece:
            raise ValueError(f"invalid variable name {name!r}")
    return every, names, assigned


def _is_var_name(name: str) -> bool:
    return (
        bool(name) and name.isascii() and not name[0].isdigit()
        and all(c.isalnum() or c == "_" for c in name)
    )


def _array(value: str) -> str:
    from rmsbatch.core import arrayspec     # its errors are ValueErrors with the message
    arrayspec.parse(value)
    return value.strip()


def _dependency(value: str) -> str:
    from rmsbatch.core import dependency
    return dependency.parse(value).text()


def _begin(value: str) -> float:
    from rmsbatch.core import begintime
    return begintime.parse(value)


def _yes_no(value: str) -> bool:
    if value.strip().lower() not in ("yes", "no"):
        raise ValueError("must be yes or no")
    return value.strip().lower() == "yes"


def _constant(result):
    return lambda _value: result


# == the option table =======================================================
NO_ARG, REQUIRED, OPTIONAL = "none", "required", "optional"

# scope: "job" sets the JobSpec; "client" changes what rsub does (command line only);
# "info" prints and exits (command line only); "ignored" is accepted and dropped;
# "unsupported" is recognised and refused.


class Option:
    __slots__ = ("long", "short", "arg", "scope", "key", "convert", "metavar", "group",
                 "help", "hint")

    def __init__(self, long: str, short: str | None, arg: str, scope: str,
                 key: str | None = None, convert=None, metavar: str = "", group: str = "",
                 help: str = "", hint: str = ""):
        self.long = long
        self.short = short
        self.arg = arg
        self.scope = scope
        self.key = key                  # setting it writes
        self.convert = convert
        self.metavar = metavar
        self.group = group
        self.help = help
        self.hint = hint                # for unsupported options: what to do instead

    def __repr__(self) -> str:
        return f"Option(--{self.long})"

    @property
    def label(self) -> str:
        return f"--{self.long}"


def _job(long, short, key, convert, metavar, group, help, arg=REQUIRED):
    return Option(long, short, arg, "job", key, convert, metavar, group, help)


def _unsupported(long, short=None, arg=REQUIRED, hint=""):
    return Option(long, short, arg, "unsupported", hint=hint)


def _ignored(long, convert=None):
    return Option(long, None, REQUIRED, "ignored", convert=convert)


OPTIONS: tuple[Option, ...] = (
    # Job
    _job("job-name", "J", "name", _text, "NAME", "Job",
         "job name (default: script file name, 'wrap' or 'stdin')"),
    _job("clusters", "M", "clusters", _word, "NAME", "Job",
         "the cluster to run on: must be this one"),
    _job("partition", "p", "partition", _word, "NAME", "Job", "partition (default: the default one)"),
    _job("account", "A", "account", _word, "NAME", "Job", "account to charge (default: yours)"),
    _job("qos", "q", "qos", _word, "NAME", "Job", "quality of service"),
    _job("time", "t", "time_limit", _typed(_time, "a time such as 1:00:00"), "TIME", "Job",
         "time limit, e.g. 30, 2:00:00, 1-12:00:00, UNLIMITED"),
    Option("wrap", None, REQUIRED, "client", "wrap", _command, "COMMAND", "Job",
           "run COMMAND with /bin/sh instead of a script"),
    # Resources
    _job("nodes", "N", "nodes", _typed(_nodes, "a number"), "N[-MAX]", "Resources",
         "number of nodes, or a range: as many as are free, at least N (default: "
         "as many as the tasks need)"),
    _job("ntasks", "n", "ntasks", _typed(_positive, "a number"), "N", "Resources",
         "number of tasks (default: one per node)"),
    _job("ntasks-per-node", None, "ntasks_per_node", _typed(_positive, "a number"), "N",
         "Resources", "tasks on each node (with -n: at most this many)"),
    _job("tasks-per-node", None, "ntasks_per_node", _typed(_positive, "a number"), "N",
         "Resources", "the same as --ntasks-per-node"),
    _job("ntasks-per-core", None, "ntasks_per_core", _typed(_positive, "a number"), "N",
         "Resources", "tasks on each core (1: every task gets whole cores)"),
    _job("cpus-per-task", "c", "cpus_per_task", _typed(_positive, "a number"), "N", "Resources",
         "CPUs per task (default 1)"),
    _job("mem", None, "mem_mb", _typed(_mem, "a size such as 16G"), "SIZE", "Resources",
         "memory per node, e.g. 16G (0 = all of it)"),
    _job("mem-per-cpu", None, "mem_per_cpu_mb", _typed(_mem_at_least_1, "a size such as 4G"),
         "SIZE", "Resources", "memory per CPU"),
    _job("constraint", "C", "constraint", _text, "FEATURES", "Resources",
         "node features, e.g. hbm80g or 'a&b'"),
    _job("exclusive", None, "exclusive", _exclusive, "", "Resources",
         "whole nodes, shared with no other job", arg=OPTIONAL),
    _job("hint", None, "hint", _choice("nomultithread", "multithread", "compute_bound",
                                       "memory_bound"),
         "HINT", "Resources", "nomultithread: a whole core for each CPU asked for; "
         "multithread, compute_bound, memory_bound"),
    _job("nodelist", "w", "nodelist", _hosts, "HOSTS", "Resources",
         "run on these nodes (all of them, and more if -N asks for more)"),
    _job("exclude", "x", "exclude", _hosts, "HOSTS", "Resources", "never run on these nodes"),
    _job("tmp", None, "tmp_mb", _typed(_tmp, "a size such as 100G"), "SIZE", "Resources",
         "node-local scratch disk per node"),
    _job("licenses", "L", "licenses", _licenses, "NAME[:N],...", "Resources",
         "licenses (cluster-wide), e.g. matlab:2"),
    _job("reservation", None, "reservation", _word, "NAME", "Resources",
         "run in this reservation (see rmsbatch-cluster.toml(5))"),
    _job("wait-all-nodes", None, "wait_all_nodes", _zero_one, "0|1", "Resources",
         "1: start the script only once every node is ready"),
    # GPUs
    _job("gpus", "G", "gpu_total", _typed(_gpus, "a number of GPUs"), "[TYPE:]N", "GPUs",
         "GPUs for the whole job, e.g. 8 or a100:8"),
    _job("gpus-per-node", None, "gpu_per_node", _typed(_gpus, "a number of GPUs"), "[TYPE:]N",
         "GPUs", "GPUs on each node"),
    _job("gres", None, "gres_all", _gres, "LIST", "GPUs",
         "generic resources per node, Slurm style: gpu:4, gpu:a100:4,nvme:1, gpumem:20G"),
    _job("gpus-per-task", None, "gpu_per_task", _typed(_gpus_per_task, "a number of GPUs"),
         "[TYPE:]N", "GPUs", "GPUs for each task"),
    _job("cpus-per-gpu", None, "cpus_per_gpu", _typed(_positive, "a number"), "N", "GPUs",
         "CPUs for each GPU (instead of --cpus-per-task)"),
    _job("ntasks-per-gpu", None, "ntasks_per_gpu", _typed(_positive, "a number"), "N", "GPUs",
         "tasks for each GPU"),
    _job("gpu-bind", None, "gpu_bind", _gpu_bind, "BIND", "GPUs",
         "how tasks are bound to GPUs: closest, none, single:N, map_gpu:L, mask_gpu:L"),
    _job("mem-per-gpu", None, "mem_per_gpu_mb", _typed(_mem_at_least_1, "a size such as 32G"),
         "SIZE", "GPUs", "memory per GPU"),
    _job("gpu-mem", None, "gpu_mem_mb", _typed(_mem_at_least_1, "a size such as 40G"),
         "SIZE", "GPUs", "GPUs (or MIG instances) with at least this much memory, e.g. 40G"),
    # Files
    _job("output", "o", "output", _text, "FILE", "Files",
         "stdout file (default rms-%j.out in the submit dir; %j id, %x name)"),
    _job("error", "e", "error", _text, "FILE", "Files", "stderr file (default: with stdout)"),
    _job("chdir", "D", "workdir", _text, "DIR", "Files", "working directory (default: here)"),
    _job("export", None, "export", _export, "ALL|NONE|VARS", "Files",
         "environment: ALL (default), NONE, ALL,A=1 or A,B=2"),
    # Control
    _job("hold", "H", "hold", _constant(True), "", "Control", "submit held (release with rcontrol)",
         arg=NO_ARG),
    _job("nice", None, "nice", _nice, "[=N]", "Control",
         "lower the priority by N (default 100)", arg=OPTIONAL),
    _job("requeue", None, "requeue", _constant(True), "", "Control",
         "requeue after a node failure or preemption", arg=NO_ARG),
    _job("no-requeue", None, "requeue", _constant(False), "", "Control", "never requeue (default)",
         arg=NO_ARG),
    Option("wait", "W", NO_ARG, "client", "wait", _constant(True), "", "Control",
           "wait for the job to end"),
    # Output
    Option("parsable", None, NO_ARG, "client", "parsable", _constant(True), "", "Output",
           "print only the job id"),
    Option("help", "h", NO_ARG, "info", group="Output", help="show this help"),
    Option("usage", None, NO_ARG, "info", group="Output", help="show a short usage line"),
    Option("version", "V", NO_ARG, "info", group="Output", help="show the version"),
    # Informational in Slurm, dropped here.
    _ignored("mail-type"),
    _ignored("mail-user"),
    _ignored("comment"),
    # Binding and layout hints: checked, then dropped (see the converters).
    Option("distribution", "m", REQUIRED, "ignored", convert=_distribution),
    _ignored("mem-bind", _mem_bind),
    _ignored("mem_bind", _mem_bind),        # Slurm's older spelling, still accepted there
    _job("open-mode", None, "open_mode", _open_mode, "append|truncate", "Files",
         "keep or empty output files (requeued jobs append)"),
    # Slurm's, refused until rmsbatch has them.
    _job("array", "a", "array", _array, "IDS[%N]", "Control",
         "job array: 0-99, 1,5,9, 0-99:10; %N: N tasks at a time"),
    _job("dependency", "d", "dependency", _dependency, "TYPE:ID", "Control",
         "after other jobs: afterok:ID[:ID], afterany, singleton, ..."),
    _job("kill-on-invalid-dep", None, "kill_on_invalid_dep", _yes_no, "yes|no",
         "Control",
         "cancel if the dependency can never be met"),
    _job("begin", "b", "begin", _begin, "TIME", "Control",
         "start no earlier: now+60, now+1hour, 16:00, tomorrow"),
    _job("signal", None, "signal", _signal, "[B:]SIG[@SECS]", "Control",
         "send SIG SECS (60) s before the time limit (B: to the shell)"),
    _unsupported("deadline"),
    _unsupported("mincpus"),
    _unsupported("time-min"),
    _unsupported("threads-per-core"),
    _unsupported("cores-per-socket"),
    _unsupported("sockets-per-node"),
    _unsupported("cpu-freq"),
    _unsupported("wckey"),
    _unsupported("priority"),
    _unsupported("input", "i"),
    _unsupported("nodefile", "F"),
    _unsupported("export-file"),
    _unsupported("oversubscribe", "s", NO_ARG),
    _unsupported("overcommit", "O", NO_ARG),
    _unsupported("test-only", None, NO_ARG),
    _unsupported("no-kill", "k", OPTIONAL),
    _unsupported("get-user-env", None, OPTIONAL),
    _unsupported("propagate", None, OPTIONAL),
)

LONG: dict[str, Option] = {o.long: o for o in OPTIONS}
SHORT: dict[str, Option] = {o.short: o for o in OPTIONS if o.short}
GROUPS = ("Job", "Resources", "GPUs", "Files", "Control", "Output")


# == scanning words into options (getopt_long) ==============================
class Given:
    __slots__ = ("option", "value")

    def __init__(self, option: Option, value: str | None):
        self.option = option
        self.value = value

    def __eq__(self, other) -> bool:
        return isinstance(other, Given) and (self.option, self.value) == (other.option, other.value)

    def __repr__(self) -> str:
        return f"Given({self.written})"

    @property
    def written(self) -> str:
        if self.value is None:
            return self.option.label
        return f"{self.option.label}={self.value}"


def scan_options(words: list[str], directive: bool = False) -> tuple[list[Given], list[str]]:
    """Options up to the first non-option word or `--`; returns them and the rest.

    An info option (`--help`) ends the scan, so it works whatever follows it. In a
    `directive`, every word must be an option, so a site option may take the next word
    as its value (`#SBATCH --image docker:pytorch`); on the command line that word
    would be the script, so there a site option's value is attached (`--image=...`).
    """
    given: list[Given] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return given, words[i + 1:]
        if word.startswith("--"):
            i, item = _scan_long(words, i, directive)
            given.append(item)
        elif word.startswith("-") and len(word) > 1:
            i, items = _scan_short(words, i)
            given.extend(items)
        else:
            return given, words[i:]
        if given and given[-1].option.scope == "info":
            return given, []
    return given, []


def _scan_long(words: list[str], i: int, directive: bool = False) -> tuple[int, Given]:
    name, equals, attached = words[i][2:].partition("=")
    option = lookup_long(name)
    if option.scope == "site" and not equals and directive and i + 1 < len(words) \
            and not words[i + 1].startswith("-"):
        return i + 2, Given(option, words[i + 1])
    if option.arg == NO_ARG:
        if equals:
            raise OptionError(f"{option.label}: takes no value (got {words[i]!r})")
        return i + 1, Given(option, None)
    if equals or option.arg == OPTIONAL:
        return i + 1, Given(option, attached if equals else None)
    return i + 2, Given(option, _next_value(words, i, option))


def _scan_short(words: list[str], i: int) -> tuple[int, list[Given]]:
    word = words[i]
    _refuse_single_dash_long(word)
    items = []
    for at in range(1, len(word)):
        option = SHORT.get(word[at])
        if option is None:
            raise OptionError(f"-{word[at]}: unknown option (see rsub --help)")
        rest = word[at + 1:]
        if option.arg == NO_ARG:
            items.append(Given(option, None))
            if option.scope == "info":  # `-hH`: help, not a held job
                return i + 1, items
            continue
        if rest or option.arg == OPTIONAL:
            items.append(Given(option, rest or None))
            return i + 1, items
        items.append(Given(option, _next_value(words, i, option)))
        return i + 2, items
    return i + 1, items


def _next_value(words: list[str], i: int, option: Option) -> str:
    if i + 1 >= len(words):
        raise OptionError(f"{option.label}: needs a value ({option.metavar or 'see rsub --help'})")
    value = words[i + 1]
    # getopt would take it as the value; it is almost always a forgotten value instead.
    if value.startswith("--") and len(value) > 2:
        raise OptionError(f"{option.label}: needs a value, but is followed by {value}")
    return value


def _refuse_single_dash_long(word: str) -> None:
    """`-mem=4G` would read as `-m em=4G`; say what was meant instead."""
    name = word[1:].partition("=")[0]
    if len(name) > 1 and name in LONG:
        raise OptionError(f"{word}: long options take two dashes (did you mean -{word}?)")


def lookup_long(name: str) -> Option:
    """The option named `name` or by an unambiguous prefix of its name."""
    if name in LONG:
        return LONG[name]
    matches = [o for o in OPTIONS if name and o.long.startswith(name)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(o.label for o in matches)
        raise OptionError(f"--{name}: ambiguous option; could be {names}")
    site = site_option(name)
    if site is not None:
        return site
    import difflib  # only on this error path: keeps rsub's start-up light

    close = difflib.get_close_matches(name, list(LONG), n=1)
    hint = f"did you mean --{close[0]}?" if close else "see rsub --help"
    raise OptionError(f"--{name}: unknown option ({hint})")


# == site options ===========================================================
_site_names: list[str] | None = None


def site_option(name: str) -> Option | None:
    """An option of the site's submit plugins, if cluster.toml's [submit] site_options
    lists `name`. The file is read only here, on the unknown-option path: most
    submissions never pay for it."""
    global _site_names
    if _site_names is None:
        _site_names = _read_site_options()
    if name not in _site_names:
        return None
    return Option(name, None, OPTIONAL, "site", "site_options", None, "[=VALUE]", "",
                  "an option of this site's submit plugins")


def _read_site_options() -> list[str]:
    import os

    from rmsbatch.net.client import conf_dir
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            return []
    try:
        with open(os.path.join(conf_dir(), "cluster.toml"), "rb") as fh:
            names = tomllib.load(fh).get("submit", {}).get("site_options", [])
    except (OSError, ValueError, AttributeError):
        return []   # the controller checks again, with its own configuration
    return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []


# == help ===================================================================
_USAGE = (
    "Usage: rsub [OPTIONS] SCRIPT [ARGS...]\n"
    "       rsub [OPTIONS] --wrap=COMMAND\n"
    "       COMMANDS | rsub [OPTIONS]"
)


def usage_text() -> str:
    """The text of `rsub --help`, generated from the option table."""
    lines = [
        _USAGE,
        "",
        "Submit a batch job: SCRIPT with ARGS, a one-line COMMAND, or a script piped on stdin.",
        "Options may also be written at the top of the script: #RMS and #SBATCH directives are",
        "read from the top of the script, up to its first command; the command line overrides",
        "them. Sizes are NUMBER[K|M|G|T] (megabytes without a unit); times are minutes, M:S,",
        "H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED.",
    ]
    for group in GROUPS:
        lines += ["", f"{group}:"]
        lines += [_help_line(o) for o in OPTIONS if o.group == group]
    import textwrap  # help only: not on the submit path

    ignored = [o.label for o in OPTIONS if o.scope == "ignored"]
    unsupported = [o.label for o in OPTIONS if o.scope == "unsupported"]
    lines += [""]
    lines += textwrap.wrap(
        "Accepted and ignored: " + ", ".join(ignored) + ".", 88,
        break_on_hyphens=False)
    lines += textwrap.wrap(
        "Not supported yet (refused with an error): " + ", ".join(unsupported) + ".", 88,
        break_on_hyphens=False)
    lines += textwrap.wrap(
        "Options of the site's submit plugins that cluster.toml lists ([submit] "
        "site_options), such as --image, are accepted too: with the value attached "
        "(--image=VALUE) on the command line, also as the next word in directives.", 88,
        break_on_hyphens=False)
    lines += [
        "--wrap, --wait, --parsable and the Output options work on the command line only,",
        "not in directives. A script piped on stdin is named 'stdin'.",
        "",
        "Examples:",
        "  rsub -p gpu --gpus=a100:4 -t 2:00:00 --mem=64G train.sh --epochs 10",
        "  rsub -J eval -c 8 --wrap='python eval.py --checkpoint last.pt'",
        "  rsub --parsable --hold -o logs/%x-%j.out job.sh",
    ]
    return "\n".join(lines) + "\n"


def info_text(name: str) -> str:
    """What --version, --usage or --help prints."""
    if name == "version":
        return f"rsub (rmsbatch) {__version__}"
    if name == "usage":
        return _USAGE
    return usage_text()


def _help_line(option: Option) -> str:
    short = f"-{option.short}, " if option.short else "    "
    if option.arg == OPTIONAL:
        value = option.metavar
    else:
        value = f"={option.metavar}" if option.metavar else ""
    left = f"  {short}{option.label}{value}"
    import textwrap  # help only

    text = "\n".join(f"{'':34}{line}"
                     for line in textwrap.wrap(option.help, 88 - 34, break_on_hyphens=False))
    return f"{left:<34}{text[34:]}" if len(left) < 34 else f"{left}\n{text}"
