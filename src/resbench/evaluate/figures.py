"""What `resbench eval` computes for its checkpoints (one, an ensemble, or every run below a folder):
the split's figures, temperature scaling, corruptions and OOD detection, saved as eval.json.

One checkpoint's figures and an ensemble's are two functions with one shape each
(`evaluate_checkpoint`, `evaluate_ensemble`), computed by the same `head_figures`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from resbench.console import log, printable
from resbench.data import evalsets
from resbench.data.facts import DATASETS, MIN_SPLIT_FOR_FIGURES, DatasetSpec, is_imported, resolution
from resbench.data.fetch.prepare import is_complete, prepare_datasets
from resbench.data.prepared import load_splits
from resbench.data.recipes import RECIPES
from resbench.errors import ResbenchError
from resbench.evaluate.checkpoints import (
    EXPORTED,
    Member,
    checkpoint_and_config,
    load_member,
    run_data_root,
    run_dataset,
)
from resbench.evaluate.metrics import (
    calibration_metrics,
    eval_batch_size,
    fit_temperature,
    nll,
    probability_metrics,
)
from resbench.evaluate.scoring import Scorer, corruption_figures, heads, ood_figures
from resbench.evaluate.uncertainty import diversity
from resbench.runs import schema
from resbench.runs.reader import configured_folders
from resbench.runs.writes import write_json
from resbench.settings.config import resolve_device


@dataclass
class EvalRequest:
    """What `resbench eval` was asked for, beyond the checkpoints."""

    data_root: str | None = None
    split: str = "test"
    temperature_scaling: bool = False
    corruptions: bool = False
    ood: list[str] | None = None  # None: no OOD figures; []: the natural OOD sets of the dataset
    device: str = "auto"
    batch_size: int | None = None  # None: metrics.eval_batch_size(device)


def shifted_sets(request: EvalRequest, spec: DatasetSpec, data_root: str) -> tuple[str | None, list[str]]:
    """The corrupted set and the OOD sets to score a model of `spec`'s dataset on, checked (an OOD set
    may also be another dataset imported into `data_root`)."""
    data_name, corrupted = spec.name, None
    if request.corruptions:
        corrupted = spec.corrupted
        if corrupted is None and spec.imported:
            raise ResbenchError(f"{data_name} is an imported dataset: no corrupted copy of its test split exists "
                                "(--corruptions scores CIFAR10_C, CIFAR100_C, TinyImageNet200_C, Digits_C); "
                                "leave --corruptions out")
        if corrupted is None:
            raise ResbenchError(f"no corrupted test set for {data_name}")
    ood = [] if request.ood is None else list(dict.fromkeys(request.ood or spec.natural_ood))
    known = [*(n for n in DATASETS if n != data_name), *evalsets.EVAL_SETS]
    for name in ood:
        if name == data_name:
            raise ResbenchError(f"--ood {name} is the run's own dataset; name other datasets")
        if name not in known and not is_imported(name, data_root):
            hint = " (put RUNS_DIR before --ood)" if Path(name).is_dir() else ""
            raise ResbenchError(f"unknown OOD set {name!r}{hint}; choose from {', '.join(known)}")
    if request.ood is not None and not ood:
        raise ResbenchError(f"no natural OOD sets for {data_name}; name them: --ood NAME ...")
    return corrupted, ood


def prepare_missing(names: list[str], data_root: str) -> None:
    """Download and prepare the sets eval needs that are not there yet, as train does for its dataset."""
    downloadable = [n for n in names if n in RECIPES and not is_complete(data_root, n)]
    for name in downloadable:
        log(f"{name} is not prepared in {data_root}: fetching and preparing it now")
    if downloadable:
        prepare_datasets(downloadable, data_root)


@dataclass
class Members:
    """The checkpoints `resbench eval` scores together, loaded, with the dataset they share."""

    members: list[Member]
    spec: DatasetSpec
    data_root: str
    device: torch.device


def load_members(paths: list[Path], which: str, request: EvalRequest) -> Members:
    """The checkpoints of `paths` (run folders, .pt files, exported weights), refused unless they share a dataset."""
    try:
        device = resolve_device(request.device)
    except ValueError as exc:
        raise ResbenchError(str(exc)) from None
    ckpts, configs = map(list, zip(*(checkpoint_and_config(path, which, request.data_root) for path in paths)))
    data_name = configs[0]["data_name"]
    if other := [str(c) for c, config in zip(ckpts, configs) if config["data_name"] != data_name]:
        raise ResbenchError(f"an ensemble's members must share a dataset: {ckpts[0]} is {data_name}, "
                            f"but not {', '.join(other)}")
    data_root = run_data_root(configs[0], ckpts[0].parent / schema.CONFIG, request.data_root)
    spec = run_dataset(configs[0], ckpts[0].parent / schema.CONFIG, data_root)
    return Members([load_member(ckpt, config, device, spec) for ckpt, config in zip(ckpts, configs)],
                   spec, data_root, device)


def head_figures(loaded: Members, request: EvalRequest) -> tuple[list[dict], torch.Tensor, dict]:
    """Each head's figures (every member's, then the ensemble's where there are several), the logits,
    and what every report shares.

    Computed in float32 whatever the runs' precision (checkpoints hold float32 weights), so an
    fp16/bf16 run's figures can differ from its summary.json in the third decimal.
    """
    if request.temperature_scaling:
        check_temperature_split(loaded.spec.num_val)
    corrupted, ood = shifted_sets(request, loaded.spec, loaded.data_root)
    prepare_missing([n for n in [corrupted, *ood] if n], loaded.data_root)
    data_name = loaded.spec.name
    splits = load_splits(data_name, loaded.data_root, loaded.device)
    batch_size = request.batch_size or eval_batch_size(loaded.device)
    score = Scorer(loaded.members, loaded.device, batch_size)
    logits = score(getattr(splits, f"{request.split}_images"), f"{data_name} {request.split}")
    labels = getattr(splits, f"{request.split}_labels").cpu()
    reports = [probability_metrics(log_p, labels) for log_p, _ in heads(logits)]
    if request.temperature_scaling:
        reports[0]["temperature_scaling"] = temperature_scaled(logits[0], labels, request.split, splits, score)
    if corrupted:
        for report, figures in zip(reports, corruption_figures(score, corrupted, loaded.data_root)):
            report["corruptions"] = figures
    if ood:
        id_logits = logits if request.split == "test" else score(splits.test_images, f"{data_name} test")
        for report, figures in zip(reports, ood_figures(score, ood, loaded.data_root, id_logits)):
            report["ood"] = figures
    return reports, logits, {"data_name": data_name, "split": request.split, "n": len(labels),
                             "val_is_test": loaded.spec.val_is_test}


def evaluate_checkpoint(path: Path, which: str, request: EvalRequest) -> dict:
    """All `resbench eval` figures of one checkpoint: what eval.json holds."""
    loaded = load_members([path], which, request)
    (report,), _, common = head_figures(loaded, request)
    return {"ckpt": str(loaded.members[0].ckpt), "checkpoint": loaded.members[0].which, **common, **report}


def evaluate_ensemble(paths: list[Path], which: str, request: EvalRequest) -> dict:
    """The figures of an ensemble (its mean probability), its diversity, and each member's figures."""
    loaded = load_members(paths, which, request)
    reports, logits, common = head_figures(loaded, request)
    return {**common, "ensemble": reports[-1], "diversity": diversity(logits),
            "members": [{"ckpt": str(m.ckpt), "checkpoint": m.which, **r} for m, r in zip(loaded.members, reports)]}


def check_temperature_split(num_val: int) -> None:
    """Refuse a temperature fitted on too few validation images: it is noise, and can make the test NLL
    worse (issue 39: fitted on 8 images, it tripled a run's test NLL without a word)."""
    if num_val < MIN_SPLIT_FOR_FIGURES:
        raise ResbenchError(f"--temperature_scaling: the validation split has {num_val} images ({resolution(num_val)} "
                            f"of accuracy); a temperature fitted on fewer than {MIN_SPLIT_FOR_FIGURES} is noise and "
                            "can make the test NLL worse. Leave the flag out, or import the set with more images")


def temperature_scaled(logits: torch.Tensor, labels: torch.Tensor, split: str, splits: Any, score: Scorer) -> dict:
    """The figures at the one temperature that minimises the validation NLL; refused where the model
    classifies every validation image right: the NLL then falls as T goes to 0, and no T is fitted."""
    val_logits, val_labels = (logits, labels) if split == "val" else (score(splits.val_images, "val")[0],
                                                                       splits.val_labels.cpu())
    if bool((val_logits.argmax(dim=1) == val_labels).all()):
        raise ResbenchError(f"--temperature_scaling: the model classifies all {len(val_labels)} validation images "
                            "right, so the validation NLL only falls as the temperature goes to 0: there is no "
                            "temperature to fit. Leave the flag out")
    temperature = fit_temperature(val_logits, val_labels)
    return {"temperature": temperature, "val_nll_before": nll(val_logits, val_labels),
            "val_nll_after": nll(val_logits, val_labels, temperature),
            **calibration_metrics(logits, labels, temperature)}


def save_report(report: dict) -> Path:
    """Write one checkpoint's figures into its run folder, for `resbench table --columns`."""
    path = Path(report["ckpt"]).parent / schema.SAVED_EVAL[report["checkpoint"]]
    write_json(path, report)
    return path


def evaluate_runs(runs_dir: Path, which: str, request: EvalRequest,
                  on_report: Callable[[Path, dict], None]) -> tuple[list[dict], int]:
    """Every run folder below `runs_dir` on its own, each report saved beside its checkpoint and
    handed to `on_report` as it is done; the reports, and how many runs could not be scored.

    A run that cannot be scored (no checkpoint yet, a damaged file) is one warning line; the
    others go on.
    """
    folders = configured_folders(runs_dir)
    if not folders:
        raise ResbenchError(f"no run folders (config.json) below {runs_dir}")
    reports, failed = [], 0
    for folder in folders:
        try:
            report = evaluate_checkpoint(folder, which, request)
        except ResbenchError as exc:
            log(f"warning: cannot evaluate {printable(folder)}: {printable(exc)}")
            failed += 1
            continue
        if report["checkpoint"] != EXPORTED:  # (exported weights: the figures are printed only)
            save_report(report)
        reports.append(report)
        on_report(folder, report)
    return reports, failed
