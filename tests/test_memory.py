"""ctfgen.memory: the resident-memory figures the benchmarks and the training log report."""
import sys
import time

import numpy as np
import pytest

from ctfgen.memory import PeakRSS, lifetime_peak_rss_bytes, peak_rss_bytes, reset_peak_rss, rss_bytes

MiB = 2**20


def touch(n_bytes: int) -> np.ndarray:
    return np.ones(n_bytes // 8)  # written, so resident


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
