"""What `resbench eval` loads (evaluate/checkpoints.py): a damaged config.json beside the checkpoint, a foreign
or corrupt checkpoint, an absurd depth: each one clear line."""

from __future__ import annotations

import json

import pytest

from resbench.cli.main import main

BAD_RUN_CONFIGS = {  # config.json beside the checkpoint: what the error says after its path
    "{bad": " is unreadable (Expecting property name",
    "[1]": " is not a JSON object",
    '{"data_name": "Nope", "resnet_depth": 8, "resnet_width": 1}': ": unknown data_name 'Nope'",
    '{"data_name": "Digits_x32", "resnet_width": 1}': " lacks a valid resnet_depth",
    '{"data_name": "Digits_x32", "resnet_depth": "8", "resnet_width": 1}': " lacks a valid resnet_depth",
    '{"data_name": "Digits_x32", "resnet_depth": 9, "resnet_width": 1}': ": unsupported resnet depth 9",
    '{"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1}': " names no data_root; pass --data_root",
}


@pytest.mark.parametrize("text", BAD_RUN_CONFIGS)
def test_eval_with_a_damaged_config_is_one_clear_line(tmp_path, capsys, text):
    from resbench.cli.main import main

    (tmp_path / "config.json").write_text(text)
    (tmp_path / "best.pt").write_bytes(b"")
    assert main(["eval", "--ckpt", str(tmp_path / "best.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'config.json'}{BAD_RUN_CONFIGS[text]}") and err.count("\n") == 1


def test_eval_of_a_foreign_or_corrupt_checkpoint_is_one_clear_line(tmp_path, cli):
    import torch

    (tmp_path / "config.json").write_text(json.dumps(
        {"data_name": "Digits_x32", "resnet_depth": 8, "resnet_width": 1, "data_root": "unused"}))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "best.pt")
    proc = cli("eval", "--ckpt", tmp_path / "best.pt")
    assert proc.returncode == 2 and "holds no ResNet of resbench (keys fc.weight, ...), but" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    proc = cli("eval", "--ckpt", tmp_path / "best.pt")
    assert proc.returncode == 2 and "is corrupted or not a checkpoint" in proc.stderr


def test_an_absurd_depth_in_a_run_folder_is_refused_by_eval(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"data_name": "Digits_x32", "resnet_depth": 600_002,
                                                      "resnet_width": 1}))
    (tmp_path / "best.pt").write_bytes(b"")
    assert main(["eval", "--ckpt", str(tmp_path / "best.pt"), "--device", "cpu"]) == 2
    assert "resnet depth 600002 is out of range" in capsys.readouterr().err
