"""The `resbench` command line. Each subcommand's flags live beside the code they drive."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import typing
from pathlib import Path

from . import __version__, fetch
from .bench import add_bench_parser
from .checkpoint import CheckpointError
from .errors import ResbenchError
from .evaluate import add_eval_parser
from .report import add_plot_parser, add_table_parser
from .sweep import add_sweep_parser
from .train import Interrupted, TrainConfig, TrainingDiverged, train

FLAG_HELP = {
    "data_name": "dataset: CIFAR10_x32, CIFAR100_x32, TinyImageNet200_x32, TinyImageNet200_x64, Digits_x32 (offline demo)",
    "resnet_depth": "6n+2 (20, 32, 44, 56, 110, ...) or 18, 34, 50, 101, 152",
    "resnet_width": "channel multiplier",
    "batch_size": "global batch size",
    "optim_ni": "training iterations",
    "optim_lr": "peak learning rate (linear warm-up over 10%%, cosine decay to 0)",
    "optim_momentum": "heavy-ball momentum",
    "optim_weight_decay": "L2 added to every gradient before momentum (PyTorch style)",
    "optim_label_smoothing": "label smoothing of the cross-entropy",
    "optim_global_clipping": "clip gradients to this global norm (off or 0: no clipping)",
    "seed": "random seed (init, data order, augmentation)",
    "data_root": "folder holding <data_name>/{train,test}_{images,labels}.npy",
    "save": "run folder (default runs/<data_name>/<settings>); an existing one is resumed",
    "mixed_precision": "false | true (fp16 with loss scaling on CUDA, bf16 elsewhere) | fp16 | bf16",
    "eval_every": "iterations between evaluations (and one at the last iteration)",
    "device": "auto | cpu | cuda | cuda:N",
    "compile": "auto | true | false: torch.compile the training step (auto: only for runs long enough to repay the compile time)",
    "sync_bn": "data-parallel runs: BatchNorm statistics over the global batch instead of per rank (CUDA)",
    "tensorboard": "also write TensorBoard scalars to <save>/tensorboard (needs the tensorboard package)",
    "deterministic": "deterministic CUDA kernels, so a resumed GPU run matches bit for bit (true/false; slower)",
}


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def optional_float(text: str) -> float | None:
    """A number, where none/off/0 mean "not used"."""
    if text.strip().lower() in ("none", "off"):
        return None
    value = float(text)
    return None if value == 0 else value


NOT_GIVEN = argparse.SUPPRESS  # a flag left out is absent from the namespace: only given flags change a resumed run


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one run of the recipe (resumes an existing --save folder)",
                                   description="Train a ResNet with the reference recipe.")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        kind = {bool: parse_bool, int: int, float: float, str: str, str | None: str}.get(hints[f.name], optional_float)
        shown = "off" if f.default is None else f.default
        parser.add_argument(f"--{f.name}", type=kind, default=NOT_GIVEN, help=f"{FLAG_HELP[f.name]} (default: {shown})")
    parser.add_argument("--resume", metavar="RUN_DIR", help="resume RUN_DIR with its saved settings")
    parser.set_defaults(func=run_train)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The settings of the run: from the flags, or from RUN_DIR/config.json with --resume."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    if not args.resume:
        return TrainConfig(**given)
    saved_path = Path(args.resume) / "config.json"
    if not saved_path.is_file():
        raise CheckpointError(f"cannot resume {args.resume}: it is not a run folder (no config.json); "
                              "pass the --save folder of an earlier run")
    try:
        saved = json.loads(saved_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume {args.resume}: {saved_path} is unreadable ({exc}); "
                              "delete the folder to start over") from None
    if given.get("save") not in (None, args.resume):
        raise CheckpointError(f"--save {given['save']} and --resume {args.resume} name two folders; "
                              "a resumed run stays in its folder")
    unknown = set(saved) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise CheckpointError(f"{saved_path} has unknown settings {sorted(unknown)}; was it written by resbench?")
    return TrainConfig(**{**saved, **given, "save": str(args.resume)})


def run_train(args: argparse.Namespace) -> int:
    try:
        summary = train(config_from_args(args))
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    return 0 if summary.get("status") == "finished" else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resbench", description=__doc__)
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
        return args.func(args)
    except ResbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # stopping already: see StopSignals
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
