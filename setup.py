"""Only the optional C parts; everything else is in pyproject.toml.

rmsbatch.node._spawn starts a job's process with vfork instead of a fork of its Python
supervisor (see its source for why). Without a C compiler the install goes on without
it, and jobs start through os.fork(), as before: slower, not different.

rsub, rq and rcancel are installed as small C programs (rmsbatch/cli/cmdclient.c) that
run the command in a fork of the user's command server, where Python is already
started (see rmsbatch/cli/cmdserver.py). Without a C compiler they are installed as the
Python scripts in bin/, which do the same work, each in an interpreter of its own.
"""
import os
import shlex
import subprocess
import sys

from setuptools import Extension, setup

try:
    from setuptools.command.build_scripts import build_scripts as _build_scripts
except ImportError:                         # setuptools before 69 had none of its own
    from distutils.command.build_scripts import build_scripts as _build_scripts

CLIENT_SOURCE = os.path.join("rmsbatch", "cli", "cmdclient.c")
FAST_COMMANDS = ("rsub", "rq", "rcancel")


class build_scripts(_build_scripts):
    def run(self):
        super().run()
        if os.environ.get("RMS_NO_FAST_CLIENT"):
            return
        cc = shlex.split(os.environ.get("CC", "cc"))
        for name in FAST_COMMANDS:
            target = os.path.join(self.build_dir, name)
            built = target + ".bin"
            argv = [*cc, "-O2", "-Wall", f'-DRMS_COMMAND="{name}"', "-o", built,
                    CLIENT_SOURCE]
            try:
                result = subprocess.run(argv, capture_output=True, text=True)
            except OSError as exc:
                result = None
                reason = str(exc)
            else:
                reason = result.stderr.strip()
            if result is None or result.returncode != 0:
                print(f"warning: could not build the fast {name} ({reason}); "
                      f"installing the Python script instead", file=sys.stderr)
                return
            os.chmod(built, 0o755)
            os.replace(built, target)


setup(ext_modules=[Extension("rmsbatch.node._spawn", ["rmsbatch/node/_spawn.c"],
                             optional=True)],
      cmdclass={"build_scripts": build_scripts})
