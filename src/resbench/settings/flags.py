"""The `resbench train` flags: one `--<setting>` per TrainConfig field, parsed the same way by
`train`, `sweep` (a grid's rows) and `bench`, and how every command spells its flags.

`--data_name` and `--data-name` are accepted alike (the reference's flags use underscores, shell
habits and timm/Lightning use dashes); help and errors show the reference's spelling. On/off
settings work as plain switches (`--tensorboard`) or with a value (`--tensorboard false`).

This is the one module outside `cli/` that uses argparse: the train flags are the schema of a
run's settings, which sweep and bench read without the command line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
from pathlib import Path
from typing import Any, NoReturn

from resbench.console import printable
from resbench.errors import ResbenchError, reason
from resbench.files import read_bounded
from resbench.settings.config import ConfigError, TrainConfig, flag_value, setting_types, shown_value


def dashed(option: str) -> str | None:
    """`--data-name` for `--data_name`; None when the flag has no underscore."""
    if not option.startswith("--") or "_" not in option:
        return None
    return "--" + option[2:].replace("_", "-")


EXTRAS_OWNER = "_parser_of_unrecognized_arguments"  # a namespace attribute of `Parser`'s own, removed again


def show_default(action: argparse.Action) -> None:
    """End a flag's help with its default, `(default: 0.1)`, one spelling for every command, where it has
    one to show and its help does not say it already (a switch is off; None means "see the help")."""
    default = action.default
    if (action.option_strings and action.help not in (None, argparse.SUPPRESS) and "(default" not in action.help
            and default not in (None, argparse.SUPPRESS) and not isinstance(default, bool)):
        action.help += f" (default: {flag_value(default)})".replace("%", "%%")


class DashedAliases:
    """`add_argument` of a parser or argument group whose every `--flag_name` also answers to
    `--flag-name`: the alias is registered for parsing only, so that help, usage and error messages
    name the flag as it was declared. Its help shows its default (`show_default`)."""

    def add_argument(self, *names: str, **kwargs: Any) -> argparse.Action:
        aliases = [alias for alias in map(dashed, names) if alias and alias not in names]
        action = super().add_argument(*names, *aliases, **kwargs)  # type: ignore[misc]
        action.option_strings = [name for name in action.option_strings if name not in aliases]
        show_default(action)
        return action


class FlagGroup(DashedAliases, argparse._ArgumentGroup):
    """A titled group of flags in `--help` (train's: dataset, model, optimisation, ...)."""


class Parser(DashedAliases, argparse.ArgumentParser):
    """The ArgumentParser of every resbench command: flags declared with underscores answer to dashes
    too (`DashedAliases`), a usage error is one line, and a flag's old spelling can be refused with
    one line naming the new (`RenamedFlag`). Subcommand parsers are of the same class (argparse
    builds them with the parent's)."""

    def add_argument_group(self, *args: Any, **kwargs: Any) -> FlagGroup:
        group = FlagGroup(self, *args, **kwargs)
        self._action_groups.append(group)
        return group

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, noting the deepest (sub)command parser that left arguments unrecognized: argparse
        reports them from the top-level parser, whose help (`resbench --help`) lists no command's flags."""
        parsed, extras = super().parse_known_args(args, namespace)
        if extras:
            vars(parsed).setdefault(EXTRAS_OWNER, self)  # a subcommand's parser returns first: it stays
        return parsed, extras

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """Unrecognized arguments are refused by the command's own parser: `(see `resbench train --help`)`."""
        parsed, extras = self.parse_known_args(args, namespace)
        owner = vars(parsed).pop(EXTRAS_OWNER, self)
        if extras:
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def error(self, message: str) -> NoReturn:
        """A usage error is one line and a pointer to --help, not argparse's whole usage block first."""
        self.exit(2, f"error: {printable(message)} (see `{self.prog} --help`)\n")

    def _get_option_tuples(self, option_string: str) -> list[tuple]:
        """An abbreviation (`--sync`) matching both spellings of one flag is not ambiguous."""
        unique: dict[int, tuple] = {}
        for option_tuple in super()._get_option_tuples(option_string):
            unique.setdefault(id(option_tuple[0]), option_tuple)
        return list(unique.values())


class RenamedFlag(argparse.Action):
    """A flag's old spelling, hidden from --help and refused with one line naming the new one."""

    def __init__(self, option_strings: list[str], dest: str, new: str, why: str = "", **kwargs: Any):
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         help=argparse.SUPPRESS)
        self.new, self.why = new, why

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} is now {self.new}{self.why}")


def switch(on: Any) -> dict[str, Any]:
    """add_argument keywords for a setting that is also a switch: `--flag` alone means `on` (given
    as the parsed value), `--flag VALUE` parses VALUE with the flag's type. A command with positional
    arguments must not put one right after such a flag (it would be read as the flag's value);
    `resbench train` and `bench` have none."""
    return {"nargs": "?", "const": on}


FLAG_HELP = {
    "data_name": "dataset: CIFAR10_x32, CIFAR100_x32, TinyImageNet200_x32, TinyImageNet200_x64, "
                 "ImageNet1k_x32, ImageNet1k_x64, Digits_x32 (offline demo), or one of your own made by "
                 "`resbench data import NAME SRC`",
    "resnet_depth": "6n+2 (20, 32, 44, 56, 110, ...) or 18, 34, 50, 101, 152",
    "resnet_width": "channel multiplier (of a Bottleneck's inner convolutions only, as the reference)",
    "batch_size": "global batch size",
    "optim_ni": "training iterations",
    "optim_lr": "peak learning rate (linear warm-up over 10%%, cosine decay to 0)",
    "optim_momentum": "heavy-ball momentum",
    "optim_weight_decay": "L2 added to every gradient before momentum (PyTorch style)",
    "optim_label_smoothing": "label smoothing of the cross-entropy",
    "optim_global_clipping": "clip gradients to this global norm (off or 0: no clipping)",
    "seed": "random seed (init, data order, augmentation)",
    "data_root": "folder holding <data_name>/{train,test}_{images,labels}.npy",
    "save": "run folder (default: runs/<data_name>/<settings>); an existing one is resumed",
    "mixed_precision": "false | true (fp16 with the reference's constant loss scale 65,536 on CUDA, bf16 elsewhere) "
                       "| fp16 | bf16",
    "eval_every": "iterations between evaluations (and one at the last iteration)",
    "device": "auto | cpu | cuda | cuda:N",
    "compile": "auto | true | false; --compile alone means true: torch.compile the training step "
               "(auto: only for runs long enough to repay the compile time)",
    "sync_bn": "data-parallel runs: BatchNorm statistics over the global batch instead of per rank (CUDA); "
               "a switch: --sync_bn, or --sync_bn true/false",
    "bn_groups": "BatchNorm batch statistics over N equal groups of each device's batch, as N devices would compute "
                 "them (a ghost batch norm: the reference's ImageNet rows ran on 2 and 4 GPUs, `--bn_groups 2`/`4` "
                 "on one); running statistics are the groups' average, as the devices' before each evaluation",
    "tensorboard": "also write TensorBoard scalars to <save>/tensorboard (needs the tensorboard package); "
                   "a switch: --tensorboard, or --tensorboard true/false",
    "deterministic": "deterministic CUDA kernels, so a resumed GPU run matches bit for bit (slower); "
                     "a switch: --deterministic, or --deterministic true/false",
    "threads": "CPU threads of this process (torch.set_num_threads); auto: torch's choice, one per core "
               "or $OMP_NUM_THREADS. `sweep --jobs N` gives each run cores/N (default: auto)",
    "mirror": "fetch a missing dataset's official archive from this base URL or local folder, as "
              "`resbench data download --mirror` does (default: the official URL)",
    "data_placement": "auto | device | stream: the training images held on the training device, or streamed "
                      "to it from their memory-mapped file a few batches ahead (the same batches); auto: on the "
                      "device where they fit beside training, as the run's first lines say",
    "allow_nonstandard": "train on a built-in set (CIFAR10_x32, ...) whose split sizes are not the official ones, "
                         "which train refuses otherwise: its figures are not the published table's, and table and "
                         "compare set none beside them; a switch",
}
# Flags whose help already says their default.
DEFAULT_IN_HELP = {"save", "threads", "mirror"}

NOT_GIVEN = argparse.SUPPRESS  # a flag left out is absent from the namespace: only given flags change a resumed run


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def optional_int(text: str) -> int | None:
    """A count, where auto/none mean "let torch choose"."""
    return None if text.strip().lower() in ("auto", "none") else int(text)


def optional_float(text: str) -> float | None:
    """A number, where none/off/0 mean "not used"."""
    if text.strip().lower() in ("none", "off"):
        return None
    value = float(text)
    return None if value == 0 else value


def flag_kind(name: str) -> Any:
    """The function that parses the text of the flag `--<name>`."""
    hint = setting_types()[name]
    return {bool: parse_bool, int: int, float: float, str: str, str | None: str, int | None: optional_int}.get(
        hint, optional_float)


# A settings or grid file is a few hundred bytes; the bound keeps /dev/zero or a planted huge file out of memory.
MAX_SETTINGS_FILE = 1 << 20
# The values a setting may have in a file: a TOML array, table or date where one value goes would
# otherwise become its text (`data_root = ["x"]`, a folder named "['x']").
SCALARS = (str, int, float, bool, type(None))


def file_value(value: object) -> str:
    """`flag_value` of a value read from a settings or grid file; TypeError for anything but one value."""
    if not isinstance(value, SCALARS):
        kind = "an array" if isinstance(value, list) else "a table" if isinstance(value, dict) else "a date or time"
        raise TypeError(f"{kind} where one value goes")
    return flag_value(value)


def read_settings_text(path: Path) -> str:
    """The text of a --config or grid file, bounded (`MAX_SETTINGS_FILE`); OSError or UnicodeDecodeError."""
    return read_bounded(path, MAX_SETTINGS_FILE).decode()


def parse_toml(text: str) -> dict[str, Any]:
    """A TOML document (a --config or grid file); its decode errors are ValueErrors."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


# `resbench train --help` in groups, each setting once.
FLAG_GROUPS = {
    "dataset": ("data_name", "data_root", "mirror", "allow_nonstandard"),
    "model": ("resnet_depth", "resnet_width"),
    "optimisation (the recipe)": ("batch_size", "optim_ni", "optim_lr", "optim_momentum", "optim_weight_decay",
                                  "optim_label_smoothing", "optim_global_clipping", "seed"),
    "evaluation and the run folder": ("eval_every", "save", "tensorboard"),
    "precision and speed (device, compile, threads)": ("mixed_precision", "device", "compile", "sync_bn",
                                                       "bn_groups", "deterministic", "threads", "data_placement"),
}


def add_setting_flag(container: argparse._ActionsContainer, name: str, default: Any = NOT_GIVEN,
                     help: str | None = None) -> argparse.Action:
    """The flag `--<name>` of a TrainConfig field, parsed as train parses it: `train` and `bench` (and
    a sweep's rows) declare a setting through this one builder. On/off settings are switches too
    (`--tensorboard` alone means true), as is `--compile`."""
    kind = flag_kind(name)
    field_default = TrainConfig.__dataclass_fields__[name].default
    shown = "" if name in DEFAULT_IN_HELP else f" (default: {flag_value(field_default)})"
    on = True if kind is parse_bool else "true" if name == "compile" else None
    return container.add_argument(f"--{name}", type=kind, default=default, help=(help or FLAG_HELP[name]) + shown,
                                  **(switch(on) if on is not None else {}))


def add_train_flags(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """One `--<field>` flag per TrainConfig field, in FLAG_GROUPS, plus `--config FILE` and `--resume RUN_DIR`."""
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        for name in names:
            add_setting_flag(group, name)
    group = parser.add_argument_group("settings from a file or a run folder")
    group.add_argument("--config", metavar="FILE",
                       help="read settings from a TOML or JSON file with the same keys as these flags, "
                            "e.g. a run folder's config.json; flags given beside it override it")
    group.add_argument("--resume", metavar="RUN_DIR", help="resume RUN_DIR with its saved settings")
    return parser


def train_flag_parser() -> argparse.ArgumentParser:
    """The `resbench train` flags on their own, for parsing the train flags of a sweep's runs."""
    return add_train_flags(Parser(prog="resbench train"))


def read_settings_file(path: Path) -> Any:
    """The parsed content of a `--config` file: TOML (`resnet_depth = 20`) or JSON (a run folder's
    config.json, where null means "not set")."""
    try:
        text = read_settings_text(path)
        return json.loads(text) if path.suffix == ".json" else parse_toml(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:  # JSON and TOML decode errors are ValueErrors
        raise ConfigError(f"cannot read --config {path}: {reason(exc)}") from None
    except RecursionError:  # `[[[[...` nested deeper than the parser recurses
        raise ConfigError(f"cannot read --config {path}: its values are nested too deeply") from None


def typed_settings(values: dict[str, Any], path: Path) -> dict[str, Any]:
    """The settings of a `--config` file, each parsed as its flag would parse it."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    if unknown := sorted(set(values) - set(fields)):
        raise ConfigError(f"--config {path}: unknown setting(s) {', '.join(unknown)}; the keys are the train "
                          f"flags' names: {', '.join(fields)}")
    settings = {}
    for key, value in values.items():
        if value is None and fields[key].default is not None:  # not "off": only optional settings may be unset
            raise ConfigError(f"--config {path}: {key} = None is not a valid --{key} (it needs a value)")
        try:
            settings[key] = None if value is None else flag_kind(key)(file_value(value))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise ConfigError(f"--config {path}: {key} = {shown_value(value)} is not a valid --{key} "
                              f"({exc})") from None
    return settings


@dataclasses.dataclass(frozen=True)
class GivenFlags:
    """Train's parsed flags as plain values, for `train.assemble` to make a run's settings of: the settings
    given as flags (a flag left out is absent: only given flags change a resumed run), and the --config
    file or the --resume run folder that the others come from."""

    settings: dict[str, Any]
    config: str | None = None
    resume: str | None = None


def given_flags(args: argparse.Namespace) -> GivenFlags:
    """The train flags of a parse (`add_train_flags`' parser, `parse_train_flags`) as plain values."""
    settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return GivenFlags(settings, getattr(args, "config", None), getattr(args, "resume", None))


def parse_train_flags(flags: list[str]) -> argparse.Namespace:
    """The train CLI's own parse of `flags`, so sweep and train agree on every setting.

    argparse answers a bad value by printing the whole train usage and exiting; only its one-line
    reason is kept, so the caller can say which grid row it came from.
    """
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            args, unknown = train_flag_parser().parse_known_args(flags)
    except SystemExit as exc:
        if not exc.code:  # --help: the train help is printed, nothing is wrong
            raise
        raise ResbenchError(usage.getvalue().strip().splitlines()[-1].partition("error: ")[2]) from None
    if unknown:
        hint = "; --runs_dir is a sweep option: put it before `--`" if any("runs_dir" in u for u in unknown) else ""
        raise ResbenchError(f"unknown train flag(s): {' '.join(unknown)}{hint}")
    return args
