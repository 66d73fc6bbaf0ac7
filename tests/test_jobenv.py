"""What a batch script finds in its environment: the Slurm variables sbatch would set
for the options given (no more, no fewer), each with its RMS_ twin."""
from __future__ import annotations

import os

from rmsbatch.node.jobenv import compress_counts, job_variables

# What every batch job gets, whatever it asked for (SLURM_ and RMS_ alike).
ALWAYS = {
    "JOB_ID", "JOBID", "JOB_NAME", "JOB_NODELIST", "NODELIST", "JOB_NUM_NODES", "NNODES",
    "SUBMIT_DIR", "SUBMIT_HOST", "JOB_ACCOUNT", "JOB_PARTITION", "JOB_QOS", "JOB_USER",
    "JOB_UID", "CLUSTER_NAME", "RESTART_COUNT", "NODEID", "PROCID", "LOCALID", "GTIDS",
    "CPUS_ON_NODE", "JOB_CPUS_PER_NODE", "TASKS_PER_NODE", "JOB_START_TIME",
    "JOB_END_TIME", "TASK_PID",
}

PRINT_ENV = """#!/bin/bash
#SBATCH --time=10          # minutes: SLURM_JOB_END_TIME is start + 600
#SBATCH --job-name envprobe
{directives}
echo "SHELL_PID=$$"
env | grep -E '^(SLURM|SLURMD|RMS)_' | sort
"""


def submit_probe(c, *directives: str, env: dict | None = None) -> int:
    script = os.path.join(c.work, f"probe{len(os.listdir(c.work))}.sh")
    with open(script, "w") as fh:
        fh.write(PRINT_ENV.format(directives="\n".join(f"#SBATCH {d}" for d in directives)))
    return c.submit(script, env=env)


def variables(c, job_id: int) -> tuple[dict[str, str], dict[str, str], str]:
    """(SLURM_ names -> value without the prefix, RMS_ likewise, the shell's pid)."""
    assert c.wait_ended(job_id)["state"] == "COMPLETED", c.output(job_id)
    slurm, rms, pid = {}, {}, ""
    for line in c.output(job_id).splitlines():
        key, _, value = line.partition("=")
        if key == "SHELL_PID":
            pid = value
        elif key == "SLURMD_NODENAME":
            slurm["SLURMD_NODENAME"] = value
        elif key.startswith("SLURM_"):
            slurm[key[len("SLURM_"):]] = value
        elif key.startswith("RMS_") and key not in ("RMS_CONF_DIR", "RMS_CMDSERVER_DIR"):
            # (those two are the submitter's)
            rms[key[len("RMS_"):]] = value
    return slurm, rms, pid


def test_slurm_variables_follow_the_options_given(new_cluster):
    c = new_cluster(gpus=4, start=False)
    c.up("--cpus", "8", "--memory", "16G")
    plain = submit_probe(c, env={"SLURM_NTASKS": "7", "SLURM_MEM_PER_NODE": "5",
                                 "RMS_CPUS_PER_TASK": "3"})
    tasks = submit_probe(c, "-n 2   # two tasks", "--mem-per-cpu=256M")
    cpus = submit_probe(c, "-c 4", "--mem 1G", "-G 1")
    gpus = submit_probe(c, "--gpus-per-node=2", "--mem-per-gpu 300M",
                        "--export=ALL,EXTRA=1")
    expected = {
        # nothing asked for: one task on one CPU, the default memory per CPU; what the
        # submitter's environment held from another job is not passed on
        plain: ALWAYS | {"MEM_PER_CPU"},
        tasks: ALWAYS | {"NTASKS", "NPROCS", "MEM_PER_CPU"},
        cpus: ALWAYS | {"CPUS_PER_TASK", "MEM_PER_NODE", "GPUS", "GPUS_ON_NODE", "JOB_GPUS"},
        gpus: ALWAYS | {"GPUS_PER_NODE", "MEM_PER_GPU", "GPUS_ON_NODE", "JOB_GPUS",
                        "EXPORT_ENV"},
    }
    seen = {}
    for job_id, names in expected.items():
        slurm, rms, pid = variables(c, job_id)
        seen[job_id] = slurm
        assert set(slurm) == names | {"SLURMD_NODENAME"}, job_id
        assert {k: v for k, v in rms.items() if k != "NODENAME"} == \
            {k: v for k, v in slurm.items() if k != "SLURMD_NODENAME"}
        assert rms["NODENAME"] == slurm["SLURMD_NODENAME"] == c.node
        assert slurm["TASK_PID"] == pid                     # the batch shell itself
        assert slurm["JOB_ID"] == slurm["JOBID"] == str(job_id)
        assert slurm["GTIDS"] == slurm["PROCID"] == slurm["NODEID"] == "0"
        assert int(slurm["JOB_END_TIME"]) - int(slurm["JOB_START_TIME"]) == 600
        assert slurm["JOB_NAME"] == "envprobe"
    assert seen[plain]["TASKS_PER_NODE"] == "1" and seen[plain]["CPUS_ON_NODE"] == "1"
    assert seen[plain]["MEM_PER_CPU"] == "1024"               # default_mem_per_cpu
    assert seen[tasks]["NTASKS"] == seen[tasks]["NPROCS"] == "2"
    assert seen[tasks]["TASKS_PER_NODE"] == "2" and seen[tasks]["JOB_CPUS_PER_NODE"] == "2"
    assert seen[tasks]["MEM_PER_CPU"] == "256"
    assert seen[cpus]["CPUS_PER_TASK"] == "4" and seen[cpus]["CPUS_ON_NODE"] == "4"
    assert seen[cpus]["TASKS_PER_NODE"] == "1" and seen[cpus]["MEM_PER_NODE"] == "1024"
    assert seen[cpus]["GPUS"] == "1" and seen[cpus]["GPUS_ON_NODE"] == "1"
    assert seen[gpus]["GPUS_PER_NODE"] == "2" and seen[gpus]["MEM_PER_GPU"] == "300"
    assert len(seen[gpus]["JOB_GPUS"].split(",")) == 2
    assert seen[gpus]["EXPORT_ENV"] == "ALL,EXTRA=1"


def test_an_unlimited_job_has_no_end_time(new_cluster):
    c = new_cluster(gpus=0)
    job_id = c.submit("-t", "UNLIMITED", "--wrap",
                      "echo ${SLURM_JOB_START_TIME:-none} ${SLURM_JOB_END_TIME:-none}")
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    start, end = c.output(job_id).split()
    assert start.isdigit() and end == "none"


def test_a_two_node_job_sees_its_layout(new_cluster):
    def two_nodes(c):
        c.set_nodes("rmsna,rmsnb")
    c = new_cluster(gpus=0, before_start=two_nodes)
    c.start_rmsd("rmsnb")
    job_id = submit_probe(c, "--nodes=2", "--ntasks=3")
    slurm, _, _ = variables(c, job_id)
    assert slurm["JOB_NUM_NODES"] == slurm["NNODES"] == "2"
    assert slurm["NTASKS"] == "3" and slurm["TASKS_PER_NODE"] == "2,1"
    assert slurm["JOB_CPUS_PER_NODE"] == "2(x2)" and slurm["CPUS_ON_NODE"] == "2"
    assert slurm["SLURMD_NODENAME"] == "rmsna"          # the batch script's node


# -- the layout of a multi-node job, as the launch message gives it ------------------

def launch(nodes: list[tuple[str, int]], ntasks: int, **spec) -> dict:
    return {"job_id": 9, "name": "j", "nodelist": "n[1-3]", "nodes": len(nodes),
            "submit_dir": "/tmp", "submit_host": "h", "account": "a", "partition": "p",
            "qos": "normal", "user": "u", "uid": 1000, "gid": 1000, "cluster": "c",
            "restart_count": 0, "ntasks": ntasks, "cpus_per_task": spec.get("cpus_per_task", 1),
            "export": "ALL", "time_limit": 0, "start_time": 1_700_000_000,
            "alloc": {"cpus": nodes[0][1], "mem_mb": 4096, "gpus": []},
            "layout": [list(n) for n in nodes], "spec": spec}


def test_compressed_counts_read_as_slurm_writes_them():
    assert compress_counts([2, 2, 2, 1]) == "2(x3),1"
    assert compress_counts([8, 8]) == "8(x2)"
    assert compress_counts([1, 2, 1]) == "1,2,1"


def test_tasks_per_node_over_several_nodes():
    three = [("n1", 8), ("n2", 8), ("n3", 4)]
    per_node = job_variables(launch(three, 6, ntasks_given=True, ntasks_per_node=2))
    assert per_node["TASKS_PER_NODE"] == "2(x3)" and per_node["NTASKS"] == "6"
    assert per_node["NTASKS_PER_NODE"] == "2" and per_node["JOB_CPUS_PER_NODE"] == "8(x2),4"
    uneven = job_variables(launch(three[:2], 3, ntasks_given=True))
    assert uneven["TASKS_PER_NODE"] == "2,1" and uneven["JOB_CPUS_PER_NODE"] == "8(x2)"
    # no -n: as many tasks as each node's CPUs hold (Slurm's count), and no SLURM_NTASKS
    implicit = job_variables(launch(three, 3, cpus_per_task=4))
    assert implicit["TASKS_PER_NODE"] == "2(x2),1" and "NTASKS" not in implicit
    assert implicit["CPUS_PER_TASK"] == "4"
    gpu = job_variables(launch(three[:1], 4, ntasks_given=True, gpus_per_task=1,
                               cpus_per_gpu=2, gpu_type="a100", gpus_per_node=4))
    assert gpu["GPUS_PER_TASK"] == "1" and gpu["CPUS_PER_GPU"] == "2"
    assert gpu["GPUS_PER_NODE"] == "a100:4"
    assert "JOB_END_TIME" not in gpu                       # time_limit 0: unlimited
