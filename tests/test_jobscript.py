"""rsub's command line and #RMS/#SBATCH directives, as a user writes them."""
import os

import pytest

import rmsbatch
from rmsbatch.core import jobspec
from rmsbatch.cli.directives import check_script_text, parse_directives, read_script_file
from rmsbatch.cli.jobscript import (
    HelpRequested,
    OptionError,
    ScriptError,
    Submission,
    parse_rsub,
)
from rmsbatch.cli.rsub_options import usage_text

ENV = {"HOME": "/home/ada", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "CUDA_HOME": "/opt/cuda"}
SHEBANG = "#!/bin/bash\n"


@pytest.fixture
def rsub(tmp_path):
    """rsub(argv..., script=TEXT, stdin=TEXT, environ=...) -> Submission, run in tmp_path."""

    def run(*argv, script=None, stdin=None, environ=ENV, name="job.sh"):
        if script is not None:
            (tmp_path / name).write_text(script)
        return parse_rsub(list(argv), stdin_text=stdin, environ=dict(environ),
                          cwd=str(tmp_path), hostname="login1")

    return run


def script(*directives, body="srun python train.py\n"):
    return SHEBANG + "".join(line + "\n" for line in directives) + body


def error_of(call, *args, **kwargs):
    with pytest.raises((OptionError, ScriptError)) as info:
        call(*args, **kwargs)
    return str(info.value)


# == script files =============================================================
def test_read_script_file_returns_text(tmp_path):
    path = tmp_path / "ok.sh"
    path.write_text(script("#SBATCH -N 1"))
    assert read_script_file(str(path)).startswith("#!/bin/bash\n#SBATCH -N 1\n")


def test_missing_script_names_the_file(tmp_path):
    message = error_of(read_script_file, str(tmp_path / "nope.sh"))
    assert "nope.sh" in message and "no such file" in message


def test_directory_is_not_a_script(tmp_path):
    message = error_of(read_script_file, str(tmp_path))
    assert "directory" in message and str(tmp_path) in message


def test_five_megabyte_script_rejected_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.sh"
    with open(path, "wb") as handle:
        handle.write(b"#!/bin/bash\n")
        handle.truncate(5 * 1024 * 1024)  # sparse: cheap to make
    opened = []
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a) or 1 / 0)
    message = error_of(read_script_file, str(path))
    assert opened == []  # stat said no before any read
    assert "big.sh" in message and "5.0 MiB" in message and "4 MiB" in message


def test_script_at_the_limit_is_accepted(tmp_path):
    path = tmp_path / "edge.sh"
    head = b"#!/bin/bash\n"
    path.write_bytes(head + b"#" * (jobspec.MAX_SCRIPT_BYTES - len(head)))
    assert len(read_script_file(str(path))) == jobspec.MAX_SCRIPT_BYTES


def test_binary_script_rejected(tmp_path):
    path = tmp_path / "a.out"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00")
    message = error_of(read_script_file, str(path))
    assert "a.out" in message and "binary file" in message


def test_invalid_utf8_rejected_as_binary(tmp_path):
    path = tmp_path / "latin1.sh"
    path.write_bytes(b"#!/bin/bash\necho caf\xe9\n")
    message = error_of(read_script_file, str(path))
    assert "latin1.sh" in message and "binary" in message


def test_dos_line_endings_rejected_with_dos2unix_hint(tmp_path):
    path = tmp_path / "win.sh"
    path.write_bytes(b"#!/bin/bash\n#SBATCH -N 1\r\nhostname\r\n")
    message = error_of(read_script_file, str(path))
    assert "win.sh line 2" in message and "dos2unix" in message


@pytest.mark.parametrize("text", ["", "   \n\n\t\n"])
def test_empty_script_rejected(tmp_path, text):
    path = tmp_path / "empty.sh"
    path.write_text(text)
    message = error_of(read_script_file, str(path))
    assert "empty.sh" in message and "empty" in message


def test_script_without_shebang_rejected(tmp_path):
    path = tmp_path / "plain.sh"
    path.write_text("#SBATCH -N 1\nhostname\n")
    message = error_of(read_script_file, str(path))
    assert "plain.sh line 1" in message and "#!" in message and "#!/bin/bash" in message


@pytest.mark.parametrize("first", ["#!/bin/bash -l", "#!/usr/bin/env bash", "#! /bin/bash", "#!/bin/sh  "])
def test_shebang_variants_accepted(first):
    check_script_text(first + "\nhostname\n", "x.sh")


def test_check_script_text_on_stdin_text():
    assert "stdin" in error_of(check_script_text, "echo hi\n", "stdin")
    assert "binary file" in error_of(check_script_text, "#!/bin/sh\n\0\n", "stdin")
    assert "dos2unix" in error_of(check_script_text, "#!/bin/sh\r\necho\r\n", "stdin")
    big = "#!/bin/sh\n" + "#" * jobspec.MAX_SCRIPT_BYTES
    assert "limit is 4 MiB" in error_of(check_script_text, big, "stdin")


def test_undecodable_stdin_text_rejected():
    text = b"#!/bin/sh\necho \xff\n".decode("utf-8", "surrogateescape")
    assert "binary" in error_of(check_script_text, text, "stdin")


# == directive scanning =======================================================
def test_directives_from_both_prefixes_with_line_numbers():
    text = script("#SBATCH --nodes=2", "#RMS -n 8 --mem=4G")
    assert parse_directives(text) == [(2, ["--nodes=2"]), (3, ["-n", "8", "--mem=4G"])]


def test_scan_stops_at_first_command():
    text = script("#SBATCH -N 2", body="echo start\n#SBATCH -N 9\n")
    assert parse_directives(text) == [(2, ["-N", "2"])]


def test_scan_continues_past_blank_lines_and_comments():
    text = script("", "# set up", "##SBATCH --nodes=9", "# SBATCH --nodes=8", "#-----------",
                  "   ", "#SBATCH --nodes=3")
    assert parse_directives(text) == [(8, ["--nodes=3"])]


def test_indented_sbatch_is_a_comment():
    text = script("  #SBATCH --nodes=2", "#SBATCH --ntasks=4")
    assert parse_directives(text) == [(3, ["--ntasks=4"])]


def test_prefix_must_be_a_whole_word():
    assert parse_directives(script("#SBATCHING --nodes=2", "#RMSX -N 3")) == []


def test_comment_with_apostrophe_opens_no_quote():
    text = script("#SBATCH --time=10 # it's short", "#SBATCH -J x\t# don't ask")
    assert parse_directives(text) == [(2, ["--time=10"]), (3, ["-J", "x"])]


def test_quotes_and_escapes():
    text = script("""#SBATCH --job-name="my job" -o 'logs/%x #1.out' --comment=a\\ b "" """)
    assert parse_directives(text) == [
        (2, ["--job-name=my job", "-o", "logs/%x #1.out", "--comment=a b", ""])
    ]


def test_unquoted_hash_inside_a_word_starts_a_comment():
    assert parse_directives(script("#SBATCH --job-name=a#b")) == [(2, ["--job-name=a"])]


def test_unterminated_quote_names_the_line():
    with pytest.raises(ScriptError, match="line 2: unterminated"):
        parse_directives(script('#SBATCH --job-name="oops'))


def test_bare_directive_line_has_no_words():
    assert parse_directives(script("#SBATCH", "#RMS   # nothing")) == []


# == options and values =======================================================
def test_defaults_for_a_plain_script(rsub, tmp_path):
    sub = rsub("job.sh", script=script())
    spec = sub.spec
    assert isinstance(sub, Submission) and not sub.wait and not sub.parsable
    assert spec.name == "job.sh"
    assert spec.nodes == spec.ntasks == spec.cpus_per_task == 1
    assert spec.time_limit is None and spec.mem_mb is None and spec.gpus == 0
    assert spec.workdir == spec.submit_dir == str(tmp_path)
    assert spec.submit_host == "login1"
    assert spec.export == "ALL" and spec.environment == ENV
    assert spec.script == script()
    assert spec.argv == []


def test_every_supported_option_long_form(rsub, tmp_path):
    sub = rsub(
        "--job-name=train", "--partition=gpu", "--account=lab", "--qos=high", "--time=1-00:00:00",
        "--nodes=2", "--ntasks=16", "--cpus-per-task=4", "--mem=64G", "--gpus-per-node=a100:4",
        "--constraint=hbm80g", "--exclusive", "--output=o-%j.log", "--error=e-%j.log",
        "--chdir=sub/dir", "--hold", "--nice=10", "--export=NONE", "--requeue", "--wait",
        "--parsable", "--mail-type=END", "--mail-user=a@b.c", "--comment=hi",
        "--open-mode=truncate", "job.sh", "--epochs", "3", script=script(),
    )
    spec = sub.spec
    assert (spec.name, spec.partition, spec.account, spec.qos) == ("train", "gpu", "lab", "high")
    assert spec.time_limit == 86400
    assert (spec.nodes, spec.ntasks, spec.cpus_per_task, spec.mem_mb) == (2, 16, 4, 65536)
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type) == (8, 4, "a100")
    assert spec.constraint == "hbm80g" and spec.exclusive
    assert (spec.output, spec.error) == ("o-%j.log", "e-%j.log")
    assert spec.workdir == str(tmp_path / "sub" / "dir")
    assert spec.hold and spec.nice == 10 and spec.requeue
    assert spec.export == "NONE" and spec.environment == {}
    assert sub.wait and sub.parsable
    assert spec.argv == ["--epochs", "3"]  # options stop at the script name


def test_short_options_separate_and_attached(rsub):
    spec = rsub("-J", "x", "-pgpu", "-A", "lab", "-qlow", "-t", "30", "-N2", "-n", "4", "-c2",
                "-G", "2", "-C", "fast", "-o", "out", "-eerr", "-D", "/scratch", "-H", "-W",
                "job.sh", script=script()).spec
    assert (spec.name, spec.partition, spec.account, spec.qos) == ("x", "gpu", "lab", "low")
    assert (spec.time_limit, spec.nodes, spec.ntasks, spec.cpus_per_task) == (1800, 2, 4, 2)
    assert (spec.gpus, spec.constraint, spec.output, spec.error) == (2, "fast", "out", "err")
    assert spec.workdir == "/scratch" and spec.hold


def test_clustered_short_flags(rsub):
    sub = rsub("-HWJname", "job.sh", script=script())
    assert sub.spec.hold and sub.wait and sub.spec.name == "name"


def test_long_option_with_separate_value(rsub):
    assert rsub("--mem", "2G", "job.sh", script=script()).spec.mem_mb == 2048


def test_unambiguous_prefix_accepted(rsub):
    spec = rsub("--err=e.log", "--part", "gpu", "--cpus-per-t=3", "--exclus", "job.sh",
                script=script()).spec
    assert (spec.error, spec.partition, spec.cpus_per_task, spec.exclusive) == ("e.log", "gpu", 3, True)


def test_exact_name_wins_over_longer_ones(rsub):
    # --mem is also a prefix of --mem-per-cpu, --gpus of --gpus-per-node
    spec = rsub("--mem=1G", "--gpus=1", "job.sh", script=script()).spec
    assert spec.mem_mb == 1024 and spec.gpus == 1 and spec.gpus_per_node is None


def test_ambiguous_prefix_names_candidates(rsub):
    message = error_of(rsub, "--mem-per=4G", "job.sh", script=script())
    assert message.startswith("--mem-per: ambiguous option")
    assert "--mem-per-cpu" in message and "--mem-per-gpu" in message


def test_unknown_option_suggests_closest(rsub):
    message = error_of(rsub, "--memory=4G", "job.sh", script=script())
    assert message == "--memory: unknown option (did you mean --mem?)"
    assert "did you mean --partition?" in error_of(rsub, "--partiton=gpu", "job.sh")


def test_unknown_short_option(rsub):
    assert error_of(rsub, "-z", "job.sh").startswith("-z: unknown option")


def test_single_dash_long_option_explained(rsub):
    message = error_of(rsub, "-mem=4G", "job.sh")
    assert "two dashes" in message and "--mem=4G" in message


def test_flag_with_value_rejected(rsub):
    assert "takes no value" in error_of(rsub, "--hold=yes", "job.sh")


def test_missing_value_at_the_end(rsub):
    assert error_of(rsub, "--time").startswith("--time: needs a value")


def test_option_as_value_means_missing_value(rsub):
    assert "needs a value" in error_of(rsub, "--output", "--error=x", "job.sh")


def test_double_dash_ends_options(rsub):
    sub = rsub("-N", "1", "--", "job.sh", "--not-an-option", script=script())
    assert sub.spec.argv == ["--not-an-option"]


def test_last_repetition_wins(rsub):
    spec = rsub("-t", "10", "--time=20", "-J", "a", "-J", "b", "job.sh",
                script=script("#SBATCH --mem=1G", "#SBATCH --mem=2G")).spec
    assert spec.time_limit == 1200 and spec.name == "b" and spec.mem_mb == 2048


def test_value_errors_name_the_option_as_understood(rsub):
    assert error_of(rsub, "--mem=12Q", "job.sh") == "--mem=12Q: unknown unit 'Q' (use K, M, G or T)"
    assert error_of(rsub, "--time=abc", "job.sh").startswith("--time=abc: invalid time 'abc'")
    assert error_of(rsub, "--mem-per-cpu", "x", "job.sh").startswith("--mem-per-cpu=x: invalid size")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-n", "0"], "--ntasks=0: must be a positive integer"),
        (["--ntasks=0"], "--ntasks=0: must be a positive integer"),
        (["-c", "abc"], "--cpus-per-task=abc: must be a positive integer"),
        (["-N", "-2"], "--nodes=-2: must be a positive integer"),
        (["--gpus=-1"], "--gpus=-1: must be a number of GPUs (0 or more)"),
        (["--gpus-per-node=-3"], "--gpus-per-node=-3: must be a number of GPUs (0 or more)"),
        (["--cpus-per-task=1.5"], "--cpus-per-task=1.5: must be a positive integer"),
        (["--ntasks=99999999"], "--ntasks=99999999: must be at most 1000000"),
    ],
)
def test_bad_counts(rsub, argv, message):
    assert error_of(rsub, *argv, "job.sh", script=script()) == message


def test_node_range_is_least_and_most(rsub):
    spec = rsub("--nodes=2-4", "job.sh", script=script()).spec
    assert (spec.nodes, spec.nodes_max, spec.nodes_given, spec.ntasks) == (2, 4, True, 2)
    spec = rsub("-N", "2-2", "job.sh", script=script()).spec
    assert (spec.nodes, spec.nodes_max) == (2, None)
    assert "fewer than the least" in error_of(rsub, "-N", "4-2", "job.sh", script=script())


@pytest.mark.parametrize("argv", [["--nodes=NUM_NODES"], ["-n", "N"], ["--time=TIME_LIMIT"],
                                  ["--mem=MEMORY"], ["--gpus=NUM_GPUS"], ["--account=<account>"],
                                  ["--partition={{ partition }}"], ["--gres=gpu:NUM_GPUS"]])
def test_template_placeholders_caught(rsub, argv):
    assert "template placeholder" in error_of(rsub, *argv, "job.sh", script=script())


def test_mem_zero_means_whole_node(rsub):
    assert rsub("--mem=0", "job.sh", script=script()).spec.mem_mb == 0


def test_mem_per_cpu_zero_rejected(rsub):
    assert "at least 1M" in error_of(rsub, "--mem-per-cpu=0", "job.sh", script=script())


@pytest.mark.parametrize("value, seconds", [("5", 300), ("3:00", 180), ("1:00:00", 3600),
                                            ("2-12", 216000), ("UNLIMITED", 0), ("infinite", 0)])
def test_time_forms(rsub, value, seconds):
    assert rsub(f"--time={value}", "job.sh", script=script()).spec.time_limit == seconds


def test_nice_forms(rsub):
    assert rsub("--nice", "job.sh", script=script()).spec.nice == 100
    assert rsub("--nice=5", "job.sh", script=script()).spec.nice == 5
    assert rsub("--nice=-5", "job.sh", script=script()).spec.nice == -5
    assert "between" in error_of(rsub, "--nice=99999", "job.sh", script=script())


def test_requeue_flags(rsub):
    assert rsub("--requeue", "job.sh", script=script()).spec.requeue
    spec = rsub("--no-requeue", "job.sh", script=script("#SBATCH --requeue")).spec
    assert spec.requeue is False


def test_exclusive_with_a_mode_refused(rsub):
    assert "plain --exclusive" in error_of(rsub, "--exclusive=user", "job.sh", script=script())


def test_open_mode_and_signal(rsub):
    assert rsub("--open-mode=append", "job.sh", script=script()).spec.open_mode == "append"
    assert rsub("--open-mode", "T", "job.sh", script=script()).spec.open_mode == "truncate"
    assert "append or truncate" in error_of(rsub, "--open-mode=keep", "job.sh", script=script())
    spec = rsub("job.sh", script=script("#SBATCH --signal=B:USR1@55   # checkpoint")).spec
    assert spec.signal == {"signal": 10, "seconds": 55, "batch": True}
    for text, want in (("SIGINT@60", (2, 60, False)), ("usr2", (12, 60, False)),
                       ("10@30", (10, 30, False)), ("R:TERM@5", (15, 5, False))):
        sig = rsub(f"--signal={text}", "job.sh", script=script()).spec.signal
        assert (sig["signal"], sig["seconds"], sig["batch"]) == want
    assert "unknown signal 'FOO'" in error_of(rsub, "--signal=B:FOO@10", "job.sh", script=script())
    assert "whole seconds" in error_of(rsub, "--signal=USR1@soon", "job.sh", script=script())


def test_several_partitions_refused(rsub):
    assert "one name" in error_of(rsub, "-p", "gpu,cpu", "job.sh", script=script())


# == unsupported and informational options ====================================
@pytest.mark.parametrize(
    "argv, name",
    [
        (["--mincpus=4"], "--mincpus"),
        (["--deadline=now+1day"], "--deadline"),
    ],
)
def test_unsupported_options_recognised_and_refused(rsub, argv, name):
    message = error_of(rsub, *argv, "job.sh", script=script())
    assert message.startswith(f"{name}: not supported yet by rmsbatch")


def test_unsupported_message_shape(rsub):
    assert error_of(rsub, "--deadline=now+1day", "job.sh") == \
        "--deadline: not supported yet by rmsbatch"


def test_informational_options_ignored(rsub):
    spec = rsub("--mail-type=BEGIN,END", "--mail-user=me@lab", "--comment=x", "job.sh",
                script=script("#SBATCH --mail-type=ALL")).spec
    assert spec.name == "job.sh"


def test_binding_hints_checked_then_dropped(rsub):
    plain = rsub("job.sh", script=script("#SBATCH --nodes=2")).spec
    spec = rsub("job.sh", script=script(
        "#SBATCH --nodes=2",
        "#SBATCH --distribution=block:block  # contiguous blocks",
        "#SBATCH -m cyclic",
        "#SBATCH --mem_bind=local            # Slurm's older spelling",
        "#SBATCH --mem-bind=verbose,map_mem:0,1")).spec
    spec.script = plain.script
    assert spec == plain
    assert error_of(rsub, "--distribution=sideways", "job.sh").startswith(
        "--distribution=sideways: expected block, cyclic")
    assert error_of(rsub, "--mem-bind=far", "job.sh").startswith(
        "--mem-bind=far: unknown memory binding 'far'")


# == GPUs =====================================================================
@pytest.mark.parametrize(
    "gres, per_node, kind",
    [
        ("gpu:4", 4, None),
        ("gpu:a100:2", 2, "a100"),
        ("gpu:A100:2", 2, "a100"),          # any case
        ("gpu:1080ti:1", 1, "1080ti"),
        ("gpu", 1, None),                   # bare gpu = one
        ("gpu:v100", 1, "v100"),            # type without count = one
    ],
)
def test_gres_forms_are_per_node(rsub, gres, per_node, kind):
    spec = rsub(f"--gres={gres}", "-N", "2", "job.sh", script=script()).spec
    assert (spec.gpus_per_node, spec.gpus, spec.gpu_type) == (per_node, per_node * 2, kind)


def test_gres_zero_means_no_gpus(rsub):
    spec = rsub("--gres=gpu:0", "job.sh", script=script()).spec
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type) == (0, None, None)


def test_licenses_forms(rsub):
    spec = rsub("-L", "matlab:2,comsol,ansys@flexlm:1", "job.sh", script=script()).spec
    assert spec.licenses == {"matlab": 2, "comsol": 1, "ansys@flexlm": 1}
    assert "invalid count" in error_of(rsub, "-L", "matlab:two", "job.sh", script=script())
    assert "NAME[:COUNT]" in error_of(rsub, "-L", "matlab,,", "job.sh", script=script())


@pytest.mark.parametrize("argv, field, value", [
    (["--ntasks-per-node=4", "-N", "2"], "ntasks", 8),
    (["--tasks=4"], "ntasks_per_node", 4),            # a prefix of --tasks-per-node
    (["-n", "16", "--ntasks-per-node=4"], "nodes", 4),
    (["--gpus-per-task=a100:1", "-n", "4"], "gpu_type", "a100"),
    (["--gpus=4", "--ntasks-per-gpu=2"], "ntasks", 8),
    (["-n", "6", "--ntasks-per-gpu=2"], "gpus", 3),
    (["--cpus-per-gpu=8", "--gpus=2"], "cpus_per_gpu", 8),
    (["--ntasks-per-core=1"], "ntasks_per_core", 1),
    (["--hint=NoMultiThread"], "hint", "nomultithread"),
    (["--gpu-bind=verbose,map_gpu:0,1,2,3"], "gpu_bind", "verbose,map_gpu:0,1,2,3"),
    (["--gpu-bind=single:1"], "gpu_bind", "single:1"),
    (["--gpu-bind=mask_gpu:0x3,0xc"], "gpu_bind", "mask_gpu:0x3,0xc"),
    (["-w", "gpu01,gpu02,gpu03"], "nodelist", "gpu[01-03]"),
    (["-x", "gpu[05-06]"], "exclude", "gpu[05-06]"),
    (["--tmp=100G"], "tmp_mb", 102400),
    (["--wait-all-nodes=1"], "wait_all_nodes", True),
    (["--reservation=maint"], "reservation", "maint"),
    (["-M", "aurora"], "clusters", "aurora"),
])
def test_task_model_options_stored(rsub, argv, field, value):
    assert getattr(rsub(*argv, "job.sh", script=script()).spec, field) == value


@pytest.mark.parametrize("argv, words", [
    (["-N", "2", "-n", "16", "--ntasks-per-node=4"], ["--ntasks=16", "--ntasks-per-node=4",
                                                      "at most 8"]),
    (["--hint=fast"], ["--hint=fast: must be one of nomultithread"]),
    (["--gpu-bind=nearest"], ["--gpu-bind=nearest: expected closest"]),
    (["--gpu-bind=map_gpu:a,b"], ["expected closest"]),
    (["-w", "./hosts.txt"], ["--nodelist=./hosts.txt: names a file"]),
    (["--nodelist=gpu[01-"], ["--nodelist=gpu[01-:"]),
    (["--wait-all-nodes=yes"], ["must be 0 or 1"]),
    (["--gpus-per-task=0"], ["at least 1"]),
    (["--ntasks-per-gpu=2"], ["needs GPUs"]),
    (["--gpus-per-task=v100:1", "--gpus=a100:4"], ["v100", "a100", "one GPU type"]),
])
def test_task_model_options_refused_clearly(rsub, argv, words):
    message = error_of(rsub, *argv, "job.sh", script=script())
    assert all(w in message for w in words), message


def test_site_options_need_the_cluster_to_list_them(rsub, tmp_path, monkeypatch):
    from rmsbatch.cli import rsub_options
    assert "--image: unknown option" in error_of(rsub, "--image=x", "job.sh", script=script())
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "cluster.toml").write_text('[submit]\nsite_options = ["image"]\n')
    monkeypatch.setenv("RMS_CONF_DIR", str(tmp_path / "conf"))
    monkeypatch.setattr(rsub_options, "_site_names", None)
    spec = rsub("--image=docker:pytorch", "job.sh",
                script=script("#SBATCH --image docker:ubuntu  # the container")).spec
    assert spec.site_options == {"image": "docker:pytorch"}
    spec = rsub("job.sh", script=script("#SBATCH --image docker:ubuntu", "#SBATCH --image")).spec
    assert spec.site_options == {"image": ""}
    monkeypatch.setattr(rsub_options, "_site_names", None)


def test_gres_other_than_gpu_kept_per_node(rsub):
    spec = rsub("--gres=gpu:v100:4,nvme:100", "job.sh", script=script()).spec
    assert (spec.gpus_per_node, spec.gpu_type, spec.gres) == (4, "v100", {"nvme": 100})
    spec = rsub("job.sh", script=script("#SBATCH --gpus=2", "#SBATCH --gres=gpumem:20g")).spec
    assert (spec.gpus, spec.gres) == (2, {"gpumem": 20 << 30})
    assert "listed twice" in error_of(rsub, "--gres=nvme:1,nvme:2", "job.sh", script=script())
    assert "invalid count" in error_of(rsub, "--gres=nvme:lots", "job.sh", script=script())


@pytest.mark.parametrize("value, total, kind", [("4", 4, None), ("a100:8", 8, "a100"),
                                                ("H100:2", 2, "h100"), ("0", 0, None)])
def test_gpus_total_forms(rsub, value, total, kind):
    spec = rsub(f"--gpus={value}", "job.sh", script=script()).spec
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type) == (total, None, kind)


def test_gpus_per_node_type(rsub):
    spec = rsub("--gpus-per-node=h100:8", "-N", "4", "job.sh", script=script()).spec
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type, spec.nodes) == (32, 8, "h100", 4)


def test_gpus_total_and_per_node_set_the_node_count(rsub):
    spec = rsub("--gpus=16", "--gpus-per-node=8", "job.sh", script=script()).spec
    assert (spec.nodes, spec.gpus, spec.gpus_per_node, spec.ntasks) == (2, 16, 8, 2)


def test_redundant_gpu_options_reconciled(rsub):
    spec = rsub("job.sh", script=script("#SBATCH --gres=gpu:a100:4", "#SBATCH --gpus-per-node=4",
                                        "#SBATCH --gpus=4")).spec
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type) == (4, 4, "a100")


def test_contradictory_gpu_counts_explained(rsub):
    message = error_of(rsub, "-N", "1", "--gpus=3", "--gres=gpu:4", "job.sh", script=script())
    assert "--gpus=3" in message and "--gres=gpu:4" in message and "disagree" in message


def test_two_gpu_types_refused(rsub):
    message = error_of(rsub, "--gpus=v100:2", "--gres=gpu:a100:2", "job.sh", script=script())
    assert "a100" in message and "v100" in message


def test_command_line_gpus_replace_directive_gres(rsub):
    spec = rsub("--gpus=2", "job.sh", script=script("#SBATCH --gres=gpu:a100:4")).spec
    # the count comes from the command line, the type the script named still applies
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type) == (2, None, "a100")


def test_command_line_gpu_type_wins(rsub):
    spec = rsub("--gpus=h100:1", "job.sh", script=script("#SBATCH --gres=gpu:a100:4")).spec
    assert (spec.gpus, spec.gpu_type) == (1, "h100")


def test_bad_gpu_forms(rsub):
    assert "TYPE:N" in error_of(rsub, "--gpus=a100", "job.sh", script=script())
    assert "TYPE:N" in error_of(rsub, "--gpus=A100", "job.sh", script=script())
    assert "one GPU type" in error_of(rsub, "--gpus=a100:1,v100:1", "job.sh", script=script())
    assert "GPU type" in error_of(rsub, "--gres=gpu:a 100:1", "job.sh", script=script())


# == memory options ===========================================================
def test_two_memory_options_from_one_source_are_exclusive(rsub):
    message = error_of(rsub, "--mem=4G", "--mem-per-cpu=1G", "job.sh", script=script())
    assert "mutually exclusive" in message and message.startswith("--mem-per-cpu=1G")
    message = error_of(rsub, "job.sh", script=script("#SBATCH --mem=4G", "#SBATCH --mem-per-gpu=8G"))
    assert message.startswith("job.sh line 3: --mem-per-gpu=8G") and "mutually exclusive" in message
    assert "job.sh line 2" in message


def test_command_line_memory_replaces_directive_memory(rsub):
    spec = rsub("--mem-per-cpu=2G", "job.sh", script=script("#SBATCH --mem=64G")).spec
    assert (spec.mem_mb, spec.mem_per_cpu_mb) == (None, 2048)
    spec = rsub("--mem=8G", "job.sh", script=script("#SBATCH --mem-per-gpu=16G")).spec
    assert (spec.mem_mb, spec.mem_per_gpu_mb) == (8192, None)


# == directives meet the command line =========================================
def test_directives_apply(rsub):
    spec = rsub("job.sh", script=script(
        "#SBATCH --job-name=resnet", "#SBATCH -p gpu -N 2 --ntasks=8", "#RMS --time=2:00:00",
        "#SBATCH --mem=32G --gres=gpu:a100:4", "#SBATCH -o logs/%x-%j.out")).spec
    assert (spec.name, spec.partition, spec.nodes, spec.ntasks) == ("resnet", "gpu", 2, 8)
    assert (spec.time_limit, spec.mem_mb) == (7200, 32768)
    assert (spec.gpus, spec.gpus_per_node, spec.gpu_type) == (8, 4, "a100")
    assert spec.output == "logs/%x-%j.out"


def test_command_line_overrides_directive(rsub):
    spec = rsub("-t", "5", "--job-name=cli", "job.sh",
                script=script("#SBATCH --time=1-00:00:00", "#SBATCH -J script", "#SBATCH -p gpu")).spec
    assert (spec.time_limit, spec.name, spec.partition) == (300, "cli", "gpu")


def test_directive_after_first_command_ignored(rsub):
    spec = rsub("job.sh", script=script("#SBATCH -N 2", body="hostname\n#SBATCH -N 5\n")).spec
    assert spec.nodes == 2


def test_directive_errors_name_script_and_line(rsub):
    message = error_of(rsub, "job.sh", script=script("# comment", "#SBATCH --mem=12Q"))
    assert message == "job.sh line 3: --mem=12Q: unknown unit 'Q' (use K, M, G or T)"
    message = error_of(rsub, "job.sh", script=script("#SBATCH --deadline=now+1day"))
    assert message == "job.sh line 2: --deadline: not supported yet by rmsbatch"
    message = error_of(rsub, "job.sh", script=script("#SBATCH --array=0-3%0"))
    assert message.startswith("job.sh line 2: --array=0-3%0: invalid throttle %0")
    message = error_of(rsub, "job.sh", script=script("#RMS --memroy=4G"))
    assert message.startswith("job.sh line 2: --memroy: unknown option (did you mean --mem")


def test_non_option_word_in_directive_is_invalid(rsub):
    with pytest.raises(ScriptError) as info:
        rsub("job.sh", script=script("#SBATCH -N 2 gpu"))
    assert str(info.value).startswith("job.sh line 2: Invalid directive 'gpu'")


@pytest.mark.parametrize("option", ["--wrap=hostname", "--wait", "--parsable", "--help", "--version",
                                    "-W", "--usage"])
def test_client_options_refused_in_directives(rsub, option):
    message = error_of(rsub, "job.sh", script=script(f"#SBATCH {option}"))
    assert message.startswith("job.sh line 2: --") and "command line" in message


def test_unexpanded_variable_in_directive_refused(rsub):
    message = error_of(rsub, "job.sh", script=script("#SBATCH --output=$HOME/logs/%j.out"))
    assert "job.sh line 2" in message and "$HOME" in message and "literally" in message


def test_variable_in_ignored_directive_is_harmless(rsub):
    rsub("job.sh", script=script("#SBATCH --mail-user=$USER@example.org"))


def test_directive_placeholder_names_line(rsub):
    message = error_of(rsub, "job.sh", script=script("#SBATCH --nodes=NUM_NODES"))
    assert message.startswith("job.sh line 2: --nodes=NUM_NODES:") and "placeholder" in message


def test_directive_in_quoted_value(rsub):
    spec = rsub("job.sh", script=script("#SBATCH --job-name='bert large' # it's big")).spec
    assert spec.name == "bert large"


def test_unterminated_quote_in_script_names_script(rsub):
    message = error_of(rsub, "job.sh", script=script("#SBATCH -J 'x"))
    assert message.startswith("job.sh line 2: unterminated")


# == script sources ===========================================================
def test_wrap(rsub):
    sub = rsub("--wrap", "python -c 'print(1)'", "-c", "2")
    assert sub.spec.script == "#!/bin/sh\n# generated by rsub --wrap\npython -c 'print(1)'\n"
    assert sub.spec.name == "wrap" and sub.spec.cpus_per_task == 2 and sub.spec.argv == []


def test_wrap_ignores_directive_like_text(rsub):
    spec = rsub("--wrap=#SBATCH -N 4").spec
    assert spec.nodes == 1


def test_wrap_and_script_together_refused(rsub):
    message = error_of(rsub, "--wrap=true", "job.sh", script=script())
    assert "--wrap=true" in message and "job.sh" in message


def test_wrap_name_overridable(rsub):
    assert rsub("-J", "w", "--wrap=true").spec.name == "w"


def test_stdin_script(rsub):
    sub = rsub("-p", "gpu", stdin=script("#SBATCH -N 2"))
    assert sub.spec.name == "stdin" and sub.spec.nodes == 2 and sub.spec.partition == "gpu"


def test_stdin_directive_errors_name_stdin(rsub):
    assert error_of(rsub, stdin=script("#SBATCH --mem=1Q")).startswith("stdin line 2: --mem=1Q")


def test_no_script_at_all(rsub):
    message = error_of(rsub, "-N", "1", stdin=None)
    assert message == "no job script given: name a script, pipe one on stdin, or use --wrap"


def test_script_path_wins_over_stdin(rsub):
    assert rsub("job.sh", script=script("#SBATCH -J file"), stdin=script("#SBATCH -J pipe")).spec.name == "file"


def test_relative_script_resolved_against_cwd(rsub, tmp_path):
    (tmp_path / "jobs").mkdir()
    spec = rsub("jobs/run.sh", "a", script=script(), name="jobs/run.sh").spec
    assert spec.name == "run.sh" and spec.argv == ["a"]


def test_missing_script_error_uses_the_name_as_given(rsub):
    assert error_of(rsub, "nope.sh") == "nope.sh: no such file"


def test_bad_script_through_rsub_names_it(rsub):
    assert "dos2unix" in error_of(rsub, "job.sh", script="#!/bin/sh\r\nhostname\r\n")


# == working directory and environment ========================================
def test_chdir_relative_to_cwd(rsub, tmp_path):
    assert rsub("-D", "../x", "job.sh", script=script()).spec.workdir == str(tmp_path.parent / "x")


def test_chdir_in_directive(rsub):
    assert rsub("job.sh", script=script("#SBATCH --chdir=/data/run")).spec.workdir == "/data/run"


@pytest.mark.parametrize(
    "export, expected",
    [
        ("ALL", ENV),
        ("all", ENV),
        ("NONE", {}),
        ("ALL,FOO=1,HOME", {**ENV, "FOO": "1"}),
        ("HOME,PATH", {"HOME": "/home/ada", "PATH": "/usr/bin:/bin"}),
        ("HOME,MISSING,X=2", {"HOME": "/home/ada", "X": "2"}),
        ("NONE,X=2", {"X": "2"}),
        ("CUDA_VISIBLE_DEVICES=0,1", {"CUDA_VISIBLE_DEVICES": "0,1"}),
        ("ALL,EMPTY=", {**ENV, "EMPTY": ""}),
    ],
)
def test_export_forms(rsub, export, expected):
    spec = rsub(f"--export={export}", "job.sh", script=script()).spec
    assert spec.environment == expected
    assert spec.export == export


def test_export_default_copies_environment(rsub):
    spec = rsub("job.sh", script=script(), environ={"A": "1"}).spec
    assert spec.environment == {"A": "1"} and spec.export == "ALL"


def test_export_bad_name(rsub):
    assert "invalid variable name" in error_of(rsub, "--export=1BAD", "job.sh", script=script())
    assert "ALL, NONE" in error_of(rsub, "--export=", "job.sh", script=script())


def test_export_in_directive(rsub):
    spec = rsub("job.sh", script=script("#SBATCH --export=NONE")).spec
    assert spec.environment == {} and spec.export == "NONE"


# == tasks and nodes ==========================================================
def test_ntasks_defaults_to_one_per_node(rsub):
    assert rsub("-N", "3", "job.sh", script=script()).spec.ntasks == 3


def test_fewer_tasks_than_nodes_refused(rsub):
    assert "fewer tasks than nodes" in error_of(rsub, "-N", "3", "-n", "2", "job.sh", script=script())


def test_spec_validation_becomes_option_error(rsub):
    message = error_of(rsub, "-J", "x" * 500, "job.sh", script=script())
    assert message.startswith("invalid job: name")


# == help =====================================================================
@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["--he"], ["--help", "--bogus"], ["-Hh"], ["-hH"],
                                  ["-N", "2", "--help", "job.sh"]])
def test_help(rsub, argv):
    with pytest.raises(HelpRequested) as info:
        rsub(*argv)
    assert info.value.text == usage_text()


def test_version_and_usage(rsub):
    with pytest.raises(HelpRequested) as info:
        rsub("-V")
    assert info.value.text == f"rsub (rmsbatch) {rmsbatch.__version__}"
    with pytest.raises(HelpRequested) as info:
        rsub("--usage")
    assert info.value.text.startswith("Usage: rsub")


def test_help_text_content():
    text = usage_text()
    for group in ("Job:", "Resources:", "GPUs:", "Files:", "Control:", "Output:", "Examples:"):
        assert f"\n{group}\n" in text
    assert "#RMS" in text and "#SBATCH" in text
    for option in ("--job-name", "-J", "--mem=SIZE", "--gres", "--gpus-per-node", "--export",
                   "--wrap", "--parsable", "--array", "--mail-type"):
        assert option in text
    examples = text.split("Examples:\n")[1].strip().splitlines()
    assert len(examples) == 3 and all(line.strip().startswith("rsub ") for line in examples)
    assert max(len(line) for line in text.splitlines()) <= 100


def test_help_examples_parse(rsub, tmp_path):
    """The examples in --help are themselves valid submissions."""
    for name in ("train.sh", "job.sh"):
        (tmp_path / name).write_text(script())
    for line in usage_text().split("Examples:\n")[1].strip().splitlines():
        import shlex

        argv = shlex.split(line)[1:]
        assert isinstance(rsub(*argv), Submission)


def test_import_is_light():
    import subprocess
    import sys

    code = ("import sys, rmsbatch.cli.jobscript; "
            "bad = {'click', 'pydantic', 'argparse', 'difflib', 'textwrap'} & set(sys.modules); "
            "print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, check=True)
    assert out.stdout.strip() == "[]"
