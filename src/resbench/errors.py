"""The exception type the command line turns into `error: <message>` (exit status 2, no traceback), and its
subclasses shared by the data modules (download, archive, dataset readers, preparation; prepared files)."""


class ResbenchError(Exception):
    """A problem the user can fix (bad path, bad flag value, missing optional package)."""


class DataError(ResbenchError):
    """A dataset cannot be fetched or prepared; the message says what is wrong and what to do."""


class DataFileError(ResbenchError):
    """A prepared data file is missing or malformed; the message names the file and the fix."""


def printable(text: str) -> str:
    """`text` with every control character escaped (`\\x1b`), so a message that quotes a server's
    status text or a name read from a file cannot move the cursor or recolour the terminal."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def printable_lines(text: str) -> str:
    """`printable` line by line: a report's line breaks kept, every other control character escaped."""
    return "\n".join(map(printable, text.split("\n")))


def reason(exc: Exception) -> str:
    """An exception's own words for a message that names the file already: an OSError's without
    its errno and path ("No such file or directory"), any other's as it says them."""
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
