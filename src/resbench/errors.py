"""The one exception type the command line turns into `error: <message>` (exit status 2, no traceback)."""


class ResbenchError(Exception):
    """A problem the user can fix (bad path, bad flag value, missing optional package)."""
