"""The exception type the command line turns into `error: <message>` (exit status 2, no traceback), and its
subclasses shared by the data modules (download, archive, dataset readers, preparation; prepared files).
(A message is printed by the printing rule of `console`: `console.printable` for the names it quotes.)"""


class ResbenchError(Exception):
    """A problem the user can fix (bad path, bad flag value, missing optional package)."""


class DataError(ResbenchError):
    """A dataset cannot be fetched or prepared; the message says what is wrong and what to do."""


class DataFileError(ResbenchError):
    """A prepared data file is missing or malformed; the message names the file and the fix."""


def reason(exc: Exception) -> str:
    """An exception's own words for a message that names the file already: an OSError's without
    its errno and path ("No such file or directory"), any other's as it says them."""
    return str(exc.strerror or exc) if isinstance(exc, OSError) else str(exc)
