"""Never lose a run (issue 4): a stopped run resumes exactly where it stopped (train/resume.py), and a resumed
run's settings and saved state are checked before it trains (the checkpoint files themselves: tests/runs/).

The kill tests train real subprocesses on the offline Digits_x32 demo and compare the resumed run,
bit for bit, with one uninterrupted run of the same seed.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import LIMIT, cli_env, tiny, wait_until
from resbench.cli.main import main
from resbench.models.resnet import resnet
from resbench.runs import checkpoint, schema
from resbench.runs.reader import check_same_config
from resbench.runs.schema import RunFolderError as CheckpointError
from resbench.settings.config import TrainConfig, default_run_name
from resbench.train.loop import Interrupted, StopSignals, train

RUN_ARGS = ["--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "32", "--optim_ni", "120",
            "--eval_every", "20"]


SUMMARY_KEYS = ("best_val_acc", "tst_acc", "tst_nll", "best_iter", "iterations", "skipped_steps")


def start_training(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "resbench", "train", *map(str, args)], env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_training(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "resbench", "train", *map(str, args)], env=cli_env(),
                          capture_output=True, text=True, timeout=LIMIT)
    assert proc.returncode == 0, proc.stderr
    return proc


def outcome(folder: Path) -> dict:
    """What must not depend on interruptions: results, metrics without timing, final and best weights."""
    summary = json.loads((folder / "summary.json").read_text())
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for record in records:
        for field in schema.TIME_FIELDS:
            del record[field]
    return {"summary": {key: summary[key] for key in SUMMARY_KEYS}, "records": records,
            "last": checkpoint.load_checkpoint(folder / "last.pt")["model"],
            "best": checkpoint.load_checkpoint(folder / "best.pt")}


def assert_same_outcome(resumed: dict, reference: dict) -> None:
    assert resumed["summary"] == reference["summary"]
    assert resumed["records"] == reference["records"]
    for name in ("last", "best"):
        assert resumed[name].keys() == reference[name].keys()
        for key, tensor in reference[name].items():
            assert torch.equal(resumed[name][key], tensor), f"{name}.pt {key}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run that every interrupted one must match."""
    folder = tmp_path_factory.mktemp("reference")
    finish_training(*RUN_ARGS, "--save", folder)
    return outcome(folder)


def records_in(folder: Path) -> int:
    metrics = folder / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.is_file() else 0


def cpu_seconds(proc: subprocess.Popen) -> float:
    """CPU time the run has used: a measure of its progress that other load on the machine does not skew."""
    fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def halfway_to_the_third_evaluation(folder: Path, proc: subprocess.Popen) -> None:
    """Wait until about iteration 45 of 120 (evaluations every 20), by the run's own CPU time.

    The 75 iterations left after that point are slack for this poller being scheduled late on a busy
    machine: the signal must reach the run before it finishes, wherever in an interval it lands.
    """
    wait_until(lambda: records_in(folder) >= 1, proc)
    first = cpu_seconds(proc)
    wait_until(lambda: records_in(folder) >= 2, proc)
    second = cpu_seconds(proc)
    wait_until(lambda: cpu_seconds(proc) >= second + (second - first) / 4, proc)


def test_sigkill_right_after_a_checkpoint_then_rerun_matches(tmp_path, reference):
    folder = tmp_path / "run"
    proc = start_training(*RUN_ARGS, "--save", folder)
    wait_until(lambda: (folder / "last.pt").is_file(), proc)
    kill_and_resume(proc, folder, reference)


def test_sigkill_between_evaluations_then_rerun_matches(tmp_path, reference):
    folder = tmp_path / "run"
    proc = start_training(*RUN_ARGS, "--save", folder)
    halfway_to_the_third_evaluation(folder, proc)
    kill_and_resume(proc, folder, reference)


def kill_and_resume(proc: subprocess.Popen, folder: Path, reference: dict) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL and not (folder / "summary.json").exists()
    at = checkpoint.load_checkpoint(folder / "last.pt")["state"]["step"]
    resumed = finish_training(*RUN_ARGS, "--save", folder)  # the same command again
    assert f"resuming at iteration {at} of 120" in resumed.stdout
    assert_same_outcome(outcome(folder), reference)


@pytest.mark.parametrize("signals", [1, 2], ids=["one_sigterm", "sigterm_twice_as_timeout_sends_it"])
def test_sigterm_saves_mid_interval_and_resume_matches(tmp_path, reference, signals, capsys):
    folder = tmp_path / "run"
    proc = start_training(*RUN_ARGS, "--save", folder)
    halfway_to_the_third_evaluation(folder, proc)
    for _ in range(signals):  # GNU timeout signals the process, then its whole group
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)  # two signals pending at once would be delivered as one
    _, stderr = proc.communicate(timeout=LIMIT)
    assert proc.returncode != 0 and "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    saved = checkpoint.load_checkpoint(folder / "last.pt")["state"]
    assert saved["step"] > 40 and saved["step"] % 20, "last.pt holds the mid-interval iteration the signal arrived at"
    assert f"at iteration {saved['step']}" in stderr

    resumed = finish_training("--resume", folder)  # from the saved configuration
    assert f"resuming at iteration {saved['step']} of 120" in resumed.stdout
    assert_same_outcome(outcome(folder), reference)
    assert main(["train", "--resume", str(folder)]) == 0  # once more: a finished run is reported, not retrained
    assert "not retraining" in capsys.readouterr().err


def test_a_second_ctrl_c_stops_at_once_but_a_second_sigterm_does_not():
    with StopSignals() as signals:
        signals._handle(signal.SIGTERM, None)
        signals._handle(signal.SIGTERM, None)
        signals._handle(signal.SIGINT, None)
        assert signals.received == signal.SIGTERM
    with StopSignals() as signals:
        signals._handle(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            signals._handle(signal.SIGINT, None)


def test_a_reader_going_away_saves_and_stops_the_run(tmp_path, monkeypatch):
    """`resbench train ... | head -1`: the next line written ends in a broken pipe, which must not end
    the run unsaved; it stops as on a signal, at the next step, with its state in last.pt."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    monkeypatch.setattr(sys, "stdout", open(write_end, "w"))
    with pytest.raises(Interrupted, match=r"stopped by its output closing \(a broken pipe\) at iteration 1; "):
        train(tiny(tmp_path / "run"))
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["state"]["step"] == 1
    assert "starting at iteration 0 of 6" in (tmp_path / "run" / "log.txt").read_text()
    sys.stdout.close()


def test_another_spelling_of_a_setting_is_the_same_run(unfinished_run):
    assert main(["train", "--resume", unfinished_run.save, "--mixed_precision", "FP32"]) == 0  # saved: false


def test_resume_and_save_naming_two_folders_is_refused(unfinished_run, tmp_path, capsys):
    assert main(["train", "--resume", unfinished_run.save, "--save", str(tmp_path / "elsewhere")]) == 2
    assert "a resumed run stays in its folder" in capsys.readouterr().err


def test_flags_given_on_resume_are_checked_even_at_their_defaults(unfinished_run, capsys):
    code = main(["train", "--resume", unfinished_run.save, "--batch_size", "256"])
    assert code == 2 and "batch_size: saved 16, now 256" in capsys.readouterr().err


def test_resuming_with_other_settings_lists_them(unfinished_run, capsys):
    code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "16",
                 "--optim_ni", "6", "--eval_every", "3", "--save", unfinished_run.save,
                 "--optim_lr", "0.2", "--seed", "7", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "optim_lr: saved 0.1, now 0.2" in err and "seed: saved 42, now 7" in err
    assert "batch_size" not in err and "device" not in err


def test_deterministic_is_a_setting_that_changes_the_run():
    cfg = TrainConfig(deterministic=True)
    assert default_run_name(cfg).endswith("-det")
    with pytest.raises(CheckpointError, match="deterministic: saved False, now True"):
        check_same_config(vars(TrainConfig()), vars(cfg), Path("run"))


def test_resume_restores_the_global_rng(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    assert torch.equal(saved["rng"]["torch_cpu"], torch.get_rng_state())  # training draws nothing from it
    saved["rng"]["torch_cpu"] = torch.manual_seed(1234).get_state()
    checkpoint.save_checkpoint(saved, last)
    torch.manual_seed(0)
    train(unfinished_run)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(1234).get_state())


def test_resuming_on_another_kind_of_device_is_refused(unfinished_run):
    """--mixed_precision true is fp16 on CUDA but bf16 on CPU, and augmentations differ: refuse."""
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    assert (saved["state"]["device_type"], saved["state"]["precision"]) == ("cpu", "fp32")
    saved["state"].update(device_type="cuda", precision="fp16")
    checkpoint.save_checkpoint(saved, last)
    with pytest.raises(CheckpointError, match="was trained on cuda in fp16; resuming on cpu would change the run"):
        train(unfinished_run)


def test_a_full_device_is_not_called_a_corrupted_checkpoint(unfinished_run, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(torch.nn.Module, "load_state_dict", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        train(unfinished_run)


def test_malformed_training_state_is_a_clear_error(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    saved["state"]["history"] = [1, 2]
    checkpoint.save_checkpoint(saved, last)
    with pytest.raises(CheckpointError, match="malformed training state .evaluation record 1 is 1, not an object"):
        train(unfinished_run)


def test_checkpoint_of_another_model_is_a_clear_error(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    saved["model"] = resnet(14).state_dict()
    checkpoint.save_checkpoint(saved, last)
    with pytest.raises(CheckpointError, match="does not fit this model.*Unexpected key"):
        train(unfinished_run)


def test_a_weights_file_is_not_a_training_checkpoint(unfinished_run):
    folder = Path(unfinished_run.save)
    for suffix in ("", checkpoint.DIGEST_SUFFIX):
        (folder / f"best.pt{suffix}").replace(folder / f"last.pt{suffix}")
    with pytest.raises(CheckpointError, match="not a resbench training checkpoint"):
        train(unfinished_run)


@pytest.mark.parametrize("content, message", [
    ("[]", r"config.json is not a resbench config.json \(it holds a JSON list, not an object of settings\)"),
    ('{"resnet_depth": "abc"}', r"config.json: setting resnet_depth is 'abc', not int"),
    ('{"seed": null}', r"config.json: setting seed is None, not int"),
    ('{"optim_lr": true}', r"config.json: setting optim_lr is True, not int or float"),
    ('{"save": 3}', r"config.json: setting save is 3, not str or null"),
])
def test_resuming_a_malformed_config_is_one_clear_line(tmp_path, capsys, content, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(content)
    code = main(["train", "--resume", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'run' / 'config.json'}")
    assert re.search(message, err), err


@pytest.mark.parametrize("damage, message", [
    (lambda state: state["history"][0].pop("iter"), "evaluation record 1 lacks a valid iter"),
    (lambda state: state.update(step=10**6), "it is at iteration 1000000, outside this run's 0 to 6"),
    (lambda state: state["history"].reverse(), r"its evaluations are at iterations \[6, 3\], not increasing"),
    (lambda state: state.update(best_iter=5), "its best iteration 5 is not one of its evaluations"),
    (lambda state: state.update(loss_sum="abc"), "loss_sum is 'abc'"),
])
def test_a_damaged_training_state_is_refused_before_training(unfinished_run, damage, message):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    damage(saved["state"])
    checkpoint.save_checkpoint(saved, last)
    log = (last.parent / "log.txt").read_text()
    with pytest.raises(CheckpointError, match=f"last.pt holds a malformed training state \\({message}"):
        train(unfinished_run)
    assert (last.parent / "log.txt").read_text() == log  # refused before anything ran
