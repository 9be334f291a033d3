"""`resbench export` (issue 40): real tiny runs exported and loaded (logits bit for bit those `resbench eval`
gives best.pt, fp32 and bf16), the folder's files (no pickle, the card's measured figures and digest), what it may
replace, a sweep's export and index, the card of a reference cell's run, and `resbench eval` of exports."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
import yaml

import resbench
from conftest import tiny
from reference_runs import write_reference_run
from resbench.data import evalsets
from resbench.data.digits import digits_arrays
from resbench.data.facts import DATASETS
from resbench.errors import ResbenchError
from resbench.evaluate.checkpoints import load_checkpoint_model
from resbench.evaluate.metrics import predict_logits
from resbench.export import write
from resbench.models.resnet import resnet
from resbench.results.reference import reference_runs
from resbench.runs.checkpoint import save_checkpoint
from resbench.settings.config import default_run_name
from resbench.train.loop import train
from resbench.weights import layout

SEEDS = ((1, "false"), (2, "false"), (3, "false"), (1, "bf16"))  # bf16: the mixed precision of a CPU


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Four tiny real Digits_x32 runs in a sweep's layout (<runs>/<data_name>/<run name>), trained here."""
    root = tmp_path_factory.mktemp("runs")
    for seed, precision in SEEDS:
        cfg = tiny(root, seed=seed, mixed_precision=precision, eval_every=6, compile="false")  # 6 iterations
        cfg.save = str(root / "Digits_x32" / default_run_name(cfg))
        train(cfg)
    return root


def run_of(runs: Path, seed: int = 1, precision: str = "fp32") -> Path:
    return runs / "Digits_x32" / (f"R8x1-b16-i6-lr0.1-wd0.001-s{seed}" + ("" if precision == "fp32" else f"-{precision}"))


def eval_figures(cli, path: Path) -> dict:
    report = json.loads(cli("eval", "--ckpt", path, "--device", "cpu", "--json", check=True).stdout)
    return {key: value for key, value in report.items() if key not in ("ckpt", "checkpoint")}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_export_scores_as_its_best_pt_bit_for_bit(runs, tmp_path, cli, monkeypatch, precision):
    run = run_of(runs, precision=precision)
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    cli("export", run, tmp_path / "out", check=True)
    images = torch.from_numpy(digits_arrays()[2])
    config = json.loads((run / "config.json").read_text())
    by_eval, _ = load_checkpoint_model(run / "best.pt", config, torch.device("cpu"), DATASETS["Digits_x32"])
    exported = resbench.load_model(tmp_path / "out")
    assert not exported.training
    assert torch.equal(predict_logits(exported, images, 64), predict_logits(by_eval, images, 64))
    if precision == "fp32":  # (the same code scores both: once through the command line is enough)
        assert eval_figures(cli, tmp_path / "out") == eval_figures(cli, run)


def no_matplotlib():
    raise ResbenchError("plots need matplotlib: pip install 'resbench[plot]'")


def test_the_exported_folder_holds_no_pickle_and_a_card_of_the_runs_figures(runs, tmp_path, cli, monkeypatch):
    run = run_of(runs)
    proc = cli("export", run, tmp_path / "out", check=True)
    out = tmp_path / "out"
    # Every file is of a kind known by its first bytes, none a pickle (which opens with 0x80 from protocol 2 on)
    # or torch.save's zip: safetensors (an 8-byte header length, then the JSON header), JSON, the card, a PNG.
    files = {path.name: path.read_bytes() for path in out.iterdir()}
    assert set(files) == {layout.MODEL, layout.CONFIG, layout.CARD, layout.CURVES}
    header = int.from_bytes(files[layout.MODEL][:8], "little")
    assert json.loads(files[layout.MODEL][8:8 + header])["__metadata__"] == {"format": "pt"}
    assert json.loads(files[layout.CONFIG])[layout.FORMAT_KEY] == 1
    assert files[layout.CARD][:4] == b"---\n" and files[layout.CURVES][:8] == b"\x89PNG\r\n\x1a\n"

    summary = json.loads((run / "summary.json").read_text())
    config = json.loads((out / layout.CONFIG).read_text())
    assert config["results"] == {key: summary[key if key != "val_acc" else "best_val_acc"]
                                 for key in ("val_acc", "tst_acc", "tst_nll")}
    assert "save" not in config["training"] and "data_root" not in config["training"]
    card = (out / layout.CARD).read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    [validation, test] = front["model-index"][0]["results"]
    assert validation["dataset"]["split"] == "validation" and test["dataset"]["split"] == "test"
    assert [(m["name"], m["value"]) for m in test["metrics"]] == [
        ("tst/acc", float(f"{summary['tst_acc']:.6g}")), ("tst/nll", float(f"{summary['tst_nll']:.6g}"))]
    digest = hashlib.sha256((out / layout.MODEL).read_bytes()).hexdigest()
    assert f"SHA-256 `{digest}`" in card and digest in proc.stderr
    assert ("resbench train --data_name Digits_x32 --resnet_depth 8 --batch_size 16 --optim_ni 6 --seed 1 "
            "--eval_every 6 --device cpu --compile false\n") in card
    assert f"![training curves]({layout.CURVES})" in card and "**Not on a reference cell**" in card
    assert "status: finished" in card and "did not finish" not in card
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    cli("export", run, out, check=True)  # an export of its own is replaced, with the same bytes
    assert hashlib.sha256((out / layout.MODEL).read_bytes()).hexdigest() == digest


def test_export_replaces_only_an_export_of_its_own(runs, tmp_path, cli, monkeypatch):
    run, out = run_of(runs), tmp_path / "out"
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    cli("export", run, out, check=True)
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    def refused(target: Path, message: str) -> None:
        proc = cli("export", run, target)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    refused(tmp_path / "link", "is a symbolic link, and resbench never writes through one")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    refused(tmp_path / "notes", "holds files that resbench export did not write")
    refused(run, "holds files that resbench export did not write")
    (out / ".gitattributes").write_text("*.safetensors filter=lfs")
    refused(out, "holds files that resbench export did not write")
    (out / ".gitattributes").unlink()
    assert os.listdir(tmp_path / "elsewhere") == [] and (tmp_path / "notes" / "mine.txt").read_text() == "keep"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(write, "card", interrupted)
    assert cli("export", run, out).returncode == 130
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # the earlier export, as it was
    assert sorted(os.listdir(tmp_path)) == ["elsewhere", "link", "notes", "out"]  # no temporary folder left


def test_a_sweep_exports_every_finished_run_with_an_index(runs, tmp_path, cli, monkeypatch):
    sweep = tmp_path / "runs"
    shutil.copytree(runs, sweep)
    shutil.copytree(run_of(runs), sweep / "Digits_x32" / "stopped")
    (sweep / "Digits_x32" / "stopped" / "summary.json").unlink()
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    out = tmp_path / "exports"
    proc = cli("export", "--sweep", sweep, out, check=True)

    names = [f"Digits_x32-R8x1-b16-i6-lr0.1-wd0.001-s{seed}" + ("-bf16" if p == "bf16" else "") for seed, p in SEEDS]
    assert sorted(os.listdir(out)) == sorted([*names, layout.INDEX, layout.CARD])
    assert json.loads((out / layout.INDEX).read_text()) == {layout.INDEX_KEY: 1, "exports": sorted(names)}
    index = (out / layout.CARD).read_text()
    for name in names:
        config = json.loads((out / name / layout.CONFIG).read_text())
        [row] = [line for line in index.splitlines() if line.startswith(f"| [{name}]({name}/README.md) | Digits_x32 | R8x1 |")]
        assert f" | {config['results']['tst_acc']:.4f} | " in row
        assert "The curves were not drawn: plots need matplotlib" in (out / name / layout.CARD).read_text()
        assert not (out / name / layout.CURVES).exists()
    # A folder without summary.json is stopped or still training: the folder alone cannot tell which.
    assert "- Digits_x32-stopped: stopped or still training (no summary.json), not finished" in index
    assert "no reference run" in index
    assert "4 runs exported" in proc.stderr

    two = tmp_path / "two"  # RUNS_DIR holding exports (two of them: the same code scores each)
    for name in names[:2]:
        shutil.copytree(out / name, two / name)
    report = cli("eval", two, "--device", "cpu", check=True)  # every export scored, nothing written beside them
    assert "eval: 2 of 2 run folders evaluated" in report.stderr
    assert sorted(os.listdir(two / names[0])) == sorted([layout.MODEL, layout.CONFIG, layout.CARD])
    ensemble = json.loads(cli("eval", "--ckpt", out / names[0], out / names[1], "--device", "cpu", "--json",
                              check=True).stdout)
    assert [m["checkpoint"] for m in ensemble["members"]] == ["exported", "exported"]
    arrays = digits_arrays()  # Digits_C of the first 20 test images: the same code, 1/15 of the images
    monkeypatch.setattr(evalsets, "digits_arrays", lambda: (*arrays[:2], arrays[2][:20], arrays[3][:20]))
    single = cli("eval", out / names[0], "--corruptions", "--ood", "Noise", "--device", "cpu", check=True).stdout
    assert single.startswith(f"{out / names[0] / layout.MODEL}: Digits_x32 test split, 300 images\n")
    assert "Digits_C: 5 corruptions x 5 severities, 20 images each" in single and "\nNoise " in single
    for args, message in ((["--write_eval"], "--write_eval writes into a run folder"),
                          (["--which", "last"], "holds exported weights, the best-validation model's only")):
        refused = cli("eval", "--ckpt", out / names[0], *args, "--device", "cpu")
        assert refused.returncode == 2 and message in refused.stderr
    assert write.own_sweep(out) and not write.own_sweep(sweep)  # what a second export may replace, and not
    write.check_replaceable(out)


def test_the_card_of_a_reference_cells_run_says_how_it_compares_and_what_it_is(tmp_path, cli, monkeypatch):
    run = write_reference_run(tmp_path / "run", reference_runs()[("CIFAR10_x32", 20, 1, 0.001, "fp32")])
    save_checkpoint(resnet(20).state_dict(), run / "best.pt")
    monkeypatch.setattr(write, "pyplot", no_matplotlib)

    def card() -> str:
        cli("export", run, tmp_path / "out", check=True)
        return (tmp_path / "out" / layout.CARD).read_text()

    finished = card()
    assert "| reference (R20x1 wd 0.001 fp32, published) | 0.923 | 0.924 |" in finished
    assert "| 272,464\n" in finished  # the published row's parameters, which are also ours
    assert "`resbench compare`'s verdict: consistent with the reference (12 tests" in finished
    assert "> **" not in finished and "resbench train --data_name CIFAR10_x32 --resnet_depth 20\n" in finished
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "diverged"}))
    assert "> **This run diverged** (its loss stopped being finite after iteration 48000)" in card()
    (run / "summary.json").unlink()
    stopped = card()
    assert ("> **This run did not finish** (it has no summary.json: stopped, or still training when exported): its "
            "last evaluation was at iteration 48000 of 48000") in stopped
    assert "wall time: not recorded" in stopped
    for key, value in (("mixed_precision", "false\n```\n# not the command"), ("x`y", 1)):
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, key: value}))
        proc = cli("export", run, tmp_path / "out")  # the card quotes every setting in the command: data, never text
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "which no train flag takes" in proc.stderr
        (run / "config.json").write_text(json.dumps(config))


def test_the_card_of_an_imagenet_run_says_its_validation_set_is_its_test_set(tmp_path, cli, monkeypatch):
    """ImageNet validates on its test set (the official validation set): the card says the figures are test-selected,
    and the model-index lists that set's figures once, as its validation split, not twice under two names."""
    run = write_reference_run(tmp_path / "run", reference_runs()[("ImageNet1k_x32", 18, 1, 0.0001, "fp16")])
    save_checkpoint(resnet(18, num_classes=1000).state_dict(), run / "best.pt")
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    cli("export", run, tmp_path / "out", check=True)
    card = (tmp_path / "out" / layout.CARD).read_text()
    assert "official validation set (evaluated every 1,000 iterations), which is also its test set" in card
    assert "test figures are test-selected" in card
    header = card.split("\n---\n", 1)[0]
    assert header.count("split:") == 1 and "split: validation" in header and "name: \"tst/acc\"" in header


def reference_run(folder: Path) -> Path:
    run = write_reference_run(folder, reference_runs()[("CIFAR10_x32", 20, 1, 0.001, "fp32")])
    save_checkpoint(resnet(20).state_dict(), run / "best.pt")
    return run


def test_a_sweeps_run_named_as_the_index_or_its_card_gets_a_folder_of_another_name(tmp_path, cli, monkeypatch):
    """A run folder called README.md or index.json gets its own name, not the file the index is written to."""
    for name in (layout.CARD, layout.INDEX):
        reference_run(tmp_path / "runs" / name)
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    cli("export", "--sweep", tmp_path / "runs", tmp_path / "out", check=True)
    assert json.loads((tmp_path / "out" / layout.INDEX).read_text())["exports"] == ["README.md-2", "index.json-2"]
    assert write.own_sweep(tmp_path / "out")


@pytest.mark.parametrize("field, value", [("world_size", "2"), ("versions", [1, 2]), ("device", {"gpu": 1})])
def test_a_summary_field_of_another_type_is_one_line(tmp_path, cli, field, value):
    """The card quotes summary.json's device, process count and versions: of another type, a damaged file."""
    run = reference_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, field: value}))
    proc = cli("export", run, tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and f"lacks a valid {field}" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("target", [".", "inner/.."])
def test_an_out_dir_without_a_name_is_refused_at_once(tmp_path, cli, monkeypatch, target):
    """The export is made beside OUT_DIR and renamed into place: `.` (an empty working folder) or `x/..` have no
    place beside them, and the folder made inside them was then taken for files of another's."""
    run = reference_run(tmp_path / "run")
    (tmp_path / "here" / "inner").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here" / ("inner" if target == "." else ""))
    proc = cli("export", run, target)
    assert proc.returncode == 2 and proc.stderr == f"error: OUT_DIR {target} ends in no folder's name; name the " \
                                                   "folder to write (resbench writes it beside, then renames it)\n"
    assert every_entry(tmp_path / "here") == ["inner"]


def every_entry(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def test_a_figure_that_is_not_finite_is_published_as_not_available(tmp_path, cli, monkeypatch):
    """config.json stays JSON (no NaN, which strict parsers refuse) and the card's model-index lists numbers only."""
    run = reference_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "tst_acc": float("inf"), "tst_nll": float("nan")}))
    monkeypatch.setattr(write, "pyplot", no_matplotlib)
    cli("export", run, tmp_path / "out", check=True)
    config = json.loads((tmp_path / "out" / layout.CONFIG).read_text(), parse_constant=lambda name: pytest.fail(name))
    assert config["results"] == {"val_acc": summary["best_val_acc"], "tst_acc": None, "tst_nll": None}
    header = yaml.safe_load((tmp_path / "out" / layout.CARD).read_text().split("---\n")[1])
    assert [m["name"] for result in header["model-index"][0]["results"] for m in result["metrics"]] == ["val/acc"]


def test_a_best_validation_figure_not_recorded_is_said_so(tmp_path, cli):
    run = reference_run(tmp_path / "run")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "best_val_acc": None}))
    proc = cli("export", run, tmp_path / "out")
    assert proc.returncode == 0 and "finished, best val/acc n/a at iteration" in proc.stderr, proc.stderr
