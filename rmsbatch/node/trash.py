"""Job directories of acknowledged runs, removed when rmsd has nothing else to do.

Removing a directory costs a few milliseconds (one unlink per file); during a burst of
short jobs (an array) that is time the next launch waits. So a directory is renamed
aside at once (one rename: a scan never sees half of it, and its run is gone for good)
and deleted later, a little at a time, when the event loop is idle, or at once when
too many have piled up.
"""
from __future__ import annotations

import logging
import os
import shutil
import time

log = logging.getLogger("rmsbatch.noded")

PREFIX = ".gone-"
MAX_PILED = 2000        # beyond this many, delete while busy too
SLICE_S = 0.02          # at most this long per idle moment


class Trash:
    """`parent`: a directory beside the job directories, on the same file system (not
    among them: rmsd lists those often)."""

    def __init__(self, parent: str):
        self.parent = parent
        self.piled: list[str] = []
        self.serial = 0

    def discard(self, path: str) -> None:
        self.serial += 1
        aside = os.path.join(self.parent, f"{PREFIX}{os.path.basename(path)}.{os.getpid()}."
                                          f"{self.serial}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            if not os.path.isdir(self.parent):      # first use, or removed meanwhile
                try:
                    os.mkdir(self.parent, 0o700)
                except OSError:
                    pass
                else:
                    self.serial -= 1
                    self.discard(path)
            return
        except OSError as exc:      # another file system, or no permission: at once
            log.debug("%s: not renamed aside (%s): removed now", path, exc)
            shutil.rmtree(path, ignore_errors=True)
            return
        self.piled.append(aside)
        if len(self.piled) > MAX_PILED:
            self.empty(SLICE_S)

    def sweep(self) -> None:
        """What an earlier rmsd left renamed aside."""
        try:
            names = os.listdir(self.parent)
        except OSError:
            return
        self.piled += [os.path.join(self.parent, n) for n in names if n.startswith(PREFIX)]

    def empty(self, budget_s: float | None = None) -> None:
        """Delete piled directories, for at most `budget_s` seconds (None: all)."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        while self.piled and (deadline is None or time.monotonic() < deadline):
            shutil.rmtree(self.piled.pop(), ignore_errors=True)
