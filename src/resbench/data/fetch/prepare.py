"""Prepare the benchmark datasets, online or offline (the `resbench data` command is `cli.data`).

For each dataset the recipe in `resbench.data.recipes` names its official archive and reader; this
module fetches the archive (`download.fetch_archive`: a placed archive needs no network), reads
it, and writes ``<data_root>/<NAME>/{train,test}_{images,labels}.npy``. Preparation writes into
``<data_root>/.<NAME>.tmp-XXXX`` and renames the folder into place at the end, so an interrupted
run never leaves a dataset that looks complete. Processes preparing from the same archive at
once (``resbench sweep --jobs 2`` on an empty data root) take turns under
``<data_root>/.<archive>.lock``; the later one finds the data prepared.

The tool deletes only what it wrote: preparing again into an existing ``<NAME>`` folder replaces
its prepared files and leaves anything else there (a ``<NAME>`` or ``downloads`` that is a link is
refused: it writes only into folders of its own); the temporary folders a killed preparation left
are removed by the next one from the same archive (under its lock, so never those of a live
process), by their exact name and the mark they were made with (`fetch.store`); folders created by
a preparation that fails are removed if empty.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from resbench.console import log, printable
from resbench.data.fetch.archive import remove_stale_scratch
from resbench.data.fetch.download import download, fetch_archive
from resbench.data.fetch.store import remove_stale_dataset_temporaries, write_dataset
from resbench.data.recipes import RECIPES, Recipe
from resbench.errors import DataError
from resbench.files import UnsafeFileError, drop_lock_file, own_folder, take_lock

DOWNLOADS_DIR = "downloads"
DATASETS: tuple[str, ...] = tuple(RECIPES)


def training_datasets() -> list[str]:
    """What `resbench data download all` prepares: the training datasets that can be downloaded (evaluation
    sets and the sets whose archives are placed by hand, ImageNet's, by name)."""
    from resbench.data import facts

    return [name for name, recipe in RECIPES.items() if name in facts.DATASETS and not recipe.placed]


def _check_name(name: str) -> str:
    if name not in RECIPES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return name


def _inspect(data_root: Path, name: str) -> tuple[str | None, dict[str, int]]:
    """(problem or None, images per split) of a prepared dataset: the trainer's (or eval's) own checks,
    memory-mapped."""
    from resbench.data import evalsets, facts  # torch: loaded to check data, not for `resbench data --help`
    from resbench.data.prepared import read_prepared
    from resbench.errors import DataFileError

    try:
        if name in evalsets.EVAL_SETS:
            return None, evalsets.inspect_prepared(name, data_root)
        train_x, _, test_x, _ = read_prepared(facts.DATASETS[name], data_root, mmap_mode="r")
    except DataFileError as err:
        return str(err), {}
    return None, facts.split_sizes(facts.DATASETS[name], len(train_x), len(test_x))


def is_complete(data_root: str | os.PathLike, name: str) -> bool:
    """Whether ``<data_root>/<name>`` holds all four files with the right shapes and dtypes."""
    return _inspect(Path(data_root), _check_name(name))[0] is None


def _remove_stale_temporaries(root: Path, recipe: Recipe) -> None:
    """Remove what killed preparations from `recipe`'s archive left: temporary dataset folders (in the data
    root and in the dataset folders) and extraction folders. Called holding the archive's lock, under
    which all of them are made, so none of them belongs to a live process."""
    for name in (name for name, other in RECIPES.items() if other.lock_name == recipe.lock_name):
        remove_stale_dataset_temporaries(root, name)
    if not os.path.islink(root / DOWNLOADS_DIR):
        remove_stale_scratch(root / DOWNLOADS_DIR, recipe.lock_name)


def _root_error(root: Path, action: str, err: OSError) -> DataError:
    """Why datasets cannot be written under ``root``, as one line instead of a traceback from deep inside."""
    cause = "it exists and is not a folder" if root.exists() and not root.is_dir() else err.strerror or str(err)
    return DataError(f"cannot {action} data root {root} ({cause}); pass a writable folder as --data_root")


def make_root(root: Path) -> None:
    """Create the data root, or say in one line why it cannot be (a file, an unwritable parent)."""
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _root_error(root, "create", err) from None


@contextmanager
def undo_new_folders(path: Path) -> Iterator[None]:
    """On failure, remove the folders up to `path` that did not exist before, if nothing else was written there."""
    created = [p for p in (path, *path.parents) if not os.path.lexists(p)]  # deepest first
    try:
        yield
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


@contextmanager
def preparation_lock(root: Path, lock_name: str, names: Sequence[str]) -> Iterator[None]:
    """Hold ``<root>/.<lock_name>.lock`` while this process prepares ``names`` (from an archive: the
    archive's name, so that every dataset of one download takes turns under one lock).

    Two runs preparing at once (``resbench sweep --jobs 2`` on an empty data root) would write the
    same ``.part`` file and dataset folders; the second waits instead. The lock is per archive
    because both TinyImageNet sizes come from one download. The holder deletes the lock file
    before releasing it (nothing is left behind); a waiter that then holds the deleted file
    notices and locks the path afresh.
    """
    path = root / f".{lock_name}.lock"
    try:
        fd = take_lock(path, on_wait=lambda: log(f"waiting for another process preparing {', '.join(names)} in "
                                                 f"{printable(root)} (lock file {path.name})"))
    except UnsafeFileError as err:
        raise DataError(f"cannot lock {path} ({err.strerror}); remove it and run again") from None
    except OSError as err:
        raise _root_error(root, "write in", err) from None
    try:
        yield
    finally:
        drop_lock_file(path, fd)
        os.close(fd)


def _incomplete_by_recipe(root: Path, names: Sequence[str]) -> dict[Recipe, list[str]]:
    """The datasets among ``names`` that still need preparing, grouped by the recipe (archive) they come from."""
    todo: dict[Recipe, list[str]] = {}
    for name in names:
        if is_complete(root, name):
            log(f"{name}: already prepared in {printable(root / name)}")
        else:
            todo.setdefault(RECIPES[name], []).append(name)
    return todo


def own_downloads(root: Path) -> Path:
    """<data_root>/downloads, where archives are fetched and extracted: a folder of the tool's own, never a link."""
    try:
        return own_folder(root, DOWNLOADS_DIR)
    except UnsafeFileError as err:
        raise DataError(f"{err.filename}: {err.strerror}; move it away (an archive there may be passed with "
                        "--mirror FOLDER), then run again") from None
    except OSError as err:
        raise _root_error(root, "write in", err) from None


def _prepare_group(root: Path, recipe: Recipe, group: list[str], mirror: str | None, verify: bool) -> None:
    """Fetch one archive (and those it needs), or find the placed ones, and write every dataset of ``group``
    from a single decode."""
    from resbench.data import evalsets

    sizes = sorted({evalsets.image_size(name) for name in group})
    if recipe.placed:
        archives = placed_archives(recipe, group[0], root, mirror)
        log(f"preparing {', '.join(group)} from {', '.join(a.name for a in archives)}")
        arrays = recipe.read(archives, sizes)
    else:
        archive = fetch_archive(recipe.source, own_downloads(root), mirror, verify)
        needed = []
        for source in (RECIPES[name].source for name in recipe.needs):
            with preparation_lock(root, source.filename, group):
                needed.append(fetch_archive(source, own_downloads(root), mirror, verify))
        log(f"preparing {', '.join(group)} from {', '.join(a.name for a in [archive, *needed])}")
        arrays = recipe.read(archive, sizes, *needed)
    for name in group:
        log(f"{name}: ready in {printable(write_dataset(root, name, arrays[evalsets.image_size(name)]))}")


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
    with undo_new_folders(root / DOWNLOADS_DIR):
        if todo:
            make_root(root)
        for recipe, group in todo.items():
            with preparation_lock(root, recipe.lock_name, group):
                _remove_stale_temporaries(root, recipe)
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


# ---------------------------------------------------------------- archives placed by hand (ImageNet's)

def placed_archives(recipe: Recipe, name: str, root: Path, mirror: str | None) -> list[Path]:
    """The archives of the first variant found whole in <root>/downloads/ or a --mirror folder (read where
    they lie), or downloaded from a --mirror URL (its first variant); otherwise one line saying which files
    to place where."""
    downloads = root / DOWNLOADS_DIR
    folders = [downloads] + ([Path(mirror).expanduser()] if mirror and "://" not in mirror else [])
    for folder in folders:
        for names in recipe.placed.variants.values():
            if all((folder / n).is_file() for n in names):
                for archive in names:
                    log(f"using {printable(folder / archive)}")
                return [folder / n for n in names]
    if mirror and "://" in mirror:
        names = next(iter(recipe.placed.variants.values()))
        return [download(mirror.rstrip("/") + "/" + n, own_downloads(root) / n, None) if not (downloads / n).is_file()
                else downloads / n for n in names]
    raise DataError(placement(recipe, name, root))


def placement(recipe: Recipe, name: str, root: Path) -> str:
    """What to place where for `name` (one line): each variant's official file names, and what is there."""
    downloads = root / DOWNLOADS_DIR
    (_, names), *others = recipe.placed.variants.items()
    also = "".join(f" (or the {variant} variant: {listed(files)})" for variant, files in others)
    found = [n for files in recipe.placed.variants.values() for n in files if (downloads / n).is_file()]
    there = f"; {downloads} holds {', '.join(found)} but not all of one variant" if found else ""
    return (f"{name} cannot be downloaded without an account: get {listed(names)}{also} from "
            f"{recipe.placed.where} and place them in {downloads.resolve()}, then run `resbench data download "
            f"{name} --data_root {root}`{there}")


def listed(names: Sequence[str]) -> str:
    """`a, b and c`."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def archive_origin(name: str, data_root: str | os.PathLike, mirror: str | None) -> str:
    """Where preparing `name` takes its archive from, in words (a sweep's dry run says it)."""
    recipe, downloads = RECIPES[name], Path(data_root) / DOWNLOADS_DIR
    if recipe.placed:
        if any(all((downloads / n).is_file() for n in names) for names in recipe.placed.variants.values()):
            return f"the archives placed in {downloads}"
        return f"--mirror {mirror}" if mirror else f"nothing yet: {placement(recipe, name, Path(data_root))}"
    source = recipe.source
    if (downloads / source.filename).is_file():
        return f"the archive already in {downloads / source.filename}"
    return f"{source.filename} from --mirror {mirror}" if mirror else source.url


def disk_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def _demo_status() -> dict:
    """The built-in demo dataset: usable wherever scikit-learn is installed; nothing is stored."""
    from resbench.data.digits import digits_8x8
    from resbench.data.facts import DATASETS, DEMO_DATASET, DEMO_TEST_SIZE, split_sizes
    from resbench.errors import DataFileError

    row = {"name": DEMO_DATASET, "path": None, "present": False, "bytes": 0}
    try:
        images = len(digits_8x8()[1])
    except DataFileError as err:  # scikit-learn is not installed
        return {**row, "complete": False, "problem": str(err)}
    return {**row, "complete": True, "problem": None, **split_sizes(DATASETS[DEMO_DATASET], images - DEMO_TEST_SIZE,
                                                                    DEMO_TEST_SIZE),
            "note": "built in (scikit-learn's digits), nothing to download"}


def dataset_status(data_root: str | os.PathLike) -> list[dict]:
    """One dict per dataset: name, path, present, complete, problem, nonstandard (how a training set's split
    sizes differ from the official ones), images per split, bytes, and the fix when it is not usable or not
    the official set; the demo dataset last."""
    from resbench.data import facts

    rows, training = [], training_datasets()
    for name in DATASETS:
        folder = Path(data_root) / name
        problem, counts = _inspect(Path(data_root), name) if folder.is_dir() else ("not prepared", {})
        fix = (f"`resbench data download {name} --data_root {data_root}` (or `resbench "
               f"{'train' if name in training else 'eval'}` fetches it itself)")
        if RECIPES[name].placed:
            fix = placement(RECIPES[name], name, Path(data_root))
        other = facts.size_problem(facts.DATASETS[name], counts) if problem is None and name in training else None
        rows.append({
            "name": name, "path": str(folder), "present": folder.is_dir(), "complete": problem is None,
            "problem": problem, "nonstandard": other, "train": None, "val": None, "test": None, **counts,
            "bytes": disk_size(folder), "note": status_note(problem, other, folder.is_dir(), fix),
        })
    return [*rows, _demo_status()]


def status_note(problem: str | None, nonstandard: str | None, present: bool, fix: str) -> str | None:
    """`data list`'s note on a dataset that is not usable, or not the official set: what is wrong, and the fix."""
    if nonstandard:
        return (f"not the official set: {nonstandard}; `resbench train` refuses it without --allow_nonstandard "
                f"(the official one: move it away, then {fix})")
    if problem:
        return f"{problem}; fix: {fix}" if present else f"get it: {fix}"
    return None
