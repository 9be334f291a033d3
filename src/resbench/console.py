"""Messages and progress bars on stderr for the long data operations (downloads, preparation)."""

from __future__ import annotations

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
