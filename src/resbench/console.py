"""What the commands print: reports on stdout (`say`), messages, durations and progress bars on stderr
for the long operations (downloads, preparation, runs: `log`).

One printing rule for text that came from a file or a folder name (a run folder's name, summary.json's
status, a class folder, dataset.json's source, a line of stdout.log): it is data, and never acts on the
terminal nor forges a line. Each such field is written with `printable` where it enters a line
(every control character escaped: C0 and C1, DEL, and newline and carriage return inside the field);
then every report goes out through `say` or `log`, which escape any control character left but the
line breaks the tool itself writes (`printable_lines`).
"""

from __future__ import annotations

import math
import os
import sys
from typing import IO, TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from tqdm import tqdm


def printable(text: object) -> str:
    """`text` with every control character escaped (`\\x1b`, `\\n`), so a message that quotes a server's
    status text or a name read from a file can neither move the cursor, recolour the terminal nor
    forge a line: the rule for every field that came from a file or a folder name (`console`)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def printable_lines(text: str) -> str:
    """`printable` line by line: the line breaks of a report the tool wrote kept, every other control
    character escaped (the rule's last guard, in `console.say` and `console.log`)."""
    return "\n".join(map(printable, text.split("\n")))


def log(message: str) -> None:
    """A message on stderr, at once (printing rule above)."""
    print(printable_lines(message), file=sys.stderr, flush=True)


def say(text: str, end: str = "\n") -> None:
    """A report on stdout, at once (printing rule above)."""
    print(printable_lines(text), end=end, flush=True)


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
    """A progress bar on stderr, shown only when stderr is a terminal (logs stay clean); `desc` may name
    a file or a set, so it follows the printing rule."""
    from tqdm import tqdm  # (imported here: the printing rule's users, --help among them, need no tqdm)

    return tqdm(
        total=total, initial=initial, desc=printable(desc), unit=unit, unit_scale=unit == "B",
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
