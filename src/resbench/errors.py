"""The exception type the command line turns into `error: <message>` (exit status 2, no traceback), and its
subclass shared by the data modules (download, archive, dataset readers, preparation)."""


class ResbenchError(Exception):
    """A problem the user can fix (bad path, bad flag value, missing optional package)."""


class DataError(ResbenchError):
    """A dataset cannot be fetched or prepared; the message says what is wrong and what to do."""
