"""Hand-written run folders (summary.json, config.json, metrics.jsonl) as the trainer leaves them, for the
tests of table, plot and the run folder's readers; and the check that a plot is a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from resbench.results.reference import reference_rows


def summary(data_name: str, depth: int, width: int, precision: str, params: int, val_acc: float,
            tst_acc: float, tst_nll: float, wall_seconds: float = 60.0, seed: int = 42) -> dict:
    """A summary.json as the trainer writes it (only the fields the table reads, plus config)."""
    return {"data_name": data_name, "depth": depth, "width": width, "precision": precision, "params": params,
            "best_val_acc": val_acc, "tst_acc": tst_acc, "tst_nll": tst_nll, "wall_seconds": wall_seconds,
            "status": "finished", "config": {"seed": seed, "optim_ni": 48000}}


def seed_summaries(data_name: str) -> list[dict]:
    """The seed's own figures as summaries, in a scrambled order (the table must restore the seed's)."""
    rows = [r for r in reference_rows() if r.data_name == data_name][::-1]
    return [summary(r.data_name, r.depth, r.width, r.precision, r.params, r.val_acc, r.tst_acc, r.tst_nll,
                    wall_seconds=r.wall_min * 60) for r in rows]


def seeds_and_compare_summaries() -> list[dict]:
    return [
        summary("Digits_x32", 8, 1, "fp32", 78_000, 0.5, 0.4, 1.5),
        *(summary("CIFAR10_x32", 20, 1, "fp32", 272_464, val, tst, 0.3, seed=seed)
          for seed, val, tst in ((1, 0.921, 0.914), (2, 0.923, 0.920), (3, 0.925, 0.926))),
        summary("CIFAR10_x32", 18, 1, "fp32", 11_173_952, 0.95, 0.948, 0.199, wall_seconds=1800),
    ]


def write_runs(runs_dir: Path, summaries: list[dict]) -> None:
    for i, s in enumerate(summaries):
        run = runs_dir / s["data_name"] / f"run{i}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps(s))


def diverged_summary(s: dict) -> dict:
    """The summary.json of a run that diverged before its first evaluation: no figures at all."""
    return dict(s, status="diverged", best_val_acc=None, tst_acc=None, tst_nll=None)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_pngs(paths: list[Path]) -> None:
    from PIL import Image

    for path in paths:
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        with Image.open(path) as image:
            image.verify()
            assert image.size[0] > 300 and image.size[1] > 200


def write_hand_run(run: Path, s: dict, n_evals: int = 4) -> None:
    """A run folder as the trainer leaves it: config.json, metrics.jsonl and (if finished) summary.json."""
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data_name": s["data_name"], "resnet_depth": s["depth"]}))
    records = [{"iter": 100 * (i + 1), "trn_loss": 2.0 / (i + 1), "val_acc": 0.2 * i} for i in range(n_evals)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "summary.json").write_text(json.dumps(s))
