"""Evaluation: accuracy and NLL of a model on a whole split, in large inference-mode batches, and
`resbench eval`: calibration, corrupted test sets, OOD detection and ensembles of checkpoints."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import bnstats, evalsets, fetch
from .checkpoint import CheckpointError, load_checkpoint, write_json
from .config import RESOLVED_KEY, resolve_device
from .console import log, progress
from .data import DATASETS, dataset_spec, load_splits, to_model_input, to_tensor
from .distributed import World, all_reduce_sum, shard
from .errors import ResbenchError
from .hotpath import prepare_model
from .limits import check_inference_fits
from .models import architecture, resnet
from .report import invalid_fields
from .uncertainty import OOD_METRICS, SCORES, diversity, ensemble_log_probs, log_probs, ood_metrics, ood_scores

EVAL_BATCH_SIZE = 1024
# resbench eval's default batch on a CPU: depth 20 scored 1,756 images/s at 512 and 1,583 at 1024 (2 cores).
CPU_EVAL_BATCH_SIZE = 512


@torch.inference_mode()
def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                   autocast: contextlib.AbstractContextManager | None = None,
                   on_batch: Callable[[int], object] | None = None) -> torch.Tensor:
    """float32 logits (N, C) for uint8 NHWC `images`, with BatchNorm in inference mode.

    `on_batch(n)` is called after each batch of n images (a progress bar's update)."""
    was_training = model.training
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        with autocast or contextlib.nullcontext():
            outputs.append(model(to_model_input(images[start:start + batch_size])).float())
        if on_batch is not None:
            on_batch(len(outputs[-1]))
    model.train(was_training)
    return torch.cat(outputs)


TOP5_MIN_CLASSES = 100  # CIFAR-100 and TinyImageNet also report top-5 accuracy, as their literature does


def reports_top5(num_classes: int) -> bool:
    return num_classes >= TOP5_MIN_CLASSES


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             autocast: contextlib.AbstractContextManager | None = None, world: World = World(),
             top5: bool = False) -> dict[str, float]:
    """Accuracy and mean negative log-likelihood over the whole split (and top-5 accuracy if asked).

    In a data-parallel run each rank scores its share and the sums are added up across ranks.
    """
    part = shard(len(images), world)
    logits = predict_logits(model, images[part], autocast=autocast)
    labels = labels[part]
    sums = [(logits.argmax(1) == labels).sum().float(), F.cross_entropy(logits, labels, reduction="sum")]
    if top5:
        sums.append((logits.topk(5, dim=1).indices == labels[:, None]).any(1).sum().float())
    figures = (all_reduce_sum(torch.stack(sums), world) / len(images)).tolist()
    return dict(zip(("acc", "nll", "top5"), figures))


# ---------------------------------------------------------------- calibration (resbench eval)
# Accuracy and NLL say how good the best-val checkpoint is; ECE and Brier say whether its confidence
# can be trusted, and temperature scaling shows how much of the miscalibration one scalar removes.

ECE_BINS = 15


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / temperature), in float64."""
    return F.cross_entropy(logits.double() / temperature, labels).item()


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = ECE_BINS) -> float:
    """ECE over `n_bins` equal-width confidence bins (lo, hi]: sum over bins of |B|/N * |acc(B) - conf(B)|."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    bins = (torch.ceil(confidence.double() * n_bins).long() - 1).clamp(0, n_bins - 1)
    gap = torch.bincount(bins, weights=correct - confidence.double(), minlength=n_bins)
    return (gap.abs().sum() / len(labels)).item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over examples of the summed squared error between the probabilities and the one-hot label."""
    onehot = F.one_hot(labels, probs.shape[1]).double()
    return ((probs.double() - onehot) ** 2).sum(dim=1).mean().item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T), found by LBFGS on log T (which keeps T positive)."""
    logits, labels = logits.detach().double().cpu(), labels.cpu()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_t.exp().item()


def calibration_metrics(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score of softmax(logits / temperature)."""
    return probability_metrics(log_probs(logits.detach().cpu() / temperature), labels.cpu())


def probability_metrics(log_p: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Accuracy, NLL, ECE (15 bins) and Brier score of predicted log-probabilities: one model's, or
    an ensemble's (the log of its members' mean probabilities)."""
    probs = log_p.exp()
    return {
        "acc": (log_p.argmax(dim=1) == labels).double().mean().item(),
        "nll": -log_p.gather(1, labels[:, None]).mean().item(),
        "ece": expected_calibration_error(probs, labels),
        "brier": brier_score(probs, labels),
    }


# ---------------------------------------------------------------- checkpoints and run folders (resbench eval)

# The settings of config.json that rebuild the model and find its data, with their JSON types.
MODEL_SETTINGS = {"data_name": str, "resnet_depth": int, "resnet_width": int}
#: The file `eval --save` writes into a run folder, per checkpoint; `resbench table --columns` reads eval.json.
SAVED_EVAL = {"best": "eval.json", "last": "eval_last.json"}


def checkpoint_path(path: Path, which: str) -> Path:
    """The checkpoint file to score: `path` itself, or `<path>/{best,last}.pt` for a run folder."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ResbenchError(f"{path} is not a run folder (no config.json); to evaluate every run below it, "
                                f"pass it without --ckpt: resbench eval {path}")
        ckpt = path / f"{which}.pt"
        if not ckpt.is_file():
            raise ResbenchError(f"run folder {path} has no {which}.pt yet (a run writes both at its first "
                                "evaluation)")
        return ckpt
    if not path.is_file():
        raise ResbenchError(f"no such checkpoint or run folder: {path}")
    return path


def load_run_config(run_dir: Path) -> dict:
    """The training configuration saved beside a checkpoint; it fixes the model and dataset to rebuild."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise ResbenchError(f"no config.json beside the checkpoint in {run_dir}")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); evaluate a checkpoint in the run folder "
                              "that trained it") from None
    check_model_settings(config, path)
    return config


def check_model_settings(config: object, path: Path) -> None:
    """Refuse a config.json whose model or dataset cannot be rebuilt, before anything deeper fails on it."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object; evaluate a checkpoint in the run folder that trained it")
    if bad := invalid_fields(config, MODEL_SETTINGS):
        raise CheckpointError(f"{path} lacks a valid {', '.join(bad)}; was it written by resbench train?")
    try:
        dataset_spec(config["data_name"])
        architecture(config["resnet_depth"], config["resnet_width"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def model_weights(saved: Any) -> tuple[Any, str]:
    """(state_dict, "best" or "last"): best.pt is a plain state_dict, last.pt the whole training
    state, whose "model" holds the weights of the final iterate."""
    if isinstance(saved, dict) and isinstance(saved.get("model"), dict) and "optimizer" in saved:
        return saved["model"], "last"
    return saved, "best"


def as_evaluated(model: nn.Module, saved: dict, config: dict, ckpt: Path) -> None:
    """Put last.pt's BatchNorm running variances into the form the trainer evaluates with.

    last.pt keeps PyTorch's form, in which training continues; the trainer's evaluations (and
    best.pt) use the reference's (`resbench.bnstats`), which follows from the run's batch size,
    its number of ranks (one saved set of buffers per rank) and --sync_bn.
    """
    batch_size, sync_bn = config.get("batch_size"), config.get("sync_bn", False)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise CheckpointError(f"{ckpt.parent / 'config.json'} lacks a valid batch_size, which last.pt's "
                              "BatchNorm statistics need; was it written by resbench train?")
    world = World(world_size=max(1, len(saved.get("rank_buffers") or [])))
    image_size = DATASETS[config["data_name"]].image_size
    counts = bnstats.values_per_channel(model, image_size, batch_size, world, bool(sync_bn))
    bnstats.convert([(module, counts[name]) for name, module in bnstats.batchnorms(model)], to_reference=True)


def describe_weights(state: Any) -> str:
    """What network a state_dict holds, in the words of config.json ("ResNet-20 x1, 10 classes")."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
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


def load_checkpoint_model(ckpt: Path, config: dict, device: torch.device) -> tuple[nn.Module, str]:
    """Rebuild the run's network, load the checkpoint's weights, in inference mode; and which it was."""
    spec = DATASETS[config["data_name"]]
    try:
        check_inference_fits(config["resnet_depth"], config["resnet_width"], spec.num_classes, spec.image_size, device)
    except ValueError as exc:
        raise CheckpointError(f"{Path(ckpt).parent / 'config.json'}: {exc}") from None
    model = resnet(config["resnet_depth"], config["resnet_width"], num_classes=spec.num_classes,
                   image_size=spec.image_size)
    saved = load_checkpoint(ckpt)
    weights, which = model_weights(saved)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError):
        expected = (f"ResNet-{config['resnet_depth']} x{config['resnet_width']}, {spec.num_classes} classes "
                    f"({config['data_name']})")
        raise CheckpointError(f"{ckpt} holds {describe_weights(weights)}, but {Path(ckpt).parent / 'config.json'} "
                              f"describes a {expected}; evaluate a checkpoint with the config.json of the run "
                              "that trained it") from None
    if which == "last":
        as_evaluated(model, saved, config, ckpt)
    return prepare_model(model, device).eval(), which


@dataclass
class Member:
    """One scored network: an ensemble has several, a plain evaluation one."""

    ckpt: Path
    which: str  # "best" (best.pt, the best-validation model) or "last" (last.pt, the final iterate)
    config: dict
    model: nn.Module


def load_member(ckpt: Path, config: dict, device: torch.device) -> Member:
    model, found = load_checkpoint_model(ckpt, config, device)
    return Member(ckpt, found, config, model)


# ---------------------------------------------------------------- scoring many images

class Scorer:
    """Every member's logits for uint8 images, in large inference batches on the device.

    Images go to the device as uint8 (as in training) one set or corruption at a time, and a
    set stored at 64x64 is halved there for a 32x32 model. A progress bar runs on a terminal;
    one line per set on stderr says how many images went through and how fast.
    """

    def __init__(self, members: list[Member], device: torch.device, batch_size: int):
        self.models = [m.model for m in members]
        self.device, self.batch_size = device, batch_size
        self.image_size = DATASETS[members[0].config["data_name"]].image_size
        self.heads = len(members) + (len(members) > 1)  # the members, and their ensemble

    def __call__(self, images: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
        """(M, N, C) float32 logits on the CPU."""
        start = time.perf_counter()
        if isinstance(images, np.ndarray) and not images.flags.writeable:
            images = images.copy()  # a read-only memory map: torch wants memory it may write
        x = images if isinstance(images, torch.Tensor) else to_tensor(images, self.device)
        x = evalsets.at_model_size(x.to(self.device), self.image_size, name)
        with progress(len(x) * len(self.models), name, unit="img") as bar:
            logits = torch.stack([predict_logits(model, x, self.batch_size, on_batch=bar.update).cpu()
                                  for model in self.models])
        seconds = time.perf_counter() - start
        log(f"{name}: {len(x):,} images x {len(self.models)} model(s) in {seconds:.1f} s "
            f"({len(x) * len(self.models) / max(seconds, 1e-9):,.0f} images/s)")
        return logits


def heads(logits: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(log-probabilities, logits) of each member and, for several, of their ensemble last."""
    found = [(log_probs(member), member) for member in logits]
    return found + [(ensemble_log_probs(logits), logits)] if len(logits) > 1 else found


CORRUPTION_METRICS = ("acc", "nll", "ece")


def mean_figures(figures: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([f[k] for f in figures])) for k in CORRUPTION_METRICS}


def corruption_figures(score: Scorer, name: str, data_root: str) -> list[dict]:
    """Accuracy, NLL and ECE per corruption and severity, and their means, for each head."""
    spec = evalsets.EVAL_SETS[name]
    labels, files = evalsets.corrupted_set(name, data_root)
    n = len(labels) // evalsets.SEVERITIES
    labels = torch.from_numpy(labels)
    found: list[dict[str, dict[str, dict]]] = [{} for _ in range(score.heads)]
    for corruption, images in files:
        for h, (log_p, _) in enumerate(heads(score(images, f"{name} {corruption}"))):
            block = {}
            for s in range(1, evalsets.SEVERITIES + 1):
                figures = probability_metrics(log_p[(s - 1) * n:s * n], labels[(s - 1) * n:s * n])
                block[str(s)] = {k: figures[k] for k in CORRUPTION_METRICS}
            found[h][corruption] = {**block, "mean": mean_figures(list(block.values()))}
    return [corruption_summary(spec, per_corruption, n) for per_corruption in found]


def corruption_summary(spec: evalsets.EvalSet, per_corruption: dict[str, dict], n: int) -> dict:
    """The means: over the benchmark's corruptions and all severities (mCA and its NLL and ECE),
    per severity, and over every corruption of the set where it has more than the benchmark's."""
    severities = [str(s) for s in range(1, evalsets.SEVERITIES + 1)]
    summary = {"set": spec.name, "images_per_severity": n, "benchmark": list(spec.benchmark),
               "mean": mean_figures([per_corruption[c][s] for c in spec.benchmark for s in severities]),
               "by_severity": {s: mean_figures([per_corruption[c][s] for c in spec.benchmark]) for s in severities},
               "corruptions": per_corruption}
    if set(per_corruption) != set(spec.benchmark):
        summary["mean_all"] = mean_figures([f[s] for f in per_corruption.values() for s in severities])
    return summary


def ood_figures(score: Scorer, names: list[str], data_root: str, id_logits: torch.Tensor) -> list[dict]:
    """AUROC, AUPR-In/Out and FPR95 of each score against each OOD set, for each head."""
    id_scores = [ood_scores(*head) for head in heads(id_logits)]
    found: list[dict] = [{} for _ in id_scores]
    for name in names:
        count, chunks = evalsets.ood_chunks(name, data_root, score.image_size, id_logits.shape[1])
        logits = torch.cat([score(chunk, f"{name} (OOD)") for chunk in chunks], dim=1)
        for h, head in enumerate(heads(logits)):
            out_scores = ood_scores(*head)
            found[h][name] = {"n": count, **{s: ood_metrics(id_scores[h][s], out_scores[s]) for s in SCORES}}
    return found


# ---------------------------------------------------------------- resbench eval

@dataclass
class EvalRequest:
    """What `resbench eval` was asked for, beyond the checkpoints."""

    data_root: str | None = None
    split: str = "test"
    temperature_scaling: bool = False
    corruptions: bool = False
    ood: list[str] | None = None  # None: no OOD figures; []: the natural OOD sets of the dataset
    device: str = "auto"
    batch_size: int | None = None  # None: CPU_EVAL_BATCH_SIZE on a CPU, EVAL_BATCH_SIZE elsewhere


def shifted_sets(request: EvalRequest, data_name: str) -> tuple[str | None, list[str]]:
    """The corrupted set and the OOD sets to score a model of `data_name` on, checked."""
    corrupted = None
    if request.corruptions:
        corrupted = evalsets.CORRUPTED.get(data_name)
        if corrupted is None:
            raise ResbenchError(f"no corrupted test set for {data_name}")
    ood = [] if request.ood is None else list(dict.fromkeys(request.ood or evalsets.NATURAL_OOD.get(data_name, ())))
    known = [*(n for n in DATASETS if n != data_name), *evalsets.EVAL_SETS]
    for name in ood:
        if name == data_name:
            raise ResbenchError(f"--ood {name} is the run's own dataset; name other datasets")
        if name not in known:
            hint = " (put RUNS_DIR before --ood)" if Path(name).is_dir() else ""
            raise ResbenchError(f"unknown OOD set {name!r}{hint}; choose from {', '.join(known)}")
    if request.ood is not None and not ood:
        raise ResbenchError(f"no natural OOD sets for {data_name}; name them: --ood NAME ...")
    return corrupted, ood


def prepare_missing(names: list[str], data_root: str) -> None:
    """Download and prepare the sets eval needs that are not there yet, as train does for its dataset."""
    downloadable = [n for n in names if n in fetch.RECIPES and not fetch.is_complete(data_root, n)]
    for name in downloadable:
        log(f"{name} is not prepared in {data_root}: fetching and preparing it now")
    if downloadable:
        fetch.prepare_datasets(downloadable, data_root)


def evaluate_members(paths: list[Path], which: str, request: EvalRequest) -> dict:
    """All `resbench eval` figures of one checkpoint, or of an ensemble and each of its members.

    Computed in float32 whatever the runs' precision (checkpoints hold float32 weights), so an
    fp16/bf16 run's figures can differ from its summary.json in the third decimal.
    """
    try:
        device = resolve_device(request.device)
    except ValueError as exc:
        raise ResbenchError(str(exc)) from None
    ckpts = [checkpoint_path(path, which) for path in paths]
    configs = [load_run_config(ckpt.parent) for ckpt in ckpts]
    data_name = configs[0]["data_name"]
    if other := [str(c) for c, config in zip(ckpts, configs) if config["data_name"] != data_name]:
        raise ResbenchError(f"an ensemble's members must share a dataset: {ckpts[0]} is {data_name}, "
                            f"but not {', '.join(other)}")
    resolved = configs[0].get(RESOLVED_KEY) if isinstance(configs[0].get(RESOLVED_KEY), dict) else {}
    data_root = request.data_root or resolved.get("data_root") or configs[0].get("data_root")
    if not isinstance(data_root, str):
        raise CheckpointError(f"{ckpts[0].parent / 'config.json'} names no data_root; pass --data_root")
    corrupted, ood = shifted_sets(request, data_name)
    members = [load_member(ckpt, config, device) for ckpt, config in zip(ckpts, configs)]
    prepare_missing([n for n in [corrupted, *ood] if n], data_root)
    splits = load_splits(data_name, data_root, device)
    batch_size = request.batch_size or (CPU_EVAL_BATCH_SIZE if device.type == "cpu" else EVAL_BATCH_SIZE)
    score = Scorer(members, device, batch_size)
    logits = score(getattr(splits, f"{request.split}_images"), f"{data_name} {request.split}")
    labels = getattr(splits, f"{request.split}_labels").cpu()
    reports = [probability_metrics(log_p, labels) for log_p, _ in heads(logits)]
    if request.temperature_scaling:
        reports[0]["temperature_scaling"] = temperature_scaled(logits[0], labels, request.split, splits, score)
    if corrupted:
        for report, figures in zip(reports, corruption_figures(score, corrupted, data_root)):
            report["corruptions"] = figures
    if ood:
        id_logits = logits if request.split == "test" else score(splits.test_images, f"{data_name} test")
        for report, figures in zip(reports, ood_figures(score, ood, data_root, id_logits)):
            report["ood"] = figures
    common = {"data_name": data_name, "split": request.split, "n": len(labels)}
    if len(members) == 1:
        return {"ckpt": str(members[0].ckpt), "checkpoint": members[0].which, **common, **reports[0]}
    return {**common, "ensemble": reports[-1], "diversity": diversity(logits),
            "members": [{"ckpt": str(m.ckpt), "checkpoint": m.which, **r} for m, r in zip(members, reports)]}


def temperature_scaled(logits: torch.Tensor, labels: torch.Tensor, split: str, splits: Any, score: Scorer) -> dict:
    """The figures at the one temperature that minimises the validation NLL."""
    val_logits, val_labels = (logits, labels) if split == "val" else (score(splits.val_images, "val")[0],
                                                                       splits.val_labels.cpu())
    temperature = fit_temperature(val_logits, val_labels)
    return {"temperature": temperature, "val_nll_before": nll(val_logits, val_labels),
            "val_nll_after": nll(val_logits, val_labels, temperature),
            **calibration_metrics(logits, labels, temperature)}


def save_report(report: dict) -> Path:
    """Write one checkpoint's figures into its run folder, for `resbench table --columns`."""
    path = Path(report["ckpt"]).parent / SAVED_EVAL[report["checkpoint"]]
    write_json(path, report)
    return path


def evaluate_runs(runs_dir: Path, which: str, request: EvalRequest, as_json: bool) -> int:
    """Every run folder below `runs_dir` on its own, each report saved beside its checkpoint.

    A run that cannot be scored (no checkpoint yet, a damaged file) is one warning line; the
    others go on, and the exit status is 1 if any failed.
    """
    if not Path(runs_dir).is_dir():
        raise ResbenchError(f"no such runs folder: {runs_dir}")
    folders = sorted({path.parent for path in Path(runs_dir).rglob("config.json")})
    if not folders:
        raise ResbenchError(f"no run folders (config.json) below {runs_dir}")
    reports, failed = [], 0
    for folder in folders:
        try:
            report = evaluate_members([folder], which, request)
        except ResbenchError as exc:
            print(f"warning: cannot evaluate {folder}: {exc}", file=sys.stderr)
            failed += 1
            continue
        save_report(report)
        reports.append(report)
        if not as_json:
            print(f"{folder}: {summary_line(report)}", flush=True)
    if as_json:
        print(json.dumps(reports, indent=2))
    print(f"eval: {len(reports)} of {len(folders)} run folders evaluated", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------- text reports

def summary_line(figures: dict) -> str:
    """acc, nll, ece and brier, and the means over corruptions and OOD sets where present."""
    parts = [f"{k} {figures[k]:.4f}" for k in ("acc", "nll", "ece", "brier")]
    if "corruptions" in figures:
        parts += [f"c/{k} {figures['corruptions']['mean'][k]:.4f}" for k in CORRUPTION_METRICS]
    if "ood" in figures:
        parts.append("ood/auroc " + " ".join(f"{name} {f['msp']['auroc']:.4f}" for name, f in figures["ood"].items()))
    return "  ".join(parts)


def format_corruptions(c: dict) -> list[str]:
    severities = [str(s) for s in range(1, evalsets.SEVERITIES + 1)]
    header = f"{'corruption':<18}" + "".join(f"{'acc@' + s:>7}" for s in severities) + \
        "".join(f"{k:>8}" for k in CORRUPTION_METRICS)
    lines = ["", f"{c['set']}: {len(c['corruptions'])} corruptions x {len(severities)} severities, "
                 f"{c['images_per_severity']:,} images each", header]

    def row(label: str, by_severity: dict, mean: dict) -> str:
        return f"{label:<18}" + "".join(f"{by_severity[s]['acc']:7.3f}" for s in severities) + \
            "".join(f"{mean[k]:8.4f}" for k in CORRUPTION_METRICS)

    lines += [row(name, f, f["mean"]) for name, f in c["corruptions"].items()]
    lines.append(row(f"mean ({len(c['benchmark'])})", c["by_severity"], c["mean"]))
    if "mean_all" in c:
        lines.append(f"{'mean (all ' + str(len(c['corruptions'])) + ')':<18}" + " " * 7 * len(severities)
                     + "".join(f"{c['mean_all'][k]:8.4f}" for k in CORRUPTION_METRICS))
    return lines


def format_ood(ood: dict, n: int) -> list[str]:
    lines = ["", f"OOD detection: the test split ({n:,} images) against each set; "
                 "scores oriented larger = in-distribution",
             f"{'set':<18}{'images':>8}  {'score':<8}" + "".join(f"{k:>9}" for k in OOD_METRICS)]
    for name, figures in ood.items():
        for i, score in enumerate(SCORES):
            lead = f"{name:<18}{figures['n']:>8,}" if i == 0 else " " * 26
            lines.append(f"{lead}  {score:<8}" + "".join(f"{figures[score][k]:9.4f}" for k in OOD_METRICS))
    return lines


def format_sections(figures: dict, n: int) -> list[str]:
    return (format_corruptions(figures["corruptions"]) if "corruptions" in figures else []) + \
        (format_ood(figures["ood"], n) if "ood" in figures else [])


def format_eval_report(report: dict) -> str:
    """Aligned text tables: the split's figures (T=1 and, if fitted, the fitted temperature), then
    corruptions and OOD detection if asked; for an ensemble, each member beside the ensemble."""
    if "ensemble" in report:
        return format_ensemble_report(report)
    scaled = report.get("temperature_scaling")
    lines = [f"{report['ckpt']} ({report['checkpoint']}.pt): {report['data_name']} {report['split']} split, "
             f"{report['n']} images"]
    lines.append(f"{'':6}{'T=1':>10}" + (f"{'T=%.3f' % scaled['temperature']:>10}" if scaled else ""))
    for name in ("acc", "nll", "ece", "brier"):
        lines.append(f"{name:6}{report[name]:10.4f}" + (f"{scaled[name]:10.4f}" if scaled else ""))
    if scaled:
        lines.append(f"val nll {scaled['val_nll_before']:.4f} -> {scaled['val_nll_after']:.4f} "
                     f"after temperature scaling")
    return "\n".join(lines + format_sections(report, report["n"]))


def format_ensemble_report(report: dict) -> str:
    members, ensemble = report["members"], report["ensemble"]
    lines = [f"ensemble of {len(members)} checkpoints: {report['data_name']} {report['split']} split, "
             f"{report['n']} images (members' probabilities averaged)"]
    lines += [f"{i:<10}{summary_line(m)}  {m['ckpt']}" for i, m in enumerate(members, 1)]
    lines.append(f"{'ensemble':<10}{summary_line(ensemble)}")
    lines.append(f"diversity: pairwise disagreement {report['diversity']['disagreement']:.4f}, "
                 f"mean KL between members {report['diversity']['kl']:.4f}")
    sections = format_sections(ensemble, report["n"])
    return "\n".join(lines + (["", "the ensemble:", *sections[1:]] if sections else []))


def run_eval(args: argparse.Namespace) -> int:
    if (args.runs_dir is None) == (args.ckpt is None):
        raise ResbenchError("give either RUNS_DIR (every run below it) or --ckpt CKPT_OR_RUN_DIR [...], not both")
    several = args.ckpt is not None and len(args.ckpt) > 1
    if several and (args.save or args.temperature_scaling):
        raise ResbenchError(f"{'--save' if args.save else '--temperature_scaling'} is for one checkpoint, "
                            "not an ensemble; use --json to keep an ensemble's figures")
    if (args.save or args.runs_dir is not None) and args.split != "test":
        raise ResbenchError("saved figures (--save, RUNS_DIR) are the test split's; drop --split val")
    if args.batch_size is not None and args.batch_size < 1:
        raise ResbenchError(f"--batch_size must be positive, got {args.batch_size}")
    request = EvalRequest(args.data_root, args.split, args.temperature_scaling, args.corruptions, args.ood,
                          args.device, args.batch_size)
    if args.runs_dir is not None:
        return evaluate_runs(args.runs_dir, args.which, request, args.json)
    report = evaluate_members(args.ckpt, args.which, request)
    if args.save:
        log(f"wrote {save_report(report)}")
    print(json.dumps(report, indent=2) if args.json else format_eval_report(report))
    return 0
