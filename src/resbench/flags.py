"""How every `resbench` command spells its flags: `--data_name` and `--data-name` alike, and on/off
settings that work as plain switches (`--tensorboard`) or with a value (`--tensorboard false`).

The reference's flags use underscores, shell habits and timm/Lightning use dashes; both are
accepted everywhere, and help and errors show the reference's spelling.
"""

from __future__ import annotations

import argparse
from typing import Any


def dashed(option: str) -> str | None:
    """`--data-name` for `--data_name`; None when the flag has no underscore."""
    if not option.startswith("--") or "_" not in option:
        return None
    return "--" + option[2:].replace("_", "-")


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose every `--flag_name` also answers to `--flag-name`.

    The alias is registered for parsing only: help, usage and error messages name the flag as it
    was declared. Subcommand parsers are of the same class (argparse builds them with the parent's).
    """

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        aliases = [alias for alias in map(dashed, names) if alias and alias not in names]
        action = super().add_argument(*names, *aliases, **kwargs)
        action.option_strings = [name for name in action.option_strings if name not in aliases]
        return action

    def _get_option_tuples(self, option_string: str) -> list[tuple]:
        """An abbreviation (`--sync`) matching both spellings of one flag is not ambiguous."""
        unique: dict[int, tuple] = {}
        for option_tuple in super()._get_option_tuples(option_string):
            unique.setdefault(id(option_tuple[0]), option_tuple)
        return list(unique.values())


def switch(on: Any) -> dict[str, Any]:
    """add_argument keywords for a setting that is also a switch: `--flag` alone means `on` (given
    as the parsed value), `--flag VALUE` parses VALUE with the flag's type. A command with positional
    arguments must not put one right after such a flag (it would be read as the flag's value);
    `resbench train` and `bench` have none."""
    return {"nargs": "?", "const": on}
