"""resbench: residual-network baselines on small-image benchmarks, reproduced from one command line.

The Python face is three names, loaded on first use so that `import resbench` (and every command's
`--help`) does not load torch:

    from resbench import TrainConfig, resnet, train
    summary = train(TrainConfig(data_name="Digits_x32", resnet_depth=8, optim_ni=200))
"""

from __future__ import annotations

import importlib
from typing import Any

from resbench.version import __version__

__all__ = ["TrainConfig", "__version__", "resnet", "train"]
FACE = {"TrainConfig": "resbench.settings.config", "resnet": "resbench.models.resnet", "train": "resbench.train.loop"}


def __getattr__(name: str) -> Any:
    if name not in FACE:
        raise AttributeError(f"module 'resbench' has no attribute {name!r}")
    return getattr(importlib.import_module(FACE[name]), name)
