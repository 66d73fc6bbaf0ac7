"""Only the optional C part; everything else is in pyproject.toml.

rmsbatch.node._spawn starts a job's process with vfork instead of a fork of its Python
supervisor (see its source for why). Without a C compiler the install goes on without
it, and jobs start through os.fork(), as before: slower, not different.
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("rmsbatch.node._spawn", ["rmsbatch/node/_spawn.c"],
                             optional=True)])
