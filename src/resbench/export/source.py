"""What an export takes from a run folder: its settings, status, figures and curves, its match in the
reference's table with compare's verdict, and best.pt as safetensors bytes; all read and checked
before anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resbench.console import printable
from resbench.data.facts import DatasetSpec
from resbench.errors import ResbenchError
from resbench.evaluate.checkpoints import checkpoint_path, load_checkpoint_model, load_run_config, run_dataset
from resbench.models.resnet import IMAGE_MEAN, IMAGE_STD, architecture, count_parameters
from resbench.results.compare import Cell, match_runs
from resbench.results.table import selected_figures
from resbench.runs import schema
from resbench.runs.reader import Run, read_run_folder, read_summary
from resbench.runs.schema import RunFolderError
from resbench.settings.config import TrainConfig, flag_value, setting_types
from resbench.version import __version__
from resbench.weights import layout

# Settings that are paths or addresses of the machine that trained: not published, not in the command.
LOCAL_SETTINGS = ("save", "data_root", "mirror")
FLAG_TEXT = re.compile(r"[A-Za-z0-9_.:+-]+")  # every value a train flag takes, as flag_value spells it


@dataclass
class Source:
    """A run folder, read for its export. `run` carries the export's name as its path, so that what
    compare and the plots print of it names the exported folder, never a path of this machine."""

    run: Run
    status: str  # summary.json's (finished, diverged), or `running` where there is none
    summary: dict | None
    spec: DatasetSpec
    figures: dict[str, Any]  # val_acc, tst_acc, tst_nll and iter of best.pt's evaluation
    params: int
    weights: bytes  # model.safetensors
    cell: Cell | None  # the reference cell of this one run, with compare's verdict
    no_reference: str | None  # why there is none

    @property
    def name(self) -> str:
        return self.run.path.name

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.weights).hexdigest()

    @property
    def last_iteration(self) -> int:
        return int(self.run.records[-1]["iter"]) if self.run.records else 0


def read_source(run_dir: Path, name: str) -> Source:
    """Everything an export of `run_dir` under `name` needs; a run without a best.pt, or whose files
    do not hold what a run of resbench writes, is one line."""
    run_dir = Path(run_dir)
    if not (run_dir / schema.METRICS).is_file():
        raise ResbenchError(f"{run_dir} is not a run folder with evaluations (no {schema.METRICS}); "
                            "export a folder that `resbench train` wrote")
    config = load_run_config(run_dir)
    spec = run_dataset(config, run_dir / schema.CONFIG)
    run = renamed(read_run_folder(run_dir / schema.METRICS), name)
    check_flag_values(run.config, run_dir / schema.CONFIG)
    summary = read_summary(run_dir) if run.status in ("finished", "diverged") else None
    model, _ = load_checkpoint_model(checkpoint_path(run_dir, "best"), config, torch.device("cpu"), spec)
    cells, unmatched = match_runs([run])
    return Source(run=run, status=printable(run.status)[:40], summary=summary, spec=spec,
                  figures=best_figures(run, summary), params=count_parameters(model), weights=safetensors_bytes(model),
                  cell=cells[0] if cells else None, no_reference=unmatched[0][1] if unmatched else None)


def renamed(run: Run, name: str) -> Run:
    """`run` under the path `name`, its status read from its folder first (and kept: a cached property)."""
    status = run.status
    copy = dataclasses.replace(run, path=Path(name))
    vars(copy)["status"] = status
    return copy


def check_flag_values(settings: dict[str, Any], path: Path) -> None:
    """Every published setting must read as a train flag and its value: the card quotes them in the command."""
    for key, value in settings.items():
        if key not in LOCAL_SETTINGS and not (FLAG_TEXT.fullmatch(key) and FLAG_TEXT.fullmatch(flag_value(value))):
            raise RunFolderError(f"{path}: setting {printable(key)[:40]} holds {printable(repr(value))[:40]}, which "
                                 "no train flag takes; restore the file")


def best_figures(run: Run, summary: dict | None) -> dict[str, Any]:
    """The figures of best.pt's evaluation: summary.json's where the run ended, else the best so far; a NaN
    or infinite one as None (n/a): config.json would not be JSON (`NaN`) nor the card's model-index a number."""
    if summary is None:
        figures = selected_figures(run.records or [], "val")
    else:
        figures = {"val_acc": summary["best_val_acc"], "tst_acc": summary["tst_acc"], "tst_nll": summary["tst_nll"],
                   "iter": summary.get("best_iter")}
    return {key: None if isinstance(value, float) and not math.isfinite(value) else value
            for key, value in figures.items()}


def safetensors_bytes(model: torch.nn.Module) -> bytes:
    """The network's state_dict as a safetensors file: contiguous float32 (and int64 counts), no pickle.

    One metadata entry (safetensors orders several differently from one process to the next), so
    that the same best.pt always gives the same bytes and SHA-256; the rest is config.json's."""
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    return save(tensors, metadata={"format": "pt"})


def published_settings(source: Source) -> dict[str, Any]:
    """The run's settings as asked, in the flags' order, without the paths of the machine that trained it."""
    asked = source.run.config
    ordered = [*(key for key in setting_types() if key in asked), *(key for key in asked if key not in setting_types())]
    return {key: asked[key] for key in ordered if key not in LOCAL_SETTINGS}


def train_command(source: Source) -> str:
    """The command line that trains the run again: the dataset, the depth, and every other setting it
    asked for that differs from the default (paths left out), with torchrun's launch where it ran on
    several processes."""
    asked = published_settings(source)
    flags = " ".join(f"--{key} {flag_value(value)}" for key, value in asked.items()
                     if key in ("data_name", "resnet_depth") or value != getattr(TrainConfig, key, None))
    ranks = (source.summary or {}).get("world_size", 1)
    launch = f"torchrun --nproc_per_node {ranks} -m resbench train" if isinstance(ranks, int) and ranks > 1 \
        else "resbench train"
    return f"{launch} {flags}".rstrip()


def model_config(source: Source) -> dict[str, Any]:
    """config.json: what rebuilds the network (layout.CONFIG_FIELDS), then how it was trained and what it scored."""
    run, spec = source.run, source.spec
    block, blocks, planes = architecture(run.depth, run.width)
    summary = source.summary or {}
    return {
        layout.FORMAT_KEY: layout.FORMAT, "architecture": layout.ARCHITECTURE, "data_name": spec.name,
        "resnet_depth": run.depth, "resnet_width": run.width, "num_classes": spec.num_classes,
        "image_size": spec.image_size, "torch_dtype": layout.DTYPE, "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
        "input": "float RGB images in [0, 1], (N, 3, image_size, image_size); the network normalises them",
        "block": block.__name__, "blocks_per_stage": list(blocks), "base_planes": planes,
        "num_parameters": source.params,
        "batchnorm_running_var": "the reference's: the mean of biased batch variances (resbench.device.bnstats)",
        "training": {**published_settings(source), "precision": run.precision, "status": source.status,
                     "iterations": source.last_iteration, "best_iter": source.figures["iter"],
                     "trained_on": summary.get("device"), "world_size": summary.get("world_size"),
                     "wall_seconds": summary.get("wall_seconds"), "versions": summary.get("versions")},
        "results": {key: source.figures[key] for key in ("val_acc", "tst_acc", "tst_nll")},
        "resbench_version": __version__,
    }
