"""Progress bars: drawn only when stderr is a terminal, and off everywhere after `--no-progress`.

Every tqdm bar in the package passes `disable=bar_off(show)`: True (off) when the caller's own
switch `show` is off or the command line said --no-progress, else None, with which tqdm draws only
on a terminal, so output redirected to a log file gets no bars (issue 22: they flooded such logs).
"""
from __future__ import annotations

_OFF = False


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of this process on (still only on a terminal) or off."""
    global _OFF
    _OFF = not enabled


def bar_off(show: bool = True) -> bool | None:
    """tqdm's `disable` for a bar its caller wants shown when `show` is true."""
    return True if _OFF or not show else None
