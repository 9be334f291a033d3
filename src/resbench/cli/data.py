"""`resbench data download NAME`, `resbench data import NAME SRC` and `resbench data list`: fetch, verify
and prepare the benchmark datasets, or prepare a researcher's own images the same way."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from resbench.console import printable, say
from resbench.data.fetch.prepare import DATASETS
from resbench.data.imported import DEFAULT_SPLIT_SEED, DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from resbench.errors import DataError


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def format_status(rows: list[dict]) -> str:
    """`data list`'s table: images per split (train: the training split, without the validation split the
    training file also holds), and a set whose sizes are not the official ones as `nonstandard`."""
    lines = [f"{'dataset':<21} {'status':<11} {'train':>7} {'val':>6} {'test':>7} {'size':>9}  note"]
    for row in rows:
        status = ("nonstandard" if row.get("nonstandard") else "complete" if row["complete"] else
                  "damaged" if row["present"] else "missing")
        note = printable(row.get("note") or row["problem"] or "")
        lines.append(f"{printable(row['name']):<21} {status:<11} {row.get('train') or '-':>7} "
                     f"{row.get('val') or '-':>6} {row.get('test') or '-':>7} "
                     f"{human_size(row['bytes']) if row['present'] else '-':>9}  {note}".rstrip())
    return "\n".join(lines)


def run_download(args: argparse.Namespace) -> int:
    from resbench.data.fetch.prepare import prepare_datasets, training_datasets

    names = training_datasets() if args.name == "all" else [args.name]
    prepare_datasets(names, args.data_root, mirror=args.mirror, verify=not args.no_verify)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from resbench.data.fetch.prepare import dataset_status
    from resbench.data.imported import imported_status

    if os.path.exists(args.data_root) and not os.path.isdir(args.data_root):
        raise DataError(f"data root {args.data_root} is not a folder; pass the folder that holds the datasets "
                        "as --data_root")
    say(f"data root: {printable(Path(args.data_root).resolve())}")
    say(format_status(dataset_status(args.data_root) + imported_status(args.data_root)))
    return 0


def run_import(args: argparse.Namespace) -> int:
    from resbench.data.imported import ImportRequest, import_dataset

    request = ImportRequest(args.name, args.src, args.data_root, args.image_size, args.val_fraction,
                            args.test_fraction, args.split_seed, args.skip_bad, args.workers)
    _, _, lines = import_dataset(request)
    say("\n".join(lines))
    return 0


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def add_import_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        "import", help="prepare your own images (an ImageFolder tree or an .npz) as a dataset to train on",
        description="Prepare <data_root>/NAME/{train,test}_{images,labels}.npy and dataset.json (its facts) from "
                    "SRC: an ImageFolder tree SRC/train/<class>/<image> (optionally SRC/test/<class>/<image>; "
                    "any format Pillow reads) or an .npz holding x_train, y_train (optionally x_test, y_test, "
                    "classes; uint8 NHWC or NCHW, grey allowed). Images are made RGB (alpha composited onto "
                    "black, 16-bit grey scaled) and resized to --image_size with PIL's BICUBIC filter. A "
                    "stratified, seeded validation split is held out of train (and a test split carved out "
                    "first where SRC has none). It ends with the train command to run, its batch size, iterations "
                    "and evaluation interval fitted to the set (the recipe's 300 epochs), and a warning where the "
                    "validation or test split is too small for its figures to mean anything (under 100 images).")
    parser.add_argument("name", metavar="NAME", help="the dataset's name: letters, digits, _, - and . (not first)")
    parser.add_argument("src", metavar="SRC", help="an ImageFolder tree (a folder holding train/) or an .npz file")
    parser.add_argument("--image_size", type=int, choices=(32, 64), default=32, help="image size")
    parser.add_argument("--val_fraction", type=fraction, default=DEFAULT_VAL_FRACTION,
                        help="share of the training images held out for validation")
    parser.add_argument("--test_fraction", type=fraction, default=DEFAULT_TEST_FRACTION,
                        help="share of the training images carved out as the test split, where SRC has no test "
                             "split")
    parser.add_argument("--split_seed", type=int, default=DEFAULT_SPLIT_SEED,
                        help="seed of the held-out splits, recorded in dataset.json")
    parser.add_argument("--skip_bad", action="store_true",
                        help="leave unreadable images out (counted in the summary) instead of stopping at the first")
    parser.add_argument("--workers", type=positive, default=None,
                        help="decoding processes (default: one per available core; 1: decode in this process)")
    parser.set_defaults(func=run_import)
    return parser


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data download``, ``data import`` and ``data list``; each sets ``func`` (args -> exit code)."""
    data = subparsers.add_parser("data", help="fetch, verify and prepare datasets, or import your own",
                                 description="Fetch, verify and prepare the benchmark datasets, or prepare your "
                                             "own images the same way (data import).")
    commands = data.add_subparsers(dest="data_command", metavar="{download,import,list}", required=True)

    download_parser = commands.add_parser(
        "download", help="download (or use a placed archive), verify and prepare a dataset",
        description="Prepare <data_root>/NAME/{train,test}_{images,labels}.npy (an evaluation set: its own "
                    "layout, see the README). An archive already in <data_root>/downloads/ under its official "
                    "name is used without network access. ImageNet1k_x32 and ImageNet1k_x64 (downsampled "
                    "ImageNet) cannot be downloaded without an image-net.org account: place their official "
                    "archives (npz or pickled variant) in <data_root>/downloads/ (the command says which when "
                    "they are missing); they are checked (counts, shapes, labels) and their SHA-256 recorded in "
                    "NAME/sources.json, since no checksum is published (docs/imagenet.md).")
    download_parser.add_argument("name", metavar="NAME", choices=[*DATASETS, "all"],
                                 help=f"one of {', '.join(DATASETS)}, or all (the training datasets that can be "
                                      "downloaded: all but ImageNet's)")
    download_parser.add_argument("--mirror", metavar="URL_OR_DIR", default=None,
                                 help="fetch the official file names from this base URL or local folder")
    download_parser.add_argument("--no_verify", action="store_true",
                                 help="skip the MD5 check (prints a warning)")
    download_parser.set_defaults(func=run_download)

    import_parser = add_import_parser(commands)
    list_parser = commands.add_parser("list", help="show which datasets are prepared and complete (imported ones too)")
    list_parser.set_defaults(func=run_list)

    for parser in (download_parser, import_parser, list_parser):
        parser.add_argument("--data_root", default="./data", help="dataset folder")
    return data
