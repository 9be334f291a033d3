"""Prepare the benchmark datasets, online or offline, and the `resbench data` command.

For each dataset the recipe in `resbench.datasets` names its official archive and reader; this
module fetches the archive (`download.fetch_archive`: a placed archive needs no network), reads
it, and writes ``<data_root>/<NAME>/{train,test}_{images,labels}.npy``. Preparation writes into
``<data_root>/.<NAME>.tmp-XXXX`` and renames the folder into place at the end, so an interrupted
run never leaves a dataset that looks complete. Processes preparing from the same archive at
once (``resbench sweep --jobs 2`` on an empty data root) take turns under
``<data_root>/.<archive>.lock``; the later one finds the data prepared.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .console import log
from .datasets import RECIPES, Recipe
from .datasets.common import Splits
from .download import Source, fetch_archive
from .errors import DataError

DOWNLOADS_DIR = "downloads"
DATASETS: tuple[str, ...] = tuple(RECIPES)


def _check_name(name: str) -> str:
    if name not in RECIPES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def _inspect(data_root: Path, name: str) -> tuple[str | None, dict[str, int]]:
    """(problem or None, sample counts) of a prepared dataset: the trainer's own checks, memory-mapped."""
    from . import data  # torch: loaded to check data, not for `resbench data --help`
    from .data import DataFileError, read_prepared

    try:
        train_x, _, test_x, _ = read_prepared(data.DATASETS[name], data_root, mmap_mode="r")
    except DataFileError as err:
        return str(err), {}
    return None, {"train": len(train_x), "test": len(test_x)}


def is_complete(data_root: str | os.PathLike, name: str) -> bool:
    """Whether ``<data_root>/<name>`` holds all four files with the right shapes and dtypes."""
    return _inspect(Path(data_root), _check_name(name))[0] is None


def _write_dataset(data_root: Path, name: str, splits: Splits) -> Path:
    """Save the arrays in a hidden temporary folder, then rename it into place atomically."""
    from .checkpoint import current_umask
    from .data import PREPARED_FILES

    target = data_root / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=data_root))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp's 0700 would hide a shared data root's datasets
    try:
        for filename in PREPARED_FILES:
            np.save(tmp / filename, splits[filename], allow_pickle=False)
        if target.exists():  # an incomplete earlier attempt or a damaged copy
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _root_error(root: Path, action: str, err: OSError) -> DataError:
    """Why datasets cannot be written under ``root``, as one line instead of a traceback from deep inside."""
    cause = "it exists and is not a folder" if root.exists() and not root.is_dir() else err.strerror or str(err)
    return DataError(f"cannot {action} data root {root} ({cause}); pass a writable folder as --data_root")


def _make_root(root: Path) -> None:
    """Create the data root, or say in one line why it cannot be (a file, an unwritable parent)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _root_error(root, "create", err) from None


def _is_still_at(fd: int, path: Path) -> bool:
    """Whether ``fd`` is the file now at ``path``, not one that the previous holder deleted."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _lock_file(path: Path, waiting_message: str) -> int:
    """A descriptor holding an exclusive flock on ``path``; logs ``waiting_message`` once if it must wait."""
    waited = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    log(waiting_message)
                    waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _is_still_at(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextmanager
def _preparation_lock(root: Path, source: Source, names: Sequence[str]) -> Iterator[None]:
    """Hold ``<root>/.<archive>.lock`` while this process downloads and prepares from ``source``.

    Two runs preparing at once (``resbench sweep --jobs 2`` on an empty data root) would write the
    same ``.part`` file and dataset folders; the second waits instead. The lock is per archive
    because both TinyImageNet sizes come from one download. The holder deletes the lock file
    before releasing it (nothing is left behind); a waiter that then holds the deleted file
    notices and locks the path afresh.
    """
    path = root / f".{source.filename}.lock"
    try:
        fd = _lock_file(path, f"waiting for another process preparing {', '.join(names)} in {root} "
                              f"(lock file {path.name})")
    except OSError as err:
        raise _root_error(root, "write in", err) from None
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _incomplete_by_recipe(root: Path, names: Sequence[str]) -> dict[Recipe, list[str]]:
    """The datasets among ``names`` that still need preparing, grouped by the recipe (archive) they come from."""
    todo: dict[Recipe, list[str]] = {}
    for name in names:
        if is_complete(root, name):
            log(f"{name}: already prepared in {root / name}")
        else:
            todo.setdefault(RECIPES[name], []).append(name)
    return todo


def _prepare_group(root: Path, recipe: Recipe, group: list[str], mirror: str | None, verify: bool) -> None:
    """Fetch one archive and write every dataset of ``group`` from a single decode."""
    from . import data

    archive = fetch_archive(recipe.source, root / DOWNLOADS_DIR, mirror, verify)
    log(f"preparing {', '.join(group)} from {archive.name}")
    arrays = recipe.read(archive, sorted({data.DATASETS[name].image_size for name in group}))
    for name in group:
        log(f"{name}: ready in {_write_dataset(root, name, arrays[data.DATASETS[name].image_size])}")


def prepare_datasets(names: Sequence[str], data_root: str | os.PathLike, mirror: str | None = None,
                     verify: bool = True) -> list[Path]:
    """Prepare several datasets; datasets sharing an archive (TinyImageNet) decode it once.

    Complete datasets are left alone without writing anything (a read-only data root is fine
    then). The rest is prepared under the archive's lock, after checking again what another
    process finished while this one waited.
    """
    root = Path(data_root)
    names = [_check_name(name) for name in names]
    todo = _incomplete_by_recipe(root, names)
    if todo:
        _make_root(root)
    for recipe, group in todo.items():
        with _preparation_lock(root, recipe.source, group):
            left = _incomplete_by_recipe(root, group).get(recipe)
            if left:
                _prepare_group(root, recipe, left, mirror, verify)
    return [root / name for name in names]


def prepare_dataset(name: str, data_root: str | os.PathLike, mirror: str | None = None,
                    verify: bool = True) -> Path:
    """Make ``<data_root>/<name>`` complete (fetching the archive if needed); return that folder.

    A no-op when the dataset is already complete. Progress goes to stderr; failures raise
    DataError with a one-line message.
    """
    return prepare_datasets([name], data_root, mirror, verify)[0]


def _disk_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _demo_status() -> dict:
    """The built-in demo dataset: usable wherever scikit-learn is installed; nothing is stored."""
    from .data import DEMO_DATASET, DEMO_TEST_SIZE

    row = {"name": DEMO_DATASET, "path": None, "present": False, "bytes": 0, "train": None, "test": None}
    if importlib.util.find_spec("sklearn") is None:
        return {**row, "complete": False, "problem": "needs scikit-learn: pip install 'resbench[demo]'"}
    from sklearn.datasets import load_digits

    images = len(load_digits().target)
    return {**row, "complete": True, "problem": None, "train": images - DEMO_TEST_SIZE, "test": DEMO_TEST_SIZE,
            "note": "built in (scikit-learn's digits), nothing to download"}


def dataset_status(data_root: str | os.PathLike) -> list[dict]:
    """One dict per dataset: name, path, present, complete, problem, train/test counts, bytes, and
    the fix when it is not usable; the demo dataset last."""
    rows = []
    for name in DATASETS:
        folder = Path(data_root) / name
        problem, counts = _inspect(Path(data_root), name) if folder.is_dir() else ("not prepared", {})
        fix = f"`resbench data download {name} --data_root {data_root}` (or `resbench train` fetches it itself)"
        rows.append({
            "name": name, "path": str(folder), "present": folder.is_dir(), "complete": problem is None,
            "problem": problem, "train": counts.get("train"), "test": counts.get("test"),
            "bytes": _disk_size(folder),
            "note": None if problem is None else f"{problem}; fix: {fix}" if folder.is_dir() else f"get it: {fix}",
        })
    return [*rows, _demo_status()]


# ----------------------------------------------------------------------------- command line


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def _format_status(rows: list[dict]) -> str:
    lines = [f"{'dataset':<21} {'status':<10} {'train':>7} {'test':>7} {'size':>9}  note"]
    for row in rows:
        status = "complete" if row["complete"] else ("damaged" if row["present"] else "missing")
        note = row.get("note") or row["problem"] or ""
        lines.append(f"{row['name']:<21} {status:<10} {row['train'] or '-':>7} {row['test'] or '-':>7} "
                     f"{_human_size(row['bytes']) if row['present'] else '-':>9}  {note}".rstrip())
    return "\n".join(lines)


def _download_command(args: argparse.Namespace) -> int:
    names = list(DATASETS) if args.name == "all" else [args.name]
    prepare_datasets(names, args.data_root, mirror=args.mirror, verify=not args.no_verify)
    return 0


def _list_command(args: argparse.Namespace) -> int:
    print(f"data root: {Path(args.data_root).resolve()}")
    print(_format_status(dataset_status(args.data_root)))
    return 0


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``data download`` and ``data list``; each sets ``func`` (args -> exit code)."""
    data = subparsers.add_parser("data", help="fetch, verify and prepare datasets",
                                 description="Fetch, verify and prepare the benchmark datasets.")
    commands = data.add_subparsers(dest="data_command", metavar="{download,list}", required=True)

    download_parser = commands.add_parser(
        "download", help="download (or use a placed archive), verify and prepare a dataset",
        description="Prepare <data_root>/NAME/{train,test}_{images,labels}.npy. An archive already in "
                    "<data_root>/downloads/ under its official name is used without network access.")
    download_parser.add_argument("name", metavar="NAME", choices=[*DATASETS, "all"],
                                 help=f"one of {', '.join(DATASETS)}, or all")
    download_parser.add_argument("--mirror", metavar="URL_OR_DIR", default=None,
                                 help="fetch the official file names from this base URL or local folder")
    download_parser.add_argument("--no-verify", action="store_true",
                                 help="skip the MD5 check (prints a warning)")
    download_parser.set_defaults(func=_download_command)

    list_parser = commands.add_parser("list", help="show which datasets are prepared and complete")
    list_parser.set_defaults(func=_list_command)

    for parser in (download_parser, list_parser):
        parser.add_argument("--data_root", default="./data", help="dataset folder (default: ./data)")
    return data
