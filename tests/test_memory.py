"""ctfgen.memory: the resident-memory figures the benchmarks and the training log report."""
import mmap
import sys
import time

import numpy as np
import pytest

from ctfgen.memory import PeakRSS, lifetime_peak_rss_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes

MiB = 2**20


class touch:
    """n_bytes of fresh pages, written so they are resident. An anonymous mmap of its own: memory from
    the allocator could be pages this process already holds (after a long test run it often is), and
    would not move the resident size at all."""

    def __init__(self, n_bytes: int):
        self.map = mmap.mmap(-1, n_bytes)
        np.frombuffer(self.map, dtype=np.uint8)[:] = 1

    def __del__(self):
        self.map.close()


def test_polled_peak_sees_a_freed_allocation():
    with PeakRSS(every_s=0.001) as mem:
        start = mem.peak
        x = touch(64 * MiB)
        time.sleep(0.05)
        del x
    assert mem.peak - start >= 48 * MiB
    assert lifetime_peak_rss_bytes() >= mem.peak * 0.99


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a resettable peak needs Linux /proc")
def test_reset_peak_counts_from_the_current_rss():
    x = touch(64 * MiB)
    del x
    assert reset_peak_rss()
    base = rss_bytes()
    assert peak_rss_bytes() - base < 16 * MiB  # the earlier 64 MiB no longer count
    x = touch(64 * MiB)
    del x
    assert peak_rss_bytes() - base >= 48 * MiB
    assert lifetime_peak_rss_bytes() >= peak_rss_bytes()
