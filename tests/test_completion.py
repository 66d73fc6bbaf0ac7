"""Shell completion: what `rms-completion bash` prints completes, in a real bash, what
a user types; the zsh script loads in zsh (where zsh is installed); every command has
completion, and the commands themselves never load the generator."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from rmsbatch.cli import completion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")

# Sources the script, finds the function `complete -p` names for the command, and calls
# it as bash's programmable completion would; prints COMPREPLY, one per line.
COMPLETE = r"""
source "$1" || exit 90
shift
spec=$(complete -p "${1##*/}") || exit 91
func=${spec#*-F }
func=${func%% *}
COMP_WORDS=("$@")
COMP_CWORD=$(($# - 1))
COMP_LINE="$*"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
"$func" "${1##*/}" "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def generate(shell: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rmsbatch.cli.completion", shell], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> str:
    result = generate("bash")
    assert result.returncode == 0 and not result.stderr, result.stderr
    path = tmp_path_factory.mktemp("completion") / "rmsbatch.bash"
    path.write_text(result.stdout)
    return str(path)


def words(line: str) -> list[str]:
    """The line as bash hands it to a completion function: split at blanks, and at `=`,
    which is a word of its own (`--open-mode=a` is `--open-mode`, `=`, `a`); the last
    word is the one under the cursor ('' after a blank)."""
    out = []
    for token in line.split(" "):
        parts = [p for p in re.split(r"(=)", token) if p]
        out += parts or [""]
    return out


def complete(script: str, line: str, env: dict | None = None, cwd: str | None = None) -> set[str]:
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", COMPLETE, "bash", script,
                             *words(line)], capture_output=True, text=True, timeout=30,
                            env=env or dict(os.environ, PATH=BIN + os.pathsep + os.environ["PATH"]),
                            cwd=cwd or ROOT)
    assert result.returncode == 0, f"{line!r}: exit {result.returncode}: {result.stderr}"
    assert not result.stderr, f"{line!r}: {result.stderr}"
    return {w for w in result.stdout.splitlines() if w}


def long_options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--")}


def build(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(completion.COMMANDS[command]).build_parser()


def subcommands(command: str) -> dict[str, argparse.ArgumentParser]:
    """The command's subcommands: argparse subparsers, and those in modules of their own
    that the first word picks (rsacct's SUBCOMMANDS table)."""
    found = {name: sub for a in build(command)._actions
             if isinstance(a, argparse._SubParsersAction) for name, sub in a.choices.items()}
    module = importlib.import_module(completion.COMMANDS[command])
    for name, path in (getattr(module, "SUBCOMMANDS", None) or {}).items():
        found[name] = importlib.import_module(path).build_parser()
    return found


def interactive_tab(script: str, typed: str, expect: str, env: dict | None = None) -> str:
    """Type `typed` and TAB into an interactive bash with the script loaded; what the
    terminal shows once `expect` appears (or after 10 s without it)."""
    import pty
    import select
    import time
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe("bash", ["bash", "--norc", "--noprofile", "-i"],
                   dict(env or os.environ, PS1="$ ", TERM="dumb", INPUTRC="/dev/null"))
    shown = b""

    def read_until(text: bytes) -> None:
        nonlocal shown
        deadline = time.monotonic() + 10
        while text not in shown and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.1)[0]:
                try:
                    shown += os.read(fd, 65536)
                except OSError:
                    return
    try:
        os.write(fd, f"source {script}; echo load''ed\n".encode())
        read_until(b"loaded")
        shown = b""
        os.write(fd, typed.encode() + b"\t")
        read_until(expect.encode())
        return shown.decode(errors="replace")
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


# -- every command ----------------------------------------------------------------------

def test_every_installed_command_has_completion():
    """A command added to pyproject.toml without completion fails here."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)
    installed = set(project["project"]["scripts"])
    installed |= {os.path.basename(p) for p in project["tool"]["setuptools"]["script-files"]}
    assert installed == set(completion.COMMANDS)
    assert project["project"]["scripts"]["rms-completion"] == "rmsbatch.cli.completion:main"
    for shell in ("bash", "zsh"):
        text = generate(shell).stdout
        registered = re.search(r"^(?:complete -F _rmsbatch_complete|#compdef) (.*)$", text, re.M)
        assert registered and set(registered.group(1).split()) == installed, shell


@pytest.mark.parametrize("command", sorted(set(completion.COMMANDS) - {"rsub"}))
def test_double_dash_offers_every_long_option(bash_script, command):
    assert complete(bash_script, f"{command} --") == long_options(build(command))


def test_rsub_offers_its_table_but_not_the_refused_options(bash_script):
    from rmsbatch.cli import rsub_options
    offered = complete(bash_script, "rsub --")
    accepted = {o.label for o in rsub_options.OPTIONS if o.scope != "unsupported"}
    assert offered == accepted
    assert "--deadline" not in offered and "--gres" in offered


def test_a_long_option_completes_from_its_prefix(bash_script):
    assert complete(bash_script, "rsub --par") == {"--partition", "--parsable"}
    assert complete(bash_script, "rsub --open") == {"--open-mode"}
    expected = {o for o in long_options(build("rq")) if o.startswith("--st")}
    assert "--states" in expected
    assert complete(bash_script, "rq --st") == expected
    assert complete(bash_script, "rcancel --me") == {"--me"}


@pytest.mark.parametrize("command", ["rcontrol", "rms-local", "rsacct"])
def test_subcommands_complete_as_the_parser_has_them(bash_script, command):
    """rsacct too, with whatever subcommands it has (perhaps none)."""
    offered = complete(bash_script, f"{command} ")
    assert {w for w in offered if not w.startswith("-")} == set(subcommands(command))
    for name, sub in subcommands(command).items():
        assert complete(bash_script, f"{command} {name} --") == long_options(sub), name


def test_subcommand_options_after_top_level_options(bash_script):
    assert "--details" in complete(bash_script, "rcontrol -o show job 4 --")
    assert complete(bash_script, "rms-local up --") >= {"--dir", "--gpus", "--node"}
    assert "--keep-jobs" not in complete(bash_script, "rms-local up --")


def test_tab_in_an_interactive_bash(bash_script):
    """The line as the user sees it after TAB, with readline's own word splitting."""
    assert "rsub --open-mode=append " in interactive_tab(bash_script, "rsub --open-mode=a",
                                                         "append ")
    assert "rq -t PD,RUNNING " in interactive_tab(bash_script, "rq -t PD,RU", "RUNNING ")
    assert "rsub --partition " in interactive_tab(bash_script, "rsub --parti", "partition ")


# -- values -------------------------------------------------------------------------------

def test_choices_complete_their_words(bash_script):
    assert complete(bash_script, "rsub --open-mode ") == {"append", "truncate"}
    assert complete(bash_script, "rsub --open-mode=") == {"append", "truncate"}
    assert complete(bash_script, "rsub --open-mode=a") == {"append"}
    assert complete(bash_script, "rsub -J x --hint m") == {"multithread", "memory_bound"}
    policy = next(a for a in build("rms-sim")._actions if a.dest == "policy")
    assert complete(bash_script, "rms-sim trace.swf --policy ") == set(policy.choices)
    assert complete(bash_script, "rrun --kill-on-bad-exit=") == {"0", "1"}
    assert complete(bash_script, "rrun -K rmsfake") == set()   # -K's value is optional
    assert complete(bash_script, "rms-completion ") == {"bash", "zsh"}


def test_states_and_signals_complete(bash_script):
    assert complete(bash_script, "rq -t P") == {"PENDING", "PREEMPTED"}
    assert complete(bash_script, "rq --me -t PD,R") == {"PD,RUNNING"}   # after the comma
    assert complete(bash_script, "rcancel -s US") == {"USR1", "USR2"}
    assert complete(bash_script, "rinfo -t dr") == {"drain", "drng"}
    assert "reservation" in complete(bash_script, "rcontrol show ")


def test_a_value_is_not_an_option(bash_script):
    """The word after an option that takes a value is that value, even if it starts
    like an option; in -lt the letter that takes a value is t, the last."""
    assert complete(bash_script, "rsub --mem ") == set()
    assert complete(bash_script, "rq -lt P") == {"PENDING", "PREEMPTED"}
    assert "--states" in complete(bash_script, "rq -lt R --")
    assert complete(bash_script, "rq -pgpu -t P") == {"PENDING", "PREEMPTED"}   # -p's value attached


def test_file_names_complete_where_a_file_goes(bash_script, tmp_path):
    (tmp_path / "train.sh").write_text("#!/bin/sh\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools.txt").write_text("")
    here = str(tmp_path)
    assert complete(bash_script, "rsub -p gpu tr", cwd=here) == {"train.sh"}
    assert complete(bash_script, "rsub -o to", cwd=here) == {"tools", "tools.txt"}
    assert complete(bash_script, "rsub --chdir to", cwd=here) == {"tools"}
    assert complete(bash_script, "rsub -D to", cwd=here) == {"tools"}
    assert complete(bash_script, "rms-sim tr", cwd=here) == {"train.sh"}
    assert complete(bash_script, "rmsctld --conf-dir to", cwd=here) == {"tools"}
    # from the script on, the words are the script's: rsub's options are not offered
    assert complete(bash_script, "rsub train.sh --pa", cwd=here) == set()
    assert complete(bash_script, "rsub train.sh to", cwd=here) == {"tools", "tools.txt"}


def test_rrun_completes_the_command_then_its_arguments(bash_script, tmp_path):
    tool = tmp_path / "rmsfaketool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert complete(bash_script, "rrun -n 2 rmsfake", env=env) == {"rmsfaketool"}
    assert complete(bash_script, "rrun -l rmsfaketool --la", env=env) == set()


# -- values from the controller -----------------------------------------------------------

def _fake(directory, name: str, output: str) -> None:
    """A stand-in command that records its arguments and prints `output`."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    with open(path, "w") as fh:
        fh.write(f"#!/bin/sh\necho \"$*\" >> {directory}/{name}.args\nprintf '{output}'\n")
    os.chmod(path, 0o755)


def test_job_ids_come_from_the_rq_beside_the_command(bash_script, tmp_path):
    """`rq -h -o %i --me`, the rq next to the command typed with a path, not the PATH's
    (Redis Queue's rq may be there); a pending array is its id."""
    beside, elsewhere = str(tmp_path / "beside"), str(tmp_path / "elsewhere")
    _fake(beside, "rq", "12_[5-99%%10]\\n13_4\\n14\\n")
    _fake(beside, "rcancel", "")
    _fake(elsewhere, "rq", "999\\n")
    env = dict(os.environ, PATH=f"{elsewhere}{os.pathsep}{os.environ['PATH']}")
    assert complete(bash_script, f"{beside}/rcancel ", env=env) == {"12", "13_4", "14"}
    assert complete(bash_script, f"{beside}/rcancel 1", env=env) == {"12", "13_4", "14"}
    with open(f"{beside}/rq.args") as fh:
        assert fh.read().splitlines() == ["-h -o %i --me"] * 2
    assert complete(bash_script, "rcancel ", env=env) == {"999"}
    assert complete(bash_script, "rsacct -j 5,", env=env) == {"5,999"}
    assert complete(bash_script, "rq -j ", env=env) == {"999"}
    assert complete(bash_script, "rcontrol hold ", env=env) == {"999"}
    assert complete(bash_script, "rcontrol show job ", env=env) == {"999"}


def test_rq_and_rinfo_accept_what_completion_asks():
    from rmsbatch.cli import rinfo, rq
    args = rq.parse_args(["-h", "-o", "%i", "--me"])
    assert args.noheader and args.me and args.format == "%i"
    assert rinfo.parse_args(["-h"]).noheader and rinfo.parse_args(["-N", "-h"]).node_view


def test_nothing_and_quickly_when_the_controller_is_down(bash_script, tmp_path):
    env = dict(os.environ, RMS_CONF_DIR=str(tmp_path),
               PATH=BIN + os.pathsep + os.environ["PATH"])
    env.pop("RMS_DEBUG", None)
    for line in ("rcancel ", "rq -j ", "rsub -p ", "rq -w ", "rcontrol show node "):
        assert complete(bash_script, line, env=env) == set(), line


def test_job_ids_partitions_and_nodes_of_a_running_cluster(bash_script, cluster):
    job_id = cluster.submit("--hold", "--wrap", "sleep 300")
    try:
        env = dict(cluster.env, PATH=BIN + os.pathsep + os.environ["PATH"])
        for line in ("rcancel ", "rq -j ", "rsacct --jobs ", "rcontrol show job ",
                     "rcontrol release "):
            assert str(job_id) in complete(bash_script, line, env=env), line
        partitions = {p["name"] for p in cluster.api("nodes")["partitions"]}
        assert complete(bash_script, "rsub -p ", env=env) == partitions
        assert complete(bash_script, "rq --partition=", env=env) == partitions
        assert cluster.node in complete(bash_script, "rq -w ", env=env)
        assert cluster.node in complete(bash_script, "rcontrol show node ", env=env)
    finally:
        cluster.run("rcancel", str(job_id))


# -- generated from the parsers -------------------------------------------------------------

def test_new_options_and_subcommands_complete_without_editing_the_generator(tmp_path):
    """What rsacct is about to gain (subcommands, --archive FILE) completes by itself."""
    parser = argparse.ArgumentParser(prog="rsacct")
    parser.add_argument("--archive", metavar="FILE")
    parser.add_argument("--level", choices=("low", "high"))
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("report").add_argument("--by", choices=("user", "account"))
    sub.add_parser("audit")
    path = tmp_path / "c.bash"
    path.write_text(completion.script("bash", {"rsacct": completion.parser_spec(parser)}))
    (tmp_path / "old.db").write_text("")
    script, here = str(path), str(tmp_path)
    assert complete(script, "rsacct ", cwd=here) == {"report", "audit"}
    assert complete(script, "rsacct --archive ol", cwd=here) == {"old.db"}
    assert complete(script, "rsacct --level ") == {"low", "high"}
    assert complete(script, "rsacct --level high report --by a") == {"account"}


# -- the command ------------------------------------------------------------------------------

def test_a_bad_shell_is_one_line_and_exit_2():
    for argv in (["fish"], []):
        result = subprocess.run([sys.executable, "-m", "rmsbatch.cli.completion", *argv],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2 and result.stdout == ""
        assert len(result.stderr.splitlines()) == 1
        assert result.stderr.startswith("rms-completion: error: ") and "bash" in result.stderr


def test_the_hot_commands_never_import_the_generator():
    """rsub, rq and rcancel start fast: building every parser is rms-completion's cost."""
    for argv in (["bin/rsub", "--help"], ["-m", "rmsbatch.cli.rq", "--help"],
                 ["-m", "rmsbatch.cli.rcancel", "--help"]):
        result = subprocess.run([sys.executable, "-X", "importtime", *argv], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "rmsbatch.cli.completion" not in result.stderr, argv


def test_zsh_script_loads_and_registers(tmp_path):
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed")
    result = generate("zsh")
    assert result.returncode == 0, result.stderr
    (tmp_path / "_rmsbatch").write_text(result.stdout)
    probe = ("autoload -U compinit; compinit -u -d {dump}; {load}; "
             "print -r -- ${{_comps[rsub]}} ${{_comps[rcancel]}} ${{_comps[rms-completion]}}")
    for load in (f'eval "$(<{tmp_path}/_rmsbatch)"; (( $+functions[_rmsbatch] )) || exit 3',
                 f"fpath=({tmp_path} $fpath); compinit -u -d {tmp_path}/dump2"):
        out = subprocess.run([zsh, "-f", "-c", probe.format(dump=tmp_path / "dump", load=load)],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ))
        assert out.returncode == 0 and not out.stderr, out.stderr
        assert out.stdout.split() == ["_rmsbatch"] * 3, out.stdout
