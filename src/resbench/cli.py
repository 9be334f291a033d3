"""The `resbench` command line.

Each subcommand's flags live beside the code they drive (train's in config.py), except those of
`eval` and `bench`: their modules need torch as soon as they are imported, so their flags are
defined here. No `--help` loads torch, which takes seconds (tens of them on a busy machine); the
code of a command is imported when it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from . import __version__, fetch
from .compare import add_compare_parser
from .config import NOT_GIVEN, TrainConfig, add_train_flags, config_from_args, flag_kind
from .errors import ResbenchError, printable
from .flags import Parser
from .plots import add_plot_parser
from .report import add_table_parser
from .sweep import add_sweep_parser, stop_with_parent

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
  resbench sweep --grid seed --jobs 2 --dry-run
      the plan for all 26 published rows: folders, datasets to download, time
  resbench table runs --compare reference
      the finished runs as tables, the published figures beside ours
  resbench data list
      which datasets are prepared, and how to get the others

Every flag written with underscores also takes dashes (--data-name). `resbench COMMAND --help`
lists a command's flags."""


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one run of the recipe (resumes an existing --save folder)",
                                   description="Train a ResNet with the reference recipe. Flags given beside "
                                               "--config override the file's settings.")
    add_train_flags(parser)
    parser.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from .train import Interrupted, TrainingDiverged, train

    try:
        summary = train(config_from_args(args))
    except TrainingDiverged as exc:
        print(f"error: {printable(exc)}", file=sys.stderr)
        return 1
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 130
    return 0 if summary.get("status") == "finished" else 1


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench eval (--ckpt CKPT_OR_RUN [...] | RUNS_DIR) [--corruptions] [--ood [NAME ...]] [--save] [--json]`
    (evaluate.py)."""
    p = subparsers.add_parser(
        "eval", help="accuracy, NLL, ECE, Brier; corruptions, OOD detection, ensembles",
        description="Evaluate checkpoints (model settings from each run folder's config.json): accuracy, NLL, "
                    "ECE (15 bins), Brier score; with --corruptions the corrupted test split, with --ood OOD "
                    "detection; several --ckpt are scored as an ensemble (their probabilities averaged) beside "
                    "each member. RUNS_DIR: every run folder below it, each saved to its eval.json.")
    p.add_argument("runs_dir", nargs="?", type=Path, default=None, metavar="RUNS_DIR",
                   help="evaluate every run folder below RUNS_DIR on its own and write its eval.json (as --save)")
    p.add_argument("--ckpt", type=Path, nargs="+", default=None, metavar="CKPT_OR_RUN_DIR",
                   help="best.pt, last.pt or a run folder (see --which); several: their ensemble")
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="checkpoint of a run folder: best (best validation accuracy, default) or last (final iterate)")
    p.add_argument("--data_root", default=None, help="dataset folder (default: the run's data_root)")
    p.add_argument("--split", choices=["val", "test"], default="test", help="split to evaluate (default test)")
    p.add_argument("--temperature_scaling", action="store_true",
                   help="also report the metrics after fitting one temperature T on the validation NLL")
    p.add_argument("--corruptions", action="store_true",
                   help="accuracy, NLL and ECE on the corrupted test split (CIFAR10_C, CIFAR100_C, TinyImageNet200_C, "
                        "Digits_C for the demo) per corruption and severity, and their means")
    p.add_argument("--ood", nargs="*", default=None, metavar="NAME",
                   help="OOD detection (AUROC, AUPR-In/Out, FPR95 for max-softmax, entropy and energy scores) of the "
                        "test split against each set: a dataset name, SVHN, a corrupted set, or Noise; none named: "
                        "the usual pairs (CIFAR-10 vs CIFAR-100 and SVHN, and so on)")
    p.add_argument("--save", action="store_true",
                   help="write the figures into the run folder as eval.json (eval_last.json for last.pt), "
                        "which `resbench table --columns` reads")
    p.add_argument("--batch_size", type=int, default=None,  # None: evaluate.CPU_EVAL_BATCH_SIZE / EVAL_BATCH_SIZE
                   help="images per inference batch (default 512 on a CPU, 1024 on a GPU)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run_eval)
    return p


def run_eval(args: argparse.Namespace) -> int:
    from .evaluate import run_eval

    return run_eval(args)


def add_bench_parser(subparsers: argparse._SubParsersAction) -> None:
    """`resbench bench` (bench.py): the configuration's flags are train's, with train's defaults
    (left out of the namespace when not given, so that `--grid` can refuse them)."""
    parser = subparsers.add_parser("bench", help="measure training images/s of one configuration or a whole grid",
                                   description="Training throughput of one configuration, measured against "
                                               "the device's peak, on generated data of the dataset's shape; "
                                               "or, with --grid, of every row of a sweep grid with what each run costs.")
    defaults = TrainConfig()
    parser.add_argument("--data_name", default=NOT_GIVEN,
                        help=f"dataset whose image shape and class count to generate (default {defaults.data_name})")
    parser.add_argument("--resnet_depth", type=int, default=NOT_GIVEN,
                        help=f"network depth, as train's --resnet_depth (default {defaults.resnet_depth})")
    parser.add_argument("--resnet_width", type=int, default=NOT_GIVEN,
                        help=f"channel multiplier, as train's --resnet_width (default {defaults.resnet_width})")
    parser.add_argument("--batch_size", type=int, default=NOT_GIVEN,
                        help=f"images per training step (default {defaults.batch_size})")
    parser.add_argument("--mixed_precision", default=NOT_GIVEN,
                        help=f"false | true | fp16 | bf16 (default {defaults.mixed_precision})")
    parser.add_argument("--grid", metavar="seed|FILE.toml", default=None,
                        help="time every row of a sweep grid instead (seed: the 26 rows of the published table, or "
                             "a grid file): images/s and minutes per run, evaluations and warm-up included, "
                             "and the total")
    parser.add_argument("--compile", default=defaults.compile, nargs="?", const="true",
                        help="auto | true | false, or --compile alone for true (auto decides as `resbench train` "
                             "would for --optim_ni)")
    parser.add_argument("--optim_ni", type=int, default=defaults.optim_ni,
                        help="the run length `--compile auto` decides for")
    parser.add_argument("--device", default=defaults.device, help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=flag_kind("threads"), default=None,
                        help="CPU threads (torch.set_num_threads), as train's --threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    parser.add_argument("--iters", type=int, default=10, help="steps per timed window")
    parser.add_argument("--windows", type=int, default=3, help="timed windows (median and spread reported)")
    parser.add_argument("--vs", action="store_true", help="also time a plain eager step, interleaved, for a ratio")
    parser.add_argument("--pack", type=int, default=1, metavar="K",
                        help="also time K seeds packed into one network (grouped convolutions), interleaved: "
                             "their images/s together against one run's")
    parser.add_argument("--json", action="store_true", help="print the record as JSON instead of a table")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench_command

    return run_bench_command(args)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="resbench", description=DESCRIPTION, epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"resbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parser(subparsers)
    fetch.add_data_parser(subparsers)
    for add_parser in (add_eval_parser, add_sweep_parser, add_table_parser, add_compare_parser, add_plot_parser,
                       add_bench_parser):
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
