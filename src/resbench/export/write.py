"""`resbench export`: a run folder, or every finished run below a folder, as folders to publish.

A folder is written whole or not at all: it is built in a new private folder beside OUT_DIR
(`mkdtemp`: no link can be planted in it), each file flushed to disk, then renamed into place.
What stands at OUT_DIR is replaced only when it is an export of resbench's own (its config.json
or index.json carries the marker, and it holds nothing else than what an export writes) or an
empty folder; a symbolic link there, a file, or a folder of anything else is refused in one line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Callable

from resbench.console import log, printable
from resbench.errors import ResbenchError, reason
from resbench.export.card import card, index_card
from resbench.export.source import Source, model_config, read_source
from resbench.files import current_umask, open_own_file
from resbench.results.plots import file_stem, plot_curves, pyplot
from resbench.runs.reader import configured_folders, read_json, runs_folder, status_of
from resbench.runs.schema import RunFolderError
from resbench.weights import layout


def export_run(run_dir: Path, out_dir: Path) -> Source:
    """Export one run folder into `out_dir` (model.safetensors, config.json, README.md, the curves)."""
    check_replaceable(Path(out_dir))  # (before the run is read: a refusal comes at once)
    source = read_source(run_dir, file_stem(Path(out_dir).name))
    write_folder(Path(out_dir), lambda folder: fill_export(folder, source))
    return source


def export_sweep(runs_dir: Path, out_dir: Path, on_export: Callable[[str], None] = lambda name: None) -> list[Source]:
    """Every finished run below `runs_dir` into a folder of its own in `out_dir`, with index.json and
    README.md (the collection's table); the others are named in the index with the reason."""
    runs_dir = runs_folder(runs_dir)
    check_replaceable(Path(out_dir))
    sources, skipped = sweep_sources(runs_dir, on_export)
    if not sources:
        raise ResbenchError(f"no finished run below {runs_dir} could be exported (summary.json with status finished)")

    def fill(folder: Path) -> None:
        for source in sources:
            (folder / source.name).mkdir()
            fill_export(folder / source.name, source)
        write_file(folder / layout.INDEX, json_text({layout.INDEX_KEY: layout.FORMAT,
                                                      "exports": [s.name for s in sources]}))
        write_file(folder / layout.CARD, index_card(sources, skipped).encode())

    write_folder(Path(out_dir), fill)
    return sources


def sweep_sources(runs_dir: Path, on_export: Callable[[str], None]) -> tuple[list[Source], list[tuple[str, str]]]:
    """The finished runs below `runs_dir` that read as an export's source, each under the name of its folder
    in the export (unique, and neither index.json nor README.md), and (name, why) of the others, which the
    index lists."""
    sources, skipped = [], []
    taken = set(layout.SWEEP_FILES)  # (a run folder named README.md or index.json)
    for folder in configured_folders(runs_dir):
        if layout.is_exported(folder):  # an earlier export kept below RUNS_DIR
            continue
        name = unique_name(file_stem("-".join(folder.relative_to(runs_dir).parts) or runs_dir.name), taken)
        taken.add(name)
        if (status := status_of(folder)) != "finished":
            # No summary.json reads as `running`, but from the folder alone a stopped run looks the same.
            why = "stopped or still training (no summary.json)" if status == "running" else printable(status)[:40]
            skipped.append((name, f"{why}, not finished"))
            continue
        try:
            sources.append(read_source(folder, name))
        except ResbenchError as exc:
            log(f"warning: not exporting {printable(folder)}: {printable(exc)}")
            skipped.append((name, printable(exc)[:300]))
        else:
            on_export(name)
    return sources, skipped


def unique_name(name: str, taken: set[str]) -> str:
    found, n = name, 1
    while found in taken:
        n += 1
        found = f"{name}-{n}"
    return found


def fill_export(folder: Path, source: Source) -> None:
    """The files of one export, in the (new, private) `folder`."""
    write_file(folder / layout.MODEL, source.weights)
    write_file(folder / layout.CONFIG, json_text(model_config(source)))
    write_file(folder / layout.CARD, card(source, draw_curves(folder / layout.CURVES, source)).encode())


def draw_curves(path: Path, source: Source) -> str | None:
    """The run's training curves as a PNG; where they cannot be drawn (no matplotlib), why not."""
    try:
        plt = pyplot()
    except ResbenchError as exc:
        return str(exc)
    plot_curves(plt, source.spec.name, [source.run], path)
    return None


def json_text(value: object) -> bytes:
    return (json.dumps(value, indent=2) + "\n").encode()


def write_file(path: Path, data: bytes) -> None:
    """A new file of ours, on disk before the folder holding it is renamed into place."""
    with open_own_file(path) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


# ---------------------------------------------------------------- the folder, whole or not at all

def write_folder(out: Path, fill: Callable[[Path], None]) -> None:
    """`fill` a new private folder beside `out`, then put it at `out` (replacing an export of ours)."""
    check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        new = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise cannot_write(out, exc) from None
    try:
        fill(new)
        os.chmod(new, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the export from co-workers
        put_in_place(new, out)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def put_in_place(new: Path, out: Path) -> None:
    """Rename `new` to `out`; an export of ours standing there is moved aside first and removed after."""
    check_replaceable(out)  # again: the folder may have changed while the export was made
    old = None
    if os.path.lexists(out):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rename(out, old)  # (over the empty folder just made)
    try:
        os.rename(new, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
        raise cannot_write(out, exc) from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def cannot_write(out: Path, exc: OSError) -> ResbenchError:
    return ResbenchError(f"cannot write {out} ({reason(exc)}); name a folder you can write")


def check_replaceable(out: Path) -> None:
    """Refuse an OUT_DIR that is not missing, an empty folder or an export of ours, or that has no name
    (`.`, `x/..`): the export is made beside it, which such a path has not."""
    if out.name in ("", ".", ".."):
        raise ResbenchError(f"OUT_DIR {out} ends in no folder's name; name the folder to write (resbench writes it "
                            "beside, then renames it)")
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ResbenchError(f"cannot write {out} ({reason(exc)}); name another folder") from None
    if stat.S_ISLNK(info.st_mode):
        raise ResbenchError(f"{out} is a symbolic link, and resbench never writes through one; remove it, "
                            "or name another folder")
    if not stat.S_ISDIR(info.st_mode):
        raise ResbenchError(f"a file stands at {out}; name a folder for the export")
    if os.listdir(out) and not (own_export(out) or own_sweep(out)):
        raise ResbenchError(f"{out} holds files that resbench export did not write; name a new or empty folder "
                            "(an earlier export of resbench's is replaced)")


def entries(folder: Path) -> dict[str, os.stat_result]:
    with contextlib.suppress(OSError):
        return {name: os.lstat(folder / name) for name in os.listdir(folder)}
    return {}


def marked(path: Path, key: str) -> bool:
    """Whether the JSON file `path` (not a link) carries the marker `key` of this export format."""
    try:
        value = read_json(path)
    except RunFolderError:
        return False
    return isinstance(value, dict) and value.get(key) == layout.FORMAT


def own_export(folder: Path) -> bool:
    found = entries(folder)
    return (set(found) <= set(layout.EXPORT_FILES) and layout.CONFIG in found
            and all(stat.S_ISREG(info.st_mode) for info in found.values())
            and marked(folder / layout.CONFIG, layout.FORMAT_KEY))


def own_sweep(folder: Path) -> bool:
    found = entries(folder)
    files = {name for name, info in found.items() if stat.S_ISREG(info.st_mode)}
    folders = {name for name, info in found.items() if stat.S_ISDIR(info.st_mode)}
    return (layout.INDEX in files and files <= set(layout.SWEEP_FILES) and files | folders == set(found)
            and marked(folder / layout.INDEX, layout.INDEX_KEY) and all(own_export(folder / name) for name in folders))
