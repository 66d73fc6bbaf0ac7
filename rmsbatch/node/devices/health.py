"""What makes a device unfit for jobs: pure policy over samples and events.

    tracker = Health(thermal_after=300, ignore_xids={13, 31, 43, 45, 68, 109})
    tracker.sample(key, sample, now)     # each sample of each device
    tracker.event(key, "xid", 79, now)   # from the event thread
    tracker.unhealthy()                  # key -> Verdict: drain it, and why
    tracker.reset()                      # `rcontrol resume`: start afresh

A verdict, once given, stays until reset: a GPU that fell off the bus and came back, or
throttled for ten minutes and cooled down, still wants an admin's look. After a reset the
device is judged from the next sample on, so a fault that persists (a lost GPU, a
pending row remap) drains it again at once, while one that is over does not.

`fatal` verdicts also end the jobs on the device (NODE_FAIL, requeued if they asked):
the device is gone or its memory is corrupt. The others only keep new jobs away.
"""
from __future__ import annotations

from dataclasses import dataclass

# XIDs that say the GPU (not the application) failed and what is on it is lost.
FATAL_XIDS = {48: "double-bit ECC error", 74: "NVLink error", 79: "GPU has fallen off the bus",
              95: "uncontained ECC error", 119: "GSP RPC timeout", 120: "GSP error",
              140: "unrecovered ECC error"}
XID_NAMES = {**FATAL_XIDS, 63: "ECC page retirement or row remapping recorded",
             64: "ECC page retirement or row remapping failed", 92: "high single-bit ECC rate",
             94: "contained ECC error"}


@dataclass
class Verdict:
    reason: str
    fatal: bool = False
    since: float = 0.0

    def to_dict(self) -> dict:
        return {"reason": self.reason, "fatal": self.fatal, "since": self.since}


class Health:
    def __init__(self, thermal_after: float = 300.0, ignore_xids=frozenset({13, 31, 43, 45, 68, 109})):
        self.thermal_after = thermal_after
        self.ignore_xids = set(ignore_xids)
        self.verdicts: dict[str, Verdict] = {}
        self.ecc_base: dict[str, int] = {}
        self.hot_since: dict[str, float] = {}
        self.fresh = True           # first samples since start (not since a reset)

    def reset(self) -> None:
        self.verdicts.clear()
        self.hot_since.clear()
        self.fresh = False
        # the ECC baselines stay: after a resume only new errors count

    def _give(self, key: str, reason: str, fatal: bool, now: float) -> None:
        old = self.verdicts.get(key)
        if old is None or (fatal and not old.fatal):
            self.verdicts[key] = Verdict(reason, fatal, now)

    def sample(self, key: str, s: dict, now: float) -> None:
        if s.get("lost"):
            self._give(key, s["lost"], True, now)
            return
        ecc = s.get("ecc_uncorrected")
        if isinstance(ecc, int):
            base = self.ecc_base.setdefault(key, ecc)
            if ecc > base:
                self._give(key, f"{ecc - base} new uncorrectable ECC error(s)", True, now)
                self.ecc_base[key] = ecc
            elif ecc > 0 and self.fresh and base == ecc:
                self._give(key, f"{ecc} uncorrectable ECC error(s) since the driver loaded: "
                                "reset the GPU", False, now)
        if s.get("remap_failed"):
            self._give(key, "row remapping failed: the GPU needs replacing", False, now)
        elif s.get("remap_pending"):
            self._give(key, "row remapping pending: reset the GPU", False, now)
        if s.get("retired_pending"):
            self._give(key, "retired memory pages pending: reset the GPU", False, now)
        if s.get("thermal"):
            start = self.hot_since.setdefault(key, now)
            if self.thermal_after and now - start >= self.thermal_after:
                self._give(key, f"thermal throttling for {int(now - start)} s", False, now)
        else:
            self.hot_since.pop(key, None)

    def event(self, key: str, kind: str, code, now: float) -> bool:
        """An event for one device; True when it changed a verdict."""
        before = self.verdicts.get(key)
        if kind == "xid":
            if code in self.ignore_xids:
                return False
            what = XID_NAMES.get(code, "GPU error")
            self._give(key, f"XID {code} ({what})", code in FATAL_XIDS, now)
        elif kind == "ecc":
            self._give(key, "double-bit ECC error", True, now)
        return self.verdicts.get(key) is not before

    def settle(self) -> None:
        """Call after each round of samples: the first round is over."""
        self.fresh = False

    def unhealthy(self) -> dict[str, Verdict]:
        return dict(self.verdicts)
