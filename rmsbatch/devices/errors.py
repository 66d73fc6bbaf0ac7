"""What backends raise, so callers need not know any vendor's exception classes."""
from __future__ import annotations


class BackendUnavailable(Exception):
    """The backend cannot run on this host (no library, no driver, no sysfs entries);
    the message says why, for the node's record."""


class DeviceLost(Exception):
    """A device stopped answering (NVML GPU_IS_LOST, AMD SMI NOT_FOUND)."""
