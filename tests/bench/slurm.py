"""Slurm 22.05 from Debian's packages, set up as in shared/reference/slurm-baseline.md.

`install()` puts the packages on a fresh machine (root only), with a temporary
/usr/sbin/policy-rc.d so that nothing tries to start services. `Slurm.start()`
runs munged, mariadbd, slurmdbd, slurmctld and slurmd by hand, each in its own
session in the foreground, with every file (config, key, state, logs, database)
under one directory the harness owns; `Slurm.stop()` stops them by PID.
"""
from __future__ import annotations

import getpass
import os
import pwd
import shutil
import socket
import subprocess
import time

from tests.bench import synthetic, util
from tests.bench.system import System

PACKAGES = ["slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge"]
ACCOUNTING_PACKAGES = ["slurmdbd", "mariadb-server"]
POLICY = "/usr/sbin/policy-rc.d"
# Slurm's job states in the database (slurm.h, enum job_states)
STATE_CODES = {"CANCELLED": 4, "COMPLETED": 3, "FAILED": 5, "TIMEOUT": 6}
# the columns figure 8 fills in bench_job_table (the others keep their defaults)
JOB_COLUMNS = ("id_job", "mod_time", "account", "cpus_req", "job_name", "id_assoc", "id_qos",
               "id_resv", "id_wckey", "id_user", "id_group", "het_job_id", "het_job_offset",
               "state_reason_prev", "mem_req", "nodelist", "nodes_alloc", "node_inx",
               "`partition`", "priority", "state", "timelimit", "time_submit", "time_eligible",
               "time_start", "time_end", "exit_code", "flags", "kill_requid", "tres_alloc",
               "tres_req", "work_dir", "submit_line")

VARIANTS = {
    "default": "",
    "bsd0": "SchedulerParameters=batch_sched_delay=0",
}


def which(name: str) -> str | None:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin")


def missing(names=("slurmctld", "slurmd", "sbatch", "munged", "mungekey"),
            accounting=("slurmdbd", "mariadbd", "mariadb-install-db")) -> tuple[list, list]:
    return [n for n in names if not which(n)], [n for n in accounting if not which(n)]


def install() -> str | None:
    """Install what is missing; None on success, else why Slurm cannot be measured."""
    core, acct = missing()
    if not core and not acct:
        return None
    if os.geteuid() != 0:
        return "Slurm is not installed and installing it needs root"
    if not which("apt-get"):
        return "Slurm is not installed and this machine has no apt-get"
    packages = PACKAGES + ACCOUNTING_PACKAGES
    util.log(f"installing {' '.join(packages)} (a few minutes) ...")
    previous = None
    if os.path.exists(POLICY):
        with open(POLICY, "rb") as fh:
            previous = fh.read()
    try:
        with open(POLICY, "w") as fh:
            fh.write("#!/bin/sh\n# rmsbatch bench: no service starts while installing\nexit 101\n")
        os.chmod(POLICY, 0o755)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            util.log("apt-get install failed; running apt-get update and trying again")
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            return f"apt-get install failed: {proc.stderr.strip()[-300:]}"
    finally:
        if previous is None:
            os.unlink(POLICY)
        else:
            with open(POLICY, "wb") as fh:
                fh.write(previous)
    core, acct = missing()
    if core:
        return f"still missing after installing: {', '.join(core)}"
    return None


def free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 100, preferred + 200)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port near {preferred}")


def traversable(path: str) -> None:
    """Let the munge and mysql users reach `path`: g+x and o+x on every directory above
    (munged insists on execute permission for all on its socket's directories)."""
    path = os.path.realpath(path)
    os.chmod(path, 0o755)
    while path != "/":
        path = os.path.dirname(path)
        mode = os.stat(path).st_mode & 0o7777
        if mode & 0o011 != 0o011:
            os.chmod(path, mode | 0o011)


class Slurm(System):
    family = "Slurm"

    def __init__(self, root: str, processes: util.Processes, accounting: bool = True):
        self.root = root
        self.etc = os.path.join(root, "etc")
        super().__init__(os.path.join(root, "work"),
                         dict(os.environ, SLURM_CONF=os.path.join(root, "etc", "slurm.conf")))
        self.processes = processes
        self.accounting = accounting and not missing()[1]
        self.user = getpass.getuser()
        self.host = socket.gethostname().split(".")[0]
        self.variant = "default"
        self.ports = {}
        self.munge_socket = os.path.join(root, "munge", "run", "munge.socket.2")
        self.mysql_socket = os.path.join(root, "mysql", "mysqld.sock")

    @property
    def label(self) -> str:
        return "Slurm" if self.variant == "default" else f"Slurm {self.variant}"

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def bin(self, name: str) -> str:
        found = which(name)
        if not found:
            raise FileNotFoundError(f"{name} not installed")
        return found

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        traversable(self.root)       # munge and mysql must reach their directories
        for d in ("etc", "state", "slurmd", "log", "run"):
            os.makedirs(self.path(d), exist_ok=True)
        self.ports = {"ctld": free_port(6817), "slurmd": free_port(6818), "dbd": free_port(6819)}
        self._start_munge()
        if self.accounting:
            try:
                self._start_mariadb()
                self._start_slurmdbd()
            except Exception as exc:  # noqa: BLE001 - measure the rest without sacct
                util.log(f"Slurm accounting unavailable, going on without it: {exc}")
                self.accounting = False
                self.processes.stop("slurmdbd")
                self.processes.stop("mariadbd")
        self._write_slurm_conf()
        self._start_slurm()

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            self.processes.stop(name)

    def set_variant(self, variant: str) -> None:
        """Restart slurmctld and slurmd with another SchedulerParameters (state is kept)."""
        if variant == self.variant:
            return
        util.log(f"restarting Slurm with {VARIANTS[variant] or 'default settings'}")
        self.processes.stop("slurmd")
        self.processes.stop("slurmctld")
        self.variant = variant
        self._write_slurm_conf()
        self._start_slurm()

    def version(self) -> str:
        return util.run([self.bin("sbatch"), "--version"], env=self.env, check=False).stdout.strip()

    # -- munge --------------------------------------------------------------------------
    def _start_munge(self) -> None:
        pw = pwd.getpwnam("munge")
        top, run = self.path("munge"), self.path("munge", "run")
        for d, mode in ((top, 0o711), (run, 0o755)):
            os.makedirs(d, exist_ok=True)
            os.chown(d, pw.pw_uid, pw.pw_gid)
            os.chmod(d, mode)
        key = os.path.join(top, "munge.key")
        util.run([self.bin("mungekey"), "--create", f"--keyfile={key}"])
        os.chown(key, pw.pw_uid, pw.pw_gid)
        os.chmod(key, 0o600)
        self.processes.start("munged", [
            self.bin("munged"), "-F", f"--key-file={key}", f"--socket={self.munge_socket}",
            f"--pid-file={run}/munged.pid", f"--seed-file={top}/munge.seed",
            f"--log-file={top}/munged.log"], self.path("log", "munged.out"), user="munge")
        util.wait_until(lambda: os.path.exists(self.munge_socket), 20, what="munged socket")

    # -- accounting: mariadbd + slurmdbd ---------------------------------------------
    def _start_mariadb(self) -> None:
        data, pw = self.path("mysql", "data"), pwd.getpwnam("mysql")
        os.makedirs(data, exist_ok=True)
        for d in (self.path("mysql"), data):
            os.chown(d, pw.pw_uid, pw.pw_gid)
        util.run([self.bin("mariadb-install-db"), "--no-defaults", "--user=mysql",
                  f"--datadir={data}", "--skip-test-db"], timeout=300)
        self.processes.start("mariadbd", [
            self.bin("mariadbd"), "--no-defaults", "--user=mysql", f"--datadir={data}",
            f"--socket={self.mysql_socket}", f"--pid-file={self.path('mysql', 'mariadbd.pid')}",
            "--skip-networking", f"--log-error={self.path('log', 'mariadbd.log')}",
            "--innodb-buffer-pool-size=4G", "--innodb-lock-wait-timeout=900"], self.path("log", "mariadbd.out"))
        util.wait_until(lambda: util.run([self.bin("mariadb"), "--no-defaults",
                                          f"--socket={self.mysql_socket}", "-u", "root",
                                          "-e", "SELECT 1"], check=False).returncode == 0,
                        60, interval=0.3, what="mariadbd")

    def _start_slurmdbd(self) -> None:
        conf = os.path.join(self.etc, "slurmdbd.conf")
        with open(conf, "w") as fh:
            fh.write(f"""# written by tests/bench/slurm.py
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports['dbd']}
SlurmUser=root
DebugLevel=info
LogFile={self.path('log', 'slurmdbd.log')}
PidFile={self.path('run', 'slurmdbd.pid')}
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
""")
        os.chmod(conf, 0o600)
        # libmariadb finds the server's socket through MYSQL_UNIX_PORT (skip-networking).
        env = dict(self.env, MYSQL_UNIX_PORT=self.mysql_socket)
        # slurmdbd and sacctmgr read slurm.conf for AuthInfo; write a first one.
        self._write_slurm_conf()
        self.processes.start("slurmdbd", [self.bin("slurmdbd"), "-D"],
                             self.path("log", "slurmdbd.out"), env=env)

        def registered():
            proc = util.run([self.bin("sacctmgr"), "-i", "add", "cluster", "bench"],
                            env=self.env, check=False)
            text = proc.stdout + proc.stderr
            return proc.returncode == 0 or "already exists" in text or "Nothing new" in text
        util.wait_until(registered, 60, interval=0.5, what="slurmdbd answering sacctmgr")

    # -- slurmctld + slurmd -------------------------------------------------------------
    def _write_slurm_conf(self) -> None:
        # AccountingStoragePass names the munge socket for connections to slurmdbd
        # (AuthInfo's socket is not used for those).
        acct = (f"AccountingStorageType=accounting_storage/slurmdbd\n"
                f"AccountingStorageHost=localhost\nAccountingStoragePort={self.ports['dbd']}\n"
                f"AccountingStoragePass={self.munge_socket}\n"
                if self.accounting else "AccountingStorageType=accounting_storage/none\n")
        text = f"""# written by tests/bench/slurm.py ({self.variant})
ClusterName=bench
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports['ctld']}
SlurmdPort={self.ports['slurmd']}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('slurmd')}
SlurmctldPidFile={self.path('run', 'slurmctld.pid')}
SlurmdPidFile={self.path('run', 'slurmd.pid')}
SlurmctldLogFile={self.path('log', 'slurmctld.log')}
SlurmdLogFile={self.path('log', 'slurmd.log')}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
{VARIANTS[self.variant]}
MaxJobCount=100000
MinJobAge=5
MailProg=/bin/true
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
{acct}GresTypes=gpu
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=64 RealMemory=512000 Gres=gpu:8 State=UNKNOWN
PartitionName=main Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        with open(os.path.join(self.etc, "slurm.conf"), "w") as fh:
            fh.write(text)
        with open(os.path.join(self.etc, "gres.conf"), "w") as fh:
            fh.write("AutoDetect=off\nName=gpu File=/dev/tty[10-17]\n")
        with open(os.path.join(self.etc, "cgroup.conf"), "w") as fh:
            fh.write("# no constraints: proctrack only\n")

    def _start_slurm(self) -> None:
        self.processes.start("slurmctld", [self.bin("slurmctld"), "-D"],
                             self.path("log", "slurmctld.out"), env=self.env)
        util.wait_until(lambda: util.run([self.bin("scontrol"), "ping"], env=self.env,
                                         check=False).stdout.count("UP") >= 1,
                        60, interval=0.3, what="slurmctld answering")
        self.processes.start("slurmd", [self.bin("slurmd"), "-D", "-N", "localhost"],
                             self.path("log", "slurmd.out"), env=self.env)

        def node_idle():
            out = util.run([self.bin("sinfo"), "-h", "-N", "-o", "%T"], env=self.env,
                           check=False).stdout.strip().lower()
            return out.startswith("idle")
        util.wait_until(node_idle, 60, interval=0.3, what="slurmd registering (node idle)")
        util.log(f"{self.label} up (slurmctld pid {self.controller_pid()})")

    # -- System ---------------------------------------------------------------------
    def submit_held(self) -> list[str]:
        return [self.bin("sbatch"), "-H", "--wrap", "true"]

    def submit(self, *args: str) -> list[str]:
        return [self.bin("sbatch"), *args]

    def queue_default(self) -> list[str]:
        return [self.bin("squeue")]

    def queue_format(self) -> list[str]:
        return [self.bin("squeue"), "-h", "-o", "%i %t"]

    def queue_one(self, job_id: int) -> list[str]:
        return [self.bin("squeue"), "-j", str(job_id)]

    def cancel_all(self) -> list[str]:
        return [self.bin("scancel"), "-u", self.user]

    def acct_list(self, since: str, until: str) -> list[str]:
        if not self.accounting:
            raise RuntimeError("no slurmdbd (accounting) on this run")
        return [self.bin("sacct"), "-a", "-S", since, "-E", until, "-X", "-n", "-P",
                "-o", synthetic.FIELDS]

    def acct_report(self, since: str, until: str) -> list[str]:
        """sreport's nearest to `rsacct report --by tenant,user`: it reads the hourly
        rollups slurmdbd keeps, not the job records."""
        if not self.accounting:
            raise RuntimeError("no slurmdbd (accounting) on this run")
        return [self.bin("sreport"), "-P", "-n", "cluster", "AccountUtilizationByUser",
                f"start={since}", f"end={until}", "-t", "hours"]

    def active_ids(self) -> list[int]:
        """Job ids; a pending array shows once, as its array job id (`42_[1-500]` -> 42)."""
        out = util.run([self.bin("squeue"), "-h", "-o", "%i"], env=self.env).stdout
        return [int(x.split("_")[0]) for x in out.split()]

    def cancel_ids(self, ids: list[int]) -> None:
        for i in range(0, len(ids), 1000):
            util.run([self.bin("scancel"), *map(str, ids[i:i + 1000])], env=self.env)

    def wait_accounting(self, timeout: float = 300) -> None:
        """Until slurmctld has handed every record to slurmdbd (sdiag's agent queue is 0)."""
        def drained():
            out = util.run([self.bin("sdiag")], env=self.env, check=False).stdout
            for line in out.splitlines():
                if "DBD Agent queue size" in line:
                    return int(line.split(":")[1]) == 0
            return True
        util.wait_until(drained, timeout, interval=0.5, what="slurmdbd agent queue draining")

    # -- figure 8's synthetic records ----------------------------------------------------
    def sql(self, statement: str, local_infile: bool = False) -> list[list[str]]:
        """Run SQL on slurmdbd's database as root; rows of the result as lists of text."""
        argv = [self.bin("mariadb"), "--no-defaults", f"--socket={self.mysql_socket}", "-u",
                "root", "-N", "-B", "slurm_acct_db", "-e", statement]
        if local_infile:
            argv.insert(2, "--local-infile=1")
        out = util.run(argv, timeout=3600).stdout
        return [line.split("\t") for line in out.splitlines()]

    def _synthetic_associations(self) -> dict[str, int]:
        """The synthetic users and accounts as associations (sacctmgr, as an admin would
        add them): user -> id_assoc. sacct names a job's user and account from it."""
        sacctmgr = [self.bin("sacctmgr"), "-i"]
        for parent in synthetic.PARENTS:
            util.run([*sacctmgr, "add", "account", parent, "cluster=bench"], env=self.env,
                     check=False)
        for parent in [*synthetic.PARENTS, None]:
            names = [a for a, p in synthetic.ACCOUNTS if p == parent]
            util.run([*sacctmgr, "add", "account", ",".join(names), "cluster=bench",
                      *([f"parent={parent}"] if parent else [])], env=self.env, check=False)
        for account, _ in synthetic.ACCOUNTS:
            users = [u for u, _, a in synthetic.USERS if a == account]
            util.run([*sacctmgr, "add", "user", ",".join(users), f"account={account}",
                      "cluster=bench"], env=self.env, check=False)
        found = {user: int(inx) for user, inx in self.sql(
            "SELECT user, id_assoc FROM bench_assoc_table WHERE user != '' AND deleted = 0")}
        missing = [u for u, _, _ in synthetic.USERS if u not in found]
        if missing:
            raise RuntimeError(f"sacctmgr did not add the associations of {missing[:3]}")
        return found

    def add_finished(self, count: int, start: float, now: float) -> dict:
        """`count` synthetic finished jobs (tests.bench.synthetic) loaded into slurmdbd's
        job table (LOAD DATA LOCAL INFILE from a temporary tab-separated file), with
        associations for their users; ids follow the table's last one."""
        out: dict = {}
        began = time.perf_counter()
        assoc = self._synthetic_associations()
        (last,), = self.sql("SELECT COALESCE(MAX(id_job), 0) FROM bench_job_table")
        first = int(last) + 1
        path = self.path("synthetic-jobs.tsv")
        mod = int(now)
        with open(path, "w") as fh:
            for job in synthetic.jobs(count, start, now):
                per_node = job.mem_mb // job.nodes
                tres = f"1={job.cpus},2={job.mem_mb},4={job.nodes},5={int(job.billing)}"
                fh.write("\t".join(map(str, (
                    first + job.index, mod, job.account, job.cpus, job.name, assoc[job.user],
                    1, 0, 0, job.uid, job.uid, 0, 4294967294, 0, per_node, job.nodelist,
                    job.nodes, "", job.partition, 1000, STATE_CODES[job.state],
                    job.time_limit_min, int(job.submit), int(job.submit), int(job.start),
                    int(job.end), job.exit_code << 8 | job.exit_signal, 20,
                    job.uid if job.state == "CANCELLED" else "\\N",
                    tres.replace(",4=", ",3=18446744073709551614,4="), tres,
                    f"/home/{job.user}", f"sbatch -N {job.nodes} {job.name}.sh"))) + "\n")
        out["file_s"] = time.perf_counter() - began
        began = time.perf_counter()
        try:
            self.sql(f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE bench_job_table "
                     f"({', '.join(JOB_COLUMNS)})", local_infile=True)
        finally:
            os.unlink(path)
        out["insert_s"] = time.perf_counter() - began
        out["first_id"] = first
        util.log(f"Slurm: {count:,} synthetic jobs written in {out['file_s']:.1f} s + loaded "
                 f"in {out['insert_s']:.1f} s")
        return out

    def rollup(self, start: float, timeout: float) -> float:
        """Have slurmdbd roll the usage up again from `start` (what sreport reads): the
        cluster's registration moved back before it, the last rollup times set to it,
        slurmdbd restarted (it rolls up when it starts). Seconds until the hourly rollup
        reached the current hour."""
        hour = int(start) // 3600 * 3600 - 86400
        self.sql(f"UPDATE bench_event_table SET time_start = {hour} WHERE node_name = '' "
                 f"AND time_start > {hour}")
        self.sql("DELETE FROM bench_last_ran_table")
        self.sql(f"INSERT INTO bench_last_ran_table (hourly_rollup, daily_rollup, "
                 f"monthly_rollup) VALUES ({hour}, {hour}, {hour})")
        self.processes.stop("slurmdbd")
        began = time.perf_counter()
        self._start_slurmdbd()
        target = int(time.time()) // 3600 * 3600

        def done():
            rows = self.sql("SELECT hourly_rollup FROM bench_last_ran_table")
            return rows and int(rows[0][0]) >= target
        util.wait_until(done, timeout, interval=2, what="slurmdbd's usage rollup")
        return time.perf_counter() - began

    def controller_pid(self) -> int:
        pid = self.processes.pid_of("slurmctld")
        if pid is None:
            raise RuntimeError("slurmctld is not running")
        return pid
