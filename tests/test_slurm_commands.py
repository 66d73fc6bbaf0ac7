"""Job bodies written for Slurm call `srun`, `scontrol show hostnames` and `squeue`:
inside a job those names are rmsbatch's commands (node_daemon key slurm_commands)."""
from __future__ import annotations

import os

BODY = """#!/bin/bash
#SBATCH --ntasks=2
#SBATCH --job-name=slurmish
for host in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do echo "host $host"; done
srun -l bash -c 'echo "rank $SLURM_PROCID"' | sort
squeue -h -j "$SLURM_JOB_ID" -o '%i %t'
echo "srun is $(command -v srun)"
"""


def write(c, name: str, text: str) -> str:
    path = os.path.join(c.work, name)
    with open(path, "w") as fh:
        fh.write(text)
    return path


def test_a_body_written_for_slurm_finds_srun_scontrol_and_squeue(new_cluster):
    c = new_cluster(gpus=0)
    job_id = c.submit(write(c, "slurmish.sh", BODY))
    job = c.wait_ended(job_id)
    lines = c.output(job_id).splitlines()
    assert job["state"] == "COMPLETED", lines
    node = job["nodelist"]
    assert lines[:4] == [f"host {node}", "0: rank 0", "1: rank 1", f"{job_id} R"], lines
    assert lines[4].startswith("srun is ") and lines[4].endswith("/slurm-bin/srun")
    # a job submitted from inside a job gets the directory once on its PATH
    inner = c.submit("--wrap", "sbatch --parsable --wrap 'echo $PATH' > inner-id")
    assert c.wait_ended(inner)["state"] == "COMPLETED"
    with open(os.path.join(c.work, "inner-id")) as fh:
        nested = int(fh.read())
    assert c.wait_ended(nested)["state"] == "COMPLETED"
    path = c.output(nested).strip().split(":")
    assert sum(d.endswith("/slurm-bin") for d in path) == 1, path


def test_the_slurm_names_can_be_turned_off(new_cluster):
    def off(c):
        c.tweak("[node_daemon]\n", "[node_daemon]\nslurm_commands = false\n")
    c = new_cluster(gpus=0, before_start=off)
    job_id = c.submit("--wrap", "echo \"srun is $(command -v srun || echo none)\"")
    assert c.wait_ended(job_id)["state"] == "COMPLETED"
    assert "slurm-bin" not in c.output(job_id)
