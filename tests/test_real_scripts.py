"""Real job scripts run unchanged: one script per option family, written the way people
write them, submitted held to a running cluster, and read back with
`rcontrol show job ID --json` to see how rmsbatch understood them."""
import json
import os
import shutil

import pytest

from conftest import Cluster, _kill_leftovers, _new_cluster_dir, wait_for

# Nodes beyond the local one: no rmsd runs for them, so the jobs stay pending (held);
# what matters here is how each script was understood.
MORE = """
[[nodes]]
names = "gpu[01-08]"
cpus = 96
memory = "1000G"
threads_per_core = 2                 # --hint=nomultithread: a core is 2 CPUs
tmp_disk = "800G"
gres = { nvme = 1, gpumem = "80G" }
features = ["a100", "ib"]

[[nodes.gpus]]
type = "a100"
count = 8
memory = "80G"

[[nodes]]
names = "cpu[01-04]"
cpus = 64
memory = "500G"
features = ["avx512"]

[[partitions]]
name = "gpu"
nodes = "gpu[01-08]"
max_time = "3-00:00:00"

[[partitions]]
name = "cpu"
nodes = "cpu[01-04]"

[licenses]
matlab = 10
comsol = 1

[[reservations]]
name = "maint"
nodes = "gpu[07-08]"
users = ["root"]

[submit]
site_options = ["image", "module"]
"""
TENANTS = """admins = ["root"]
private_accounting = false
[[accounts]]
name = "default"
users = ["*"]
[[accounts]]
name = "ml"
users = ["*"]
qos = ["normal", "high"]
"""


@pytest.fixture(scope="module")
def c():
    cluster = Cluster(_new_cluster_dir(), 4)
    cluster.up()
    cluster.down()
    cluster.tweak('name = "local"', 'name = "aurora"')
    with open(os.path.join(cluster.dir, "cluster.toml"), "a") as fh:
        fh.write(MORE)
    with open(os.path.join(cluster.dir, "tenants.toml"), "w") as fh:
        fh.write(TENANTS)
    cluster.up()
    yield cluster
    cluster.down()
    _kill_leftovers(cluster.dir)
    shutil.rmtree(cluster.dir, ignore_errors=True)


def held(c, text: str, *options) -> dict:
    """Submit the script held (as `rsub -H script.sh`); the job as rcontrol shows it."""
    path = os.path.join(c.work, "job.sh")
    with open(path, "w") as fh:
        fh.write(text)
    job_id = c.submit("-H", *options, "job.sh")
    return c.job(job_id)


def refused(c, text: str) -> str:
    with open(os.path.join(c.work, "bad.sh"), "w") as fh:
        fh.write(text)
    result = c.run("rsub", "-H", "bad.sh")
    assert result.returncode != 0 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rsub: error: "), result.stderr
    return lines[0]


def test_tasks_per_node_with_a_gpu_each(c):
    job = held(c, """#!/bin/bash
#SBATCH --job-name=ddp-train
#SBATCH --partition=gpu
#SBATCH --nodes 2
#SBATCH --ntasks-per-node=8      # one task per GPU
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=10
#SBATCH --mem=0                  # all of the node
#SBATCH --time=2-00:00:00
srun python train.py --config cfg.yaml
""")
    assert (job["nodes"], job["ntasks"], job["ntasks_per_node"]) == (2, 16, 8)
    assert (job["req_cpus"], job["req_gpus"], job["gpus_per_task"]) == (160, 16, 1)
    assert job["state"] == "PENDING" and job["reason"] == "JobHeldUser"


def test_gres_with_gpus_and_other_resources(c):
    job = held(c, """#!/bin/bash -l
#SBATCH -p gpu
#SBATCH --gres=gpu:a100:4,nvme:1
#SBATCH --mem-per-gpu=64G
module load cuda
python finetune.py
""")
    assert (job["req_gpus"], job["gpu_type"], json.loads(job["gres"])) == (4, "a100", {"nvme": 1})
    assert job["req_mem_mb"] == 4 * 64 * 1024
    job = held(c, "#!/bin/bash\n#SBATCH -p gpu -G 1\n#SBATCH --gres=gpumem:20g\npython x.py\n")
    assert json.loads(job["gres"]) == {"gpumem": 20 << 30} and job["req_gpus"] == 1


def test_node_range(c):
    job = held(c, """#!/bin/bash
#SBATCH --partition gpu
#SBATCH --nodes 2-4              # as many as are free
#SBATCH --tasks-per-node 4
srun ./solver
""")
    assert (job["nodes"], job["nodes_max"], job["ntasks"]) == (2, 4, 8)


def test_output_files_shown_expanded(c):
    job = held(c, """#!/bin/bash
#SBATCH --job-name=eval
#SBATCH --output=logs/%x-%j.out
#SBATCH --err=logs/%j.err        # a prefix of --error, as getopt allows
mkdir -p logs
python eval.py
""")
    logs = os.path.join(c.work, "logs")
    assert job["stdout"] == os.path.join(logs, f"eval-{job['id']}.out")
    assert job["stderr"] == os.path.join(logs, f"{job['id']}.err")
    text = c.run("rcontrol", "show", "job", str(job["id"]), check=True).stdout
    assert f"StdErr={logs}/{job['id']}.err" in text
    job = held(c, "#!/bin/bash\n#SBATCH -o %u/%N-%j.log\nhostname\n")
    assert job["stdout"] == os.path.join(c.work, "root", f"%N-{job['id']}.log")


def test_hint_nomultithread_takes_whole_cores(c):
    job = held(c, """#!/bin/bash
#SBATCH -p gpu
#SBATCH --ntasks=4
#SBATCH --cpus-per-task=8
#SBATCH --hint=nomultithread     # one thread per core
srun --cpu-bind=cores ./mpi_app
""")
    assert (job["ntasks"], job["req_cpus"], job["hint"]) == (4, 64, "nomultithread")


def test_many_tasks_spread_over_whole_nodes(c):
    job = held(c, """#!/bin/bash
#SBATCH -p gpu
#SBATCH -n 384
#SBATCH --gpus-per-node=8
#SBATCH --exclusive
srun ./lammps -in in.lj
""")
    assert (job["nodes"], job["ntasks"], job["req_gpus"], job["exclusive"]) == (4, 384, 32, True)


def test_licenses_reservation_cluster_and_site_options(c):
    job = held(c, """#!/bin/bash
#SBATCH --licenses=matlab:2
#SBATCH --clusters=aurora
matlab -batch run
""")
    assert json.loads(job["licenses"]) == {"matlab": 2}
    job = held(c, "#!/bin/bash\n#SBATCH -p gpu\n#SBATCH --reservation=maint\n./fix.sh\n")
    assert job["reservation"] == "maint"
    job = held(c, """#!/bin/bash
#SBATCH --image docker:pytorch:24.01   # the site's container plugin
#SBATCH --module=cuda/12.2
python train.py
""")
    assert json.loads(job["site_options"]) == {"image": "docker:pytorch:24.01",
                                               "module": "cuda/12.2"}


def test_placement_options(c):
    job = held(c, """#!/bin/bash
#SBATCH -p gpu
#SBATCH -w gpu[01-02]
#SBATCH --exclude=gpu08
#SBATCH --tmp=200G
#SBATCH --gpus=4 --cpus-per-gpu=12
#SBATCH --gpu-bind=verbose,closest
#SBATCH --wait-all-nodes=1
srun ./app
""")
    assert (job["req_nodelist"], job["exclude"], job["tmp_mb"]) == ("gpu[01-02]", "gpu08",
                                                                    200 * 1024)
    assert (job["nodes"], job["req_gpus"], job["req_cpus"]) == (2, 4, 48)
    assert (job["gpu_bind"], job["wait_all_nodes"]) == ("verbose,closest", 1)


@pytest.mark.parametrize("directive, words", [
    ("--licenses=ansys:1", ["no license named 'ansys'", "comsol:1, matlab:10"]),
    ("--licenses=comsol:2", ["comsol:2", "has 1"]),
    ("--reservation=nightly", ["no such reservation", "maint"]),
    ("--clusters=orion", ["this is cluster 'aurora'"]),
    ("--container=ubuntu", ["--container: unknown option"]),
    ("-w cpu01 -p gpu", ["cpu01", "not in partition gpu"]),
    ("--gres=fpga:1", ["fpga:1"]),
    ("--nodelist=./hosts.txt", ["names a file"]),
])
def test_refusals_are_one_clean_line(c, directive, words):
    line = refused(c, f"#!/bin/bash\n#SBATCH {directive}\ntrue\n")
    assert all(w in line for w in words), line


def test_controller_checks_site_options_itself(c):
    from rmsbatch.core.jobspec import JobSpec
    from rmsbatch.net.client import RequestRejected
    spec = JobSpec(script="#!/bin/sh\ntrue\n", workdir=c.work, submit_dir=c.work,
                   hold=True, site_options={"container": "x"})
    with pytest.raises(RequestRejected, match="--container: not an option of this "
                       "cluster's submit plugins .site options: --image, --module."):
        c.api("submit", spec=spec.to_dict())


def test_licenses_are_held_while_jobs_run(c):
    script = """#!/bin/bash
#SBATCH --licenses=comsol        # one seat: the cluster has one
#SBATCH --time=5
sleep 60
"""
    with open(os.path.join(c.work, "comsol.sh"), "w") as fh:
        fh.write(script)
    first = c.submit("comsol.sh")
    second = c.submit("comsol.sh")
    c.wait_state(first, "RUNNING")
    wait_for(lambda: c.job(second)["reason"] == "Licenses", 10, "reason Licenses")
    c.run("rcancel", str(first), check=True)
    c.wait_ended(first)
    c.wait_state(second, "RUNNING")
    c.run("rcancel", str(second), check=True)
    c.wait_ended(second)


def test_show_job_text_has_the_task_model(c):
    job = held(c, """#!/bin/bash
#SBATCH -p gpu --nodes=2-4 --ntasks-per-node=8 --gpus-per-task=1
#SBATCH -L matlab:2 --tmp=10G -x gpu03 --gpu-bind=closest
srun ./app
""")
    text = c.run("rcontrol", "show", "job", str(job["id"]), check=True).stdout
    for expected in ("ReqNodes=2-4 NtasksPerN:B:S:C=8:0:*:*", "TresPerTask=gres/gpu:1",
                     "GpuBind=closest", "ExcNodeList=gpu03", "MinTmpDiskNode=10240M",
                     "Licenses=matlab:2"):
        assert expected in text, text


def test_licenses_held_across_a_controller_restart(c):
    with open(os.path.join(c.work, "comsol.sh"), "w") as fh:
        fh.write("#!/bin/bash\n#SBATCH -L comsol:1 -t 5\nsleep 60\n")
    first = c.submit("comsol.sh")
    c.wait_state(first, "RUNNING")
    c.kill9("rmsctld")
    c.up()                  # rmsctld again, from its spool; rmsd never stopped
    second = c.submit("comsol.sh")
    wait_for(lambda: c.job(second)["reason"] == "Licenses", 10, "reason Licenses")
    assert c.job(first)["state"] == "RUNNING"
    c.run("rcancel", str(first), str(second), check=True)
    c.wait_ended(first)
    c.wait_ended(second)
