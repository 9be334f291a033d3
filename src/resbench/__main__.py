"""`python -m resbench`, `torchrun -m resbench`, the `resbench` command and scripts_cifar/SGDM.py (all `run`).

Importing the command line takes seconds (torch), so this module stays light: a Ctrl-C that lands
during the imports, before `cli.main` can handle it, ends with `interrupted` and exit status 130
instead of a KeyboardInterrupt traceback.
"""

import fcntl
import os
import sys


def open_closed_standard_streams() -> None:
    """A stdin, stdout or stderr closed by the caller (`<&-`, `>&-`, `2>&-`) becomes /dev/null: else
    the next file opened takes its descriptor, and a print, or a library's message, lands in that file
    (a run's log or checkpoint), or a print fails with EBADF in the middle of training. An output
    open for reading only (a launcher's script left on a closed stderr, as pyenv's shim) counts as closed."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            usable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY or fd == 0
        except OSError:
            usable = False
        if usable:
            continue
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def run(argv: list[str] | None = None) -> int:
    open_closed_standard_streams()
    try:
        os.getcwd()
    except OSError as exc:  # torch's own import dies of it, naming only a library ("oneMKL FATAL ERROR")
        print(f"error: the current folder cannot be used ({exc.strerror}: deleted?); cd into an existing "
              "folder and run the command again", file=sys.stderr)
        return 2
    try:
        from resbench.cli.main import main

        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
