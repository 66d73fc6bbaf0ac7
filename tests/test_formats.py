"""Output of rq, rsacct, rinfo and rcontrol from fixed records, and their argument parsing.

Nothing here needs a controller: the commands' parse / request / render steps
are tested directly, and `client.call` is replaced where a body runs.
"""
import json
import time

import pytest

from rmsbatch.net import client
from rmsbatch.cli import details, jobfields, layout, nodetables, optiontypes
from rmsbatch.cli import rcancel, rcontrol, rinfo, rq, rsacct
from rmsbatch.cli.common import UsageError, run_main

# Local times, so the rendered timestamps are the same in every time zone.
NOW = time.mktime((2024, 5, 1, 12, 0, 0, 0, 0, -1))
SUBMIT = NOW - 3725     # 2024-05-01T10:57:55
START = NOW - 3661      # 2024-05-01T10:58:59


def job(**changes):
    record = dict(
        id=42, name="train", user="alice", uid=1000, account="ml", partition="gpu",
        qos="normal", state="RUNNING", reason="None", priority=1000, nice=0,
        submit_time=SUBMIT, start_time=START, end_time=None, time_limit=7200,
        nodes=1, ntasks=1, cpus_per_task=8, req_cpus=8, alloc_cpus=8, req_mem_mb=16384,
        req_gpus=2, gpu_type="a100", alloc_gpus=2, gpu_indices=[0, 1], nodelist="gpu001",
        exit_code=None, exit_signal=None, max_rss_kb=None, total_cpu_s=None,
        workdir="/home/alice/run", stdout="/home/alice/run/out.txt",
        stderr="/home/alice/run/err.txt", hold=False, requeue=False, restart_count=0,
        constraint=None, exclusive=False, submit_host="login1", command="train.sh",
        protections="cgroup,devices")
    record.update(changes)
    return record


RUNNING = job()
PENDING = job(id=43, name="eval-long-name", user="bob", uid=1001, account="nlp",
              state="PENDING", reason="Resources", start_time=None, alloc_cpus=0,
              alloc_gpus=0, gpu_indices=[], nodelist="", req_gpus=4, time_limit=0,
              priority=900)
DONE = job(id=41, state="COMPLETED", end_time=NOW - 61, exit_code=0, exit_signal=0,
           max_rss_kb=2048, total_cpu_s=75.5)
FAILED = job(id=40, name="oom", state="OUT_OF_MEMORY", end_time=NOW - 600, exit_code=0,
             exit_signal=9, alloc_gpus=0, req_gpus=0)


def node(name, state="IDLE", **changes):
    record = dict(
        name=name, state=state, reason="", cpus=64, alloc_cpus=0, mem_mb=512000,
        alloc_mem_mb=0, gpus=8, alloc_gpus=0, gpu_type="a100", features=["a100", "nvlink"],
        partitions=["gpu"], last_heartbeat=NOW - 5, jobs=[], protections="cgroup,devices")
    record.update(changes)
    return record


NODES = [
    node("gpu001", "MIXED", alloc_cpus=8, alloc_gpus=2, alloc_mem_mb=16384, jobs=[42]),
    node("gpu002"), node("gpu003"),
    node("gpu004", "DRAIN", reason="bad fan"),
    node("gpu010", "DOWN", reason="not responding"),
    node("cpu01", gpus=0, gpu_type="", features=[], partitions=["cpu", "debug"]),
    node("cpu02", "ALLOCATED", gpus=0, gpu_type="", alloc_cpus=64, features=[],
         partitions=["cpu", "debug"]),
]
PARTITIONS = [
    dict(name="gpu", nodes="gpu[001-004,010]",
         node_names=["gpu001", "gpu002", "gpu003", "gpu004", "gpu010"], default=True,
         state="UP", default_time=3600, max_time=172800),
    dict(name="cpu", nodes="cpu[01-02]", node_names=["cpu01", "cpu02"], default=False,
         state="UP", default_time=0, max_time=0),
    dict(name="debug", nodes="cpu[01-02]", node_names=["cpu01", "cpu02"], default=False,
         state="DOWN", default_time=0, max_time=1800),
    dict(name="empty", nodes="", node_names=[], default=False, state="UP",
         default_time=0, max_time=0),
]


def usage_error(capsys, main_body, prog, argv):
    """Run a command's body; return its one-line error after checking exit status 2."""
    code = run_main(prog, main_body, argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.rstrip("\n").split("\n")
    assert len(lines) == 1, err          # one line, that says what was wrong
    first = lines[0]
    assert first.startswith(f"{prog}: error: ")
    return first


@pytest.fixture
def no_controller(monkeypatch):
    def fail(op, **fields):
        raise AssertionError(f"unexpected request {op}")
    monkeypatch.setattr(client, "call", fail)


# -- values -------------------------------------------------------------------

@pytest.mark.parametrize("seconds, squeue, sacct", [
    (0, "0:00", "00:00:00"),
    (None, "0:00", "00:00:00"),
    (-5, "0:00", "00:00:00"),
    (59.9, "0:59", "00:00:59"),
    (61, "1:01", "00:01:01"),
    (3600, "1:00:00", "01:00:00"),
    (86399, "23:59:59", "23:59:59"),
    (86400 + 3661, "1-01:01:01", "1-01:01:01"),
    (12 * 86400, "12-00:00:00", "12-00:00:00"),
])
def test_durations(seconds, squeue, sacct):
    assert layout.squeue_time(seconds) == squeue
    assert layout.clock(seconds) == sacct


def test_limits_timestamps_sizes():
    assert layout.time_limit(0) == "UNLIMITED"
    assert layout.time_limit(None) == "UNLIMITED"
    assert layout.time_limit(5400) == "1:30:00"
    assert layout.time_limit(5400, layout.clock) == "01:30:00"
    assert layout.timestamp(None) == "Unknown"
    assert layout.timestamp(NOW) == "2024-05-01T12:00:00"
    assert [layout.memory(m) for m in (0, 500, 1024, 16384, 1536, 2 * 1024 * 1024)] == \
        ["0", "500M", "1G", "16G", "1536M", "2T"]
    assert [layout.rss(k) for k in (None, 900, 1536)] == ["", "900K", "1536K"]
    assert layout.cpu_time(75.5) == "01:15.500"
    assert layout.cpu_time(7322) == "02:02:02"
    assert layout.cpu_time(None) == ""


# -- rq: % codes ----------------------------------------------------------------

@pytest.mark.parametrize("code, header, running, pending", [
    ("i", "JOBID", "42", "43"),
    ("t", "ST", "R", "PD"),
    ("T", "STATE", "RUNNING", "PENDING"),
    ("j", "NAME", "train", "eval-long-name"),
    ("u", "USER", "alice", "bob"),
    ("U", "UID", "1000", "1001"),
    ("a", "ACCOUNT", "ml", "nlp"),
    ("P", "PARTITION", "gpu", "gpu"),
    ("q", "QOS", "normal", "normal"),
    ("M", "TIME", "1:01:01", "0:00"),
    ("l", "TIME_LIMIT", "2:00:00", "UNLIMITED"),
    ("D", "NODES", "1", "1"),
    ("C", "CPUS", "8", "8"),
    ("R", "NODELIST(REASON)", "gpu001", "(Resources)"),
    ("r", "REASON", "None", "Resources"),
    ("N", "NODELIST", "gpu001", ""),
    ("b", "GPUS", "2", "4"),
    ("V", "SUBMIT_TIME", "2024-05-01T10:57:55", "2024-05-01T10:57:55"),
    ("S", "START_TIME", "2024-05-01T10:58:59", "Unknown"),
    ("e", "END_TIME", "Unknown", "Unknown"),
    ("Q", "PRIORITY", "1000", "900"),
    ("m", "MIN_MEMORY", "16G", "16G"),
    ("Z", "WORK_DIR", "/home/alice/run", "/home/alice/run"),
    ("o", "COMMAND", "train.sh", "train.sh"),
])
def test_every_percent_code(code, header, running, pending):
    layout = jobfields.squeue_layout(f"<%{code}>")
    assert layout.render([RUNNING, PENDING], NOW) == \
        f"<{header}>\n<{running}>\n<{pending}>"


def test_percent_widths_and_alignment():
    layout = jobfields.squeue_layout("%.6i|%-6i|%6i|%i|%3j|%.3j|%%")
    assert layout.render([RUNNING], NOW).split("\n") == [
        " JOBID|JOBID |JOBID |JOBID|NAM|NAM|%",
        "    42|42    |42    |42|tra|tra|%",
    ]


def test_percent_squeue_default_format():
    layout = jobfields.squeue_layout("%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R")
    assert layout.render([RUNNING, PENDING], NOW, header=True) == (
        "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)\n"
        "                42       gpu    train    alice  R    1:01:01      1 gpu001\n"
        "                43       gpu eval-lon      bob PD       0:00      1 (Resources)")


@pytest.mark.parametrize("text, words", [
    ("%Y", ["unknown format code %Y", "%i"]),
    ("%i %", ["ends inside"]),
    ("%.i", ["needs a width"]),
])
def test_percent_errors(text, words):
    with pytest.raises(layout.FormatError) as info:
        jobfields.squeue_layout(text)
    for word in words:
        assert word in str(info.value)


# -- rq: tables ---------------------------------------------------------------

def test_rq_default_table():
    args = rq.parse_args([])
    assert rq.render([RUNNING, PENDING], args, now=NOW) == (
        "JOBID PARTITION NAME           USER  ACCOUNT ST    TIME GPUS NODELIST(REASON)\n"
        "   42 gpu       train          alice ml      R  1:01:01    2 gpu001\n"
        "   43 gpu       eval-long-name bob   nlp     PD    0:00    4 (Resources)")


def test_rq_long_table():
    args = rq.parse_args(["-l"])
    assert rq.render([RUNNING, PENDING], args, now=NOW) == (
        "JOBID PARTITION NAME           USER  ACCOUNT STATE      TIME TIME_LIMIT NODES GPUS "
        "NODELIST(REASON)\n"
        "   42 gpu       train          alice ml      RUNNING 1:01:01    2:00:00     1    2 "
        "gpu001\n"
        "   43 gpu       eval-long-name bob   nlp     PENDING    0:00  UNLIMITED     1    4 "
        "(Resources)")


def test_rq_noheader_and_empty():
    args = rq.parse_args(["-h", "-o", "%i"])
    assert rq.render([RUNNING, PENDING], args, now=NOW) == "42\n43"
    assert rq.render([], args, now=NOW) == ""
    assert rq.render([], rq.parse_args([]), now=NOW).startswith("JOBID PARTITION")


def test_rq_field_lists():
    args = rq.parse_args(["-o", "jobid,state,name:5,time:.8"])
    assert rq.render([RUNNING, PENDING], args, now=NOW) == (
        "JOBID STATE   NAME      TIME\n"
        "   42 RUNNING train  1:01:01\n"
        "   43 PENDING eval-     0:00")
    args = rq.parse_args(["-O", "JobID,Name:.16,StateCompact,ReasonList"])
    assert rq.render([PENDING], args, now=NOW) == (
        "JOBID             NAME ST NODELIST(REASON)\n"
        "   43   eval-long-name PD (Resources)")


def test_rq_json():
    out = rq.render([RUNNING, PENDING], rq.parse_args(["--json"]), now=NOW)
    doc = json.loads(out)
    assert [j["id"] for j in doc["jobs"]] == [42, 43]
    assert doc["jobs"][0] == RUNNING


def test_rq_format_help(capsys, no_controller):
    assert run_main("rq", rq.body, ["-o", "help"]) == 0
    out = capsys.readouterr().out
    assert "%i" in out and "nodelist_reason" in out


def test_rq_renders_ten_thousand_jobs():
    records = [job(id=i, name=f"job{i}") if i % 3 else dict(PENDING, id=i)
               for i in range(1, 10001)]
    for argv in ([], ["-o", "%.18i %.9P %.8j %.2t %.10M %R"], ["-o", "jobid,submit_time"]):
        lines = rq.render(records, rq.parse_args(argv), now=NOW).split("\n")
        assert len(lines) == 10001
    assert lines[-1] == "10000 2024-05-01T10:57:55"


# -- rq: arguments and request ---------------------------------------------------

def test_rq_request_defaults(monkeypatch):
    monkeypatch.setattr(optiontypes, "current_user", lambda: "carol")
    assert rq.request(rq.parse_args([])) == {"active": True}
    fields = rq.request(rq.parse_args(
        ["-u", "alice,bob", "--me", "-A", "ml", "-p", "gpu,cpu", "-j", "4,5", "-j", "6",
         "-n", "train", "-w", "gpu[01-02]"]))
    assert fields == {
        "active": True, "users": ["alice", "bob", "carol"],
        "accounts": ["ml"], "partitions": ["gpu", "cpu"], "ids": [4, 5, 6],
        "names": ["train"], "nodes": ["gpu01", "gpu02"]}


def test_rq_request_states():
    fields = rq.request(rq.parse_args(["-t", "pd,R"]))
    assert fields["states"] == ["PENDING", "RUNNING"]
    fields = rq.request(rq.parse_args(["-t", "CD,failed"]))
    assert fields["states"] == ["COMPLETED", "FAILED"] and "active" not in fields
    fields = rq.request(rq.parse_args(["-t", "all"]))
    assert "states" not in fields and "active" not in fields


@pytest.mark.parametrize("argv, words", [
    (["-j", "12,abc"], ["-j/--jobs", "invalid job id 'abc'"]),
    (["-j", "0"], ["invalid job id '0'"]),
    (["-j", "9223372036854775808"], ["-j/--jobs", "job id 9223372036854775808 is out of range"]),
    (["-t", "nope"], ["-t/--states", "unknown job state 'nope'"]),
    (["-o", "%Y"], ["-o/--format", "%Y"]),
    (["-o", "jobid,bogus"], ["unknown field 'bogus'"]),
    (["-o", "name:x"], ["bad width"]),
    (["-o", "%i", "-O", "jobid"], ["not both"]),
    (["-w", "gpu[3-1]"], ["-w/--nodelist", "3 is greater than 1"]),
    (["--bogus"], ["unrecognized arguments: --bogus"]),
])
def test_rq_usage_errors(capsys, no_controller, argv, words):
    line = usage_error(capsys, rq.body, "rq", argv)
    for word in words:
        assert word in line


def test_rq_body(monkeypatch, capsys):
    seen = []

    def fake(op, **fields):
        seen.append((op, fields))
        # the compact form the controller answers a projection with
        names = fields["fields"]
        return {"ok": True, "columns": names, "rows": [[RUNNING.get(n) for n in names]]}
    monkeypatch.setattr(client, "call", fake)
    assert run_main("rq", rq.body, ["-h", "-o", "%i %t"]) == 0
    assert capsys.readouterr().out == "42 R\n"
    # and what names array tasks (12_7) and folds an array's pending ones (12_[5-99])
    assert seen == [("jobs", {"active": True, "fields": [
        "array_job_id", "array_task_id", "array_throttle", "id", "state"]})]


def test_rq_asks_only_for_fields_the_controller_has():
    from rmsbatch.ctld.records import PROJECTABLE
    from rmsbatch.ctld.ops.jobs import PLANNED
    for name in jobfields.JOB_FIELDS:
        layout = jobfields.job_layout(name)
        keys = rq.projection(layout)
        assert set(keys) <= PROJECTABLE | set(PLANNED), (name, keys)
        # and the rendered value needs nothing beyond them
        record = {k: RUNNING.get(k) for k in keys}
        assert layout.render([record], NOW, header=False) == layout.render([RUNNING], NOW, header=False)


def test_every_field_says_what_it_reads():
    for table in (jobfields.JOB_FIELDS, jobfields.SACCT_FIELDS):
        for name, field in table.items():
            assert field.reads, name


def test_rsacct_asks_only_for_what_it_shows():
    from rmsbatch.ctld.records import PROJECTABLE
    for name in jobfields.SACCT_FIELDS:
        args = rsacct.parse_args(["-o", name], now=NOW)
        keys = args.layout.reads()
        assert set(keys) <= PROJECTABLE, (name, keys)
        for job in (RUNNING, PENDING, DONE, FAILED):
            slim = {k: job.get(k) for k in keys}
            assert rsacct.render([slim], args, now=NOW) == rsacct.render([job], args, now=NOW), name
    default = rsacct.parse_args([], now=NOW).layout.reads()
    assert default == ["account", "alloc_cpus", "alloc_gpus", "exit_code", "exit_signal", "id",
                       "name", "partition", "state"]


# -- rsacct -------------------------------------------------------------------

def test_rsacct_default_table():
    args = rsacct.parse_args(["-j", "40,41,42,43"], now=NOW)
    assert rsacct.render([RUNNING, PENDING, DONE, FAILED], args, now=NOW) == (
        "JobID JobName        Partition Account AllocCPUS AllocGPUs State         ExitCode\n"
        "----- -------------- --------- ------- --------- --------- ------------- --------\n"
        "40    oom            gpu       ml              8         0 OUT_OF_MEMORY      0:9\n"
        "41    train          gpu       ml              8         2 COMPLETED          0:0\n"
        "42    train          gpu       ml              8         2 RUNNING            0:0\n"
        "43    eval-long-name gpu       nlp             0         0 PENDING            0:0")


def test_rsacct_parsable():
    args = rsacct.parse_args(["-P"], now=NOW)
    assert rsacct.render([PENDING, DONE], args, now=NOW) == (
        "JobID|JobName|Partition|Account|AllocCPUS|AllocGPUs|State|ExitCode\n"
        "41|train|gpu|ml|8|2|COMPLETED|0:0\n"
        "43|eval-long-name|gpu|nlp|0|0|PENDING|0:0")
    args = rsacct.parse_args(["-p", "-n", "-o", "jobid,exitcode"], now=NOW)
    assert rsacct.render([FAILED], args, now=NOW) == "40|0:9|"


def test_rsacct_all_fields():
    names = ("JobID,JobName,User,Account,Partition,QoS,State,ExitCode,Submit,Start,End,"
             "Elapsed,AllocCPUS,ReqMem,AllocGPUs,NodeList,MaxRSS,TotalCPU,Reason,Timelimit,"
             "NNodes")
    args = rsacct.parse_args(["-P", "-o", names.lower()], now=NOW)
    header, done, running, pending = rsacct.render([PENDING, RUNNING, DONE], args,
                                                   now=NOW).split("\n")
    assert header == names.replace("QoS", "QOS").replace(",", "|")
    assert done == ("41|train|alice|ml|gpu|normal|COMPLETED|0:0|2024-05-01T10:57:55|"
                    "2024-05-01T10:58:59|2024-05-01T11:58:59|01:00:00|8|16G|2|gpu001|2048K|"
                    "01:15.500|None|02:00:00|1")
    # A running job's elapsed time runs to now; its end is unknown.
    assert running.split("|")[10:12] == ["Unknown", "01:01:01"]
    assert pending.split("|")[9:12] == ["Unknown", "Unknown", "00:00:00"]
    assert pending.split("|")[15] == "None assigned"
    assert pending.split("|")[19] == "UNLIMITED"


def test_rsacct_fixed_width():
    args = rsacct.parse_args(["-o", "JobID%4,JobName%6"], now=NOW)
    assert rsacct.render([PENDING], args, now=NOW).split("\n") == [
        "JobI JobNam",
        "---- ------",
        "43   eval-+",
    ]


def test_rsacct_json_sorted():
    args = rsacct.parse_args(["--json"], now=NOW)
    doc = json.loads(rsacct.render([PENDING, DONE, RUNNING], args, now=NOW))
    assert [j["id"] for j in doc["jobs"]] == [41, 42, 43]


@pytest.mark.parametrize("text, expected", [
    ("now", NOW),
    ("NOW", NOW),
    ("now-2hours", NOW - 7200),
    ("now-30minutes", NOW - 1800),
    ("now-3days", NOW - 3 * 86400),
    ("now-90", NOW - 90),
    ("now+1hour", NOW + 3600),
    ("2024-05-01", time.mktime((2024, 5, 1, 0, 0, 0, 0, 0, -1))),
    ("2024-04-30T08:15", time.mktime((2024, 4, 30, 8, 15, 0, 0, 0, -1))),
    ("2024-04-30T08:15:30", time.mktime((2024, 4, 30, 8, 15, 30, 0, 0, -1))),
])
def test_rsacct_times(text, expected):
    assert rsacct.parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "now-2fortnights", "2024-13-01", "05/01",
                                  "now-", "2024-05-01 08:00"])
def test_rsacct_bad_times(text):
    with pytest.raises(ValueError, match="YYYY-MM-DD, YYYY-MM-DDTHH:MM"):
        rsacct.parse_when(text, NOW)


def test_rsacct_request_window(monkeypatch):
    midnight = time.mktime((2024, 5, 1, 0, 0, 0, 0, 0, -1))
    assert rsacct.request(rsacct.parse_args([], now=NOW)) == {
        "start_after": midnight, "all_users": False}
    assert rsacct.request(rsacct.parse_args(["-j", "7"], now=NOW)) == {
        "ids": [7], "all_users": False}
    fields = rsacct.request(rsacct.parse_args(
        ["-a", "-S", "now-1days", "-E", "now", "-s", "F,TO", "-A", "ml", "-r", "gpu",
         "--name", "x", "-X"], now=NOW))
    assert fields == {"start_after": NOW - 86400, "end_before": NOW, "all_users": True,
                      "states": ["FAILED", "TIMEOUT"], "accounts": ["ml"],
                      "partitions": ["gpu"], "names": ["x"]}
    # naming users or jobs is not "all users": the controller decides who may see what
    assert rsacct.request(rsacct.parse_args(["-u", "bob"], now=NOW))["all_users"] is False


@pytest.mark.parametrize("argv, words", [
    (["-S", "yesterday"], ["-S/--starttime", "invalid time 'yesterday'", "now-N"]),
    (["-E", "soon"], ["-E/--endtime"]),
    (["-o", "JobID,Nope"], ["unknown field 'Nope'", "JobID"]),
    (["-P", "-p"], ["not allowed with"]),
    (["-j", "x"], ["invalid job id 'x'"]),
    (["-s", "bogus"], ["unknown job state"]),
])
def test_rsacct_usage_errors(capsys, no_controller, argv, words):
    line = usage_error(capsys, rsacct.body, "rsacct", argv)
    for word in words:
        assert word in line


def test_rsacct_helpformat(capsys, no_controller):
    assert run_main("rsacct", rsacct.body, ["-e"]) == 0
    out = capsys.readouterr().out
    assert "MaxRSS" in out and "AllocGPUs" in out


# -- rinfo ----------------------------------------------------------------------

def test_rinfo_partitions():
    assert rinfo.render(NODES, PARTITIONS, rinfo.parse_args([])) == (
        "PARTITION AVAIL  TIMELIMIT NODES STATE GPUS       NODELIST\n"
        "gpu*      up    2-00:00:00     2 idle  gpu:a100:8 gpu[002-003]\n"
        "gpu*      up    2-00:00:00     1 mix   gpu:a100:8 gpu001\n"
        "gpu*      up    2-00:00:00     1 down  gpu:a100:8 gpu010\n"
        "gpu*      up    2-00:00:00     1 drain gpu:a100:8 gpu004\n"
        "cpu       up     UNLIMITED     1 idle  none       cpu01\n"
        "cpu       up     UNLIMITED     1 alloc none       cpu02\n"
        "debug     down       30:00     1 idle  none       cpu01\n"
        "debug     down       30:00     1 alloc none       cpu02\n"
        "empty     up     UNLIMITED     0 n/a   none")


def test_rinfo_groups_by_gpu_model():
    nodes = [node("g1"), node("g2", gpu_type="h100"), node("g3")]
    parts = [dict(name="p", nodes="g[1-3]", node_names=["g1", "g2", "g3"], default=False,
                  state="UP", default_time=0, max_time=0)]
    lines = rinfo.render(nodes, parts, rinfo.parse_args(["-h"])).split("\n")
    assert lines == ["p up UNLIMITED 2 idle gpu:a100:8 g[1,3]",
                     "p up UNLIMITED 1 idle gpu:h100:8 g2"]


def test_rinfo_long_partitions():
    lines = rinfo.render(NODES, PARTITIONS, rinfo.parse_args(["-l", "-p", "gpu"])).split("\n")
    assert lines[0].split() == ["PARTITION", "AVAIL", "TIMELIMIT", "DEFAULTTIME", "NODES",
                                "STATE", "CPUS(A/T)", "GPUS(A/T)", "GPUS", "NODELIST"]
    assert lines[1].split() == ["gpu*", "up", "2-00:00:00", "1:00:00", "2", "idle", "0/128",
                                "0/16", "gpu:a100:8", "gpu[002-003]"]
    assert lines[2].split()[5:8] == ["mix", "8/64", "2/8"]
    assert len(lines) == 5


def test_rinfo_nodes():
    out = rinfo.render(NODES, PARTITIONS, rinfo.parse_args(["-N"]))
    lines = out.split("\n")
    assert lines[0] == "NODELIST NODES PARTITION STATE CPUS(A/T) MEMORY GPUS(A/T) REASON"
    assert lines[1] == "cpu01        1 cpu       idle       0/64 512000       0/0 none"
    assert lines[2] == "cpu01        1 debug     idle       0/64 512000       0/0 none"
    assert lines[5] == "gpu001       1 gpu*      mix        8/64 512000       2/8 none"
    assert lines[8] == "gpu004       1 gpu*      drain      0/64 512000       0/8 bad fan"
    long = rinfo.render(NODES, PARTITIONS, rinfo.parse_args(["-N", "-l", "-n", "gpu001"]))
    assert long.split("\n")[1].split() == [
        "gpu001", "1", "gpu*", "mix", "8/64", "512000", "16384", "2/8", "gpu:a100:8",
        "a100,nvlink", "cgroup,devices", "none"]


def test_rinfo_filters():
    args = rinfo.parse_args(["-h", "-t", "idle,MIXED", "-p", "gpu"])
    assert rinfo.render(NODES, PARTITIONS, args) == (
        "gpu* up 2-00:00:00 2 idle gpu:a100:8 gpu[002-003]\n"
        "gpu* up 2-00:00:00 1 mix  gpu:a100:8 gpu001")
    args = rinfo.parse_args(["-N", "-h", "-p", "debug", "-n", "cpu[01-02],gpu001"])
    assert [line.split()[:3] for line in rinfo.render(NODES, PARTITIONS, args).split("\n")] \
        == [["cpu01", "1", "debug"], ["cpu02", "1", "debug"]]


def test_rinfo_reasons():
    assert rinfo.render(NODES, PARTITIONS, rinfo.parse_args(["-R"])) == (
        "REASON         NODES STATE NODELIST\n"
        "bad fan            1 drain gpu004\n"
        "not responding     1 down  gpu010")


def test_rinfo_json():
    doc = json.loads(rinfo.render(NODES, PARTITIONS, rinfo.parse_args(["--json", "-p", "cpu"])))
    assert [n["name"] for n in doc["nodes"]] == ["cpu01", "cpu02"]
    assert [p["name"] for p in doc["partitions"]] == ["cpu"]


def test_rinfo_request_and_errors(capsys, monkeypatch):
    assert rinfo.request(rinfo.parse_args(["-n", "gpu[01-02]"])) == {"names": "gpu[01-02]"}
    assert rinfo.request(rinfo.parse_args([])) == {"names": None}
    monkeypatch.setattr(client, "call", lambda op, **f: {"nodes": NODES, "partitions": PARTITIONS})
    assert "idle" in usage_error(capsys, rinfo.body, "rinfo", ["-t", "sleepy"])
    assert "gpu[2-1]" in usage_error(capsys, rinfo.body, "rinfo", ["-n", "gpu[2-1]"])
    assert run_main("rinfo", rinfo.body, ["-p", "nope"]) == 1
    assert capsys.readouterr().err == (
        "rinfo: error: no partition named 'nope' (partitions: cpu, debug, empty, gpu)\n")


# -- rcontrol -------------------------------------------------------------------

def test_rcontrol_show_job_text():
    args = rcontrol.parse_args(["show", "job", "42"])
    text = rcontrol.render_show(args, {"jobs": [RUNNING]}, now=NOW)
    lines = text.split("\n")
    assert lines[0] == "JobId=42 JobName=train"
    assert all(line.startswith("   ") for line in lines[1:])
    for expected in (
            "UserId=alice(1000) Account=ml QOS=normal",
            "JobState=RUNNING Reason=None ExitCode=0:0",
            "RunTime=01:01:01 TimeLimit=02:00:00",
            "SubmitTime=2024-05-01T10:57:55 StartTime=2024-05-01T10:58:59 "
            "EndTime=2024-05-01T12:58:59",
            "Partition=gpu NodeList=gpu001",
            "NumNodes=1 NumCPUs=8 NumTasks=1 CPUs/Task=8",
            "ReqMem=16G GPUs=2 GPUType=a100 GPUIndices=0,1",
            "WorkDir=/home/alice/run", "StdOut=/home/alice/run/out.txt",
            "StdErr=/home/alice/run/err.txt", "Protections=cgroup,devices"):
        assert "   " + expected in lines, expected


def test_rcontrol_show_pending_and_oneliner():
    args = rcontrol.parse_args(["-o", "show", "jobs"])
    lines = rcontrol.render_show(args, {"jobs": [PENDING, FAILED]}, now=NOW).split("\n")
    assert len(lines) == 2
    assert "JobState=PENDING Reason=Resources" in lines[0]
    assert "NodeList=(null)" in lines[0] and "StartTime=Unknown EndTime=Unknown" in lines[0]
    assert "TimeLimit=UNLIMITED" in lines[0] and "GPUIndices=(null)" in lines[0]
    assert "ExitCode=0:9" in lines[1]


def test_rcontrol_show_node_and_partition():
    args = rcontrol.parse_args(["show", "node", "gpu004"])
    assert rcontrol.render_show(args, {"nodes": [NODES[3]]}) == (
        "NodeName=gpu004 State=DRAIN\n"
        "   CPUAlloc=0 CPUTot=64\n"
        "   RealMemory=512000 AllocMem=0\n"
        "   Gres=gpu:a100:8 GPUsAlloc=0 GPUTot=8 GPUsDrained=0 GPUDetect=static\n"
        "   Features=a100,nvlink Partitions=gpu\n"
        "   LastHeartbeat=2024-05-01T11:59:55 Jobs=(null)\n"
        "   Protections=cgroup,devices\n"
        "   Reason=bad fan")
    args = rcontrol.parse_args(["show", "partition", "gpu"])
    assert rcontrol.render_show(args, {"nodes": NODES, "partitions": PARTITIONS}) == (
        "PartitionName=gpu\n"
        "   Default=YES State=UP\n"
        "   DefaultTime=01:00:00 MaxTime=2-00:00:00\n"
        "   Nodes=gpu[001-004,010]\n"
        "   TotalNodes=5 TotalCPUs=320 TotalGPUs=40")
    args = rcontrol.parse_args(["--json", "show", "partitions"])
    doc = json.loads(rcontrol.render_show(args, {"nodes": NODES, "partitions": PARTITIONS}))
    assert len(doc["partitions"]) == 4


def test_rcontrol_parse_admin_commands():
    args = rcontrol.parse_args(["update", "NodeName=gpu01", "State=Drain", "Reason=bad fan"])
    assert (args.command, args.nodelist, args.reason) == ("drain", "gpu01", "bad fan")
    args = rcontrol.parse_args(["UPDATE", "nodename=gpu[01-02]", "STATE=resume"])
    assert (args.command, args.nodelist) == ("resume", "gpu[01-02]")
    args = rcontrol.parse_args(["drain", "gpu[01-02]", "reason=replacing a fan"])
    assert (args.command, args.nodelist, args.reason) == ("drain", "gpu[01-02]",
                                                          "replacing a fan")
    assert rcontrol.parse_args(["drain", "gpu01", "--reason", "x"]).reason == "x"
    assert rcontrol.parse_args(["hold", "1,2", "3"]).ids == [1, 2, 3]
    assert rcontrol.parse_args(["Show", "JOB", "7"]).job_id == 7
    assert rcontrol.parse_args(["reconfigure"]).command == "reconfigure"
    assert rcontrol.parse_args(["show", "job", "7", "-o"]).oneliner is True
    assert rcontrol.parse_args(["-o", "show", "job", "7"]).oneliner is True
    assert rcontrol.parse_args(["show", "job", "7"]).oneliner is False


@pytest.mark.parametrize("argv, words", [
    (["drain", "gpu01"], ["drain needs a reason"]),
    (["drain", "gpu01", "reason="], ["drain needs a reason"]),
    (["drain", "gpu01", "bad", "fan"], ["expected KEY=VALUE"]),
    (["drain", "gpu[2-1]", "reason=x"], ["greater than"]),
    (["update", "NodeName=gpu01"], ["State=DRAIN or State=RESUME"]),
    (["update", "NodeName=gpu01", "State=Down"], ["State=DRAIN or State=RESUME"]),
    (["update", "NodeName=gpu01", "State=drain"], ["needs a reason"]),
    (["update", "JobId=4", "State=drain"], ["cannot update 'state' of a job"]),
    (["update", "job", "4", "TimeLimit=+x"], ["TimeLimit=+x: invalid time"]),
    (["requeue", "x"], ["invalid job id 'x'"]),
    (["update", "State=resume"], ["NodeName="]),
    (["show", "job", "abc"], ["invalid job id 'abc'"]),
    (["show", "widgets"], ["cannot show 'widgets'"]),
    (["show", "hostnames"], ["needs a host list"]),
    (["hold"], ["required"]),
    (["release", "x"], ["invalid job id 'x'"]),
    (["explode"], ["invalid choice"]),
    ([], ["required"]),
])
def test_rcontrol_usage_errors(capsys, no_controller, argv, words):
    line = usage_error(capsys, rcontrol.body, "rcontrol", argv)
    for word in words:
        assert word in line


def test_rcontrol_job_not_found(capsys, monkeypatch):
    seen = []

    def fake(op, **fields):
        seen.append((op, fields))
        return {"ok": True, "jobs": []}
    monkeypatch.setattr(client, "call", fake)
    assert run_main("rcontrol", rcontrol.body, ["show", "job", "99"]) == 1
    assert capsys.readouterr().err == "rcontrol: error: job 99 not found\n"
    assert seen == [("jobs", {"ids": [99]})]


def test_rcontrol_requests(capsys, monkeypatch):
    seen = []

    def fake(op, **fields):
        seen.append((op, fields))
        return {"ok": True, "nodes": ["gpu01"], "changed": [5], "errors": ["job 6 is not pending"]}
    monkeypatch.setattr(client, "call", fake)
    assert run_main("rcontrol", rcontrol.body, ["drain", "gpu01", "reason= fan "]) == 0
    assert run_main("rcontrol", rcontrol.body, ["update", "NodeName=gpu01", "State=resume"]) == 0
    assert run_main("rcontrol", rcontrol.body, ["hold", "5", "6"]) == 1
    assert run_main("rcontrol", rcontrol.body, ["reconfigure"]) == 0
    assert seen == [("drain", {"nodes": "gpu01", "reason": "fan"}),
                    ("resume", {"nodes": "gpu01"}),
                    ("hold", {"ids": [5, 6]}),
                    ("reconfigure", {})]
    assert capsys.readouterr().err == "rcontrol: error: job 6 is not pending\n"


def test_rcontrol_hostnames(capsys, no_controller):
    assert run_main("rcontrol", rcontrol.body, ["show", "hostnames", "gpu[01-03]"]) == 0
    assert capsys.readouterr().out == "gpu01\ngpu02\ngpu03\n"
    assert run_main("rcontrol", rcontrol.body, ["show", "hostlist", "n3,n1,n2,login"]) == 0
    assert capsys.readouterr().out == "login,n[1-3]\n"


# -- rcancel ------------------------------------------------------------------------

@pytest.mark.parametrize("text, name", [
    ("USR1", "SIGUSR1"), ("SIGUSR1", "SIGUSR1"), ("usr1", "SIGUSR1"), ("10", "SIGUSR1"),
    ("9", "SIGKILL"), ("term", "SIGTERM"),
])
def test_rcancel_signals(text, name):
    assert rcancel.parse_signal(text) == name


def test_rcancel_request(monkeypatch):
    monkeypatch.setattr(optiontypes, "current_user", lambda: "carol")
    assert rcancel.request(rcancel.parse_args(["42", "43,44"])) == {"ids": [42, 43, 44]}
    assert rcancel.request(rcancel.parse_args(["--me", "-t", "PD", "-s", "USR1"])) == {
        "users": ["carol"], "states": ["PENDING"], "signal": "SIGUSR1", "scope": "children"}
    assert rcancel.request(rcancel.parse_args(["-b", "-s", "USR1", "42"]))["scope"] == "batch"
    assert rcancel.request(rcancel.parse_args(["--full", "-s", "USR1", "42"]))["scope"] == "full"
    assert rcancel.request(rcancel.parse_args(
        ["-u", "bob", "-A", "ml", "-p", "gpu", "-n", "sweep"])) == {
        "users": ["bob"], "accounts": ["ml"], "partitions": ["gpu"], "names": ["sweep"]}


@pytest.mark.parametrize("argv, words", [
    ([], ["name the jobs to cancel"]),
    (["-s", "USR1"], ["name the jobs to cancel"]),
    (["abc"], ["invalid job id 'abc'"]),
    (["1" * 5000], ["is out of range (job ids go up to 9223372036854775807)"]),
    (["-s", "NOPE", "1"], ["unknown signal 'NOPE'"]),
    (["-q", "-v", "1"], ["not allowed with"]),
])
def test_rcancel_usage_errors(capsys, no_controller, argv, words):
    line = usage_error(capsys, rcancel.body, "rcancel", argv)
    for word in words:
        assert word in line


def test_rcancel_reports(capsys, monkeypatch):
    replies = iter([
        {"ok": True, "cancelled": [1], "signalled": [], "errors": []},
        {"ok": True, "cancelled": [1], "signalled": [],
         "errors": ["job 2 not found", "job 3 has already finished"]},
        {"ok": True, "cancelled": [], "signalled": [], "errors": ["job 2 not found"]},
        {"ok": True, "cancelled": [1], "signalled": [4], "errors": []},
    ])
    monkeypatch.setattr(client, "call", lambda op, **fields: next(replies))
    assert run_main("rcancel", rcancel.body, ["1"]) == 0
    assert capsys.readouterr() == ("", "")
    assert run_main("rcancel", rcancel.body, ["1", "2", "3"]) == 1
    assert capsys.readouterr().err == ("rcancel: error: job 2 not found\n"
                                       "rcancel: error: job 3 has already finished\n")
    assert run_main("rcancel", rcancel.body, ["-q", "2"]) == 1
    assert capsys.readouterr().err == ""
    assert run_main("rcancel", rcancel.body, ["-v", "-s", "10", "1", "4"]) == 0
    assert capsys.readouterr().err == ("rcancel: cancelled job 1\n"
                                       "rcancel: sent SIGUSR1 to job 4\n")


# -- every command ------------------------------------------------------------------

COMMANDS = [("rq", rq), ("rcancel", rcancel), ("rsacct", rsacct), ("rinfo", rinfo),
            ("rcontrol", rcontrol)]


@pytest.mark.parametrize("prog, module", COMMANDS)
def test_help_and_version(capsys, no_controller, prog, module):
    with pytest.raises(SystemExit) as info:
        module.build_parser().parse_args(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {prog} ")
    assert "\nExamples:\n" in out
    with pytest.raises(SystemExit) as info:
        module.build_parser().parse_args(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"{prog} (rmsbatch) 0.1.0\n"


@pytest.mark.parametrize("prog, module", COMMANDS)
def test_parser_errors_raise_usage_error(prog, module):
    with pytest.raises(UsageError):
        module.build_parser().parse_args(["--no-such-option"])


def test_commands_import_nothing_heavy():
    import subprocess
    import sys
    code = ("import sys, rmsbatch.cli.rq, rmsbatch.cli.rcancel, rmsbatch.cli.rsacct, "
            "rmsbatch.cli.rinfo, rmsbatch.cli.rcontrol; "
            "print(' '.join(m for m in ('pydantic', 'rich', 'tabulate', 'psutil', 'click') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ""


def test_gpu_rows_say_unknown_memory_is_unknown():
    node = {"name": "n", "devices": [{"index": 0, "type": "gpu", "mem_mb": 0, "state": "idle"},
                                     {"index": 1, "type": "h100", "mem_mb": 81559, "state": "idle"}]}
    rows = nodetables.gpu_rows([node])
    assert [r["memory"] for r in rows] == ["-", "81559M"]
    assert "Memory=(null)" in details.device_line(node["devices"][0])
