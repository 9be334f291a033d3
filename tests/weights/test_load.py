"""`resbench.load_model` (issue 40): an exported folder, built here from the contract alone (weights/layout.py),
loaded as a network; crafted config.json and model.safetensors files refused in one line; a Hub id from the
offline cache, with no network call."""

from __future__ import annotations

import json
import os
import socket
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import resbench
from resbench.models.resnet import IMAGE_MEAN, IMAGE_STD, resnet
from resbench.weights import layout
from resbench.weights.load import ExportError, load_model


def exported(folder: Path, depth: int = 8, seed: int = 0, **config_changes) -> torch.nn.Module:
    """An export folder written by hand from the contract: a random depth-`depth` network of the demo's
    10 classes (not zero-initialised, BatchNorm statistics of its own)."""
    torch.manual_seed(seed)
    model = resnet(depth)
    with torch.no_grad():
        for tensor in model.state_dict().values():  # (not the normalisation's constants)
            if tensor.is_floating_point():
                tensor.add_(0.1 * torch.rand_like(tensor))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / layout.MODEL,
              metadata={"format": "pt"})
    config = {layout.FORMAT_KEY: layout.FORMAT, "architecture": layout.ARCHITECTURE, "data_name": "Digits_x32",
              "resnet_depth": depth, "resnet_width": 1, "num_classes": 10, "image_size": 32, "torch_dtype": "float32",
              "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD), **config_changes}
    (folder / layout.CONFIG).write_text(json.dumps(config))
    return model.eval()


def images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_an_exported_folder_loads_as_the_network_it_holds_in_inference_mode(tmp_path):
    model = exported(tmp_path / "m")
    loaded = resbench.load_model(tmp_path / "m")
    assert isinstance(loaded, torch.nn.Module) and not loaded.training
    assert loaded.stem[0][1].running_var.equal(model.stem[0][1].running_var)
    with torch.no_grad():
        assert torch.allclose(loaded(images()), model(images()), atol=1e-5)
    assert str(load_model(str(tmp_path / "m")).fc.weight.device) == "cpu"


def edit_config(folder: Path, **changes) -> None:
    path = folder / layout.CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def rewrite_tensors(folder: Path, change) -> None:
    from safetensors.torch import load_file

    tensors = load_file(folder / layout.MODEL)
    change(tensors)
    save_file(tensors, folder / layout.MODEL)


def huge_header(folder: Path) -> None:
    path = folder / layout.MODEL
    path.write_bytes(struct.pack("<Q", 2**40) + path.read_bytes()[8:])


CRAFTED = {
    "huge header": (huge_header, "has a header of 1,099,511,627,776 bytes (at most 8,388,608)"),
    "truncated": (lambda f: (f / layout.MODEL).write_bytes((f / layout.MODEL).read_bytes()[:-4]),
                  "bytes of tensors, but the network of its config.json has"),
    "wrong shape": (lambda f: rewrite_tensors(f, lambda t: t.update({"fc.weight": t["fc.weight"].reshape(64, -1)})),
                    "fc.weight is F32 [64, 10], where the network of its config.json has F32 [10, 64]"),
    "NaN": (lambda f: rewrite_tensors(f, lambda t: t["fc.weight"].__setitem__((0, 0), float("nan"))),
            "fc.weight holds NaN or infinite values"),
    "extra tensor": (lambda f: rewrite_tensors(f, lambda t: (t.pop("stem.0.1.num_batches_tracked"),  # (same size)
                                                             t.update({"fc.bias": torch.zeros(2)}))),
                     "has tensors the network lacks (1: fc.bias)"),
    "more tensors": (lambda f: rewrite_tensors(f, lambda t: t.update({"fc.bias": torch.zeros(10)})),
                     "holds 314,928 bytes of tensors, but the network of its config.json has 314,888"),
    "wrong dtype": (lambda f: rewrite_tensors(f, lambda t: t.update({"fc.weight": t["fc.weight"][:, :32].double().contiguous()})),
                    "fc.weight is F64 [10, 32], where the network of its config.json has F32 [10, 64]"),
    "not safetensors": (lambda f: (f / layout.MODEL).write_bytes(struct.pack("<Q", 16) + b"{not json, bytes}"
                                                                + bytes(2_000)),
                        "bytes of tensors"),
    "config: another depth": (lambda f: edit_config(f, resnet_depth=14), "but the network of its config.json has"),
    "config: a huge width": (lambda f: edit_config(f, resnet_width=1024), "bytes of tensors, but the network of its "
                             "config.json has 310,330,001,424"),
    "config: a bool depth": (lambda f: edit_config(f, resnet_depth=True), "lacks a valid resnet_depth"),
    "config: other normalisation": (lambda f: edit_config(f, mean=[0.5, 0.5, 0.5]), "its mean and std are not"),
    "config: a later format": (lambda f: edit_config(f, resbench_export=2), "is in export format 2, not 1"),
    "config: not JSON": (lambda f: (f / layout.CONFIG).write_text("{" * 100_000), "config.json is unreadable"),
    "config: a path as data_name": (lambda f: edit_config(f, data_name="../../etc"), "data_name is not a dataset's"),
    "config: a FIFO": (lambda f: ((f / layout.CONFIG).unlink(), os.mkfifo(f / layout.CONFIG)), "not a regular file"),
    "model: a FIFO": (lambda f: ((f / layout.MODEL).unlink(), os.mkfifo(f / layout.MODEL)), "is not a regular file"),
}


@pytest.mark.parametrize("fault", CRAFTED)
def test_a_crafted_export_is_refused_in_one_line(tmp_path, fault):
    """Each fault refused before a network is built from it: "a huge width" asks for 8e10 parameters,
    which the meta device counts without allocating them."""
    craft, message = CRAFTED[fault]
    exported(tmp_path / "m")
    craft(tmp_path / "m")
    with pytest.raises(ExportError if "config" not in fault else resbench.errors.ResbenchError) as caught:
        load_model(tmp_path / "m")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert str(tmp_path / "m") in str(caught.value)


def test_eval_refuses_a_crafted_export_in_one_line(tmp_path, cli):
    exported(tmp_path / "m")
    rewrite_tensors(tmp_path / "m", lambda t: t["stem.0.1.running_var"].fill_(float("inf")))
    proc = cli("eval", "--ckpt", tmp_path / "m", "--device", "cpu")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"error: {tmp_path / 'm' / layout.MODEL}: stem.0.1.running_var holds NaN or infinite values; " \
                          "export a run that trained\n"


def test_a_path_that_is_neither_folder_nor_hub_id_is_one_line(tmp_path):
    with pytest.raises(ExportError, match="no such exported folder"):
        load_model(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ExportError, match="is a file; pass the exported folder"):
        load_model(tmp_path / "file")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """huggingface_hub's cache, as a download leaves it, of the model `someone/digits-r8`; offline, and any
    connection refused: a test that reached the network would fail."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache, commit = tmp_path / "hub", "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--digits-r8"
    model = exported(tmp_path / "export", seed=3)
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / commit).mkdir(parents=True)
    for name in (layout.MODEL, layout.CONFIG):
        blob = repo / "blobs" / name.replace(".", "-")
        blob.write_bytes((tmp_path / "export" / name).read_bytes())
        (repo / "snapshots" / commit / name).symlink_to(os.path.relpath(blob, repo / "snapshots" / commit))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))

    def no_network(*args, **kwargs):
        connections.append(args)
        raise OSError("no network in tests")

    connections: list = []
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    yield model
    assert connections == []


def test_a_hub_id_loads_from_the_offline_cache(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (no folder someone/digits-r8 here)
    loaded = resbench.load_model("someone/digits-r8")
    with torch.no_grad():
        assert torch.allclose(loaded(images()), hub_cache(images()), atol=1e-5)
    with pytest.raises(ExportError, match="someone/other is no folder here, and the Hugging Face Hub's model "
                                          "someone/other cannot be fetched") as caught:
        load_model("someone/other")
    assert "\n" not in str(caught.value)
