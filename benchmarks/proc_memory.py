"""Process memory from Linux's /proc, shared by the benchmarks (run them as ``python benchmarks/<name>.py``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["status_bytes", "reset_peak"]


def status_bytes(field: str) -> int:
    """A memory field of ``/proc/self/status`` in bytes (e.g. ``"VmRSS"`` now, ``"VmHWM"`` the peak); 0 if absent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Reset the process's peak RSS (``VmHWM``, and with it ``ru_maxrss``); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False
