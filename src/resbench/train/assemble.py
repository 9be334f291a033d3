"""A run's settings assembled from `resbench train`'s flags: the flags given, over a `--config` file, or
over the config.json of the run folder that `--resume` names.

Here, above settings/ and runs/, because it joins the two: the flags and a settings file are parsed by
`settings.flags`, a run folder's saved settings are read and checked by `runs.reader`, and neither needs
the other. `train`, `sweep` (a grid's rows) and `bench` assemble a run's settings here, so that they agree
on every setting. Light: it loads no torch (`settings.flags` brings argparse, nothing heavier).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from resbench.runs import schema
from resbench.runs.reader import resumed_settings
from resbench.settings.config import ConfigError, TrainConfig
from resbench.settings.flags import GivenFlags, read_settings_file, typed_settings


def config_file_settings(path: str | Path) -> dict[str, Any]:
    """The settings of a `--config` file (TOML, or a run folder's config.json without the values it
    recorded as resolved), each parsed as its flag would parse it."""
    path = Path(path)
    values = read_settings_file(path)
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} is not a table of settings (name = value lines, or a JSON object)")
    return typed_settings(schema.asked_settings(values), path)


def config_from(flags: GivenFlags) -> TrainConfig:
    """The settings of a run: the flags given over an optional --config file, or over RUN_DIR/config.json
    with --resume (`settings.flags.given_flags` of train's parsed flags)."""
    if flags.config and flags.resume:
        raise ConfigError("--config and --resume cannot go together: a resumed run keeps the settings in its "
                          "folder's config.json")
    if not flags.resume:
        return TrainConfig(**{**(config_file_settings(flags.config) if flags.config else {}), **flags.settings})
    saved = resumed_settings(flags.resume, flags.settings.get("save"))
    return TrainConfig(**{**saved, **flags.settings, "save": str(flags.resume)})
