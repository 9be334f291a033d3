"""`resbench data import`: a researcher's images (an ImageFolder tree or an .npz) prepared as a
built-in set, then trained, evaluated and tabulated as one; every refusal one line."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import LIMIT, REPO, cli_env, fails_if_blocked
from resbench.cli.main import main
from resbench.data import evalsets, facts
from resbench.data.facts import DATASETS, FACTS_FILE, FactsError, dataset_spec, read_facts
from resbench.data.imported import IMPORT_FILES, IMPORT_MARK, check_name, held_out_counts, reserved_names
from resbench.errors import DataError, ResbenchError
from resbench.files import TEMPORARY_MARK


def save_png(path: Path, pixels: np.ndarray, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kwargs)
    return path


def grey_images(count: int, seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size), dtype=np.uint8)


def write_tree(src: Path, per_class: dict[str, np.ndarray], split: str = "train") -> None:
    for name, images in per_class.items():
        for i, pixels in enumerate(images):
            save_png(src / split / name / f"{i:03d}.png", pixels)


def import_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["data", "import", *map(str, args), "--workers", "1"])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def prepared(root: Path, name: str) -> dict[str, np.ndarray]:
    return {f: np.load(root / name / f, allow_pickle=False) for f in IMPORT_FILES if f.endswith(".npy")}


# ---------------------------------------------------------------- a tree and an .npz of the same images

CLASSES = {"cat": grey_images(14, 1), "dog": grey_images(12, 2), "owl": grey_images(13, 3)}
TEST = {"cat": grey_images(3, 4), "dog": grey_images(2, 5), "owl": grey_images(3, 6)}


def same_images_as_npz(path: Path) -> None:
    """CLASSES and TEST in the tree's order (classes sorted, files by name), NCHW with one channel."""
    def stacked(per_class):
        return (np.concatenate(list(per_class.values()))[:, None],
                np.concatenate([np.full(len(v), i) for i, v in enumerate(per_class.values())]))
    (x_train, y_train), (x_test, y_test) = stacked(CLASSES), stacked(TEST)
    np.savez(path, x_train=x_train, y_train=y_train.astype(np.uint8), x_test=x_test, y_test=y_test[:, None],
             classes=np.array(sorted(CLASSES)))


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same images imported from a tree and from an .npz, each trained by `resbench train` for 4
    iterations (1 thread: on a busy 2-core machine that is 10 times faster than 2, and the same figures)."""
    tmp = tmp_path_factory.mktemp("twins")
    write_tree(tmp / "tree", CLASSES)
    write_tree(tmp / "tree", TEST, "test")
    same_images_as_npz(tmp / "same.npz")
    root = tmp / "data"
    assert main(["data", "import", "FromTree", str(tmp / "tree"), "--data_root", str(root)]) == 0
    assert main(["data", "import", "FromNpz", str(tmp / "same.npz"), "--data_root", str(root)]) == 0
    summaries = {}
    for name in ("FromTree", "FromNpz"):
        run = tmp / "runs" / name
        assert main(["train", "--data_name", name, "--data_root", str(root), "--resnet_depth", "8", "--batch_size", "8",
                     "--optim_ni", "4", "--eval_every", "2", "--threads", "1", "--device", "cpu", "--save", str(run)]) == 0
        summaries[name] = json.loads((run / "summary.json").read_text())
    return root, tmp / "runs", summaries


def test_a_tree_and_an_npz_of_the_same_images_import_and_train_to_the_same_figures(twins):
    root, runs, summaries = twins
    tree, npz = prepared(root, "FromTree"), prepared(root, "FromNpz")
    for name in tree:
        np.testing.assert_array_equal(tree[name], npz[name], err_msg=name)
    assert tree["train_images.npy"].shape == (39, 32, 32, 3) and tree["test_images.npy"].shape == (8, 32, 32, 3)
    assert tree["train_labels.npy"].dtype == np.int64
    tree_facts, npz_facts = read_facts("FromTree", root), read_facts("FromNpz", root)
    assert (tree_facts.source_kind, npz_facts.source_kind) == ("imagefolder", "npz")
    assert tree_facts.classes == npz_facts.classes == ("cat", "dog", "owl")
    assert tree_facts.carved == {"val": 0.1} and tree_facts.num_test == 8  # SRC's own test split
    assert (tree_facts.num_train, tree_facts.num_val) == (35, 4) and tree_facts.resized == 47
    figures = [{key: s[key] for key in ("best_val_acc", "best_iter", "tst_acc", "tst_nll")} for s in summaries.values()]
    assert figures[0] == figures[1]
    losses = [[r["trn_loss"] for r in map(json.loads, (runs / n / "metrics.jsonl").read_text().splitlines())]
              for n in summaries]
    assert losses[0] == losses[1] and len(losses[0]) == 2


def test_a_small_set_gets_a_command_that_fits_it_and_a_warning_that_its_figures_are_noise(tmp_path, capsys):
    """3 x 30 images: the printed command (batch 256) failed at once on 73 training images, nothing said that 8
    validation and 9 test images make noise of the figures, and eval fitted a temperature to 8 images (issue 39)."""
    from resbench.settings.flags import given_flags, parse_train_flags
    from resbench.train.assemble import config_from
    from resbench.train.checks import validate_config

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "shapes.npz", x_train=rng.integers(0, 256, (90, 32, 32, 3), dtype=np.uint8),
             y_train=np.repeat(np.arange(3), 30))
    code, out, _ = import_cli(capsys, "Shapes", tmp_path / "shapes.npz", "--data_root", tmp_path / "data")
    assert code == 0 and "splits: 73 train / 8 validation (10% of train" in out
    assert ("\nwarning: validation 8 images (one image = 12.5 points) and test 9 images (one image = 11.1 points): "
            "below 100 images a split's figures are mostly noise") in out
    command = next(line for line in out.splitlines() if "train on it: " in line).partition("train on it: ")[2]
    assert command == (f"resbench train --data_name Shapes --data_root {tmp_path / 'data'} --batch_size 16 "
                       "--optim_ni 1369 --eval_every 28")  # 300 epochs of 73 images, 48 evaluations
    flags = shlex.split(command)[2:]
    validate_config(config_from(given_flags(parse_train_flags(flags))))  # as printed, checked as train checks it
    run = tmp_path / "run"
    shortened = [*flags, "--resnet_depth", "8", "--optim_ni", "2", "--threads", "1", "--device", "cpu", "--save", run]
    assert main(["train", *map(str, shortened)]) == 0  # as printed, shortened (flags given later win)
    capsys.readouterr()
    code = main(["eval", "--ckpt", str(run), "--temperature_scaling", "--device", "cpu"])
    assert capsys.readouterr().err == ("error: --temperature_scaling: the validation split has 8 images (one image = 12.5 points of "
                   "accuracy); a temperature fitted on fewer than 100 is noise and can make the test NLL worse. "
                   "Leave the flag out, or import the set with more images\n") and code == 2


def test_temperature_scaling_is_refused_where_every_validation_image_is_right():
    """The NLL of a perfectly classified split falls as T goes to 0: the fit returned T = 0.117 and worse figures."""
    import torch

    from resbench.evaluate.figures import temperature_scaled

    logits, labels = torch.eye(3).repeat(40, 1) * 5, torch.arange(3).repeat(40)
    with pytest.raises(ResbenchError, match="classifies all 120 validation images right"):
        temperature_scaled(logits, labels, "val", None, None)


def test_an_imported_run_is_evaluated_tabulated_compared_and_listed(twins, capsys):
    root, runs, _ = twins
    run = runs / "FromTree"
    assert main(["eval", "--ckpt", str(run), "--ood"]) == 0  # an imported set's natural OOD set: Noise
    assert "FromTree test split, 8 images" in (out := capsys.readouterr().out) and "\nNoise " in out
    assert main(["eval", "--ckpt", str(run), "--ood", "FromNpz"]) == 0  # another imported set is OOD data
    assert "\nFromNpz " in capsys.readouterr().out
    one_line_error(main(["eval", "--ckpt", str(run), "--corruptions"]), capsys.readouterr().err)
    assert main(["compare", str(runs)]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if "FromTree" in line]
    assert len(said) == 1 and said[0].endswith("the reference has no FromTree runs"), said
    assert main(["table", str(runs)]) == 0
    assert "### FromTree" in capsys.readouterr().out
    assert main(["plot", str(runs), "--out", str(runs.parent / "plots")]) == 0
    assert (runs.parent / "plots" / "FromTree_curves.png").stat().st_size > 1000
    assert main(["data", "list", "--data_root", str(root)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["FromTree"].split()[1:5] == ["complete", "35", "4", "8"]  # train, validation, test
    assert "PIL BICUBIC" in rows["FromTree"] and "recipe's fixed mean/std" in rows["FromTree"]


def test_sweep_and_bench_take_an_imported_set(twins, tmp_path, capsys):
    root, _, _ = twins
    grid = tmp_path / "grid.toml"
    grid.write_text(f'data_name = ["FromNpz"]\nresnet_depth = [8]\n[flags]\ndata_root = "{root}"\nbatch_size = 8\n'
                    'optim_ni = 4\ndevice = "cpu"\n')
    assert main(["sweep", "--grid", str(grid), "--runs_dir", str(tmp_path / "runs"), "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert "every dataset is prepared" in out and "--data_name FromNpz" in out
    grid.write_text(grid.read_text().replace("FromNpz", "NotYet"))  # a set not imported: refused before any run
    err = one_line_error(main(["sweep", "--grid", str(grid), "--runs_dir", str(tmp_path / "runs")]),
                         capsys.readouterr().err)
    assert "unknown data_name 'NotYet'" in err and "resbench data import NotYet SRC" in err
    assert not (tmp_path / "runs").exists()
    assert main(["bench", "--data_name", "FromNpz", "--data_root", str(root), "--resnet_depth", "8", "--batch_size",
                 "8", "--device", "cpu", "--compile", "false", "--threads", "1", "--warmup", "0", "--iters", "1",
                 "--windows", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["data_name"] == "FromNpz"


# ---------------------------------------------------------------- trees

def test_a_tree_without_test_gets_a_seeded_stratified_test_split_said_in_one_line(tmp_path, capsys):
    write_tree(tmp_path / "src", {"a": grey_images(20, 1), "b": grey_images(30, 2)})
    code, out, _ = import_cli(capsys, "Set", tmp_path / "src", "--data_root", tmp_path / "data")
    assert code == 0 and "SRC has no test split: carved out of train, 10%, stratified" in out
    found = read_facts("Set", tmp_path / "data")
    assert found.carved == {"val": 0.1, "test": 0.1}
    assert found.class_counts == {"train": (16, 24), "val": (2, 3), "test": (2, 3)}
    arrays = prepared(tmp_path / "data", "Set")
    assert list(np.bincount(arrays["train_labels.npy"][found.num_train:])) == [2, 3]  # validation after train
    assert import_cli(capsys, "Same", tmp_path / "src", "--data_root", tmp_path / "data")[0] == 0
    assert import_cli(capsys, "Other", tmp_path / "src", "--data_root", tmp_path / "data", "--split_seed", "7")[0] == 0
    same, other = prepared(tmp_path / "data", "Same"), prepared(tmp_path / "data", "Other")
    assert all(np.array_equal(arrays[f], same[f]) for f in arrays)
    assert not np.array_equal(arrays["test_images.npy"], other["test_images.npy"])


def test_odd_sizes_grey_palette_alpha_and_16_bit_become_rgb_at_the_size(tmp_path, capsys):
    src = tmp_path / "src"
    write_tree(src, {"a": grey_images(9, 1), "b": grey_images(9, 2)})
    rgb = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    save_png(src / "test" / "a" / "1_rgb.png", rgb)
    save_png(src / "test" / "a" / "2_grey_odd.png", grey_images(1, 4, size=13)[0].repeat(2, axis=1))  # 26 x 13
    rgba = np.dstack([np.full((32, 32, 3), 200, np.uint8), np.tile([0, 255], (32, 16)).astype(np.uint8)])
    save_png(src / "test" / "b" / "3_rgba.png", rgba)  # every other column transparent
    Image.fromarray(rgb).convert("P").save(src / "test" / "b" / "4_palette.png")
    Image.fromarray(np.full((32, 32), 65535, np.uint16)).save(src / "test" / "b" / "5_deep.png")
    code, out, _ = import_cli(capsys, "Odd", src, "--data_root", tmp_path / "data")
    assert code == 0, out
    test = prepared(tmp_path / "data", "Odd")["test_images.npy"]
    assert test.shape == (5, 32, 32, 3) and test.dtype == np.uint8
    np.testing.assert_array_equal(test[0], rgb)  # at the size already: untouched
    assert (test[1] == test[1][..., :1]).all()  # grey made RGB
    assert (test[2][:, 0] == 0).all() and (test[2][:, 1] == 200).all()  # alpha composited onto black
    assert test[3].std() > 0 and (test[4] == 255).all()  # palette as colours; 16-bit white is 255, not clipped noise
    assert "resized to 32x32 with PIL BICUBIC" in out and "made RGB:" in out and "I;16" in out
    assert read_facts("Odd", tmp_path / "data").resize == "PIL BICUBIC"


def test_a_class_with_a_single_image_stays_in_training_and_is_named(tmp_path, capsys):
    write_tree(tmp_path / "src", {"many": grey_images(20, 1), "one": grey_images(1, 2)})
    code, out, _ = import_cli(capsys, "Few", tmp_path / "src", "--data_root", tmp_path / "data")
    assert code == 0 and "(one)" in out and "too few images to hold one out" in out
    assert read_facts("Few", tmp_path / "data").class_counts["train"][1] == 1
    write_tree(tmp_path / "singles", {"a": grey_images(1, 1), "b": grey_images(1, 2)})
    err = one_line_error(*import_cli(capsys, "Singles", tmp_path / "singles", "--data_root", tmp_path / "data")[::2])
    assert "every class has a single training image" in err


def test_held_out_counts_are_stratified_and_exact():
    counts = np.array([1, 7, 50, 3])
    held = held_out_counts(counts, 0.25)
    assert held.sum() == round(61 * 0.25) and held[0] == 0 and (held < counts).all()
    assert ((held == np.floor(counts * 0.25)) | (held == np.ceil(counts * 0.25))).all()
    assert held_out_counts(np.array([3, 3]), 0.01).sum() == 1  # at least one image to validate on


@pytest.mark.parametrize("layout, message", [
    ({"train/a/.keep": b"", "train/b/.keep": b""}, "holds no images in its 2 class folders"),
    ({"images/a/0.png": None}, "has no train/ folder"),
    ({"train/a/0.png": None, "train/a/1.png": None}, "a classifier needs 2 classes at least"),
    ({"train/a/0.png": None, "train/b/notes.txt": b"x"}, "class 'b' has no training images"),
    ({"train/a/0.png": None, "train/b/0.png": None, "test/c/0.png": None}, "test/c has no counterpart"),
    ({"train/a/0.png": None, "train/b/0.png": None, "test/a/notes.txt": b"x"}, "test holds no readable images"),
    ({"train/a/" + "d/" * 33 + "0.png": None, "train/b/0.png": None}, "33 folders below its class folder"),
], ids=["0 images", "no train", "one class", "an empty class", "an unknown test class", "0 test images",
        "folders too deep"])
def test_a_tree_that_cannot_make_a_dataset_is_one_line(tmp_path, capsys, layout, message):
    for name, content in layout.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_png(path, grey_images(1, 0)[0]) if content is None else path.write_bytes(content)
    err = one_line_error(*import_cli(capsys, "Bad", tmp_path / "src", "--data_root", tmp_path / "data")[::2])
    assert message in err and not (tmp_path / "data").exists()


def test_a_corrupt_image_ends_the_import_naming_it_or_is_skipped_with_skip_bad(tmp_path, capsys):
    write_tree(tmp_path / "src", {"a": grey_images(10, 1), "b": grey_images(10, 2)})
    bad = tmp_path / "src" / "train" / "b" / "005.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    err = one_line_error(*import_cli(capsys, "Set", tmp_path / "src", "--data_root", tmp_path / "data")[::2])
    assert f"cannot import {bad}" in err and "--skip_bad" in err and not (tmp_path / "data").exists()
    code, out, _ = import_cli(capsys, "Set", tmp_path / "src", "--data_root", tmp_path / "data", "--skip_bad")
    assert code == 0 and "skipped: 1 unreadable images (--skip_bad; e.g." in out
    found = read_facts("Set", tmp_path / "data")
    assert found.skipped_bad == 1 and found.num_train + found.num_val + found.num_test == 19
    before = {f.name: f.read_bytes() for f in (tmp_path / "data" / "Set").iterdir()}
    bad.rename(bad.with_name("zzz.png"))  # the last file read
    err = one_line_error(*import_cli(capsys, "Set", tmp_path / "src", "--data_root", tmp_path / "data")[::2])
    assert "zzz.png" in err  # nothing written until the whole set was read: the earlier import is untouched
    assert {f.name: f.read_bytes() for f in (tmp_path / "data" / "Set").iterdir()} == before
    assert sorted(os.listdir(tmp_path / "data")) == ["Set"]


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height RGB pixels and holds none: decoding it would fail, not refuse it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("side, message", [
    (10_000, "is 10000x10000 pixels, more than the 89,478,485 resbench decodes (a decompression bomb?)"),
    (20_000, "is refused as a decompression bomb"),  # past twice the bound Pillow refuses it when opening
])
def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path, capsys, side, message):
    write_tree(tmp_path / "src", {"a": grey_images(2, 1), "b": grey_images(2, 2)})
    png_header_only(tmp_path / "src" / "train" / "b" / "bomb.png", side, side)
    err = one_line_error(*import_cli(capsys, "Big", tmp_path / "src", "--data_root", tmp_path / "data")[::2])
    assert f"cannot import {tmp_path / 'src' / 'train' / 'b' / 'bomb.png'}: it {message}" in err
    assert not (tmp_path / "data").exists()


def test_symlinks_out_of_src_are_not_followed(tmp_path, capsys):
    src, outside = tmp_path / "src", tmp_path / "outside"
    write_tree(src, {"a": grey_images(6, 1), "b": grey_images(6, 2)})
    write_tree(outside, {"c": grey_images(3, 3)})
    (src / "train" / "a" / "stolen.png").symlink_to(outside / "train" / "c" / "000.png")
    (src / "train" / "c").symlink_to(outside / "train" / "c")  # a class folder elsewhere
    (src / "train" / "b" / "again.png").symlink_to(src / "train" / "a" / "000.png")  # inside SRC: followed
    code, out, _ = import_cli(capsys, "Links", src, "--data_root", tmp_path / "data")
    assert code == 0 and "2 symbolic links (not followed: out of SRC" in out
    found = read_facts("Links", tmp_path / "data")
    assert found.classes == ("a", "b") and found.skipped_links == 2
    assert found.num_train + found.num_val + found.num_test == 13
    (src / "test").symlink_to(outside / "train")  # a whole split elsewhere: refused, not followed
    err = one_line_error(*import_cli(capsys, "Links", src, "--data_root", tmp_path / "data")[::2])
    assert f"{src}/test is a symbolic link" in err and read_facts("Links", tmp_path / "data") == found


@pytest.mark.parametrize("name", ["CIFAR10_x32", "cifar10_x32", "SVHN", "Noise", "Digits_C", "TinyImageNet200_C",
                                  "downloads", "../up", ".hidden", "a/b", "x" * 65, ""])
def test_a_name_that_is_built_in_or_a_path_is_refused_in_one_line(tmp_path, capsys, name):
    write_tree(tmp_path / "src", {"a": grey_images(3, 1), "b": grey_images(3, 2)})
    err = one_line_error(*import_cli(capsys, name, tmp_path / "src", "--data_root", tmp_path / "data")[::2])
    assert "taken by the built-in set" in err or "is not allowed" in err
    assert not (tmp_path / "data").exists()


def test_every_built_in_and_evaluation_set_name_is_reserved():
    assert set(DATASETS) | set(evalsets.EVAL_SETS) <= reserved_names()
    with pytest.raises(DataError, match="taken by the built-in set Digits_x32"):
        check_name("DIGITS_X32")
    with pytest.raises(DataError, match="is not allowed"):
        check_name("-flag")  # would read as an option on a command line


def test_a_reimport_replaces_only_what_an_import_wrote(tmp_path, capsys):
    write_tree(tmp_path / "src", {"a": grey_images(10, 1), "b": grey_images(10, 2)})
    root = tmp_path / "data"
    assert import_cli(capsys, "Set", tmp_path / "src", "--data_root", root)[0] == 0
    assert import_cli(capsys, "Set", tmp_path / "src", "--data_root", root, "--split_seed", "3")[0] == 0
    assert read_facts("Set", root).split_seed == 3
    assert sorted(os.listdir(root / "Set")) == sorted([*IMPORT_FILES, IMPORT_MARK]) and not list(root.glob(".Set*"))
    (root / "Set" / "notes.txt").write_text("mine")
    err = one_line_error(*import_cli(capsys, "Set", tmp_path / "src", "--data_root", root)[::2])
    assert "notes.txt" in err and (root / "Set" / "notes.txt").read_text() == "mine"
    (root / "Set" / "notes.txt").unlink()
    (root / "Set" / FACTS_FILE).write_text((root / "Set" / FACTS_FILE).read_text().replace('"split_seed": 3', '"split_seed": 4'))
    err = one_line_error(*import_cli(capsys, "Set", tmp_path / "src", "--data_root", root)[::2])  # the mark no longer fits
    assert f"no {IMPORT_MARK} matching its {FACTS_FILE}" in err and read_facts("Set", root).split_seed == 4


def test_a_users_own_set_and_folders_named_like_temporaries_are_never_replaced_or_deleted(tmp_path, capsys):
    """Issue 37, cause 4: a folder of the user's holding the four reference files and a dataset.json of their own
    is refused (the names prove nothing: the import's mark does), and a re-import removes only the temporaries a
    killed import left, by mkdtemp's exact name and the tool's mark."""
    write_tree(tmp_path / "src", {"a": grey_images(10, 1), "b": grey_images(10, 2)})
    root, theirs = tmp_path / "data", tmp_path / "theirs"
    assert import_cli(capsys, "Set", tmp_path / "src", "--data_root", theirs)[0] == 0
    (root / "Mine").mkdir(parents=True)
    for name in IMPORT_FILES:  # a copy of a valid set, without the mark of an import into this folder
        (root / "Mine" / name).write_bytes((theirs / "Set" / name).read_bytes())
    before = {name: (root / "Mine" / name).read_bytes() for name in IMPORT_FILES}
    err = one_line_error(*import_cli(capsys, "Mine", tmp_path / "src", "--data_root", root)[::2])
    assert f"did not write (no {IMPORT_MARK}" in err
    assert {name: (root / "Mine" / name).read_bytes() for name in IMPORT_FILES} == before
    kept = [root / ".Set.tmp-mine", root / ".Set.tmp-abcdefgh", root / ".Set.old-abcdefgh", root / ".Set.tmp-abcdefghi"]
    for folder in kept:  # the user's: not mkdtemp's name, or not marked
        (folder / "keep").mkdir(parents=True)
    stale = [root / ".Set.tmp-zyxwvuts", root / ".Set.old-zyxwvuts"]  # what a killed import leaves, marked
    stale[0].mkdir()
    (stale[0] / TEMPORARY_MARK).write_text("")
    shutil.copytree(theirs / "Set", stale[1])
    assert import_cli(capsys, "Set", tmp_path / "src", "--data_root", root)[0] == 0
    assert all((folder / "keep").is_dir() for folder in kept) and not any(folder.exists() for folder in stale)
    (root / "Set" / ".Set.tmp-abcdefgh").mkdir()  # inside the set: refused as a file the import did not write
    err = one_line_error(*import_cli(capsys, "Set", tmp_path / "src", "--data_root", root)[::2])
    assert ".Set.tmp-abcdefgh" in err and (root / "Set" / ".Set.tmp-abcdefgh").is_dir()


def test_a_reimport_while_a_run_loads_the_set_is_never_read_half_and_half(tmp_path, capsys, monkeypatch):
    """Issue 37, cause 5: the set is re-imported (other images, another split) just after the loader read its first
    file. The loader sees the folder replaced and reads again: every array and the split size are the second
    import's, none a mix of the two."""
    from resbench.data import prepared as loader

    write_tree(tmp_path / "one", {"a": grey_images(10, 1), "b": grey_images(10, 2)})
    write_tree(tmp_path / "two", {"a": grey_images(14, 3), "b": grey_images(6, 4), "c": grey_images(8, 5)})
    root = tmp_path / "data"
    assert import_cli(capsys, "Set", tmp_path / "one", "--data_root", root)[0] == 0
    load, reimported = loader.load_npy, []

    def load_then_reimport(path, mmap_mode=None):
        array = load(path, mmap_mode)
        if not reimported:
            reimported.append(import_cli(capsys, "Set", tmp_path / "two", "--data_root", root)[0])
        return array

    monkeypatch.setattr(loader, "load_npy", load_then_reimport)
    splits = loader.load_splits("Set", root)
    assert reimported == [0]
    second = prepared(root, "Set")
    n = read_facts("Set", root).num_train
    assert splits.spec.num_train == n and splits.spec.num_classes == 3
    assert np.array_equal(splits.train_labels.numpy(), second["train_labels.npy"][:n])
    assert np.array_equal(splits.val_labels.numpy(), second["train_labels.npy"][n:])
    assert np.array_equal(splits.test_images.numpy(), second["test_images.npy"])


# ---------------------------------------------------------------- .npz files

def test_an_npz_in_nhwc_or_nchw_of_grey_or_rgb_imports_alike(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (30, 32, 32, 3), dtype=np.uint8), np.arange(30) % 3
    np.savez(tmp_path / "nhwc.npz", x_train=x, y_train=y)
    np.savez_compressed(tmp_path / "nchw.npz", x_train=x.transpose(0, 3, 1, 2), y_train=y)
    np.savez(tmp_path / "grey.npz", x_train=x[..., 0], y_train=y)
    for name in ("nhwc", "nchw", "grey"):
        assert import_cli(capsys, name, tmp_path / f"{name}.npz", "--data_root", tmp_path / "data")[0] == 0
    nhwc, nchw, grey = (prepared(tmp_path / "data", n) for n in ("nhwc", "nchw", "grey"))
    assert all(np.array_equal(nhwc[f], nchw[f]) for f in nhwc)
    assert (grey["train_images.npy"] == grey["train_images.npy"][..., :1]).all()
    assert read_facts("nhwc", tmp_path / "data").classes == ("0", "1", "2")


def npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


@pytest.mark.parametrize("arrays, message", [
    ({"x_train": np.zeros((4, 8, 8, 3), np.float32), "y_train": np.arange(4) % 2}, "expected uint8 images"),
    ({"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.array([0, 1, 2, -1])}, "holds the label -1"),
    ({"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.arange(3) % 2}, "holds 4 images but y_train 3"),
    ({"x_train": np.zeros((4, 8, 8, 3), np.uint8)}, "holds no y_train"),
    ({"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.array([0, 2, 0, 2])}, "class '1' has no training"),
    ({"x_train": np.zeros((4, 8, 8, 3), np.uint8), "y_train": np.arange(4) % 2, "x_test": np.zeros((1, 8, 8, 3), np.uint8)},
     "only one of x_test and y_test"),
    ({"x_train": np.zeros((4, 8, 8, 5), np.uint8), "y_train": np.arange(4) % 2}, "expected uint8 images"),
    ({"x_train": np.zeros((0, 8, 8, 3), np.uint8), "y_train": np.zeros(0, np.int64)}, "expected 1 to 2,000,000 images"),
], ids=["float images", "a negative label", "counts differ", "no labels", "a class without images", "half a test split",
        "5 channels", "0 images"])
def test_an_npz_that_cannot_make_a_dataset_is_one_line(tmp_path, capsys, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    err = one_line_error(*import_cli(capsys, "Bad", tmp_path / "bad.npz", "--data_root", tmp_path / "data")[::2])
    assert message in err and not (tmp_path / "data").exists()


def test_an_npz_is_read_without_unpickling_and_its_sizes_checked_before_its_data(tmp_path, capsys):
    np.savez(tmp_path / "pickled.npz", x_train=np.array([object()] * 4, dtype=object), y_train=np.arange(4) % 2)
    err = one_line_error(*import_cli(capsys, "P", tmp_path / "pickled.npz", "--data_root", tmp_path / "data")[::2])
    assert "x_train is object" in err
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w") as archive:  # declares 10^9 images, holds 16 bytes
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (10 ** 9, 32, 32, 3)})
        archive.writestr("x_train.npy", header.getvalue() + b"\0" * 16)
        archive.writestr("y_train.npy", npy_bytes(np.arange(4) % 2))
    err = one_line_error(*import_cli(capsys, "B", tmp_path / "bomb.npz", "--data_root", tmp_path / "data")[::2])
    assert "x_train: its header declares uint8 (1000000000, 32, 32, 3), 3,072,000,000,000 bytes, but it holds 16" in err
    (tmp_path / "not.npz").write_bytes(b"hello")
    assert "is not an .npz archive" in one_line_error(*import_cli(capsys, "N", tmp_path / "not.npz")[::2])


def test_an_npz_bomb_huge_labels_and_a_truncated_member_are_one_line_before_any_image_is_read(tmp_path, capsys,
                                                                                              monkeypatch):
    """Issue 37, cause 6 and 7: an .npz whose members declare far more than an archive of its size holds (77 MB of
    zeros in 75 KB; the issue's 4.6 MB declared 4.8 GB, read whole in 97 s and 10.5 GB) is refused from its
    headers; a uint64 label of 2**64 - 1 (-1 once cast) is refused in its own type before the images are read; a
    member shorter than its header says is one line."""
    np.savez_compressed(tmp_path / "bomb.npz", x_train=np.zeros((25_000, 32, 32, 3), np.uint8),
                        y_train=np.arange(25_000) % 2)
    err = one_line_error(*import_cli(capsys, "B", tmp_path / "bomb.npz", "--data_root", tmp_path / "data")[::2])
    assert "(a decompression bomb?); save it with numpy.savez (uncompressed), or pass an ImageFolder tree" in err
    read = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda npz, key, get=np.lib.npyio.NpzFile.__getitem__: (
        read.append(key), get(npz, key))[1])
    np.savez(tmp_path / "huge.npz", x_train=np.zeros((4, 8, 8, 3), np.uint8),
             y_train=np.array([0, 1, 2**64 - 1, 0], np.uint64))
    err = one_line_error(*import_cli(capsys, "H", tmp_path / "huge.npz", "--data_root", tmp_path / "data")[::2])
    assert "y_train holds the label 18446744073709551615; labels are 0 .. classes - 1, at most 9,999" in err
    assert read == ["y_train"]
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.writestr("x_train.npy", npy_bytes(np.zeros((4, 8, 8, 3), np.uint8))[:-100])
        archive.writestr("y_train.npy", npy_bytes(np.arange(4) % 2))
    err = one_line_error(*import_cli(capsys, "S", tmp_path / "short.npz", "--data_root", tmp_path / "data")[::2])
    assert "x_train: its header declares uint8 (4, 8, 8, 3), 768 bytes, but it holds 668" in err
    assert not (tmp_path / "data").exists()


def test_running_out_of_memory_is_one_line(tmp_path, capsys, monkeypatch):
    from resbench.data import imported

    def no_memory(*args):
        raise MemoryError

    monkeypatch.setattr(imported, "read_source", no_memory)
    err = one_line_error(*import_cli(capsys, "M", tmp_path / "src", "--data_root", tmp_path / "data")[::2])
    assert err == f"error: not enough memory to import {tmp_path / 'src'}: its images, resized, are held in memory " \
                  "whole; free memory, or import fewer images\n"


def test_a_fifo_named_like_an_image_is_never_opened(tmp_path, capsys):
    """Issue 37, cause 7: a FIFO named *.png in the tree hung the import forever (--skip_bad too); it is no regular
    file, so it is counted with the files that are no images, and one put there after the listing is refused."""
    from resbench.data.decode import decode_file

    write_tree(tmp_path / "src", {"a": grey_images(4, 1), "b": grey_images(4, 2)})
    os.mkfifo(tmp_path / "src" / "train" / "a" / "zz.png")
    with fails_if_blocked(60, "the import opened the FIFO"):
        code, out, _ = import_cli(capsys, "F", tmp_path / "src", "--data_root", tmp_path / "data")
    assert code == 0 and "8 images in 2 classes" in out and ", 1 files that are no images" in out
    with fails_if_blocked(60, "the decoder opened the FIFO"):
        decoded = decode_file(str(tmp_path / "src" / "train" / "a" / "zz.png"), 32)
    assert decoded.error == "cannot be read (it is not a regular file (a device, FIFO or socket))"


# ---------------------------------------------------------------- the facts file

@pytest.mark.parametrize("change, message", [
    ({"num_val": True}, "num_val is not an integer"),
    ({"classes": ["a"]}, "classes is not a list of 2"),
    ({"format": 2}, "format 2 is not 1"),
    ({"extra": 1}, "unknown fields extra"),
    ({"num_train": 3}, "class_counts.train does not add up"),
    ({"image_size": 48}, "image_size is not one of (32, 64)"),
], ids=["a bool", "one class", "another format", "a field unknown", "counts disagree", "a size no network has"])
def test_a_damaged_facts_file_is_one_line_naming_it(twins, tmp_path, change, message):
    root, _, _ = twins
    (tmp_path / "Set").mkdir()
    record = json.loads((root / "FromTree" / FACTS_FILE).read_text())
    (tmp_path / "Set" / FACTS_FILE).write_text(json.dumps({**record, **change}))
    with pytest.raises(FactsError, match=re.escape(message)) as raised:
        dataset_spec("Set", tmp_path)
    assert str(tmp_path / "Set" / FACTS_FILE) in str(raised.value) and "\n" not in str(raised.value)


def test_an_unknown_or_unsafe_data_name_says_how_to_import(tmp_path):
    with pytest.raises(ValueError, match="resbench data import Mine SRC"):
        dataset_spec("Mine", tmp_path)
    (tmp_path.parent / "dataset.json").write_text("{}")
    with pytest.raises(ValueError, match="unknown data_name '..'") as raised:
        dataset_spec("..", tmp_path / "sub")  # a name is never a path: ../dataset.json is not read
    assert "data import" not in str(raised.value)
    assert facts.MAX_FACTS_BYTES < 10 * 2**20


# ---------------------------------------------------------------- the decoding children

CHILD_CHECK = """
import json, os, sys
sys.path.remove("")  # this script's own imports come from the checkout...
from PIL import Image
from resbench.data import decode
Image.init()
sys.path.insert(0, os.getcwd())  # ...then the current folder comes first, as `python -m resbench` puts it
real = decode.decode_file
def spying(path, size):
    before = set(sys.modules)
    result = real(path, size)
    here = [name for name in set(sys.modules) - before
            if (getattr(sys.modules[name], "__file__", None) or "").startswith(os.getcwd())]
    return result._replace(mode=json.dumps([os.getpid(), os.getcwd() in sys.path, here]))
decode.decode_file = spying
paths = sys.argv[1:]
seen = [json.loads(r.mode) for r in decode.decode_files(paths, 32, 2, lambda: None)]
assert all(not on_path and not imported for _, on_path, imported in seen), seen
assert os.getpid() not in {pid for pid, _, _ in seen}, seen  # decoded by the children
sys.path.remove(os.getcwd())
from resbench.cli.main import main
assert main(["data", "import", "Par", "{src}", "--data_root", "{root}"]) == 0
assert "torch" not in sys.modules
"""


def test_decoding_children_import_nothing_and_the_import_loads_no_torch(tmp_path, capsys):
    """In a process without torch (as `resbench data import` is) the files are decoded by forked
    children that import no module from the current folder (a GIF makes Pillow import `copy`), and
    give what one process gives."""
    if not sys.platform.startswith("linux"):
        pytest.skip("decoding forks children on Linux only")
    rng = np.random.default_rng(0)
    paths = []
    for i, ext in enumerate(["png", "jpg", "bmp", "gif", "tiff", "webp", "png", "jpg"]):
        path = tmp_path / "src" / "train" / "ab"[i % 2] / f"{i}.{ext}"
        paths.append(str(save_png(path, rng.integers(0, 256, (12, 12, 3), dtype=np.uint8))))
    (tmp_path / "evil").mkdir()
    for module in ("copy", "olefile", "defusedxml"):  # what Pillow imports when it needs them (copy: for a GIF)
        (tmp_path / "evil" / f"{module}.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w')\n")
    code = CHILD_CHECK.replace("{src}", str(tmp_path / "src")).replace("{root}", str(tmp_path / "parallel"))
    proc = subprocess.run([sys.executable, "-c", code, *paths], cwd=tmp_path / "evil", env=cli_env(),
                          capture_output=True, text=True, timeout=LIMIT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "2 processes" in proc.stdout and not (tmp_path / "imported").exists()
    assert import_cli(capsys, "Par", tmp_path / "src", "--data_root", tmp_path / "serial")[0] == 0
    parallel, serial = prepared(tmp_path / "parallel", "Par"), prepared(tmp_path / "serial", "Par")
    assert all(np.array_equal(parallel[f], serial[f]) for f in serial)


# ---------------------------------------------------------------- the README's worked example

def test_the_readmes_worked_example_runs_verbatim_and_prints_what_it_shows(tmp_path, monkeypatch, capsys):
    """README "Your own images": its Python block writes the digits as PNGs, its `resbench data import`
    line imports them, and the summary is the one pasted there (but for the speed, which varies)."""
    pytest.importorskip("sklearn")
    section = (REPO / "README.md").read_text().split("## Your own images\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    after = section.split(block, 1)[1].splitlines()
    command = next(line for line in after if line.startswith("resbench data import "))
    monkeypatch.chdir(tmp_path)
    exec(block, {})
    assert main(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split(", read in")[0] in section
    assert all(line in section.splitlines() for line in printed[1:]), printed
