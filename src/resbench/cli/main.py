"""The `resbench` command line: one module per command in this folder (its flags, its handler, its
text output), put together here.

No `--help` loads torch, which takes seconds (tens of them on a busy machine): a command module
imports the code it drives when it runs, not when its flags are defined.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from resbench.cli import bench, compare, data, evaluate, export, plot, sweep, table, train
from resbench.console import printable
from resbench.errors import ResbenchError
from resbench.settings.flags import Parser
from resbench.sweep.local import stop_with_parent
from resbench.version import __version__

COMMANDS = (train, data, evaluate, export, sweep, table, compare, plot, bench)

DESCRIPTION = """\
Residual-network baselines in PyTorch: CIFAR-10, CIFAR-100 and TinyImageNet-200 at 32x32 and
64x64, reproducing the published results tables of a JAX/Flax implementation (cs-giung's
giung2-dev, projects/residual-networks, 2023) from its own command line."""

EXAMPLES = """\
examples:
  resbench train --data_name Digits_x32 --resnet_depth 14 --batch_size 64 --optim_ni 500 --eval_every 100
      the offline demo: about a minute on a laptop CPU, nothing to download
  resbench train --data_name CIFAR10_x32 --resnet_depth 20
      one row of the published tables (fetches CIFAR-10 first if it is missing)
  resbench train --config runs/CIFAR10_x32/R20x1-b256-i48k-lr0.1-wd0.001-s42/config.json --save runs/again
      the same run again, from its folder's settings
  resbench sweep --grid seed --jobs 2 --dry_run
      the plan for all 26 published rows: folders, datasets to download, time
  resbench table runs --compare reference
      the finished runs as tables, the published figures beside ours
  resbench data list
      which datasets are prepared, and how to get the others
  resbench data import MySet ./my_images && resbench train --data_name MySet
      the recipe on your own images (my_images/train/<class>/*.png, or an .npz)
  resbench export runs/Digits_x32/R14x1-b64-i500-lr0.1-wd0.001-s42 exported/digits-r14
      the run's weights, config.json and model card, to publish; resbench.load_model("exported/digits-r14")

Every flag written with underscores also takes dashes (--data-name). `resbench COMMAND --help`
lists a command's flags."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resbench", description=DESCRIPTION, epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"resbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(subparsers)
    return parser


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM acts like Ctrl-C outside the training loop (which saves on either): the unwinding
    removes what a run or a download had only begun (empty run folder, lock and .part files)."""
    raise KeyboardInterrupt


def print_any_name() -> None:
    """A folder name that is not UTF-8 (held as surrogates) printed on a strict stdout, as under
    LANG=en_US.UTF-8, would end a run with a UnicodeEncodeError: such characters print escaped."""
    if getattr(sys.stdout, "errors", None) == "strict" and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    print_any_name()
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        stop_with_parent()
        return args.func(args)
    except ResbenchError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `resbench ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 141  # as a process killed by SIGPIPE
    except OSError as exc:
        if exc.filename is None:
            raise
        # A path the checks above did not foresee (a name too long, a folder that vanished): one line.
        print(f"error: cannot use {printable(exc.filename)} ({printable(exc.strerror or exc)}); "
              "check the path you passed", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: see StopSignals
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
