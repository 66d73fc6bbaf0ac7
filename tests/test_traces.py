"""Trace readers of the trace simulator: every format read from a tiny hand-made
file in its real column layout; RMS_TRACES_DIR (optional) names a folder of the
real traces to check job counts against their published ones."""
from __future__ import annotations

import gzip
import os

import pytest

from rmsbatch.sim.traces import FORMATS, Trace, TraceError, TraceJob, read_trace, window

# Header as the Parallel Workloads Archive writes it; jobs chosen to hit
# RLScheduler's rules (job.py): 3 has run time 0 (dropped), 4 a negative run time
# (kept as 10 s), 5 requests more processors than it got (the larger counts),
# 6 has no processor count at all, 7 no requested time (-> its run time),
# 8 writes an integer field as "4.00".
SWF = """\
; Version: 2.2
; Computer: Test SP2
; Information: http://example.org/one
;              http://example.org/two
; MaxJobs: 8
; MaxNodes: 64 (batch partition; 128 total)
; MaxProcs: 256
; Queue:  1 short
; Queue:  2 long
;
    1        0     10    100   16   90.5   -1   16    3600  2048  1  7  3 -1  1  1 -1 -1
    2       30      5   7200    8  7100    -1    8    7200    -1  0  8 -1 -1  2 -1 -1 -1
    3       40     -1      0    4    -1    -1    4     600    -1  5  7  3 -1  1  1 -1 -1
    4       50     -1     -1    2    -1    -1    2     300    -1 -1 -1 -1 -1 -1 -1 -1 -1
    5       60     -1     20    4    -1    -1   12     100    -1  1  9  3 -1  1  1 -1 -1
    6       70     -1     20   -1    -1    -1   -1     100    -1  1  9  3 -1  1  1 -1 -1
    7       80     -1    500    1    -1    -1   -1      -1    -1  1  9  3 -1  1  1 -1 -1
    8       90     -1     60 4.00  12.00   -1   -1     120    -1  1  9  3 -1  1  1 -1 -1
"""

# ALCF's conversions: absolute Unix times, not sorted, tab-separated, a 19th column.
ALCF = """\
; Installation: Theta Argonne
; MaxJobs: 3
; MaxNodes: 4392
; MaxProcs: 4392
639487\t1672529301\t-1\t3632\t-1\t-1\t-1\t8\t3600\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t0
639448\t1672507846\t-1\t21654\t-1\t-1\t-1\t256\t21600\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t0
639135\t1672507846\t-1\t21655\t-1\t-1\t-1\t4096\t21600\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t-1\t0
"""

PHILLY = """\
timestamp,duration,num_gpus,gpu_time,cluster
2017-10-09 07:01:55,66.0,1,66.0,11cb48
2017-10-09 06:13:03,2951.0,1,2951.0,6214e9
2017-10-09 06:13:03,10.0,8,80.0,6214e9
2017-10-10 06:13:03,120.0,16,1920.0,b436b2
2017-10-09 08:00:00,0.0,2,0.0,b436b2
"""

RFOLD = """\
#job id,arrival time (sec),topology,shape,size,duration (sec)
0,0.0,CLOS,1,1,3613033.0
1,266563.0,CLOS,2+2,4,3222990.0
2,266563.0,CLOS,8,8,0.0
3,100.5,CLOS,1,1,42.0
"""

ITP = """\
job_id,submission_time,duration,num_gpu
965d744f-0445-c1a8-12af-97e4c536c66e,1932025,2429,64
fb10987f-20ac-3703-eb67-146a77a6e17c,2000581,1532,1
5dc7d9cd-c300-9a4f-c3cd-dc2cc0935548,5010,604,16
"""

OPENB = """\
name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time
openb-pod-0000,12000,16384,1,1000,,LS,Running,0,12537496,0
openb-pod-0001,6000,12288,1,460,,LS,Succeeded,427061,12902960,427061
openb-pod-0002,88000,327680,8,1000,,BE,Failed,500000,600000,500100
openb-pod-0003,11908,47104,1,1000,,BE,Pending,10001278,10001403,
openb-pod-0004,4500,8192.5,0,0,,Burstable,Running,20,40,30
"""


def write(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text)
    return str(path)


# -- SWF ----------------------------------------------------------------------

def test_swf_jobs_follow_rlscheduler_rules(tmp_path):
    tr = read_trace(write(tmp_path, "test.swf", SWF))
    assert (tr.name, tr.format) == ("test", "swf")
    assert [j.id for j in tr.jobs] == [1, 2, 4, 5, 7, 8]
    assert tr.skipped == {"run time 0": 1, "no processors": 1}
    by_id = {j.id: j for j in tr.jobs}
    assert by_id[1] == TraceJob(1, 0.0, 100.0, 3600.0, 16, 0, 0, 1000, mem_mb=32,
                                user="7", tenant="3", queue="1", status=1)
    assert by_id[2].status == 0 and by_id[2].tenant == "" and by_id[2].mem_mb == 0
    # negative run time: 10 s, as RLScheduler does; -1 fields become "unknown"
    assert (by_id[4].run, by_id[4].requested, by_id[4].status, by_id[4].user, by_id[4].queue) \
        == (10.0, 300.0, None, "", "")
    assert by_id[5].procs == 12            # max(allocated 4, requested 12)
    assert by_id[7].requested == 500.0     # no requested time: the run time
    assert by_id[8].procs == 4
    assert all(j.gpus == 0 and j.nodes == 0 for j in tr.jobs)


def test_swf_header(tmp_path):
    tr = read_trace(write(tmp_path, "test.swf", SWF))
    assert (tr.max_procs, tr.max_nodes) == (256, 64)
    assert tr.header["MaxNodes"] == "64 (batch partition; 128 total)"
    assert tr.header["Queue"] == "1 short\n2 long"
    assert tr.header["Information"] == "http://example.org/one\nhttp://example.org/two"
    lublin = "; MaxNodes: 256\n1 5094 -1 12072 16 -1 -1 -1 -1 -1 1 -1 -1 -1 0 -1 -1 -1\n"
    tr = read_trace(write(tmp_path, "lublin_256.swf", lublin))
    # No MaxProcs in the header: say so rather than guess; submit times as written.
    assert (tr.max_procs, tr.max_nodes) == (None, 256)
    assert tr.jobs[0].submit == 5094.0 and tr.jobs[0].requested == 12072.0


def test_swf_gzip(tmp_path):
    plain = read_trace(write(tmp_path, "test.swf", SWF))
    tr = read_trace(write(tmp_path, "CTC-SP2-1996-3.1-cln.swf.gz", SWF))
    assert tr.name == "CTC-SP2-1996-3.1-cln"
    assert tr.jobs == plain.jobs and tr.skipped == plain.skipped


def test_alcf_unsorted_absolute_times_are_sorted_and_rebased(tmp_path):
    tr = read_trace(write(tmp_path, "theta_walltime.swf", ALCF))
    assert [j.id for j in tr.jobs] == [639135, 639448, 639487]   # (submit, id)
    assert [j.submit for j in tr.jobs] == [0.0, 0.0, 21455.0]
    assert [j.procs for j in tr.jobs] == [4096, 256, 8]
    assert tr.jobs[2].requested == 3600.0 and tr.max_procs == 4392


# -- GPU CSV traces -------------------------------------------------------------

def test_philly(tmp_path):
    tr = read_trace(write(tmp_path, "philly.csv", PHILLY))
    assert tr.format == "philly" and tr.skipped == {"run time <= 0": 1}
    assert [(j.id, j.submit) for j in tr.jobs] == [(2, 0.0), (3, 0.0), (1, 2932.0), (4, 86400.0)]
    assert tr.jobs[0] == TraceJob(2, 0.0, 2951.0, None, 0, 0, 1, tenant="6214e9")
    assert tr.jobs[3].gpus == 16 and tr.jobs[3].tenant == "b436b2"


def test_philly_rfold(tmp_path):
    tr = read_trace(write(tmp_path, "philly_trace.csv", RFOLD))
    assert tr.format == "philly_rfold" and tr.skipped == {"run time <= 0": 1}
    assert [(j.id, j.submit, j.gpus) for j in tr.jobs] == [(0, 0.0, 1), (3, 100.5, 1), (1, 266563.0, 4)]
    assert tr.jobs[2].run == 3222990.0 and tr.jobs[2].requested is None


def test_itp(tmp_path):
    tr = read_trace(write(tmp_path, "cluster01.csv", ITP))
    assert tr.format == "itp" and tr.skipped == {}
    # UUIDs: ids are row numbers; submission times stay relative to the collection start
    assert tr.jobs[0] == TraceJob(3, 5010.0, 604.0, None, 0, 0, 16)
    assert [j.id for j in tr.jobs] == [3, 1, 2]


def test_openb(tmp_path):
    tr = read_trace(write(tmp_path, "openb_pod_list_default.csv", OPENB))
    assert tr.format == "openb"
    assert tr.skipped == {"never scheduled (no scheduled_time)": 1}
    by_id = {j.id: j for j in tr.jobs}
    assert sorted(by_id) == [0, 1, 2, 4]
    assert by_id[1] == TraceJob(1, 427061.0, 12902960.0 - 427061.0, None, 6, 0, 1, gpu_milli=460,
                                mem_mb=12288, queue="LS", status=1)
    assert (by_id[0].gpu_milli, by_id[0].status) == (1000, None)
    assert (by_id[2].gpus, by_id[2].procs, by_id[2].run, by_id[2].status) == (8, 88, 99900.0, 0)
    assert (by_id[4].procs, by_id[4].gpus, by_id[4].gpu_milli, by_id[4].mem_mb) == (5, 0, 1000, 8193)


def test_openb_without_times_is_an_empty_trace(tmp_path):
    text = "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nopenb-pod-0000,12000,16384,1,1000\n" \
           "openb-pod-0001,6000,12288,1,460\n"
    tr = read_trace(write(tmp_path, "openb_pod_list_multigpu50.csv", text))
    assert tr.jobs == [] and sum(tr.skipped.values()) == 2


# -- window, empty traces ----------------------------------------------------------

def test_window(tmp_path):
    tr = read_trace(write(tmp_path, "test.swf", SWF))
    w = window(tr, 2, 3)
    assert [j.id for j in w.jobs] == [4, 5, 7]
    assert [j.submit for j in w.jobs] == [0.0, 10.0, 30.0]
    assert w.jobs[0].run == 10.0 and w.max_procs == 256 and w.name == "test"
    assert [j.id for j in window(tr, 4, None).jobs] == [7, 8]
    assert window(tr, 99, 5).jobs == []
    assert [j.submit for j in tr.jobs][:3] == [0.0, 30.0, 50.0]   # the original is untouched
    with pytest.raises(ValueError):
        window(tr, -1, 3)


def test_empty_and_all_skipped_traces(tmp_path):
    assert read_trace(write(tmp_path, "empty.swf", "")).jobs == []
    assert read_trace(write(tmp_path, "hdr.swf", "; MaxProcs: 8\n")).max_procs == 8
    zero = "1 0 -1 0 4 -1 -1 4 60 -1 1 1 1 -1 1 -1 -1 -1\n"
    tr = read_trace(write(tmp_path, "zero.swf", zero))
    assert tr.jobs == [] and tr.skipped == {"run time 0": 1}
    tr = read_trace(write(tmp_path, "philly.csv", PHILLY.splitlines(True)[0]))
    assert tr.format == "philly" and tr.jobs == []
    assert read_trace(write(tmp_path, "empty.csv", ""), "itp").jobs == []


# -- errors ------------------------------------------------------------------------

@pytest.mark.parametrize("name,text,fmt,expect", [
    ("bad.swf", SWF.replace("   20   -1", "   20", 1), None, "bad.swf line 16: 17 fields, SWF has 18"),
    ("bad.swf", SWF.replace("   7200    8", "   72x0    8"), None, "bad.swf line 12: field 4 (run time) is '72x0'"),
    ("bad.swf.gz", SWF.replace("    90     -1", "    nan     -1"), None, "bad.swf.gz line 18: field 2 (submit time)"),
    ("bad.swf", SWF.replace("   100    -1  1  9", "   100    -1  1.5  9"), None, "line 15: field 11 (status) is '1.5', not a whole"),
    ("p.csv", PHILLY.replace("66.0,1,", "66.0,one,"), None, "p.csv line 2: num_gpus is 'one'"),
    ("p.csv", PHILLY.replace("07:01:55", "7 o'clock"), None, "p.csv line 2: timestamp"),
    ("p.csv", PHILLY.replace(",2951.0,1,2951.0,6214e9", ",2951.0"), None, "p.csv line 3: 2 columns, the header has 5"),
    ("i.csv", "\n" + ITP.replace("604,16", "604,1.5"), None, "i.csv line 5: num_gpu is '1.5', not an integer"),
    ("o.csv", OPENB.replace("1,460,", "1,4600,"), None, "o.csv line 3: gpu_milli 4600"),
    ("p.csv", PHILLY, "itp", "p.csv line 1: header lacks the itp column(s) 'job_id'"),
    ("x.csv", "a,b,c\n1,2,3\n", None, "x.csv line 1: CSV columns"),
    ("nodes.csv", "sn,cpu_milli,memory_mib,gpu,model\nn0,64000,262144,2,P100\n", None, "node list"),
    ("notes.txt", "\n\nhello world\n", None, "notes.txt line 3: neither SWF"),
    ("empty.csv", "", None, "empty.csv: empty file"),
    ("t.swf", SWF, "pbs", "unknown trace format 'pbs'"),
])
def test_malformed_input_names_file_and_line(tmp_path, name, text, fmt, expect):
    with pytest.raises(TraceError) as e:
        read_trace(write(tmp_path, name, text), fmt)
    assert expect in str(e.value)


def test_missing_and_damaged_files(tmp_path):
    with pytest.raises(TraceError, match="nothere.swf: cannot read"):
        read_trace(str(tmp_path / "nothere.swf"))
    path = tmp_path / "cut.swf.gz"
    path.write_bytes(gzip.compress(SWF.encode())[:60])
    with pytest.raises(TraceError, match="cut.swf.gz: cannot read"):
        read_trace(str(path))


# -- detection -----------------------------------------------------------------------

def test_format_detection(tmp_path):
    assert FORMATS == ("swf", "philly", "philly_rfold", "itp", "openb")
    # RLScheduler ships Lublin-2 as "lublin_256_new2", no extension: its ';' header says SWF
    assert read_trace(write(tmp_path, "lublin_256_new2", SWF)).format == "swf"
    # headerless SWF with no extension: 18 numbers
    assert read_trace(write(tmp_path, "log", SWF.split(";\n")[-1])).format == "swf"
    # ElasticFlow's generated files add columns to ITP's; still ITP
    gen = "job_id,submission_time,num_iteration,model_name,deadline,batch_size,num_gpu,duration\n" \
          "965d744f,1932025,45775,resnet50,1933904,256,64,2429\n"
    tr = read_trace(write(tmp_path, "cluster01.csv", gen))
    assert tr.format == "itp" and tr.jobs[0].gpus == 64 and tr.jobs[0].run == 2429.0
    for name, text, fmt in (("a.csv", PHILLY, "philly"), ("b.csv", RFOLD, "philly_rfold"),
                            ("c.csv.gz", ITP, "itp"), ("d.csv", OPENB, "openb")):
        assert read_trace(write(tmp_path, name, text)).format == fmt
        assert read_trace(write(tmp_path, name, text), fmt).format == fmt


def test_trace_is_a_plain_record():
    tr = Trace("t", "swf", [], None, None)
    assert tr.skipped == {} and tr.header == {}
    job = TraceJob(1, 0.0, 1.0, None, 1, 0, 0)
    with pytest.raises(AttributeError):
        job.run = 2.0


# -- the real traces (optional) ----------------------------------------------------------

# (file under RMS_TRACES_DIR, job rows in the file as its SOURCE.txt counts them, format);
# RFold's SOURCE.txt says 111,548, but its ids run 0..111,548 (the last line has no newline).
REAL = [
    ("rlscheduler_lublin/lublin_256.swf", 10_000, "swf"),
    ("pwa_swf/CTC-SP2-1996-3.1-cln.swf.gz", 77_222, "swf"),
    ("alcf_swf/theta_walltime.swf", 23_387, "swf"),
    ("philly_pollux/philly.csv", 82_247, "philly"),
    ("philly_rfold/philly_trace.csv", 111_549, "philly_rfold"),
    ("elasticflow_itp/raw/cluster02.csv", 5_778, "itp"),
    ("alibaba_gpu_v2023/openb_pod_list_default.csv", 8_152, "openb"),
]


@pytest.mark.slow
@pytest.mark.parametrize("rel,rows,fmt", REAL)
def test_real_trace_counts(rel, rows, fmt):
    base = os.environ.get("RMS_TRACES_DIR")
    if not base or not os.path.exists(os.path.join(base, rel)):
        pytest.skip("RMS_TRACES_DIR does not name a folder holding the real traces")
    tr = read_trace(os.path.join(base, rel))
    assert tr.format == fmt
    assert len(tr.jobs) + sum(tr.skipped.values()) == rows
    assert tr.jobs and tr.jobs[0].submit >= 0 and all(j.run > 0 for j in tr.jobs)
    assert all(a.submit <= b.submit for a, b in zip(tr.jobs, tr.jobs[1:]))
