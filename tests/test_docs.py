"""The documentation stays true to the code.

Every command has --help with examples and a man page; the man pages render
cleanly and mention every option and config key; every example under etc/
loads; a misspelt config key is rejected with a message naming the file and
the key; the README's quick start and test command are the ones CI runs.
"""
from __future__ import annotations

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

from rmsbatch import config
from rmsbatch.config import models as config_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAN = os.path.join(ROOT, "man")
ETC = os.path.join(ROOT, "etc")

QUICKSTART = ("pip install . && rms-local up --dir /tmp/rms --gpus 2 && "
              "export RMS_CONF_DIR=/tmp/rms && rsub --wait --gpus 2 --wrap "
              "'echo hello from job $RMS_JOB_ID on GPUs $CUDA_VISIBLE_DEVICES' && cat rms-*.out")
TEST_COMMAND = "pip install -e '.[test]' && python -m pytest -q"

LONG_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def _scripts() -> dict[str, str]:
    """Command name -> module, from pyproject.toml: console scripts, and the scripts
    installed as they are (bin/rsub), by the module they run."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        project = tomllib.load(fh)
    scripts = {name: target.split(":")[0] for name, target in project["project"]["scripts"].items()}
    for path in project["tool"]["setuptools"].get("script-files", []):
        with open(os.path.join(ROOT, path)) as fh:
            module = re.search(r"^from (\S+) import main$", fh.read(), re.M).group(1)
        scripts[os.path.basename(path)] = module
    return scripts


SCRIPTS = _scripts()


def _man_pages() -> list[str]:
    return sorted(os.path.join(dirpath, f) for dirpath, _, files in os.walk(MAN)
                  for f in files if re.search(r"\.[158]$", f))


def _man_page_of(command: str) -> str | None:
    for section in ("1", "8"):
        path = os.path.join(MAN, f"man{section}", f"{command}.{section}")
        if os.path.exists(path):
            return path
    return None


def _man_text(path: str) -> str:
    """The page's source with font changes and escaped hyphens undone."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    text = re.sub(r"\\f[BIRP]", "", text)
    return text.replace("\\-", "-").replace("\\&", "")


def _options_in_help(help_text: str) -> set[str]:
    """Long options --help shows, not counting those of the programs in its examples."""
    return set(LONG_OPTION.findall(help_text.split("Examples:")[0]))


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.fixture(scope="module")
def help_texts() -> dict[str, subprocess.CompletedProcess]:
    """`python -m MODULE --help` for every console script, run in parallel."""
    env = dict(os.environ)
    env.pop("RMS_DEBUG", None)
    procs = {name: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, module in SCRIPTS.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=30)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


# -- (1) every command: --help with examples, and a man page ------------------------

@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_command_has_help_with_examples(command, help_texts):
    result = help_texts[command]
    assert result.returncode == 0, f"{command} --help exited {result.returncode}: {result.stderr}"
    assert "Examples:" in result.stdout, f"{command} --help has no 'Examples:' section"


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_command_has_man_page(command):
    assert _man_page_of(command), f"no man page for {command} in man/man1 or man/man8"


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_man_page_lists_every_option(command, help_texts):
    """Every long option --help shows is in the man page (rsub's included)."""
    path = _man_page_of(command)
    if path is None:
        pytest.skip("no man page (reported by test_command_has_man_page)")
    text = _man_text(path)
    options = _options_in_help(help_texts[command].stdout)
    missing = sorted(o for o in options if not _mentions(text, o))
    assert not missing, f"{os.path.relpath(path, ROOT)} does not mention {', '.join(missing)}"


def test_rsub_man_page_covers_every_rsub_option(help_texts):
    options = _options_in_help(help_texts["rsub"].stdout)
    assert {"--job-name", "--gpus", "--gres", "--wrap", "--array"} <= options
    text = _man_text(os.path.join(MAN, "man1", "rsub.1"))
    missing = sorted(o for o in options if not _mentions(text, o))
    assert not missing, f"man/man1/rsub.1 does not mention {', '.join(missing)}"


# -- (2) man pages render without warnings --------------------------------------------

@pytest.mark.parametrize("page", _man_pages(), ids=lambda p: os.path.relpath(p, MAN))
def test_man_page_renders_without_warnings(page):
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    result = subprocess.run(["groff", "-man", "-ww", "-z", page], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


def test_man_pages_have_the_standard_sections():
    for page in _man_pages():
        text = _man_text(page)
        for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
            assert re.search(rf"^\.SH \"?{section}\"?$", text, re.M), \
                f"{os.path.relpath(page, ROOT)} has no {section} section"


def test_rq_man_page_lists_every_pending_reason():
    from rmsbatch.sched import plan as scheduler
    reasons = [scheduler.HELD_USER, scheduler.HELD_ADMIN, scheduler.PARTITION_DOWN,
               scheduler.NODES_UNAVAILABLE, scheduler.RESOURCES, scheduler.PRIORITY]
    text = _man_text(os.path.join(MAN, "man1", "rq.1"))
    assert [r for r in reasons if not _mentions(text, r)] == []


# man5 page -> the models whose keys it documents
MAN5_MODELS = {
    "rmsbatch-cluster.toml.5": ("ClusterFile", "ControllerSection", "NodeDaemonSection",
                                "PrioritySection", "AccountingSection",
                                "NodeGroup", "GpuGroup", "PartitionSection",
                                "ReservationSection", "SubmitSection", "SchedulerSection"),
    "rmsbatch-tenants.toml.5": ("TenantsFile", "AccountSection", "UserSection"),
    "rmsbatch-qos.toml.5": ("QosFile", "QosSection"),
}


def test_every_config_model_belongs_to_a_man5_page():
    """A new config section is documented only if some page's list names it."""
    listed = {m for models in MAN5_MODELS.values() for m in models}
    models = {name for name, obj in vars(config_models).items()
              if isinstance(obj, type) and issubclass(obj, config_models._Model)
              and obj is not config_models._Model}
    assert not models - listed, f"config models no man5 page checks: {sorted(models - listed)}"


@pytest.mark.parametrize("page", sorted(MAN5_MODELS))
def test_man5_documents_every_config_key(page):
    text = _man_text(os.path.join(MAN, "man5", page))
    keys = {key for model in MAN5_MODELS[page] for key in getattr(config_models, model).model_fields}
    missing = sorted(k for k in keys  # a ".B key" entry, or a "[key]"/"[[key]]" section
                     if not re.search(rf"^\.BR? {re.escape(k)}$|^\.SH \[+{re.escape(k)}\]+$",
                                      text, re.M))
    assert not missing, f"man/man5/{page} does not document {', '.join(missing)}"


# -- (4) every example under etc/ loads ---------------------------------------------------

def _config_dirs() -> list[str]:
    return sorted(dirpath for dirpath, _, files in os.walk(ETC)
                  if any(f.endswith(".toml") for f in files))


def test_etc_has_the_examples():
    dirs = [os.path.relpath(d, ROOT) for d in _config_dirs()]
    assert "etc" in dirs and os.path.join("etc", "single-host") in dirs


@pytest.mark.parametrize("directory", _config_dirs(), ids=lambda d: os.path.relpath(d, ROOT))
def test_etc_example_loads(directory):
    cfg = config.load(directory)
    assert cfg.nodes and cfg.partitions and cfg.tenants.accounts and cfg.qos.qos


# -- (5) unknown keys are rejected, naming the file and the key ------------------------------

def _copy_etc(tmp_path) -> str:
    target = tmp_path / "etc"
    target.mkdir()
    for name in ("cluster.toml", "tenants.toml", "qos.toml"):
        shutil.copy(os.path.join(ETC, name), target / name)
    return str(target)


def test_unknown_key_in_a_table_is_rejected(tmp_path):
    directory = _copy_etc(tmp_path)
    path = os.path.join(directory, "cluster.toml")
    with open(path) as fh:
        text = fh.read()
    if re.search(r"^\[controller\]$", text, re.M):
        text = re.sub(r"^\[controller\]$", '[controller]\nsokcet = "x"', text, count=1, flags=re.M)
    else:
        text += '\n[controller]\nsokcet = "x"\n'
    with open(path, "w") as fh:
        fh.write(text)
    with pytest.raises(config.ConfigError) as info:
        config.load(directory)
    message = str(info.value)
    assert "cluster.toml" in message and "controller.sokcet" in message, message


def test_unknown_top_level_key_is_rejected(tmp_path):
    directory = _copy_etc(tmp_path)
    path = os.path.join(directory, "tenants.toml")
    with open(path) as fh:
        text = fh.read()
    with open(path, "w") as fh:
        fh.write("privat_jobs = true\n" + text)
    with pytest.raises(config.ConfigError) as info:
        config.load(directory)
    message = str(info.value)
    assert "tenants.toml" in message and "privat_jobs" in message, message


# -- (6) README: the quick start, and the test command CI runs ------------------------------

def _readme_lines() -> list[str]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        return [line.strip() for line in fh]


def test_readme_has_the_two_quick_start_commands():
    lines = _readme_lines()
    assert QUICKSTART in lines, "README.md lost the one-line quick start"
    assert TEST_COMMAND in lines, "README.md lost the one-line test command"


def test_readme_test_command_is_what_ci_runs():
    ci = os.path.join(ROOT, ".ci", "run")
    if not os.path.exists(ci):
        pytest.skip(".ci/run does not exist")
    with open(ci, encoding="utf-8") as fh:
        ci_lines = [line.strip() for line in fh
                    if "pytest" in line and not line.lstrip().startswith("#")]
    readme = [line for line in _readme_lines() if "pytest" in line and line.startswith("pip ")]
    assert readme == [TEST_COMMAND]
    assert any(TEST_COMMAND == line or line.endswith(" " + TEST_COMMAND) for line in ci_lines), \
        f".ci/run runs {ci_lines}, README.md says {TEST_COMMAND!r}"
