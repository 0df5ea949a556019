"""Progress bars: drawn only when stderr is a terminal, and off everywhere after `--no-progress`.

Every bar in the package is made by `progress_bar`, so none can miss the switch: it is off when the
caller's own `show` is off or the command line said --no-progress, and otherwise tqdm's
`disable=None` draws it only on a terminal, so output redirected to a log file gets no bars
(issue 22: they flooded such logs).
"""
from __future__ import annotations

_OFF = False


def set_progress(enabled: bool) -> None:
    """Turn every progress bar of this process on (still only on a terminal) or off."""
    global _OFF
    _OFF = not enabled


def progress_bar(iterable=None, *, show: bool = True, **kwargs):
    """A tqdm bar over `iterable` (keyword arguments as tqdm's), shown when `show` is true, the
    process's switch is on and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, disable=True if _OFF or not show else None, **kwargs)
