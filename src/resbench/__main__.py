"""`python -m resbench`, `torchrun -m resbench`, the `resbench` command and scripts_cifar/SGDM.py (all `run`).

Importing the command line takes seconds (torch), so this module stays light: a Ctrl-C that lands
during the imports, before `cli.main` can handle it, ends with `interrupted` and exit status 130
instead of a KeyboardInterrupt traceback.
"""

import sys


def run(argv: list[str] | None = None) -> int:
    try:
        from resbench.cli.main import main

        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(run())
