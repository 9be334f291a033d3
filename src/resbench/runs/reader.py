"""Reading run folders back: one `Run` record, read the same way by table, compare, plot, eval, sweep
and resume, so that a torn last line, an older field name or a damaged file means the same
everywhere.

Light (no torch). Every reader raises `RunFolderError` naming the file and the fault; commands
that summarise many runs skip such a folder with one warning line (`readable_runs`).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from resbench.console import log, printable
from resbench.data.facts import DATASETS, SPLITS, size_problem
from resbench.errors import ResbenchError, reason
from resbench.files import read_bounded
from resbench.runs import schema
from resbench.runs.schema import RunFolderError, checked_fields
from resbench.settings.config import (
    LEGACY_TYPES,
    PRECISION_OF_FLAG,
    RESUMABLE_CHANGES,
    SETTING_DEFAULTS,
    TrainConfig,
    canonical,
    has_json_type,
    json_types,
    setting_types,
    shown_value,
)

T = TypeVar("T")
# The most bytes read of a run folder's JSON file, and of its metrics.jsonl: the trainer writes a few
# kilobytes, and one line of about 600 bytes per evaluation (64 MiB: 100,000 evaluations). A planted
# link to /dev/zero or a 1 GB file is refused as damaged, not read into memory.
MAX_JSON_FILE = 16 << 20
MAX_METRICS_FILE = 64 << 20
# Settings that never make two runs of one configuration different: the seed (what the runs of a
# table row vary), paths and choices that do not change a number (settings.config.RESUMABLE_CHANGES), and
# the configuration itself (dataset, depth, width, precision).
NOT_ROW_SETTINGS = frozenset({"seed", *RESUMABLE_CHANGES, "data_name", "resnet_depth", "resnet_width",
                              "mixed_precision"})


def read_json(path: Path, what: str | None = None, fix: str = "") -> Any:
    """The parsed content of one JSON file of a run folder. `what` names it in the error (its file
    name by default), `fix` says what to do."""
    what = what or path.name
    try:
        return parse_json(read_bounded(path, MAX_JSON_FILE))
    except FileNotFoundError:
        raise RunFolderError(f"it has no {path.name}") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{what} is unreadable ({reason(exc)})" + (f"; {fix}" if fix else "")) from None


def parse_json(text: bytes | str) -> Any:
    """json.loads whose every failure is a ValueError: nesting deeper than the parser recurses too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_object(path: Path, fields: dict[str, Any], what: str | None = None, fix: str = "") -> dict:
    """A JSON object file whose `fields` have their types (`schema.checked_fields`)."""
    value = read_json(path, what, fix)
    try:
        return checked_fields(value, fields, what or path.name)
    except RunFolderError as exc:
        raise RunFolderError(f"{exc}; {fix}" if fix else str(exc)) from None


def read_summary(folder: Path) -> dict:
    """summary.json, checked; one written before `best_val_acc` was named apart has it as `val_acc`."""
    path = Path(folder) / schema.SUMMARY
    return checked_fields(schema.renamed_fields(read_json(path)), schema.SUMMARY_FIELDS, path.name,
                          schema.OPTIONAL_SUMMARY_FIELDS)


def read_metrics(folder: Path) -> list[dict]:
    """The evaluation records of one run (metrics.jsonl), oldest first; empty if none yet.

    An unparsable last line is what a crash in the middle of an append leaves: it is dropped and
    the records before it, each written whole, are kept. Anywhere else it means a damaged file.
    """
    path = Path(folder) / schema.METRICS
    try:
        lines = read_bounded(path, MAX_METRICS_FILE).decode().rstrip().splitlines()
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path.name} is unreadable ({reason(exc)})") from None
    records: list[dict] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = parse_json(line)
        except ValueError:
            if number == len(lines):
                break
            raise RunFolderError(f"{path.name} line {number} is not JSON") from None
        what = f"{path.name} line {number}"
        records.append(checked_fields(record, schema.RECORD_FIELDS, what))
        check_iteration(records, what)
    return records


def check_iteration(records: list[dict], what: str) -> None:
    """The last record's iteration must be a whole number after the one before it: a NaN, a fraction,
    a repeated or a backward iteration (never written by the trainer, which cuts the file back when
    it resumes) would be drawn and compared as if it were an evaluation."""
    step = records[-1]["iter"]
    if not isinstance(step, int) or step < 0:
        raise RunFolderError(f"{what} has iteration {shown_value(step)}, not a whole number of iterations")
    if len(records) > 1 and step <= records[-2]["iter"]:
        raise RunFolderError(f"{what} has iteration {step} after {records[-2]['iter']}; "
                             "the evaluations must go forward")


def read_eval(folder: Path, which: str = "best") -> dict | None:
    """The eval.json of a run folder, or None where there is none (a damaged one: None and a warning)."""
    path = Path(folder) / schema.SAVED_EVAL[which]
    if not path.is_file():
        return None
    try:
        figures = parse_json(read_bounded(path, MAX_JSON_FILE))
        if isinstance(figures, dict):
            return figures
    except (OSError, ValueError):
        pass
    log(f"warning: ignoring unreadable {printable(path)}")
    return None


def status_of(folder: Path) -> str:
    """summary.json's status (finished, diverged), `running` for a run without one, `unknown` where
    it cannot be read."""
    try:
        summary = parse_json(read_bounded(Path(folder) / schema.SUMMARY, MAX_JSON_FILE))
    except FileNotFoundError:
        return "running"
    except (OSError, ValueError):
        return "unknown"
    return str(summary.get("status")) if isinstance(summary, dict) else "unknown"


@dataclass
class Run:
    """One run folder as every command reads it.

    A finished run read for a table (`find_runs`) has its `summary` (summary.json), whose recorded
    configuration is its `config`; a run read with its curves (`find_run_folders`: compare, plot),
    finished or still going, has the settings of its config.json and `summary` None. `records` are
    its evaluations (metrics.jsonl) where they were read, `evaluation` its eval.json.
    """

    path: Path
    config: dict  # the settings as asked
    resolved: dict  # what they became on the machine (empty for older runs)
    records: list[dict] | None = None
    summary: dict | None = None
    evaluation: dict | None = None

    def __post_init__(self):
        self.summary = schema.renamed_fields(self.summary)

    @classmethod
    def from_summary(cls, summary: dict, path: Path = Path(), records: list[dict] | None = None,
                     evaluation: dict | None = None) -> Run:
        return cls(path, summary.get("config") or {}, {}, records, summary, evaluation)

    @property
    def data_name(self) -> str:
        return self.summary["data_name"] if self.summary else self.config["data_name"]

    @property
    def depth(self) -> int:
        return int(self.summary["depth"] if self.summary else self.setting("resnet_depth"))

    @property
    def width(self) -> int:
        return int(self.summary["width"] if self.summary else self.setting("resnet_width"))

    @property
    def precision(self) -> str:
        """As trained; an older run that asked for `--mixed_precision true` counts as fp16 (bf16 matches the
        same reference run)."""
        if self.summary:
            return self.summary["precision"]
        flag = str(self.setting("mixed_precision")).lower()
        return self.resolved.get("precision") or PRECISION_OF_FLAG.get(flag, flag)

    def setting(self, key: str) -> Any:
        """A setting as asked; an older config.json may lack one: it had the default then."""
        return self.config.get(key, getattr(TrainConfig, key))

    @functools.cached_property
    def status(self) -> str:
        """Read once: compare asks it several times per run."""
        return status_of(self.path)

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def settings(self) -> dict[str, Any]:
        """The run's settings that could make it a table row of its own."""
        return {k: v for k, v in {**SETTING_DEFAULTS, **self.config}.items() if k not in NOT_ROW_SETTINGS}

    @functools.cached_property
    def data_problem(self) -> str | None:
        """How the built-in set the run trained on differed from the official one (the split sizes it
        recorded: summary.json's, or config.json's resolved `splits`), or None: as official, imported, or
        recorded before runs recorded their sizes. Such a run is never set beside the published figures."""
        sizes = (self.summary or {}).get("splits") or self.resolved.get("splits")
        if self.data_name not in DATASETS or sizes is None:
            return None
        if not (isinstance(sizes, dict) and set(sizes) == set(SPLITS) and all(
                isinstance(n, int) and not isinstance(n, bool) for n in sizes.values())):
            return f"its recorded split sizes are damaged ({shown_value(sizes)})"
        return size_problem(DATASETS[self.data_name], sizes)


def runs_folder(runs_dir: Path) -> Path:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise ResbenchError(f"no such runs folder: {runs_dir}")
    return runs_dir


def readable_runs(paths: list[Path], read: Callable[[Path], T]) -> list[tuple[Path, T]]:
    """`read(path)` of every path; a damaged run folder is skipped with one warning line naming it and the fault."""
    found = []
    for path in paths:
        try:
            found.append((path, read(path)))
        except RunFolderError as exc:
            log(f"warning: skipping damaged run folder {printable(path.parent)}: {printable(exc)}")
    return found


def find_runs(runs_dir: Path, with_records: bool = False) -> list[Run]:
    """Every finished run below `runs_dir` (a folder with a sound summary.json), in path order, with the
    figures of its eval.json if it has one, and its evaluation records if asked (for selections other
    than the recipe's)."""
    def read(path: Path) -> Run:
        return Run.from_summary(read_summary(path.parent), path.parent,
                                read_metrics(path.parent) if with_records else None, read_eval(path.parent))

    return [run for _, run in readable_runs(sorted(runs_folder(runs_dir).rglob(schema.SUMMARY)), read)]


def read_run_folder(metrics: Path) -> Run:
    """The run folder of one metrics.jsonl, with the config.json beside it."""
    config = read_object(metrics.parent / schema.CONFIG, schema.CONFIG_FIELDS)
    settings = schema.asked_settings(config)
    check_setting_types(settings, metrics.parent / schema.CONFIG, "restore the file")  # a run's settings are indexed
    resolved = config.get(schema.RESOLVED_KEY)
    return Run(metrics.parent, settings, resolved if isinstance(resolved, dict) else {}, read_metrics(metrics.parent))


def find_run_folders(paths: list[Path]) -> list[Run]:
    """Every run folder (finished or not) that is one of `paths` or below one, in path order; damaged
    ones are skipped with a warning. Read before anything is drawn or compared, so a damaged run is
    skipped rather than failing half-way through."""
    found: list[Path] = []
    for path in map(Path, paths):
        if (path / schema.METRICS).is_file():
            found.append(path / schema.METRICS)
        else:
            found += sorted(runs_folder(path).rglob(schema.METRICS))
    return [run for _, run in readable_runs(list(dict.fromkeys(found)), read_run_folder)]


def configured_folders(runs_dir: Path) -> list[Path]:
    """Every run folder below `runs_dir` (one with a config.json), in path order."""
    return sorted({path.parent for path in runs_folder(runs_dir).rglob(schema.CONFIG)})


def is_run_folder(path: Path) -> bool:
    return (Path(path) / schema.CONFIG).is_file()


def last_iteration(folder: Path) -> int:
    """The iteration of a started run's last evaluation (metrics.jsonl), 0 for a new one."""
    try:
        records = read_metrics(folder)
    except RunFolderError:
        return 0
    return int(records[-1]["iter"]) if records else 0


# ---------------------------------------------------------------- a run's saved settings

def check_same_config(saved: dict[str, Any], wanted: dict[str, Any], path: Path) -> None:
    """Refuse to continue or reuse a run folder whose saved settings differ in anything that changes a number."""
    saved = {**SETTING_DEFAULTS, **saved}  # a setting added since the run started: the default it ran with
    differing = [f"{key}: saved {saved.get(key)!r}, now {wanted.get(key)!r}"
                 for key in sorted(set(saved) | set(wanted))
                 if key not in RESUMABLE_CHANGES and canonical(key, saved.get(key)) != canonical(key, wanted.get(key))]
    if differing:
        raise RunFolderError(
            f"{path} holds a run with other settings ({'; '.join(differing)}); "
            "use another --save folder, or the saved settings to resume it")


def check_saved_settings(saved: Any, path: Path) -> None:
    """Refuse a saved config.json that is not an object of known settings, each of its field's type,
    with one line naming the file and the setting (a hand-edited or foreign file would otherwise
    fail somewhere deep in the run, with a traceback)."""
    if not isinstance(saved, dict):
        raise RunFolderError(f"{path} is not a resbench config.json (it holds a JSON {type(saved).__name__}, "
                              "not an object of settings); restore it, or use another --save folder")
    unknown = set(saved) - set(setting_types())
    if unknown:
        raise RunFolderError(f"{path} has unknown settings {sorted(map(str, unknown))[:5]}; "
                             "was it written by resbench?")
    check_setting_types(saved, path, "restore the file, or use another --save folder")


def check_setting_types(saved: dict[str, Any], path: Path, fix: str) -> None:
    """Refuse a saved setting of another type than its field's (`resnet_depth: null`), naming the
    file and the setting; settings this version does not know are left to the caller."""
    hints = setting_types()
    for key, value in saved.items():
        if key in hints and not has_json_type(value, hints[key], LEGACY_TYPES.get(key, ())):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in json_types(hints[key]))
            raise RunFolderError(f"{path}: setting {key} is {shown_value(value)}, not {names}; {fix}")


def resumed_settings(resume: str, save: str | None = None) -> dict[str, Any]:
    """The settings saved in run folder `resume` (its config.json, checked) to resume it with; `save`, where
    a flag gives it, must name the same folder."""
    if not is_run_folder(resume):
        raise RunFolderError(f"cannot resume {resume}: it is not a run folder (no config.json); "
                             "pass the --save folder of an earlier run")
    saved_path = Path(resume) / schema.CONFIG
    saved = read_json(saved_path, f"cannot resume {resume}: {saved_path}", "delete the folder to start over")
    if save not in (None, resume):
        raise RunFolderError(f"--save {save} and --resume {resume} name two folders; "
                             "a resumed run stays in its folder")
    saved = schema.asked_settings(saved) if isinstance(saved, dict) else saved
    check_saved_settings(saved, saved_path)
    return saved
