"""resbench: residual-network baselines on small-image benchmarks, reproduced from one command line.

The Python face is three names, loaded on first use so that `import resbench` (and every command's
`--help`) does not load torch; the loop that trains is `resbench.train.loop.train` (a name of this
package cannot be `train`: importing the subpackage `resbench.train` binds that name to it):

    from resbench import TrainConfig, load_model, resnet
    from resbench.train.loop import train
    summary = train(TrainConfig(data_name="Digits_x32", resnet_depth=8, optim_ni=200))
    model = load_model("exported/digits-r14")  # `resbench export`'s folder, or a Hub id: eval mode, ready
"""

from __future__ import annotations

import importlib
from typing import Any

from resbench.version import __version__

__all__ = ["TrainConfig", "__version__", "load_model", "resnet"]
FACE = {"TrainConfig": "resbench.settings.config", "load_model": "resbench.weights.load",
        "resnet": "resbench.models.resnet"}


def __getattr__(name: str) -> Any:
    if name not in FACE:
        raise AttributeError(f"module 'resbench' has no attribute {name!r}")
    return getattr(importlib.import_module(FACE[name]), name)
