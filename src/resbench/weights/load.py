"""`resbench.load_model(PATH)`: an exported folder (or a Hub id) as a ready network in inference mode.

Built from config.json and model.safetensors alone, with the registry's builder (`models.resnet`):
no run folder, no pickle. Everything read is checked before it is used, each fault one line: the
settings as a run folder's are (bounded, typed, then valued); the safetensors file's size against
the network config.json describes (computed on the meta device, so a crafted config asking for a
huge network allocates nothing), its header bounded, its tensors exactly the network's (no extra,
none missing, each of its dtype and shape) and finite.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from resbench.console import printable
from resbench.data.facts import MAX_CLASSES, is_valid_name
from resbench.device.hotpath import prepare_model
from resbench.device.memory import check_inference_fits
from resbench.errors import ResbenchError, reason
from resbench.models.resnet import IMAGE_MEAN, IMAGE_SIZES, IMAGE_STD, architecture, resnet
from resbench.runs.reader import read_object
from resbench.version import __version__
from resbench.weights import layout

# safetensors' names of the dtypes a resbench network holds (float32 weights and statistics, the
# int64 count of BatchNorm updates).
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


class ExportError(ResbenchError):
    """An exported folder or Hub model that cannot be loaded; the message names the file and the fault."""


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """The network of an exported folder (`resbench export`), or of a Hub model id where
    huggingface_hub is installed, on `device` in inference mode, ready to score float RGB images in
    [0, 1] (N, 3, S, S) of config.json's image_size: it normalises them itself.

    Channels-last, as `resbench eval` computes: its logits are those of the run's best.pt, bit for bit.
    """
    folder = model_folder(path)
    config = read_config(folder)
    expected = expected_tensors(config)
    check_size(folder / layout.MODEL, tensor_bytes(expected))  # (a crafted config.json is caught here, at no cost)
    device = torch.device(device)
    try:
        check_inference_fits(config["resnet_depth"], config["resnet_width"], config["num_classes"],
                             config["image_size"], device)
    except ValueError as exc:
        raise ExportError(f"{folder / layout.CONFIG}: {exc}") from None
    tensors = read_tensors(folder / layout.MODEL, expected)
    model = resnet(config["resnet_depth"], config["resnet_width"], config["num_classes"], config["image_size"])
    model.load_state_dict(tensors)
    return prepare_model(model, device).eval()


def model_folder(path: str | os.PathLike) -> Path:
    """The local folder of `path`: itself (or the folder of its model.safetensors), or the Hub's cached
    copy of the model `owner/name`."""
    local = Path(path)
    if local.is_dir():
        return local
    if local.name == layout.MODEL and local.is_file():
        return local.parent
    if local.exists():
        raise ExportError(f"{local} is a file; pass the exported folder (config.json, model.safetensors) it is in")
    if layout.HUB_ID.fullmatch(str(path)) is None:
        raise ExportError(f"no such exported folder: {local}")
    return hub_folder(str(path))


def hub_folder(repo_id: str) -> Path:
    """The model's two files from the Hub, or from its local cache (HF_HUB_OFFLINE=1: the cache only)."""
    try:
        import huggingface_hub
    except ImportError:
        raise ExportError(f"no such folder: {repo_id}; to load the Hub's model {repo_id}, "
                          "pip install 'resbench[hub]'") from None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=[layout.CONFIG, layout.MODEL],
                                                      library_name="resbench", library_version=__version__))
    except Exception as exc:  # huggingface_hub names a missing model, a network fault or an empty cache in many types
        reason = printable(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)[:200]
        raise ExportError(f"{repo_id} is no folder here, and the Hugging Face Hub's model {repo_id} cannot be "
                          f"fetched ({type(exc).__name__}: {reason})") from None


def read_config(folder: Path) -> dict[str, Any]:
    """config.json, bounded and typed as a run folder's, then checked against what resbench can build."""
    path = folder / layout.CONFIG
    fix = "export the run again with `resbench export`"
    if not os.path.lexists(path):
        raise ExportError(f"{folder} holds no exported weights (no {path.name}); make them with "
                          "`resbench export RUN_DIR OUT_DIR`")
    config = read_object(path, layout.CONFIG_FIELDS, str(path), fix)
    if config[layout.FORMAT_KEY] != layout.FORMAT:
        raise ExportError(f"{path} is in export format {config[layout.FORMAT_KEY]}, not {layout.FORMAT}; "
                          "load it with the resbench version that wrote it")
    if config["architecture"] != layout.ARCHITECTURE or config["torch_dtype"] != layout.DTYPE:
        raise ExportError(f"{path} describes a {printable(config['architecture'])[:60]} in "
                          f"{printable(config['torch_dtype'])[:20]}, not a {layout.ARCHITECTURE} in {layout.DTYPE}")
    try:
        architecture(config["resnet_depth"], config["resnet_width"])
    except ValueError as exc:
        raise ExportError(f"{path}: {exc}") from None
    if not 1 <= config["num_classes"] <= MAX_CLASSES or config["image_size"] not in IMAGE_SIZES:
        raise ExportError(f"{path}: num_classes {config['num_classes']} or image_size {config['image_size']} is out "
                          f"of range (1 to {MAX_CLASSES:,} classes of 32 or 64 pixels)")
    if not is_valid_name(config["data_name"]):
        raise ExportError(f"{path}: data_name is not a dataset's name; {fix}")
    if (config["mean"], config["std"]) != (list(IMAGE_MEAN), list(IMAGE_STD)):
        raise ExportError(f"{path}: its mean and std are not the ones the network normalises with "
                          f"({list(IMAGE_MEAN)}, {list(IMAGE_STD)}); {fix}")
    return config


def expected_tensors(config: dict[str, Any]) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Name -> (dtype, shape) of every tensor of the network config.json describes, built on the
    meta device: nothing is allocated, however large the network it asks for."""
    with torch.device("meta"):
        model = resnet(config["resnet_depth"], config["resnet_width"], config["num_classes"], config["image_size"])
    return {name: (tensor.dtype, tuple(tensor.shape)) for name, tensor in model.state_dict().items()}


def tensor_bytes(expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> int:
    return sum(dtype.itemsize * torch.Size(shape).numel() for dtype, shape in expected.values())


def read_tensors(path: Path, expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors (of the size `check_size` found), exactly those of `expected`,
    finite: refused in one line otherwise."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            check_header(path, {name: (f.get_slice(name).get_dtype(), tuple(f.get_slice(name).get_shape()))
                                for name in f.keys()}, expected)
            tensors = {name: f.get_tensor(name) for name in expected}
    except (SafetensorError, OSError) as exc:
        raise ExportError(f"{path} is not a safetensors file ({printable(exc)[:200]}); export the run again") from None
    if bad := next((name for name, t in tensors.items() if t.is_floating_point() and not t.isfinite().all()), None):
        raise ExportError(f"{path}: {bad} holds NaN or infinite values; export a run that trained")
    return tensors


def check_size(path: Path, data_bytes: int) -> None:
    """A regular file whose header is at most MAX_HEADER bytes and whose size is that header and the
    network's tensors: checked from its first 8 bytes (the header's length) before the library reads it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # (a FIFO opens at once, and is refused below)
    except OSError as exc:
        raise ExportError(f"cannot read {path} ({reason(exc)})") from None
    with contextlib.closing(os.fdopen(fd, "rb")) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ExportError(f"{path} is not a regular file (a folder, device or FIFO)")
        prefix = f.read(8)
    header = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
    if not 0 < header <= layout.MAX_HEADER:
        raise ExportError(f"{path} has a header of {header:,} bytes (at most {layout.MAX_HEADER:,}): "
                          "no safetensors file resbench wrote; export the run again")
    if info.st_size != 8 + header + data_bytes:
        raise ExportError(f"{path} holds {info.st_size - 8 - header:,} bytes of tensors, but the network of its "
                          f"config.json has {data_bytes:,}; export the run again")


def check_header(path: Path, found: dict[str, tuple[str, tuple[int, ...]]],
                 expected: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> None:
    """The tensors named in the header are the network's, each of its dtype and shape."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        names = ", ".join(printable(name)[:60] for name in (extra or missing)[:3])
        raise ExportError(f"{path} {'has tensors the network lacks' if extra else 'lacks tensors of the network'} "
                          f"({len(extra or missing)}: {names}); export the run again")
    for name, (dtype, shape) in expected.items():
        if found[name] != (SAFETENSORS_DTYPES[dtype], shape):
            raise ExportError(f"{path}: {name} is {found[name][0]} {list(found[name][1])}, where the network of its "
                              f"config.json has {SAFETENSORS_DTYPES[dtype]} {list(shape)}; export the run again")
