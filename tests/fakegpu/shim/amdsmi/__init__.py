"""Stands in for amdsmi in daemons that tests start with PYTHONPATH=tests/fakegpu/shim
and RMS_FAKE_AMDSMI=<machine.json>; without that variable it fails the way the real
package does on a host without libamd_smi.so (KeyError)."""
import json
import os
import sys

IS_FAKE = True
if "RMS_FAKE_AMDSMI" not in os.environ:
    raise KeyError("libamd_smi.so")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))))
from tests.fakegpu.amd import FakeAmdSmi  # noqa: E402

with open(os.environ["RMS_FAKE_AMDSMI"]) as _fh:
    _fake = FakeAmdSmi(json.load(_fh))


def __getattr__(name):
    return getattr(_fake, name)
