"""Slurm's command names inside jobs: `srun`, `scontrol`, `squeue`, ... as rmsbatch's.

Job bodies written for Slurm call `srun` and `scontrol show hostnames`; for them to run
unchanged, rmsd writes one small shell script per Slurm command into a directory of its
own (`<state_dir>/<node>/slurm-bin`) and puts that directory first on the PATH of its
jobs (node_daemon key `slurm_commands`). Only jobs see these names: a host that also has
Slurm installed keeps its own commands everywhere else.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys

log = logging.getLogger("rmsbatch.noded")

# Slurm's name -> rmsbatch's command
COMMANDS = {
    "srun": "rrun", "scontrol": "rcontrol", "squeue": "rq", "scancel": "rcancel",
    "sbatch": "rsub", "sacct": "rsacct", "sinfo": "rinfo",
}


def command_dir() -> str:
    """Where this rmsbatch's own commands are: beside the interpreter (a virtual
    environment), in its scheme's scripts directory (`pip install` as root puts them in
    /usr/local/bin), else where PATH finds `rrun`."""
    import sysconfig
    for directory in (os.path.dirname(sys.executable), sysconfig.get_path("scripts")):
        if directory and os.access(os.path.join(directory, "rrun"), os.X_OK):
            return directory
    found = shutil.which("rrun")
    return os.path.dirname(found) if found else os.path.dirname(sys.executable)


def install(state_dir: str, commands: str | None = None) -> str | None:
    """Write the scripts (again: an upgrade may have moved the commands); the directory,
    or None when it cannot be written (jobs then run without the Slurm names)."""
    commands = commands or command_dir()
    directory = os.path.join(state_dir, "slurm-bin")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        os.chmod(directory, 0o755)
        for slurm, ours in COMMANDS.items():
            target = os.path.join(commands, ours)
            path = os.path.join(directory, slurm)
            tmp = f"{path}.tmp.{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.write(f'#!/bin/sh\n# {slurm} in an rmsbatch job: {ours}\nexec "{target}" "$@"\n')
            os.chmod(tmp, 0o755)
            os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write Slurm's command names into %s (%s): jobs run without "
                    "them", directory, exc.strerror or exc)
        return None
    return directory
