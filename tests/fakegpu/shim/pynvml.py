"""Stands in for nvidia-ml-py in daemons that tests start with
PYTHONPATH=tests/fakegpu/shim and RMS_FAKE_NVML=<machine.json>: the module-level API of
pynvml, answered by tests.fakegpu.nvml.FakeNvml (built on the real package's classes)."""
import os
import sys

IS_FAKE = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
from tests.fakegpu.nvml import FakeNvml  # noqa: E402

_fake = FakeNvml(os.environ["RMS_FAKE_NVML"])


def __getattr__(name):
    return getattr(_fake, name)
