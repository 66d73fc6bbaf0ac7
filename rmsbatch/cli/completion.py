"""rms-completion: bash and zsh completion for every rmsbatch command.

Generated from the commands' own parsers (argparse actions, rsub's option table) when
printed, so new options, choices and subcommands complete once it is printed again. The
shell side is data (one function per subcommand: which options take a value, what completes
where) and one driver that walks the words typed; zsh runs it through bashcompinit.
No command imports this module: only `rms-completion` pays for building every parser.
"""
from __future__ import annotations

import argparse
import importlib
import re
import shlex

from rmsbatch.cli.common import exit_with

PROG = "rms-completion"
SHELLS = ("bash", "zsh")

# command -> the module whose build_parser() is its command line (rsub: its option table)
COMMANDS = {
    "rsub": "rmsbatch.cli.rsub_options",
    "rq": "rmsbatch.cli.rq",
    "rcancel": "rmsbatch.cli.rcancel",
    "rsacct": "rmsbatch.cli.rsacct",
    "rinfo": "rmsbatch.cli.rinfo",
    "rcontrol": "rmsbatch.cli.rcontrol",
    "rrun": "rmsbatch.cli.rrun",
    "rshare": "rmsbatch.cli.rshare",
    "rms-local": "rmsbatch.cli.rms_local",
    "rms-sim": "rmsbatch.cli.rms_sim",
    "rms-client": "rmsbatch.cli.rms_client",
    "rmsctld": "rmsbatch.ctld.rmsctld",
    "rmsd": "rmsbatch.node.rmsd",
    PROG: __name__,
}

EXAMPLES = """
  eval "$(rms-completion bash)"                          in ~/.bashrc: for you
  rms-completion bash > /etc/bash_completion.d/rmsbatch  for every bash user of the host
  rms-completion zsh > "${fpath[1]}/_rmsbatch"           for zsh shells started after
  eval "$(rms-completion zsh)"                           in ~/.zshrc, after compinit
"""

# Value kinds, as the shell side knows them; any other kind is the words to offer.
# @jobs, @partitions and @nodes ask rq and rinfo, so they need a running controller.
_LABEL_KINDS = (
    ("@dirs", {"DIR", "CHDIR", "DIRECTORY"}),
    ("@files", {"FILE", "FILES", "PATH", "TRACE", "SCRIPT", "ARCHIVE"}),
    ("@partitions", {"PARTITION", "PARTITIONS"}),
    ("@nodes", {"HOSTLIST", "NODELIST", "HOSTS", "HOSTNAMES"}),
    ("@users", {"USER", "USERS"}),
)
_LITERALS = re.compile(r"[a-z0-9_-]+(\|[a-z0-9_-]+)+")   # a metavar such as append|truncate


def _label_kind(label: str | None) -> str:
    """The kind of value a metavar or option name stands for ('' when it says nothing)."""
    if not label:
        return ""
    if _LITERALS.fullmatch(label):
        return label.replace("|", " ")
    words = re.findall(r"[A-Z]+", label.upper())
    if "".join(words) in ("ID", "IDS", "JOBID", "JOBIDS"):
        return "@jobs"
    if "SIGNAL" in words:
        import signal
        return " ".join(sorted(s.name[3:] for s in signal.Signals
                               if not s.name.startswith(("SIG_", "SIGRT"))))
    for kind, names in _LABEL_KINDS:
        if names.intersection(words):
            return kind
    return ""


def _type_words(action) -> str:
    """The words of an option type that takes a known set without argparse `choices`
    (which would print them all in the usage line)."""
    name = getattr(action.type, "__name__", "")
    if name == "job_state_list":
        from rmsbatch.core.states import JobState
        return " ".join([s.value for s in JobState] + ["all"])
    if name == "_node_states":
        from rmsbatch.cli.nodetables import NODE_STATE_SHORT
        return " ".join(NODE_STATE_SHORT.values())
    if name == "_entity":   # rcontrol show ENTITY
        module = importlib.import_module(action.type.__module__)
        return " ".join(sorted(set(module.ENTITIES.values())))
    return ""


_OVERRIDES = {("rcontrol show", "name"): "@entity"}   # (prog, dest): kind from the word before


class Spec:
    """What completes where in one command or subcommand."""
    __slots__ = ("options", "positionals", "repeat", "optend", "commands")

    def __init__(self):
        # names, takes (0 a flag, 1 a value, 2 an optional value: `--nice=N`), kind
        self.options: list[tuple[list[str], int, str]] = []
        self.positionals: list[str] = []      # the kind of each positional, in order
        self.repeat = False                   # the last positional repeats
        self.optend: int | None = None        # options end after this many positionals
        self.commands: dict[str, Spec] = {}   # subcommands


def _action_kind(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    override = _OVERRIDES.get((parser.prog, action.dest))
    if override is not None:
        return override
    if action.choices is not None:
        return " ".join(str(c) for c in action.choices)
    metavar = action.metavar if isinstance(action.metavar, str) else None
    return _type_words(action) or _label_kind(metavar) or _label_kind(action.dest)


def parser_spec(parser: argparse.ArgumentParser) -> Spec:
    """The completion of an argparse parser, its subparsers included."""
    spec = Spec()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._SubParsersAction):
            spec.commands.update({name: parser_spec(sub) for name, sub in action.choices.items()})
            spec.positionals.append(" ".join(action.choices))
        elif action.option_strings:
            takes = 0 if action.nargs == 0 else 2 if action.nargs == "?" else 1
            spec.options.append((list(action.option_strings), takes,
                                 _action_kind(parser, action) if takes else ""))
        else:
            if action.nargs == argparse.REMAINDER:
                spec.optend = len(spec.positionals) + 1
            count = action.nargs if isinstance(action.nargs, int) else 1
            spec.positionals += [_action_kind(parser, action)] * count
            spec.repeat = action.nargs in ("*", "+", argparse.REMAINDER)
    return spec


def _choice_words(convert) -> str:
    """The words of an rsub `_choice(...)` converter: its closure is the only list."""
    names = getattr(getattr(convert, "__code__", None), "co_freevars", ())
    for name, cell in zip(names, getattr(convert, "__closure__", None) or ()):
        words = cell.cell_contents
        if name == "words" and isinstance(words, tuple) and all(isinstance(w, str) for w in words):
            return " ".join(words)
    return ""


def rsub_spec() -> Spec:
    """rsub's completion, from its option table (rsub has no argparse parser)."""
    from rmsbatch.cli import rsub_options as table
    takes = {table.NO_ARG: 0, table.REQUIRED: 1, table.OPTIONAL: 2}
    spec = Spec()
    for option in table.OPTIONS:
        if option.scope == "unsupported":     # refused: offering them would mislead
            continue
        names = [option.label] + ([f"-{option.short}"] if option.short else [])
        kind = "" if option.arg == table.NO_ARG else (_choice_words(option.convert)
                                                      or _label_kind(option.metavar)
                                                      or _label_kind(option.long))
        spec.options.append((names, takes[option.arg], kind))
    # SCRIPT, then its own arguments: from the script on, no word is rsub's
    spec.positionals, spec.repeat, spec.optend = ["@files", "@files"], True, 1
    return spec


def module_spec(name: str) -> Spec:
    """A command's completion from its module's build_parser(), with the subcommands
    that live in modules of their own (a SUBCOMMANDS table: `rsacct report`)."""
    module = importlib.import_module(name)
    spec = parser_spec(module.build_parser())
    subcommands = getattr(module, "SUBCOMMANDS", None) or {}
    spec.commands.update({sub: module_spec(path) for sub, path in subcommands.items()})
    if subcommands:
        spec.positionals.insert(0, " ".join(subcommands))
    return spec


def command_specs() -> dict[str, Spec]:
    """Every command's completion, built from its parser now."""
    specs = {c: rsub_spec() if c == "rsub" else module_spec(m) for c, m in COMMANDS.items()}
    # rrun's COMMAND is not an argparse positional: rrun splits it off itself
    specs["rrun"].positionals, specs["rrun"].repeat, specs["rrun"].optend = \
        ["@commands", "@files"], True, 1
    return specs


# == the shell side ==========================================================
# Runs in bash, and in zsh under bashcompinit (which calls these functions in sh
# emulation: arrays from 0, words split). `_rmsbatch_r` carries answers back without
# a subshell per question. zsh keeps `--opt=value` as one word; bash splits it at `=`.
_DRIVER = r"""
_rmsbatch_run() {
    # The rq or rinfo beside the command typed with a path first: on a shared PATH another
    # `rq` (Redis Queue) may come first. Bounded, and silent when the controller is down.
    local prog=$1 dir=${COMP_WORDS[0]%/*} limit=
    shift
    [[ ${COMP_WORDS[0]} == */* && -x $dir/$prog ]] && prog=$dir/$prog
    command -v timeout >/dev/null 2>&1 && limit="timeout 2"
    $limit "$prog" "$@" </dev/null 2>/dev/null
}

_rmsbatch_first_column() {
    local first rest; while read -r first rest; do printf '%s\n' "${first%\*}"; done
}

_rmsbatch_paths() {
    local IFS=$'\n' name flag=-f
    [[ $1 == @dirs ]] && flag=-d
    if [[ -n ${ZSH_VERSION-} ]]; then
        # zsh's compgen -f globs the whole word, --output= included; glob the value
        for name in $(compgen -G "$2*"); do
            [[ $1 == @dirs && ! -d $name ]] || COMPREPLY+=("$3$name")
        done
        return 0
    fi
    compopt -o filenames 2>/dev/null
    for name in $(compgen $flag -- "$2"); do COMPREPLY+=("$3$name"); done
}

_rmsbatch_values() {
    # $1 the kind, $2 the word so far, $3 what goes back in front (--opt=), $4 the
    # positional before (rcontrol show job ID)
    local kind=$1 cur=$2 prefix=$3 list= item IFS=$' \t\n'
    [[ $kind == @entity ]] && case $4 in
        job*) kind=@jobs;; node*|hostnames) kind=@nodes;; part*) kind=@partitions;; *) return 0;;
    esac
    case $kind in
    @files|@dirs) _rmsbatch_paths "$kind" "$cur" "$prefix"; return 0;;
    @commands) list=$(compgen -c -- "$cur");;
    esac
    # comma-separated lists: complete the item after the last comma
    if [[ $cur == *,* ]]; then
        prefix=$prefix${cur%,*},
        cur=${cur##*,}
    fi
    case $kind in
    @jobs)
        for item in $(_rmsbatch_run rq -h -o %i --me); do
            list="$list ${item%%_\[*}"     # 12_[5-99%10]: the array's id
        done;;
    @partitions) list=$(_rmsbatch_run rinfo -h | _rmsbatch_first_column);;
    @nodes) list=$(_rmsbatch_run rinfo -N -h | _rmsbatch_first_column);;
    @users) list=$(compgen -u -- "$cur");;
    @*) ;;
    *) list=$kind;;
    esac
    for item in $(compgen -W "$list" -- "$cur"); do COMPREPLY+=("$prefix$item"); done
    return 0
}

_rmsbatch_complete() {
    local cur=${COMP_WORDS[COMP_CWORD]} spec want= optsdone= lastpos= prefix= word i j
    local npos=0 _rmsbatch_r=
    COMPREPLY=()
    _rmsbatch_command "${COMP_WORDS[0]##*/}" || return 0
    spec=$_rmsbatch_r
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $word == '=' ]]; then
            [[ -z $want ]] && want=${COMP_WORDS[i-1]}
            continue
        fi
        if [[ -n $want ]]; then want=; continue; fi
        if [[ -z $optsdone && $word == -?* ]]; then
            if [[ $word == -- ]]; then
                optsdone=1
            elif [[ $word == --* ]]; then
                [[ $word != *=* ]] && $spec takes "$word" && want=$word
            else
                # -lp NAME: the first letter that takes a value takes the rest, or the next word
                for ((j = 1; j < ${#word}; j++)); do
                    if $spec takes "-${word:j:1}"; then
                        (( j == ${#word} - 1 )) && want=-${word:j:1}
                        break
                    fi
                done
            fi
            continue
        fi
        if $spec command "$word"; then
            spec=$_rmsbatch_r npos=0 optsdone=
            continue
        fi
        lastpos=$word
        npos=$((npos + 1))
        $spec optend && (( npos >= _rmsbatch_r )) && optsdone=1
    done
    if [[ $cur == '=' ]]; then
        cur=
        [[ -z $want ]] && want=${COMP_WORDS[COMP_CWORD-1]}
    elif [[ -z $want && -z $optsdone && $cur == -*=* ]]; then
        want=${cur%%=*} prefix=${cur%%=*}= cur=${cur#*=}
    fi
    if [[ -n $want ]]; then
        $spec value "$want" && _rmsbatch_values "$_rmsbatch_r" "$cur" "$prefix" "$lastpos"
    elif [[ -z $optsdone && $cur == -* ]]; then
        $spec options && _rmsbatch_values "$_rmsbatch_r" "$cur"
    elif $spec positional "$npos"; then
        _rmsbatch_values "$_rmsbatch_r" "$cur" "" "$lastpos"
    elif [[ -z $optsdone && -z $cur ]]; then
        $spec options && _rmsbatch_values "$_rmsbatch_r" "$cur"
    fi
    return 0
}
"""

_ZSH_ENTRY = r"""
_rmsbatch() {
    (( $+functions[_bash_complete] )) || { autoload -U +X bashcompinit && bashcompinit; }
    _bash_complete -o filenames -F _rmsbatch_complete
}

# From $fpath this file is _rmsbatch's body, run at the first completion; eval registers it
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _rmsbatch "$@"
else
    compdef _rmsbatch %s
fi
"""


def _branch(question: str, answers: list[tuple[list[str], str]]) -> list[str]:
    if not answers:
        return []
    lines = [f"    {question}) case $2 in"]
    for patterns, body in answers:
        alternatives = "|".join(p if p == "*" else shlex.quote(p) for p in patterns)
        lines.append(f"        {alternatives}) {body};;")
    return lines + ["        *) return 1;;", "        esac;;"]


def _spec_functions(spec: Spec, lines: list[str]) -> str:
    """Append the function of `spec` (and of its subcommands); returns its name."""
    children = {name: _spec_functions(sub, lines) for name, sub in spec.commands.items()}
    name = f"_rmsbatch_s{sum(line.startswith('_rmsbatch_s') for line in lines)}"
    q = shlex.quote
    positionals = [([str(i)], f"_rmsbatch_r={q(kind)}") for i, kind in enumerate(spec.positionals)]
    if spec.repeat and spec.positionals:
        positionals.append((["*"], f"_rmsbatch_r={q(spec.positionals[-1])}"))
    every = " ".join(n for names, _, _ in spec.options for n in names)
    takes = [n for names, takes, _ in spec.options if takes == 1 for n in names]
    lines += [f"{name}() {{", "    case $1 in", f"    options) _rmsbatch_r={q(every)};;"]
    lines += _branch("takes", [(takes, "")] if takes else [])
    lines += _branch("value", [(names, f"_rmsbatch_r={q(kind)}")
                               for names, takes, kind in spec.options if takes and kind])
    lines += _branch("command", [([sub], f"_rmsbatch_r={fn}") for sub, fn in children.items()])
    lines += _branch("positional", positionals)
    lines += [f"    optend) _rmsbatch_r={spec.optend};;"] if spec.optend is not None else []
    lines += ["    *) return 1;;", "    esac", "}", ""]
    return name


def script(shell: str, specs: dict[str, Spec] | None = None) -> str:
    """The completion script for `shell` (bash or zsh)."""
    specs = command_specs() if specs is None else specs
    names = " ".join(specs)
    lines: list[str] = []
    roots = {command: _spec_functions(spec, lines) for command, spec in specs.items()}
    dispatch = ["_rmsbatch_command() {", "    case $1 in"]
    dispatch += [f"    {shlex.quote(c)}) _rmsbatch_r={fn};;" for c, fn in roots.items()]
    dispatch += ["    *) return 1;;", "    esac", "}"]
    head = [f"#compdef {names}"] if shell == "zsh" else []
    head += [f"# {shell} completion for rmsbatch's commands, generated by `{PROG} {shell}`",
             "# from their parsers: generate it again after upgrading rmsbatch.", ""]
    body = "\n".join(head + lines + dispatch) + "\n" + _DRIVER.lstrip("\n")
    if shell == "zsh":
        return body + _ZSH_ENTRY % names
    return body + f"\ncomplete -F _rmsbatch_complete {names}\n"


def build_parser():
    from rmsbatch.cli.arguments import CommandParser
    parser = CommandParser(
        prog=PROG, examples=EXAMPLES,
        description="Print a script that completes the options, subcommands and values of "
                    "every rmsbatch\ncommand in bash or zsh: choices, file names, and "
                    "(from rq and rinfo, when the\ncontroller answers) your job ids, "
                    "partitions and node names.")
    parser.add_argument("shell", nargs="?", choices=SHELLS, metavar="SHELL", help="bash or zsh")
    return parser


def body(argv: list[str]) -> int:
    parser = build_parser()
    shell = parser.parse_args(argv).shell
    if shell is None:
        parser.error(f"no shell named: run `{PROG} bash` or `{PROG} zsh`")
    print(script(shell), end="")
    return 0


def main() -> None:
    exit_with(PROG, body)


if __name__ == "__main__":
    main()
