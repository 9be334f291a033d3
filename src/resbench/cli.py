"""The `resbench` command line. Each subcommand's flags live beside the code they drive."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import typing

from . import __version__, fetch
from .bench import add_bench_parser
from .config import add_train_flags, config_from_args
from .errors import ResbenchError, printable
from .evaluate import add_eval_parser
from .report import add_plot_parser, add_table_parser
from .sweep import add_sweep_parser, stop_with_parent
from .train import Interrupted, TrainingDiverged, train


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one run of the recipe (resumes an existing --save folder)",
                                   description="Train a ResNet with the reference recipe.")
    add_train_flags(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    try:
        summary = train(config_from_args(args))
    except TrainingDiverged as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    return 0 if summary.get("status") == "finished" else 1


class OneLineErrors(argparse.ArgumentParser):
    """argparse whose usage errors are one line and a pointer to --help, not the whole usage block
    first. Subcommand parsers inherit the class (add_subparsers uses the parent's)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {printable(message)} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrors(prog="resbench", description=__doc__)
    parser.add_argument("--version", action="version", version=f"resbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(subparsers)
    fetch.add_data_parser(subparsers)
    for add_parser in (add_eval_parser, add_sweep_parser, add_table_parser, add_plot_parser, add_bench_parser):
        add_parser(subparsers)
    return parser


def stop_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM acts like Ctrl-C outside the training loop (which saves on either): the unwinding
    removes what a run or a download had only begun (empty run folder, lock and .part files)."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        stop_with_parent()
        return args.func(args)
    except ResbenchError as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 2
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
