"""Run folders built from the reference's own logged figures, for the compare/plot/table tests."""

from __future__ import annotations

import json
from pathlib import Path

from resbench.results.reference import ReferenceRun

# Our metrics.jsonl names of the reference's logged figures.
OURS = {"trn_loss": "trn_loss", "trn_lr": "trn_lr", "trn_w_norm": "w_norm", "trn_g_norm": "g_norm",
        "val_acc": "val_acc", "val_nll": "val_nll", "best_val_acc": "best_val_acc"}


def write_reference_run(run: Path, ref: ReferenceRun, seed: int = 42, until: int | None = None,
                        shift: dict[str, tuple[int, float]] | None = None, final: dict[str, float] | None = None,
                        **settings) -> Path:
    """A run folder whose records are the reference run's figures, up to iteration `until` (all by
    default; a finished run then has summary.json). `shift[key] = (from_iter, factor_or_offset)`
    changes one of our figures from an iteration on: multiplied for norms and losses, added for accuracies.
    `final[key]` is added to a test figure (tst_acc, tst_nll) of the best validation's record."""
    run.mkdir(parents=True)
    config = {"data_name": ref.data_name, "resnet_depth": ref.depth, "resnet_width": ref.width,
              "batch_size": ref.batch_size, "optim_ni": ref.optim_ni, "optim_lr": ref.optim_lr, "optim_momentum": 0.9,
              "optim_weight_decay": ref.weight_decay,
              "optim_label_smoothing": 0.0, "optim_global_clipping": None, "seed": seed,
              "mixed_precision": "false" if ref.precision == "fp32" else "true", "eval_every": 1000,
              **settings}
    (run / "config.json").write_text(json.dumps({**config, "resolved": {"precision": ref.precision}}))
    records = []
    for theirs in ref.records:
        if until is not None and theirs["iter"] > until:
            break
        record = {"iter": theirs["iter"], **{ours: theirs[key] for ours, key in OURS.items()}}
        for key, (start, change) in (shift or {}).items():
            if theirs["iter"] >= start:
                record[key] = record[key] + change if "acc" in key else record[key] * change
        if theirs["tst_acc"] is not None:
            record.update(tst_acc=theirs["tst_acc"], tst_nll=theirs["tst_nll"],
                          tst_acc_at_eval=theirs["tst_acc"], tst_nll_at_eval=theirs["tst_nll"])
        records.append(record)
    if final:
        best = max(records, key=lambda r: r["val_acc"])
        for key, change in final.items():
            best[key] += change
            best[f"{key}_at_eval"] += change
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if until is None:
        best = max(records, key=lambda r: r["val_acc"])
        summary = {"status": "finished", "data_name": ref.data_name, "depth": ref.depth, "width": ref.width,
                   "precision": ref.precision, "params": 272_474, "best_val_acc": best["val_acc"],
                   "tst_acc": best["tst_acc"], "tst_nll": best["tst_nll"], "best_iter": best["iter"],
                   "wall_seconds": ref.records[-1]["elapsed_s"], "config": config}
        (run / "summary.json").write_text(json.dumps(summary))
    return run
