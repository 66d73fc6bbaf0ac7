"""The wire between `rrun` and the step launchers on the nodes (rmsbatch.node.step):
frames on one TCP connection per node, each a header (task id, kind, length) and a
payload. Standard library only: rrun imports it.

Launcher to rrun: HELLO (JSON: token, node, tasks) first, then OUT and ERR (a task's
bytes, as they come), EXIT (JSON: exit_code, signal, cpu_s, max_rss_kb; after the
task's last output), ERROR (text: this node could not start its tasks) and DONE.
rrun to launcher: KILL (the signal number, as text): end the tasks now.
"""
from __future__ import annotations

import json
import struct

HEADER = struct.Struct("!IBI")
MAX_PAYLOAD = 16 * 1024 * 1024

HELLO, OUT, ERR, EXIT, ERROR, DONE, KILL = 0, 1, 2, 3, 4, 5, 9


def frame(task: int, kind: int, payload: bytes | str | dict = b"") -> bytes:
    if isinstance(payload, dict):
        payload = json.dumps(payload)
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "replace")
    return HEADER.pack(task, kind, len(payload)) + payload


class FrameError(ValueError):
    """The peer sent something that is not a frame."""


class Reader:
    """Frames out of a byte stream fed in pieces."""

    def __init__(self):
        self.buf = b""

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        self.buf += data
        frames = []
        while len(self.buf) >= HEADER.size:
            task, kind, size = HEADER.unpack_from(self.buf)
            if size > MAX_PAYLOAD:
                raise FrameError(f"frame of {size} bytes")
            if len(self.buf) < HEADER.size + size:
                break
            frames.append((task, kind, self.buf[HEADER.size:HEADER.size + size]))
            self.buf = self.buf[HEADER.size + size:]
        return frames
