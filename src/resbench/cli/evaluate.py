"""`resbench eval`: accuracy, NLL, ECE and Brier of checkpoints, their corruptions, OOD detection and
ensembles (evaluate/), as text tables or JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from resbench.console import log, printable, say
from resbench.errors import ResbenchError
from resbench.runs.schema import CORRUPTION_METRICS, OOD_METRICS, OOD_SCORES
from resbench.settings.flags import RenamedFlag
from resbench.weights.layout import EXPORTED, is_exported


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """`resbench eval (--ckpt CKPT_OR_RUN [...] | RUNS_DIR | EXPORTED) [--corruptions] [--ood [NAME ...]]
    [--write_eval]`"""
    p = subparsers.add_parser(
        "eval", help="accuracy, NLL, ECE, Brier; corruptions, OOD detection, ensembles",
        description="Evaluate checkpoints (model settings from each run folder's config.json): accuracy, NLL, "
                    "ECE (15 bins), Brier score; with --corruptions the corrupted test split, with --ood OOD "
                    "detection; several --ckpt are scored as an ensemble (their probabilities averaged) beside "
                    "each member. RUNS_DIR: every run folder below it, each saved to its eval.json. Exported "
                    "weights (`resbench export`'s folder, or a Hub id with huggingface_hub installed) are scored "
                    "as a checkpoint is, in every mode; nothing is written beside them.")
    p.add_argument("runs_dir", nargs="?", type=Path, default=None, metavar="RUNS_DIR",
                   help="evaluate every run folder below RUNS_DIR on its own and write its eval.json (as "
                        "--write_eval); an exported folder: as --ckpt")
    p.add_argument("--ckpt", type=Path, nargs="+", default=None, metavar="CKPT_OR_RUN_DIR",
                   help="best.pt, last.pt, a run folder (see --which) or exported weights; several: their ensemble")
    p.add_argument("--which", choices=("best", "last"), default="best",
                   help="checkpoint of a run folder: best (best validation accuracy) or last (final iterate)")
    p.add_argument("--data_root", default=None, help="dataset folder (default: the run's data_root)")
    p.add_argument("--split", choices=["val", "test"], default="test", help="split to evaluate")
    p.add_argument("--temperature_scaling", action="store_true",
                   help="also report the metrics after fitting one temperature T on the validation NLL")
    p.add_argument("--corruptions", action="store_true",
                   help="accuracy, NLL and ECE on the corrupted test split (CIFAR10_C, CIFAR100_C, TinyImageNet200_C, "
                        "Digits_C for the demo) per corruption and severity, and their means")
    p.add_argument("--ood", nargs="*", default=None, metavar="NAME",
                   help="OOD detection (AUROC, AUPR-In/Out, FPR95 for max-softmax, entropy and energy scores) of the "
                        "test split against each set: a dataset name, SVHN, a corrupted set, or Noise; none named: "
                        "the usual pairs (CIFAR-10 vs CIFAR-100 and SVHN, and so on)")
    p.add_argument("--write_eval", action="store_true",
                   help="write the figures into the run folder as eval.json (eval_last.json for last.pt), "
                        "which `resbench table --columns` reads")
    p.add_argument("--eval_batch_size", type=int, default=None,  # None: metrics.eval_batch_size(device)
                   help="images per inference batch (default: 64 on a CPU, 1024 on a GPU)")
    # Old spellings, which read as train's flags of the same names (a run folder, the training batch).
    p.add_argument("--save", action=RenamedFlag, new="--write_eval",
                   why=" (train's --save names a run folder; eval writes into the run's own)")
    p.add_argument("--batch_size", action=RenamedFlag, new="--eval_batch_size",
                   why=" (train's --batch_size is the training batch)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    if (args.runs_dir is None) == (args.ckpt is None):
        raise ResbenchError("give either RUNS_DIR (every run below it) or --ckpt CKPT_OR_RUN_DIR [...], not both")
    if args.runs_dir is not None and is_exported(args.runs_dir):  # one model: its whole report
        args.runs_dir, args.ckpt = None, [args.runs_dir]
    several = args.ckpt is not None and len(args.ckpt) > 1
    if several and (args.write_eval or args.temperature_scaling):
        raise ResbenchError(f"{'--write_eval' if args.write_eval else '--temperature_scaling'} is for one checkpoint, "
                            "not an ensemble; use --json to keep an ensemble's figures")
    if args.write_eval and is_exported(args.ckpt[0]):
        raise ResbenchError(f"--write_eval writes into a run folder; {args.ckpt[0]} is exported weights, kept as "
                            "exported: use --json to keep the figures")
    if (args.write_eval or args.runs_dir is not None) and args.split != "test":
        raise ResbenchError("saved figures (--write_eval, RUNS_DIR) are the test split's; drop --split val")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise ResbenchError(f"--eval_batch_size must be positive, got {args.eval_batch_size}")
    from resbench.evaluate.figures import EvalRequest, evaluate_checkpoint, evaluate_ensemble, save_report

    request = EvalRequest(args.data_root, args.split, args.temperature_scaling, args.corruptions, args.ood,
                          args.device, args.eval_batch_size)
    if args.runs_dir is not None:
        return eval_runs(args.runs_dir, args.which, request, args.json)
    report = (evaluate_ensemble(args.ckpt, args.which, request) if several
              else evaluate_checkpoint(args.ckpt[0], args.which, request))
    if args.write_eval:
        log(f"wrote {printable(save_report(report))}")
    say(json.dumps(report, indent=2) if args.json else format_eval_report(report))
    return 0


def eval_runs(runs_dir: Path, which: str, request: Any, as_json: bool) -> int:
    """`resbench eval RUNS_DIR`: one line per run as it is scored (or all reports as JSON at the end);
    exit status 1 if a run could not be scored."""
    from resbench.evaluate.figures import evaluate_runs

    def show(folder: Path, report: dict) -> None:
        if not as_json:
            say(f"{printable(folder)}: {summary_line(report)}")

    reports, failed = evaluate_runs(runs_dir, which, request, show)
    if as_json:
        say(json.dumps(reports, indent=2))
    log(f"eval: {len(reports)} of {len(reports) + failed} run folders evaluated")
    return 1 if failed else 0


def summary_line(figures: dict) -> str:
    """acc, nll, ece and brier, and the means over corruptions and OOD sets where present."""
    parts = [f"{k} {figures[k]:.4f}" for k in ("acc", "nll", "ece", "brier")]
    if "corruptions" in figures:
        parts += [f"c/{k} {figures['corruptions']['mean'][k]:.4f}" for k in CORRUPTION_METRICS]
    if "ood" in figures:
        parts.append("ood/auroc " + " ".join(f"{name} {f['msp']['auroc']:.4f}" for name, f in figures["ood"].items()))
    return "  ".join(parts)


def format_corruptions(c: dict) -> list[str]:
    severities = list(c["by_severity"])
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
        for i, score in enumerate(OOD_SCORES):
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
    which = "" if report["checkpoint"] == EXPORTED else f" ({report['checkpoint']}.pt)"
    lines = [f"{printable(report['ckpt'])}{which}: {printable(report['data_name'])} {report['split']} split, "
             f"{report['n']} images"]
    heads = ["T=1", *([f"T={scaled['temperature']:.3f}"] if scaled else [])]
    lines.append(f"{'':6}" + "".join(f" {head:>9}" for head in heads))  # (a space between, however long)
    for name in ("acc", "nll", "ece", "brier"):
        lines.append(f"{name:6}{report[name]:10.4f}" + (f"{scaled[name]:10.4f}" if scaled else ""))
    if scaled:
        lines.append(f"val nll {scaled['val_nll_before']:.4f} -> {scaled['val_nll_after']:.4f} "
                     f"after temperature scaling")
    return "\n".join(lines + val_is_test_lines(report) + format_sections(report, report["n"]))


def val_is_test_lines(report: dict) -> list[str]:
    """Where the set validates on its test set (ImageNet), the note that the val and test splits are one: a
    temperature is then fitted on the images it is scored on."""
    if not report.get("val_is_test"):
        return []
    fitted = "; the temperature was fitted on these same images" if "temperature_scaling" in report else ""
    return [f"val = test: {report['data_name']}'s validation split is its test split (the official validation "
            f"set){fitted}"]


def format_ensemble_report(report: dict) -> str:
    members, ensemble = report["members"], report["ensemble"]
    lines = [f"ensemble of {len(members)} checkpoints: {report['data_name']} {report['split']} split, "
             f"{report['n']} images (members' probabilities averaged)"]
    lines += [f"{i:<10}{summary_line(m)}  {printable(m['ckpt'])}" for i, m in enumerate(members, 1)]
    lines.append(f"{'ensemble':<10}{summary_line(ensemble)}")
    lines.append(f"diversity: pairwise disagreement {report['diversity']['disagreement']:.4f}, "
                 f"mean KL between members {report['diversity']['kl']:.4f}")
    lines += val_is_test_lines(report)
    sections = format_sections(ensemble, report["n"])
    return "\n".join(lines + (["", "the ensemble:", *sections[1:]] if sections else []))
