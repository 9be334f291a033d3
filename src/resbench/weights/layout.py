"""The exported folder's contract, in the layout the Hugging Face Hub and timm users expect:

    model.safetensors    the best-validation weights (float32; BatchNorm running variances in the
                         reference's form, as the trainer evaluates and best.pt keeps them)
    config.json          what rebuilds the network (the fields of CONFIG_FIELDS), the training
                         settings, the figures; "resbench_export" marks it as written by `resbench export`
    README.md            the model card (the Hub's YAML header with its model-index results)
    training_curves.png  the run's curves (missing where matplotlib was not installed: the card says so)

`resbench export --sweep` writes one such folder per run beside index.json (the marker, and the
folders it made) and README.md (the collection's table). Light (no torch): the command line asks
`is_exported` before it loads anything.
"""

from __future__ import annotations

import re
from pathlib import Path

from resbench.runs import schema

MODEL = "model.safetensors"
CONFIG = schema.CONFIG  # the Hub's name for a model's settings, which a run folder's settings file shares
CARD = "README.md"
CURVES = "training_curves.png"
EXPORT_FILES = (MODEL, CONFIG, CARD, CURVES)  # all that an export folder may hold
INDEX = "index.json"
SWEEP_FILES = (INDEX, CARD)  # beside the export folders of a sweep

FORMAT_KEY = "resbench_export"  # in config.json: the version of this layout
INDEX_KEY = "resbench_export_index"  # in index.json
FORMAT = 1
ARCHITECTURE = "resbench.ResNet"
DTYPE = "float32"  # of every floating tensor: the trainer's master weights, whatever the run's precision
CONFIG_FIELDS = {FORMAT_KEY: int, "architecture": str, "data_name": str, "resnet_depth": int, "resnet_width": int,
                 "num_classes": int, "image_size": int, "torch_dtype": str, "mean": list, "std": list}
# What `resbench eval` reports as the checkpoint of exported weights (beside best and last).
EXPORTED = "exported"
# The header of a depth-1202 network's file is about 0.7 MB: a larger one was not written by resbench.
MAX_HEADER = 8 << 20
# A model on the Hub: `owner/name`, as huggingface_hub spells repository ids.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def is_exported(path: str | Path) -> bool:
    """Whether `path` names exported weights: a folder holding model.safetensors (or that file), or,
    where no such path exists here, a Hub id."""
    path = Path(path)
    if (path / MODEL).is_file() or (path.name == MODEL and path.is_file()):
        return True
    return not path.exists() and HUB_ID.fullmatch(str(path)) is not None
