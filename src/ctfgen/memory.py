"""Resident memory (RSS) of this process, in bytes: what the training log (`max_rss_gb`),
`ctfgen bench train`, `ctfgen bench speed` and `ctfgen gpu-check` report for CPU runs.

Linux gives the current RSS (/proc/self/statm) and a peak that can be reset (VmHWM in
/proc/self/status; writing 5 to /proc/self/clear_refs resets it to the current RSS), so one step's
peak can be measured. Elsewhere only the lifetime peak (getrusage) exists: the functions that need
Linux return None or False there, and callers report NaN. GPU memory is torch.cuda's business.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path


def lifetime_peak_rss_bytes() -> int:
    """Peak resident memory of this process since it started (never reset); any platform."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def rss_bytes() -> int | None:
    """Current resident memory of this process; None where /proc is missing (not Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def peak_rss_bytes() -> int | None:
    """Peak resident memory since the last `reset_peak_rss` (or since the start); None where
    /proc is missing (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # the file says kB and means KiB
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the peak that `peak_rss_bytes` reads to the current RSS; False where this is impossible
    (not Linux), and the peak then keeps counting from the start."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Context manager: the peak resident memory (bytes, `.peak`) while its block ran, polled every
    `every_s` seconds in a thread, so it neither needs nor disturbs `reset_peak_rss` (short spikes
    between polls are missed). Without /proc it reports the lifetime peak, the best there is."""

    def __init__(self, every_s: float = 0.005):
        self.every_s, self.peak = every_s, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        now = rss_bytes()
        return lifetime_peak_rss_bytes() if now is None else now

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every_s)

    def __enter__(self) -> "PeakRSS":
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())
