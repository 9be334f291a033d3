"""Messages and progress bars on stderr for the long data operations (downloads, preparation)."""

from __future__ import annotations

import sys

from tqdm import tqdm


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def progress(total: int | None, desc: str, initial: int = 0, unit: str = "B") -> tqdm:
    """A progress bar on stderr, shown only when stderr is a terminal (logs stay clean)."""
    return tqdm(
        total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit == "B",
        unit_divisor=1024 if unit == "B" else 1000, file=sys.stderr,
        disable=not sys.stderr.isatty(), leave=False,
    )
