"""`resbench train`: one run of the recipe into its run folder (train/), resumed where it stopped."""

from __future__ import annotations

import argparse

from resbench.console import log, printable
from resbench.settings.flags import add_train_flags, given_flags
from resbench.train.assemble import config_from


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("train", help="train one run of the recipe (resumes an existing --save folder)",
                                   description="Train a ResNet with the reference recipe. Flags given beside "
                                               "--config override the file's settings.")
    add_train_flags(parser)
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from resbench.train.loop import Interrupted, TrainingDiverged, train

    try:
        summary = train(config_from(given_flags(args)))
    except TrainingDiverged as exc:
        log(f"error: {printable(exc)}")
        return 1
    except Interrupted as exc:
        log(str(exc))
        return 130
    return 0 if summary.get("status") == "finished" else 1
