"""The train flags and --config files (settings/): switches, dashed spellings, help, TOML and config.json, and what a file may not do."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch

from conftest import fails_if_blocked, tiny
from resbench.cli.main import build_parser, main
from resbench.settings.config import ConfigError, TrainConfig
from resbench.settings.flags import given_flags, train_flag_parser
from resbench.train.assemble import config_from
from resbench.train.loop import train


def test_threads_must_be_positive():
    with pytest.raises(ConfigError, match="--threads must be from 1 to 4096"):
        from resbench.train.checks import validate_config
        validate_config(TrainConfig(threads=0))
    assert config_from(given_flags(train_flag_parser().parse_args(["--threads", "auto"]))).threads is None


@pytest.mark.parametrize("argv, expected", [
    (["--tensorboard"], {"tensorboard": True}),
    (["--tensorboard", "false"], {"tensorboard": False}),
    (["--sync_bn", "--deterministic", "--seed", "3"], {"sync_bn": True, "deterministic": True, "seed": 3}),
    (["--deterministic=false"], {"deterministic": False}),
    (["--compile"], {"compile": "true"}),
    (["--compile", "auto", "--tensorboard"], {"compile": "auto", "tensorboard": True}),
    (["--compile", "--optim_ni", "5"], {"compile": "true", "optim_ni": 5}),
    (["--data-name", "Digits_x32", "--optim-weight-decay", "0.01"],
     {"data_name": "Digits_x32", "optim_weight_decay": 0.01}),
    (["--sync", "--resnet_d", "8"], {"sync_bn": True, "resnet_depth": 8}),  # abbreviations still work
])
def test_train_flags_as_switches_and_dashed(argv, expected):
    cfg = config_from(given_flags(train_flag_parser().parse_args(argv)))
    assert {key: getattr(cfg, key) for key in expected} == expected


@pytest.mark.parametrize("argv, dest, value", [
    (["data", "list", "--data-root", "here"], "data_root", "here"),
    (["data", "download", "all", "--data-root", "here"], "data_root", "here"),
    (["eval", "--ckpt", "x.pt", "--temperature-scaling"], "temperature_scaling", True),
    (["sweep", "--runs-dir", "elsewhere"], "runs_dir", Path("elsewhere")),
    (["bench", "--resnet-depth", "8", "--batch-size", "4", "--compile"], "batch_size", 4),
    (["train", "--eval-every", "7"], "eval_every", 7),
])
def test_every_command_takes_the_dashed_spelling(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value


def test_help_and_errors_name_the_flags_once(cli):
    helped = cli("train", "--help", check=True).stdout
    assert "--data_name DATA_NAME" in helped and "--data-name" not in helped
    bad = cli("train", "--resnet-depth", "abc")
    assert bad.returncode == 2 and "argument --resnet_depth: invalid int value: 'abc'" in bad.stderr


@pytest.mark.parametrize("argv, command", [
    (["train", "--resnet_depth", "8", "--no_such_flag", "1"], "resbench train"),
    (["data", "import", "Name", "src", "--no_such_flag"], "resbench data import"),
    (["table", "runs", "extra"], "resbench table"),
    (["--no_such_flag", "table", "runs"], "resbench"),  # before the command: the top level's
])
def test_unrecognized_arguments_point_at_the_commands_own_help(argv, command, capsys):
    """argparse reports them from the top-level parser, whose help lists no command's flags (issue 39)."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unrecognized arguments: ") and err.endswith(f"(see `{command} --help`)\n")


def test_save_help_shows_one_default():
    helped = " ".join(build_parser()._subparsers._group_actions[0].choices["train"].format_help().split())
    save = helped[helped.index("--save SAVE run folder"):helped.rindex("--tensorboard [TENSORBOARD]")]
    assert save.count("default") == 1


def test_a_toml_config_with_flags_over_it(tmp_path):
    (tmp_path / "run.toml").write_text('data_name = "Digits_x32"\nresnet_depth = 8\noptim_lr = 0.05\n'
                                       'tensorboard = true\ncompile = "false"\n')
    cfg = config_from(given_flags(train_flag_parser().parse_args(["--config", str(tmp_path / "run.toml"),
                                                                  "--optim-lr", "0.2"])))
    assert (cfg.data_name, cfg.resnet_depth, cfg.optim_lr, cfg.tensorboard, cfg.compile) == (
        "Digits_x32", 8, 0.2, True, "false")


@pytest.mark.parametrize("text, message", [
    ("resnet_depth = 8\nlearning_rate = 0.1\n", "unknown setting(s) learning_rate; the keys are the train flags"),
    ('resnet_depth = "deep"\n', "resnet_depth = 'deep' is not a valid --resnet_depth"),
    ("resnet_depth = [8]\n", "resnet_depth = [8] is not a valid --resnet_depth"),
    ("resnet_depth = \n", "cannot read --config"),
    ('data_root = ["x"]\n', "data_root = ['x'] is not a valid --data_root (an array where one value goes)"),
    ("data_root = {a = 1}\n", "data_root = {'a': 1} is not a valid --data_root (a table where one value goes)"),
    ("save = 1979-05-27\n", "is not a valid --save (a date or time where one value goes)"),
    ('data_name = "Digits_x32"\ndata_root = "a\\u0000b"\n', "--data_root holds a NUL character"),
    ('data_name = "Digits_x32"\nthreads = 1000000000000\n', "--threads must be from 1 to 4096"),
    pytest.param("seed = " + "[" * 5000 + "]" * 5000 + "\n", "its values are nested too deeply", id="deep-nesting"),
])
def test_a_bad_config_file_is_one_clear_line(tmp_path, capsys, text, message):
    (tmp_path / "run.toml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--save", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_config_or_grid_that_is_no_small_regular_file_is_one_line_at_once(tmp_path, capsys):
    """A FIFO would block the read forever, /dev/zero never end, a huge file fill the memory."""
    fifo, zero, huge = tmp_path / "fifo.toml", tmp_path / "zero.toml", tmp_path / "huge.toml"
    os.mkfifo(fifo)
    zero.symlink_to("/dev/zero")
    with open(huge, "wb") as f:
        f.truncate(2 << 20)  # sparse: 2 MiB of NULs, nothing written
    with fails_if_blocked(60, "the read blocked"):  # without the bound the FIFO blocks
        for path, reason in ((fifo, "it is not a regular file"), (zero, "it is not a regular file"),
                             (huge, "it is larger than 1,048,576 bytes"), (tmp_path, "it is a folder")):
            assert main(["train", "--config", str(path)]) == 2
            assert capsys.readouterr().err == f"error: cannot read --config {path}: {reason}" + (
                " (a device, FIFO or socket)\n" if "regular" in reason else
                ", more than resbench reads\n" if "larger" in reason else ", not a file\n")
            assert main(["sweep", "--grid", str(path), "--dry_run"]) == 2
            assert capsys.readouterr().err.startswith(f"error: cannot read grid {path}: {reason}")


def test_a_run_is_repeated_from_its_config_json_alone(tmp_path):
    first = tiny(tmp_path / "first", seed=3, optim_lr=0.05)
    train(first)
    args = train_flag_parser().parse_args(["--config", str(tmp_path / "first" / "config.json"),
                                           "--save", str(tmp_path / "again")])
    again = config_from(given_flags(args))
    assert dataclasses.replace(again, save=first.save) == first
    train(again)
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("first", "again")]
    for key in ("best_val_acc", "tst_acc", "tst_nll", "best_iter", "params"):
        assert summaries[0][key] == summaries[1][key], key  # CPU runs are deterministic: the same, to the bit
    weights = [torch.load(tmp_path / name / "best.pt", weights_only=True) for name in ("first", "again")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_config_and_resume_do_not_go_together(tmp_path, capsys):
    (tmp_path / "run.toml").write_text("resnet_depth = 8\n")
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--resume", str(tmp_path)]) == 2
    assert "--config and --resume cannot go together" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["sync_bn", "resnet_depth", "mixed_precision"])
def test_a_config_file_cannot_unset_a_setting_that_needs_a_value(tmp_path, key):
    """null unsets only the optional settings (clipping, threads, ...): a switch is not silently off."""
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({key: None}))
    with pytest.raises(ConfigError, match=f"{key} = None is not a valid --{key}"):
        config_from(given_flags(train_flag_parser().parse_args(["--config", str(path)])))
    path.write_text(json.dumps({"optim_global_clipping": None, "threads": None}))
    cfg = config_from(given_flags(train_flag_parser().parse_args(["--config", str(path)])))
    assert (cfg.optim_global_clipping, cfg.threads) == (None, None)


def command_flags(parser: argparse.ArgumentParser, name: str = "resbench") -> list[tuple[str, argparse.Action]]:
    """(command, flag) for every flag of every command and subcommand, help and version left out."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += [flag for command, sub in action.choices.items() for flag in command_flags(sub, f"{name} {command}")]
        elif action.option_strings and action.help != argparse.SUPPRESS and action.dest not in ("help", "version"):
            found.append((name, action))
    return found


def test_every_flag_with_a_default_shows_it_one_way():
    """`bench --help` showed no default for --warmup, --iters, --windows, and commands spelled defaults four ways
    (issue 39): every flag with a default shows `(default: VALUE)`, and no help says it otherwise."""
    flags = command_flags(build_parser())
    assert len({command for command, _ in flags}) == 11 and len(flags) > 80
    unshown = [f"{command} {action.option_strings[0]}" for command, action in flags
               if action.default not in (None, argparse.SUPPRESS) and not isinstance(action.default, bool)
               and "(default: " not in action.help]
    assert unshown == []
    assert [f"{command} {action.option_strings[0]}" for command, action in flags if "default" in action.help
            and action.help.count("default") != action.help.count("(default: ")] == []


def test_every_help_prints_its_text_as_written():
    """A description is printed as written, a flag's help through %-formatting: `95%%` shows through in the first."""
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    helps = [parser.format_help(), *(command.format_help() for command in commands.values())]
    assert [text for text in helps if "%%" in text or "%(" in text] == []


def test_clipping_off_or_zero_means_no_clipping():
    from resbench.settings.flags import optional_float
    assert optional_float("off") is None and optional_float("0") is None and optional_float("0.0") is None
    assert optional_float("1.5") == 1.5


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--optim_nii", "5"])
    assert exit_.value.code == 2 and "unrecognized arguments: --optim_nii" in capsys.readouterr().err


def test_an_argparse_error_is_one_line_and_a_pointer_to_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--resnet_depth", "abc"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: argument --resnet_depth: invalid int value: 'abc' "
                                       "(see `resbench train --help`)\n")


def test_train_has_the_mirror_its_errors_advise(tmp_path, cli):
    """A missing CIFAR-10, an unreachable official URL: the fix named works as a train flag."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    proc = cli("train", "--data_name", "CIFAR10_x32", "--data_root", tmp_path / "data", "--mirror", mirror,
               "--optim_ni", "1")
    assert proc.returncode == 2
    assert f"cifar-10-python.tar.gz not found in mirror folder {mirror}" in proc.stderr
