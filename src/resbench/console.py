"""Messages, durations and progress bars on stderr for the long operations (downloads, preparation, runs)."""

from __future__ import annotations

import math
import os
import sys
from typing import IO, Callable

from tqdm import tqdm


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def shown(show: Callable[[], None], stream: IO[str]) -> bool:
    """Call `show()`, a print to `stream`; False when the reader has gone (`| head -1`, a closed pipe):
    the stream then leads to /dev/null, so a run is not ended by its next line but can save and stop."""
    try:
        show()
        return True
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
        return False


def progress(total: int | None, desc: str, initial: int = 0, unit: str = "B") -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal (logs stay clean)."""
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000, file=sys.stderr,
        disable=not sys.stderr.isatty(), leave=False,
    )


def clock(seconds: float | None) -> str:
    """A duration as H:MM:SS ("?" when unknown)."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(max(seconds, 0.0))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def count(n: int, noun: str) -> str:
    """`1 thread`, `2 threads`: a count and its noun, singular for one."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
