"""`resbench data download NAME` and `resbench data list`: fetch, verify and prepare datasets."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from resbench.data.fetch.prepare import DATASETS
from resbench.errors import DataError

def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def format_status(rows: list[dict]) -> str:
    lines = [f"{'dataset':<21} {'status':<10} {'train':>7} {'test':>7} {'size':>9}  note"]
    for row in rows:
        status = "complete" if row["complete"] else ("damaged" if row["present"] else "missing")
        note = row.get("note") or row["problem"] or ""
        lines.append(f"{row['name']:<21} {status:<10} {row['train'] or '-':>7} {row['test'] or '-':>7} "
                     f"{human_size(row['bytes']) if row['present'] else '-':>9}  {note}".rstrip())
    return "\n".join(lines)


def run_download(args: argparse.Namespace) -> int:
    from resbench.data.fetch.prepare import prepare_datasets, training_datasets

    names = training_datasets() if args.name == "all" else [args.name]
    prepare_datasets(names, args.data_root, mirror=args.mirror, verify=not args.no_verify)
    return 0


def run_list(args: argparse.Namespace) -> int:
    from resbench.data.fetch.prepare import dataset_status

    if os.path.exists(args.data_root) and not os.path.isdir(args.data_root):
        raise DataError(f"data root {args.data_root} is not a folder; pass the folder that holds the datasets "
                        "as --data_root")
    print(f"data root: {Path(args.data_root).resolve()}")
    print(format_status(dataset_status(args.data_root)))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data download`` and ``data list``; each sets ``func`` (args -> exit code)."""
    data = subparsers.add_parser("data", help="fetch, verify and prepare datasets",
                                 description="Fetch, verify and prepare the benchmark datasets.")
    commands = data.add_subparsers(dest="data_command", metavar="{download,list}", required=True)

    download_parser = commands.add_parser(
        "download", help="download (or use a placed archive), verify and prepare a dataset",
        description="Prepare <data_root>/NAME/{train,test}_{images,labels}.npy (an evaluation set: its own "
                    "layout, see the README). An archive already in <data_root>/downloads/ under its official "
                    "name is used without network access.")
    download_parser.add_argument("name", metavar="NAME", choices=[*DATASETS, "all"],
                                 help=f"one of {', '.join(DATASETS)}, or all (the training datasets)")
    download_parser.add_argument("--mirror", metavar="URL_OR_DIR", default=None,
                                 help="fetch the official file names from this base URL or local folder")
    download_parser.add_argument("--no-verify", action="store_true",
                                 help="skip the MD5 check (prints a warning)")
    download_parser.set_defaults(func=run_download)

    list_parser = commands.add_parser("list", help="show which datasets are prepared and complete")
    list_parser.set_defaults(func=run_list)

    for parser in (download_parser, list_parser):
        parser.add_argument("--data_root", default="./data", help="dataset folder (default: ./data)")
    return data
