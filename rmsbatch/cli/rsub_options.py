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


def _nodes(value: str) -> int:
    low, dash, high = value.strip().partition("-")
    if dash and low and high:
        if low.strip() != high.strip():
            raise ValueError("node ranges (MIN-MAX) are not supported; give one number of nodes")
        value = low
    return _positive(value)


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


def _gres(value: str) -> tuple[int, str | None]:
    """`gpu`, `gpu:N`, `gpu:TYPE`, `gpu:TYPE:N`, comma-joined with others; per node."""
    if value.strip().lower() == "none":
        return 0, None
    found = None
    for item in value.split(","):
        parts = item.strip().split(":")
        if parts[0].lower() != "gpu":
            raise ValueError(f"only gpu GRES is supported (not {parts[0]!r})")
        if found is not None:
            raise ValueError("gpu is listed twice")
        if len(parts) == 1:
            found = (1, None)
        elif len(parts) == 2:
            last = parts[1].strip()
            found = (_gpu_count(last), None) if last.isdigit() else (1, _gpu_type(last))
        elif len(parts) == 3:
            found = (_gpu_count(parts[2]), _gpu_type(parts[1]))
        else:
            raise ValueError("expected gpu, gpu:N or gpu:TYPE:N")
    return found


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


def _open_mode(value: str) -> None:
    if value == "append":
        raise ValueError("not supported yet by rmsbatch (output files are truncated)")
    if value != "truncate":
        raise ValueError("must be append or truncate")


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
    _job("partition", "p", "partition", _word, "NAME", "Job", "partition (default: the default one)"),
    _job("account", "A", "account", _word, "NAME", "Job", "account to charge (default: yours)"),
    _job("qos", "q", "qos", _word, "NAME", "Job", "quality of service"),
    _job("time", "t", "time_limit", _typed(_time, "a time such as 1:00:00"), "TIME", "Job",
         "time limit, e.g. 30, 2:00:00, 1-12:00:00, UNLIMITED"),
    Option("wrap", None, REQUIRED, "client", "wrap", _command, "COMMAND", "Job",
           "run COMMAND with /bin/sh instead of a script"),
    # Resources
    _job("nodes", "N", "nodes", _typed(_nodes, "a number"), "N", "Resources", "number of nodes (default 1)"),
    _job("ntasks", "n", "ntasks", _typed(_positive, "a number"), "N", "Resources",
         "number of tasks (default: one per node)"),
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
    # GPUs
    _job("gpus", "G", "gpu_total", _typed(_gpus, "a number of GPUs"), "[TYPE:]N", "GPUs",
         "GPUs for the whole job, e.g. 8 or a100:8"),
    _job("gpus-per-node", None, "gpu_per_node", _typed(_gpus, "a number of GPUs"), "[TYPE:]N",
         "GPUs", "GPUs on each node"),
    _job("gres", None, "gpu_per_node", _gres, "gpu[:TYPE][:N]", "GPUs",
         "GPUs on each node, Slurm style: gpu:4, gpu:a100:4"),
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
    _ignored("open-mode", _open_mode),
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
    _unsupported("signal"),
    _unsupported("deadline"),
    _unsupported("ntasks-per-node", hint="use --ntasks with --nodes"),
    _unsupported("tasks-per-node", hint="use --ntasks with --nodes"),
    _unsupported("ntasks-per-gpu", hint="use --ntasks with --gpus"),
    _unsupported("gpus-per-task", hint="use --gpus or --gpus-per-node"),
    _unsupported("cpus-per-gpu", hint="use --cpus-per-task"),
    _unsupported("nodelist", "w"),
    _unsupported("exclude", "x"),
    _unsupported("mincpus"),
    _unsupported("licenses", "L"),
    _unsupported("reservation"),
    _unsupported("distribution", "m"),
    _unsupported("time-min"),
    _unsupported("tmp"),
    _unsupported("hint"),
    _unsupported("threads-per-core"),
    _unsupported("cores-per-socket"),
    _unsupported("sockets-per-node"),
    _unsupported("gpu-bind"),
    _unsupported("mem-bind"),
    _unsupported("cpu-freq"),
    _unsupported("clusters", "M"),
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


def scan_options(words: list[str]) -> tuple[list[Given], list[str]]:
    """Options up to the first non-option word or `--`; returns them and the rest.

    An info option (`--help`) ends the scan, so it works whatever follows it.
    """
    given: list[Given] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word == "--":
            return given, words[i + 1:]
        if word.startswith("--"):
            i, item = _scan_long(words, i)
            given.append(item)
        elif word.startswith("-") and len(word) > 1:
            i, items = _scan_short(words, i)
            given.extend(items)
        else:
            return given, words[i:]
        if given and given[-1].option.scope == "info":
            return given, []
    return given, []


def _scan_long(words: list[str], i: int) -> tuple[int, Given]:
    name, equals, attached = words[i][2:].partition("=")
    option = lookup_long(name)
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
    import difflib  # only on this error path: keeps rsub's start-up light

    close = difflib.get_close_matches(name, list(LONG), n=1)
    hint = f"did you mean --{close[0]}?" if close else "see rsub --help"
    raise OptionError(f"--{name}: unknown option ({hint})")


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

    ignored = [o.label for o in OPTIONS if o.scope == "ignored" and o.convert is None]
    unsupported = [o.label for o in OPTIONS if o.scope == "unsupported"]
    lines += [""]
    lines += textwrap.wrap(
        "Accepted and ignored: " + ", ".join(ignored) + ", --open-mode=truncate.", 88,
        break_on_hyphens=False)
    lines += textwrap.wrap(
        "Not supported yet (refused with an error): " + ", ".join(unsupported) + ".", 88,
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
    return f"{left:<34}{option.help}" if len(left) < 34 else f"{left}\n{'':34}{option.help}"
