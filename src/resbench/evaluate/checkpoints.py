"""A checkpoint (best.pt, last.pt) and the config.json of its run folder, loaded as a model to score;
any mismatch between the two is named rather than scored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resbench.data.facts import DatasetSpec, dataset_spec
from resbench.device import bnstats
from resbench.device.distributed import World
from resbench.device.hotpath import prepare_model
from resbench.device.memory import check_inference_fits
from resbench.errors import ResbenchError
from resbench.models.resnet import architecture, resnet
from resbench.runs import schema
from resbench.runs.checkpoint import load_checkpoint
from resbench.runs.reader import is_run_folder, read_object
from resbench.runs.schema import RunFolderError
from resbench.settings.config import TrainConfig
from resbench.weights import layout
from resbench.weights.layout import EXPORTED
from resbench.weights.load import load_model, model_folder, read_config


def checkpoint_path(path: Path, which: str) -> Path:
    """The checkpoint file to score: `path` itself, or `<path>/{best,last}.pt` for a run folder."""
    path = Path(path)
    if path.is_dir():
        if not is_run_folder(path):
            raise ResbenchError(f"{path} is not a run folder (no config.json); to evaluate every run below it, "
                                f"pass it without --ckpt: resbench eval {path}")
        ckpt = path / schema.CHECKPOINTS[which]
        if not ckpt.is_file():
            raise ResbenchError(f"run folder {path} has no {ckpt.name} yet (a run writes both at its first "
                                "evaluation)")
        return ckpt
    if not path.is_file():
        raise ResbenchError(f"no such checkpoint or run folder: {path}")
    return path


def load_run_config(run_dir: Path, data_root: str | None = None) -> dict:
    """The training configuration saved beside a checkpoint; it fixes the model and dataset to rebuild
    (an imported dataset's facts are read from `data_root`, by default the run's)."""
    path = Path(run_dir) / schema.CONFIG
    if not path.exists():
        raise ResbenchError(f"no {path.name} beside the checkpoint in {run_dir}")
    config = read_object(path, schema.MODEL_SETTINGS, str(path),
                         "evaluate a checkpoint in the run folder that trained it")
    run_dataset(config, path, data_root)
    try:
        architecture(config["resnet_depth"], config["resnet_width"])
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from None
    return config


def named_data_root(config: dict, asked: str | None = None) -> str | None:
    """`asked` (eval's --data_root), else the folder the run trained from; None where neither is named."""
    resolved = config.get(schema.RESOLVED_KEY) if isinstance(config.get(schema.RESOLVED_KEY), dict) else {}
    data_root = asked or resolved.get("data_root") or config.get("data_root")
    return data_root if isinstance(data_root, str) else None


def run_data_root(config: dict, path: Path, asked: str | None = None) -> str:
    """Where the run's dataset is, to read it from."""
    if (data_root := named_data_root(config, asked)) is None:
        raise RunFolderError(f"{path} names no data_root; pass --data_root")
    return data_root


def run_dataset(config: dict, path: Path, data_root: str | None = None) -> DatasetSpec:
    """The facts of the run's dataset: a built-in one, or one imported into its data root (a built-in
    set, or a name that is neither, needs no data root to say so)."""
    try:
        return dataset_spec(config["data_name"], named_data_root(config, data_root))
    except ValueError as exc:
        raise RunFolderError(f"{path}: {exc}") from None


def model_weights(saved: Any) -> tuple[Any, str]:
    """(state_dict, "best" or "last"): best.pt is a plain state_dict, last.pt the whole training
    state, whose "model" holds the weights of the final iterate."""
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict) and "optimizer" in saved:
        return saved["model"], "last"
    return saved, "best"


def as_evaluated(model: nn.Module, saved: dict, config: dict, ckpt: Path, image_size: int) -> None:
    """Put last.pt's BatchNorm running variances into the form the trainer evaluates with.

    last.pt keeps PyTorch's form, in which training continues; the trainer's evaluations (and
    best.pt) use the reference's (`resbench.device.bnstats`), which follows from the run's batch size,
    its number of ranks (one saved set of buffers per rank) and --sync_bn.
    """
    batch_size, sync_bn = config.get("batch_size"), config.get("sync_bn", False)
    groups = config.get("bn_groups", 1)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise RunFolderError(f"{ckpt.parent / schema.CONFIG} lacks a valid batch_size, which last.pt's "
                              "BatchNorm statistics need; was it written by resbench train?")
    rank_buffers = saved.get("rank_buffers") or []
    if not isinstance(rank_buffers, list):
        raise RunFolderError(f"{ckpt} holds rank_buffers that are not a list of each rank's statistics; "
                             "only load checkpoints written by resbench")
    world = World(world_size=max(1, len(rank_buffers)))
    if not isinstance(groups, int) or isinstance(groups, bool) or not 1 <= groups <= batch_size // world.world_size:
        raise RunFolderError(f"{ckpt.parent / schema.CONFIG}: bn_groups {groups!r} does not split the batch "
                             f"{batch_size} of {world.world_size} rank(s); was it written by resbench train?")
    counts = bnstats.values_per_channel(model, image_size, batch_size, world, bool(sync_bn), groups)
    bnstats.convert([(module, counts[name]) for name, module in bnstats.batchnorms(model)], to_reference=True)


def describe_weights(state: Any) -> str:
    """What network a state_dict holds, in the words of config.json ("ResNet-20 x1, 10 classes")."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        return "no state_dict of tensors"
    blocks: dict[int, set[int]] = {}
    for key in state:
        parts = key.split(".")
        if len(parts) > 3 and parts[0] == "stages" and parts[1].isdigit() and parts[2].isdigit():
            blocks.setdefault(int(parts[1]), set()).add(int(parts[2]))
    stem, fc, first = state.get("stem.0.0.weight"), state.get("fc.weight"), state.get("stages.0.0.conv1.0.weight")
    if not blocks or stem is None or fc is None or first is None or fc.ndim != 2:
        return f"no ResNet of resbench (keys {', '.join(list(state)[:3])}, ...)"
    per_block = 3 if any(key.endswith(".conv3.0.weight") for key in state) else 2
    depth = per_block * sum(len(b) for b in blocks.values()) + 2
    return f"ResNet-{depth} x{first.shape[0] // stem.shape[0]}, {fc.shape[0]} classes"


def load_checkpoint_model(ckpt: Path, config: dict, device: torch.device, spec: DatasetSpec) -> tuple[nn.Module, str]:
    """Rebuild the run's network for `spec`'s images and classes, load the checkpoint's weights, in
    inference mode; and which it was."""
    try:
        check_inference_fits(config["resnet_depth"], config["resnet_width"], spec.num_classes, spec.image_size, device)
    except ValueError as exc:
        raise RunFolderError(f"{Path(ckpt).parent / schema.CONFIG}: {exc}") from None
    model = resnet(config["resnet_depth"], config["resnet_width"], num_classes=spec.num_classes,
                   image_size=spec.image_size)
    saved = load_checkpoint(ckpt)
    weights, which = model_weights(saved)
    check_weight_values(weights, model.state_dict(), ckpt)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError):
        expected = (f"ResNet-{config['resnet_depth']} x{config['resnet_width']}, {spec.num_classes} classes "
                    f"({config['data_name']})")
        raise RunFolderError(f"{ckpt} holds {describe_weights(weights)}, but {Path(ckpt).parent / schema.CONFIG} "
                              f"describes a {expected}; evaluate a checkpoint with the config.json of the run "
                              "that trained it") from None
    if which == "last":
        as_evaluated(model, saved, config, ckpt, spec.image_size)
    return prepare_model(model, device).eval(), which


def check_weight_values(weights: Any, expected: dict[str, torch.Tensor], ckpt: Path) -> None:
    """Refuse weights that would load but not score as trained: of another kind than the model's
    (complex, integer or bool values where it has floats: load_state_dict casts them without a
    word) or not finite (a diverged run's; the trainer never keeps them). Anything else that does
    not fit is load_state_dict's to name."""
    if not isinstance(weights, dict):
        return
    for key, value in weights.items():
        want = expected.get(key) if isinstance(key, str) else None
        if not isinstance(value, torch.Tensor) or want is None:
            continue
        if value.is_floating_point() != want.is_floating_point() or value.is_complex():
            raise RunFolderError(f"{ckpt}: {key} holds {value.dtype} values where the model has {want.dtype}; "
                                 "only load checkpoints written by resbench")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RunFolderError(f"{ckpt}: {key} holds NaN or infinite weights (a run that diverged); "
                                 "evaluate a checkpoint of a run that trained")


@dataclass
class Member:
    """One scored network: an ensemble has several, a plain evaluation one."""

    ckpt: Path
    which: str  # "best" (best.pt, the best-validation model) or "last" (last.pt, the final iterate)
    config: dict
    model: nn.Module
    spec: DatasetSpec  # its dataset's facts


def load_member(ckpt: Path, config: dict, device: torch.device, spec: DatasetSpec) -> Member:
    if config.get(EXPORTED):
        return Member(ckpt, EXPORTED, config, load_exported_model(ckpt.parent, config, device, spec), spec)
    model, found = load_checkpoint_model(ckpt, config, device, spec)
    return Member(ckpt, found, config, model, spec)


# ---------------------------------------------------------------- exported weights (`resbench export`)

def checkpoint_and_config(path: Path, which: str, data_root: str | None) -> tuple[Path, dict]:
    """The checkpoint file `path` names (a run folder's, a .pt file, exported weights) and the
    settings that rebuild its network and find its dataset."""
    if not layout.is_exported(path):
        ckpt = checkpoint_path(path, which)
        return ckpt, load_run_config(ckpt.parent, data_root)
    if which != "best":
        raise ResbenchError(f"{path} holds exported weights, the best-validation model's only; leave --which out")
    folder = model_folder(path)
    exported = read_config(folder)
    settings = {key: exported[key] for key in (*schema.MODEL_SETTINGS, "num_classes", "image_size")}
    return folder / layout.MODEL, {**settings, "data_root": data_root or TrainConfig.data_root, EXPORTED: True}


def load_exported_model(folder: Path, config: dict, device: torch.device, spec: DatasetSpec) -> nn.Module:
    """The exported network, if it scores `spec`'s dataset as found here (an imported set of the same
    name may have other classes)."""
    if (config["num_classes"], config["image_size"]) != (spec.num_classes, spec.image_size):
        raise ResbenchError(f"{folder} holds a network for {config['num_classes']} classes of {config['image_size']} "
                            f"pixels, but {spec.name} in {config['data_root']} has {spec.num_classes} of "
                            f"{spec.image_size}; pass the --data_root it was trained from")
    return load_model(folder, device)
