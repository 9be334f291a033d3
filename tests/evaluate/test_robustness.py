"""`resbench eval` beyond accuracy (issue 15): corruptions, OOD detection, ensembles, last.pt and run
folders (issue 16, item 5), eval.json and `table --columns`; figures checked against by-hand computations."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from archives import _place, _use_archive, closed_url  # noqa: F401 (fixture)
from PIL import Image
from sklearn.metrics import roc_auc_score
from test_evalsets import TWO, cifar_c_archive, svhn_mat, two_corruptions  # noqa: F401 (fixture)
from test_metrics import numpy_metrics, numpy_probs

from conftest import fails_if_blocked
from resbench.cli.evaluate import format_eval_report
from resbench.cli.main import main
from resbench.data import evalsets
from resbench.data.digits import digits_arrays
from resbench.data.facts import DATASETS
from resbench.data.fetch.prepare import is_complete
from resbench.evaluate import metrics
from resbench.models.resnet import resnet
from resbench.settings.config import TrainConfig
from resbench.train.loop import train

# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory) -> Path:
    """Two short real Digits_x32 runs (seeds 1 and 2), trained in this process."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (1, 2):
        train(TrainConfig(data_name="Digits_x32", resnet_depth=8, batch_size=32, optim_ni=20, eval_every=10,
                          seed=seed, device="cpu", compile="false", save=str(root / f"s{seed}")))
    return root


@pytest.fixture(scope="module")
def evaluated(digits_runs, tmp_path_factory) -> Path:
    """A copy of the runs, evaluated once as a sweep is: `resbench eval RUNS --corruptions --ood`."""
    runs = tmp_path_factory.mktemp("evaluated") / "runs"
    shutil.copytree(digits_runs, runs)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["eval", str(runs), "--corruptions", "--ood", "--device", "cpu"]) == 0
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == [str(runs / "s1"), str(runs / "s2")]
    return runs


def eval_json(capsys, *args: str) -> dict:
    assert main(["eval", *map(str, args), "--device", "cpu", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def logits_by_hand(weights: dict, depth: int, classes: int, images: np.ndarray) -> np.ndarray:
    """A freshly built contiguous-layout model, one plain forward pass over uint8 NHWC images."""
    model = resnet(depth, 1, num_classes=classes, image_size=32).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        return model(x).double().numpy()


def best_weights(run: Path) -> dict:
    return torch.load(run / "best.pt", weights_only=True)


def msp(logits: np.ndarray) -> np.ndarray:
    return numpy_probs(logits).max(1)


def auroc_by_sklearn(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    return roc_auc_score(np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))], np.r_[in_scores, out_scores])


# ---------------------------------------------------------------- the demo: Digits_C and Noise


@pytest.mark.parametrize("depth", [8, 20])
def test_the_cpu_evaluation_batch_changes_no_figure(depth):
    """Training's evaluations and `eval` score CPU batches of CPU_EVAL_BATCH_SIZE for speed: the logits,
    and so every figure of a run, must be those of the GPU's batch of EVAL_BATCH_SIZE, bit for bit."""
    torch.manual_seed(depth)
    model = resnet(depth)
    with torch.no_grad():  # off the zero-initialised layers, with BatchNorm statistics of its own
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                tensor.add_(0.05 * torch.rand_like(tensor))
    images, labels = (torch.from_numpy(a) for a in digits_arrays()[2:])
    assert metrics.eval_batch_size(torch.device("cpu")) < len(images) < metrics.EVAL_BATCH_SIZE
    by_gpu_batch = metrics.predict_logits(model, images, metrics.EVAL_BATCH_SIZE)
    assert torch.equal(metrics.predict_logits(model, images, metrics.CPU_EVAL_BATCH_SIZE), by_gpu_batch)
    figures = metrics.evaluate(model, images, labels, top5=True)
    assert figures["acc"] == (by_gpu_batch.argmax(1) == labels).float().mean().item()
    assert figures["nll"] == torch.nn.functional.cross_entropy(by_gpu_batch, labels).item()


def test_corruptions_and_ood_of_the_demo_match_a_computation_by_hand(evaluated):
    run = evaluated / "s1"
    report = json.loads((run / "eval.json").read_text())  # Digits: Digits_C and Noise built in

    test_images, test_labels = digits_arrays()[2:]
    weights = best_weights(run)
    for corruption in ("gaussian_noise", "contrast"):
        images = evalsets.digits_corrupted(test_images, corruption)
        logits = logits_by_hand(weights, 8, 10, images)
        n = len(test_labels)
        for severity in (1, 5):
            block = slice((severity - 1) * n, severity * n)
            by_hand = numpy_metrics(logits[block], test_labels)
            got = report["corruptions"]["corruptions"][corruption][str(severity)]
            assert got == pytest.approx({k: by_hand[k] for k in ("acc", "nll", "ece")}, abs=1e-4)
    c = report["corruptions"]
    assert c["set"] == "Digits_C" and c["images_per_severity"] == 300 and len(c["corruptions"]) == 5
    everything = [f[s]["acc"] for f in c["corruptions"].values() for s in "12345"]
    assert c["mean"]["acc"] == pytest.approx(np.mean(everything)) and "mean_all" not in c
    assert c["by_severity"]["3"]["nll"] == pytest.approx(np.mean([f["3"]["nll"] for f in c["corruptions"].values()]))
    # Noise: uniform random pixels, as many as the test split, seed 0
    noise = np.random.default_rng(0).integers(0, 256, (300, 32, 32, 3), dtype=np.uint8)
    id_scores, out_scores = msp(logits_by_hand(weights, 8, 10, test_images)), msp(logits_by_hand(weights, 8, 10, noise))
    assert list(report["ood"]) == ["Noise"] and report["ood"]["Noise"]["n"] == 300
    assert report["ood"]["Noise"]["msp"]["auroc"] == pytest.approx(auroc_by_sklearn(id_scores, out_scores), abs=1e-4)


def test_text_report_has_every_section(evaluated):
    out = format_eval_report(json.loads((evaluated / "s1" / "eval.json").read_text())).splitlines()
    assert out[0] == f"{evaluated / 's1' / 'best.pt'} (best.pt): Digits_x32 test split, 300 images"
    assert any(line.startswith("Digits_C: 5 corruptions x 5 severities, 300 images each") for line in out)
    assert any(line.startswith("mean (5)") for line in out) and any(line.startswith("contrast") for line in out)
    noise = next(i for i, line in enumerate(out) if line.startswith("Noise"))
    assert [out[noise + k].split()[-5] for k in range(3)] == ["msp", "entropy", "energy"]


def test_text_report_says_where_the_validation_split_is_the_test_split(evaluated):
    report = json.loads((evaluated / "s1" / "eval.json").read_text())
    assert report["val_is_test"] is False and "val = test" not in format_eval_report(report)
    scaled = {**report, "data_name": "ImageNet1k_x32", "val_is_test": True,
              "temperature_scaling": {"temperature": 1.5, "val_nll_before": 2.0, "val_nll_after": 1.9,
                                      **{k: report[k] for k in ("acc", "nll", "ece", "brier")}}}
    assert ("val = test: ImageNet1k_x32's validation split is its test split (the official validation set); the "
            "temperature was fitted on these same images") in format_eval_report(scaled).splitlines()
    assert format_eval_report(scaled).splitlines()[1] == f"{'':6}{'T=1':>10}{'T=1.500':>10}"
    scaled["temperature_scaling"]["temperature"] = 76308.643  # (fitted on a few images by an untrained model)
    assert format_eval_report(scaled).splitlines()[1].split() == ["T=1", "T=76308.643"]


def test_ensemble_matches_a_computation_by_hand(digits_runs, capsys):
    runs = [digits_runs / "s1", digits_runs / "s2"]
    report = eval_json(capsys, "--ckpt", *runs, "--ood", "Noise")
    singles = [eval_json(capsys, "--ckpt", run) for run in runs]

    test_images, labels = digits_arrays()[2:]
    logits = np.stack([logits_by_hand(best_weights(run), 8, 10, test_images) for run in runs])
    probs = numpy_probs(logits.reshape(-1, 10)).reshape(logits.shape)
    mean_p = probs.mean(0)
    ensemble = report["ensemble"]
    assert ensemble["nll"] == pytest.approx(-np.log(mean_p[np.arange(300), labels]).mean(), abs=1e-4)
    assert ensemble["acc"] == pytest.approx((mean_p.argmax(1) == labels).mean())
    onehot = np.eye(10)[labels]
    assert ensemble["brier"] == pytest.approx(((mean_p - onehot) ** 2).sum(1).mean(), abs=1e-4)
    assert report["diversity"]["disagreement"] == pytest.approx((probs[0].argmax(1) != probs[1].argmax(1)).mean())
    kl = [(probs[i] * np.log(probs[i] / probs[j])).sum(1).mean() for i, j in ((0, 1), (1, 0))]
    assert report["diversity"]["kl"] == pytest.approx(np.mean(kl), abs=1e-4)
    for member, single in zip(report["members"], singles):
        assert {k: member[k] for k in ("ckpt", "acc", "nll", "ece", "brier")} == \
            pytest.approx({k: single[k] for k in ("ckpt", "acc", "nll", "ece", "brier")})
        assert member["ood"]["Noise"]["n"] == 300
    assert set(ensemble["ood"]["Noise"]) == {"n", "msp", "entropy", "energy"}


def test_last_checkpoint_and_run_folders(digits_runs, capsys):
    run = digits_runs / "s1"
    by_folder = eval_json(capsys, "--ckpt", run)
    by_file = eval_json(capsys, "--ckpt", run / "best.pt")
    last = eval_json(capsys, "--ckpt", run, "--which", "last")
    last_file = eval_json(capsys, "--ckpt", run / "last.pt")

    assert by_folder == by_file and by_folder["checkpoint"] == "best"
    assert last == last_file and last["checkpoint"] == "last" and last["ckpt"] == str(run / "last.pt")
    # last.pt was written right after the final evaluation: scored as the trainer scored it then, its
    # BatchNorm variances in the reference's form (bnstats), not in PyTorch's that last.pt keeps
    final = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["iter"] == 20
    val = eval_json(capsys, "--ckpt", run, "--which", "last", "--split", "val")
    assert val["acc"] == pytest.approx(final["val_acc"], abs=1e-6)
    assert val["nll"] == pytest.approx(final["val_nll"], abs=2e-7)
    train_images, train_labels = digits_arrays()[:2]
    raw = torch.load(run / "last.pt", weights_only=True)["model"]
    raw_nll = numpy_metrics(logits_by_hand(raw, 8, 10, train_images[1280:]), train_labels[1280:])["nll"]
    assert abs(raw_nll - final["val_nll"]) > 5 * abs(val["nll"] - final["val_nll"])  # measured: 8e-7 vs 4e-8


def test_eval_of_runs_dir_writes_eval_json_that_table_reads(evaluated, digits_runs, capsys):
    runs = evaluated
    saved = [json.loads((runs / s / "eval.json").read_text()) for s in ("s1", "s2")]
    assert all(s["corruptions"]["set"] == "Digits_C" and "Noise" in s["ood"] for s in saved)

    assert main(["table", str(runs), "--columns", "tst/acc,ece,c/acc,c/ece,ood/auroc,ood/fpr95@Noise:energy"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header, cells = ([c.strip() for c in line.split("|")] for line in (lines[1], lines[3]))
    assert header[4:10] == ["tst/acc", "ece", "c/acc", "c/ece", "ood/auroc", "ood/fpr95@Noise:energy"]

    def stat(values):  # mean ± sample std [95% Student-t interval]; t(0.975, 1 degree of freedom) = 12.706
        mean, std = np.mean(values), np.std(values, ddof=1)
        half = 12.7062047 * std / np.sqrt(len(values))  # clipped to [0, 1]: all four are rates; † for n = 2
        return f"{mean:.3f} ± {std:.3f} [{max(mean - half, 0):.3f}, {min(mean + half, 1):.3f}]†"

    assert cells[5] == stat([s["ece"] for s in saved])
    assert cells[6] == stat([s["corruptions"]["mean"]["acc"] for s in saved])
    assert cells[8] == stat([s["ood"]["Noise"]["msp"]["auroc"] for s in saved])
    assert cells[9] == stat([s["ood"]["Noise"]["energy"]["fpr95"] for s in saved])
    assert main(["table", str(digits_runs), "--columns", "tst/acc,c/acc"]) == 0  # no eval.json there
    assert capsys.readouterr().out.splitlines()[3].split("|")[5].strip() == "n/a"


def test_a_checkpoint_of_another_model_is_named_in_one_line(tmp_path, cli):
    (tmp_path / "config.json").write_text(json.dumps(
        {"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1, "data_root": "unused"}))
    torch.save(resnet(14, 2, num_classes=100).state_dict(), tmp_path / "best.pt")
    proc = cli("eval", "--ckpt", tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr == (f"error: {tmp_path / 'best.pt'} holds ResNet-14 x2, 100 classes, but "
                           f"{tmp_path / 'config.json'} describes a ResNet-8 x1, 10 classes (Digits_x32); evaluate "
                           "a checkpoint with the config.json of the run that trained it\n")


def crafted_weights(fault: str) -> dict:
    state = resnet(8, 1, num_classes=10).state_dict()
    if fault == "int keys":
        return {i: value for i, value in enumerate(state.values())}
    if fault == "complex":
        return {key: value.to(torch.complex64) if value.is_floating_point() else value for key, value in state.items()}
    if fault == "NaN":
        return {**state, "fc.weight": torch.full_like(state["fc.weight"], float("nan"))}
    return {"model": state, "optimizer": {}, "rank_buffers": 5}  # a last.pt whose rank_buffers is no list


@pytest.mark.parametrize("fault, message", [
    ("int keys", "best.pt holds no state_dict of tensors, but"),
    ("complex", "best.pt: stem.0.0.weight holds torch.complex64 values where the model has torch.float32"),
    ("NaN", "best.pt: fc.weight holds NaN or infinite weights (a run that diverged)"),
    ("rank_buffers", "best.pt holds rank_buffers that are not a list of each rank's statistics"),
])
def test_a_crafted_checkpoint_is_one_line_before_it_is_scored(tmp_path, capsys, fault, message):
    (tmp_path / "config.json").write_text(json.dumps(
        {"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1, "batch_size": 16, "data_root": "unused"}))
    torch.save(crafted_weights(fault), tmp_path / "best.pt")
    assert main(["eval", "--ckpt", str(tmp_path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'best.pt'}") and message in err and err.count("\n") == 1


def test_a_last_pt_of_a_config_whose_bn_groups_split_no_batch_is_one_line(tmp_path, capsys):
    """last.pt's BatchNorm statistics follow from the images per group: a config.json's bn_groups is bounded."""
    (tmp_path / "config.json").write_text(json.dumps(
        {"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1, "batch_size": 16, "bn_groups": 10**9,
         "data_root": "unused"}))
    torch.save({"model": resnet(8, 1, num_classes=10).state_dict(), "optimizer": {}}, tmp_path / "last.pt")
    assert main(["eval", "--ckpt", str(tmp_path / "last.pt"), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'config.json'}: bn_groups 1000000000 does not split the "
                                       "batch 16 of 1 rank(s); was it written by resbench train?\n")


def test_a_checksum_file_that_is_a_fifo_is_refused_without_blocking(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(
        {"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1, "data_root": "unused"}))
    torch.save(resnet(8, 1, num_classes=10).state_dict(), tmp_path / "best.pt")
    os.mkfifo(tmp_path / "best.pt.sha256")
    with fails_if_blocked(60, "reading best.pt.sha256 blocked"):
        assert main(["eval", "--ckpt", str(tmp_path), "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (f"error: cannot read {tmp_path / 'best.pt.sha256'} (it is not a regular file "
                                       "(a device, FIFO or socket))\n")


@pytest.mark.parametrize("args, message", [
    (["RUNS", "--ckpt", "RUN"], "give either RUNS_DIR (every run below it) or --ckpt"),
    ([], "give either RUNS_DIR (every run below it) or --ckpt"),
    (["--ckpt", "RUN", "RUN", "--write_eval"], "--write_eval is for one checkpoint, not an ensemble"),
    (["--ckpt", "RUN", "RUN", "--temperature_scaling"], "--temperature_scaling is for one checkpoint"),
    (["--ckpt", "RUN", "--write_eval", "--split", "val"], "saved figures (--write_eval, RUNS_DIR) are the test split's"),
    (["--ckpt", "RUN", "--ood", "Nope"], "unknown OOD set 'Nope'; choose from CIFAR10_x32, "),
    (["--ckpt", "RUN", "--ood", "Digits_x32"], "--ood Digits_x32 is the run's own dataset"),
    (["--ckpt", "RUNS"], "is not a run folder (no config.json); to evaluate every run below it, pass it without"),
    (["--ckpt", "RUN/nothing.pt"], "no such checkpoint or run folder"),
    (["--ckpt", "RUN", "--eval_batch_size", "0"], "--eval_batch_size must be positive"),
])
def test_eval_argument_errors_are_one_line(digits_runs, capsys, args, message):
    args = [str(digits_runs / "s1") if a == "RUN" else str(digits_runs) if a == "RUNS" else
            a.replace("RUN/", f"{digits_runs / 's1'}/") for a in args]
    assert main(["eval", *args, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


@pytest.mark.parametrize("old, message", [
    (["--save"], "error: --save is now --write_eval (train's --save names a run folder; eval writes into the run's own)"),
    (["--batch-size", "64"], "error: --batch-size is now --eval_batch_size (train's --batch_size is the training batch)"),
])
def test_eval_refuses_an_old_spelling_in_one_line_naming_the_new(capsys, old, message):
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--ckpt", "run", *old])
    assert exit_.value.code == 2 and capsys.readouterr().err == f"{message} (see `resbench eval --help`)\n"


def test_a_run_folder_without_last_pt(tmp_path, digits_runs, capsys):
    run = tmp_path / "run"
    shutil.copytree(digits_runs / "s1", run)
    (run / "last.pt").unlink()
    assert main(["eval", "--ckpt", str(run), "--which", "last", "--device", "cpu"]) == 2
    assert f"run folder {run} has no last.pt yet" in capsys.readouterr().err
    assert main(["eval", str(tmp_path), "--which", "last", "--device", "cpu"]) == 1  # RUNS_DIR: a warning per run
    assert f"warning: cannot evaluate {run}: run folder {run} has no last.pt" in capsys.readouterr().err


# ---------------------------------------------------------------- prepared sets: CIFAR-10-C, CIFAR-100, SVHN, Tiny-C


def fake_run(folder: Path, data_name: str, data_root: Path, seed: int = 0) -> dict:
    """A run folder holding a random (not zero-initialised) depth-8 model of `data_name`."""
    spec = DATASETS[data_name]
    torch.manual_seed(seed)
    model = resnet(8, 1, num_classes=spec.num_classes, image_size=spec.image_size)
    torch.nn.init.normal_(model.fc.weight, std=0.3)
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "best.pt")
    config = {"data_name": data_name, "resnet_depth": 8, "resnet_width": 1, "data_root": str(data_root)}
    (folder / "config.json").write_text(json.dumps(config))
    return model.state_dict()


def fake_prepared(data_root: Path, name: str, rng: np.random.Generator, train: int = 12, test: int = 6):
    spec = DATASETS[name]
    folder = data_root / name
    folder.mkdir(parents=True)
    size = spec.image_size
    for split, n in (("train", train), ("test", test)):
        np.save(folder / f"{split}_images.npy", rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8))
        np.save(folder / f"{split}_labels.npy", rng.integers(0, spec.num_classes, n))
    return np.load(folder / "test_images.npy")


@pytest.fixture
def small_splits(monkeypatch):
    for name, spec in list(DATASETS.items()):
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(spec, num_train=8))


def test_cifar10_run_against_its_natural_sets(tmp_path, monkeypatch, closed_url, capsys, two_corruptions,  # noqa: F811
                                              small_splits):
    """CIFAR-10: CIFAR10_C for --corruptions, CIFAR-100 and SVHN for --ood; the missing sets are prepared
    from the placed archives as train prepares its dataset."""
    root, rng = tmp_path / "data", np.random.default_rng(5)
    weights = fake_run(tmp_path / "run", "CIFAR10_x32", root)
    test_images = fake_prepared(root, "CIFAR10_x32", rng)
    cifar100_images = fake_prepared(root, "CIFAR100_x32", rng)
    archive, c_labels, c_images = cifar_c_archive(TWO)
    svhn_images = rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
    mat = svhn_mat(tmp_path / "made.mat", svhn_images, np.arange(1, 10))
    for filename, content in (("CIFAR-10-C.tar", archive), ("test_32x32.mat", mat)):
        _place(root, filename, content)
        _use_archive(monkeypatch, filename, content, closed_url)

    report = eval_json(capsys, "--ckpt", tmp_path / "run", "--corruptions", "--ood")

    assert is_complete(root, "CIFAR10_C") and is_complete(root, "SVHN")  # prepared on the way
    fog = logits_by_hand(weights, 8, 10, c_images["fog"])
    for severity in range(1, 6):
        block = slice((severity - 1) * 3, severity * 3)
        assert report["corruptions"]["corruptions"]["fog"][str(severity)]["acc"] == \
            pytest.approx((fog[block].argmax(1) == c_labels).mean())
    id_scores = msp(logits_by_hand(weights, 8, 10, test_images))
    assert list(report["ood"]) == ["CIFAR100_x32", "SVHN"]
    for name, images in (("CIFAR100_x32", cifar100_images), ("SVHN", svhn_images)):
        out_scores = msp(logits_by_hand(weights, 8, 10, images))
        assert report["ood"][name]["n"] == len(images)
        assert report["ood"][name]["msp"]["auroc"] == pytest.approx(auroc_by_sklearn(id_scores, out_scores), abs=1e-6)


def test_tinyimagenet_x32_run_scores_tiny_c_downsampled_like_its_training_data(tmp_path, capsys, small_splits):
    root, rng = tmp_path / "data", np.random.default_rng(6)
    weights = fake_run(tmp_path / "run", "TinyImageNet200_x32", root)
    fake_prepared(root, "TinyImageNet200_x32", rng)
    folder = root / "TinyImageNet200_C"
    folder.mkdir()
    labels = np.tile(rng.integers(0, 200, 2), 5)
    np.save(folder / "labels.npy", labels)
    corrupted = {c: rng.integers(0, 256, (10, 64, 64, 3), dtype=np.uint8) for c in evalsets.EVAL_SETS[
        "TinyImageNet200_C"].corruptions}
    for c, images in corrupted.items():
        np.save(folder / f"{c}.npy", images)

    report = eval_json(capsys, "--ckpt", tmp_path / "run", "--corruptions", "--ood", "TinyImageNet200_C")

    pil = np.stack([np.asarray(Image.fromarray(x).resize((32, 32), Image.BOX)) for x in corrupted["fog"]])
    model = resnet(8, 1, num_classes=200, image_size=32).eval()
    model.load_state_dict(weights)
    with torch.no_grad():
        logits = model(torch.from_numpy(pil).permute(0, 3, 1, 2).float() / 255).double().numpy()
    probs = numpy_probs(logits)
    nll = -np.log(probs[np.arange(10), labels])
    for severity in range(1, 6):
        assert report["corruptions"]["corruptions"]["fog"][str(severity)]["nll"] == \
            pytest.approx(nll[(severity - 1) * 2:severity * 2].mean(), abs=1e-4)
    assert report["corruptions"]["set"] == "TinyImageNet200_C" and report["ood"]["TinyImageNet200_C"]["n"] == 30
