"""Never lose a run: resume exactly, fail clearly, load safely (issue 4).

The kill tests train real subprocesses on the offline Digits_x32 demo and compare the resumed run,
bit for bit, with one uninterrupted run of the same seed.
"""

import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LIMIT, cli_env, wait_until
from resbench import files
from resbench.cli.main import main
from resbench.models.resnet import resnet
from resbench.runs import checkpoint, schema, writes
from resbench.runs.folder import RunFolder
from resbench.runs.reader import check_same_config
from resbench.runs.schema import RunFolderError as CheckpointError
from resbench.settings.config import TrainConfig, default_run_name
from resbench.train import lossscale
from resbench.train import step as step_module
from resbench.train.loop import Interrupted, StopSignals, TrainingDiverged, configure_determinism, train
from resbench.train.step import learning_rate, train_step

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


# In-process runs: tiny, to exercise the loop's guards in a few seconds each.

def tiny_config(folder: Path, **changes) -> TrainConfig:
    settings = dict(data_name="Digits_x32", resnet_depth=8, batch_size=16, optim_ni=6, eval_every=3,
                    device="cpu", save=str(folder))
    return TrainConfig(**{**settings, **changes})


@pytest.fixture
def unfinished_run(tmp_path) -> TrainConfig:
    """A run folder with a last.pt at the final iteration but no summary.json (as if killed at the end)."""
    cfg = tiny_config(tmp_path / "run")
    train(cfg)
    (tmp_path / "run" / "summary.json").unlink()
    return cfg


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
        train(tiny_config(tmp_path / "run"))
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["state"]["step"] == 1
    assert "starting at iteration 0 of 6" in (tmp_path / "run" / "log.txt").read_text()
    sys.stdout.close()


def finished_run(folder: Path, **changes) -> TrainConfig:
    cfg = tiny_config(folder, **changes)
    train(cfg)
    return cfg


def folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_a_new_run_never_overwrites_another_run_without_last_pt(tmp_path):
    other = finished_run(tmp_path / "run")
    (tmp_path / "run" / "last.pt").unlink()
    (tmp_path / "run" / "summary.json").unlink()
    before = folder_state(tmp_path / "run")
    with pytest.raises(CheckpointError, match="holds a run with other settings.*resnet_depth: saved 8, now 14"):
        train(dataclasses.replace(other, resnet_depth=14))
    assert folder_state(tmp_path / "run") == before


def test_a_new_run_never_overwrites_the_users_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "log.txt").write_text("my notes")
    with pytest.raises(CheckpointError, match="is not empty \\(log.txt\\) and holds no resbench run"):
        train(tiny_config(tmp_path / "mine"))
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["log.txt"]  # not even a lock file left
    assert (tmp_path / "mine" / "log.txt").read_text() == "my notes"


def test_a_run_that_died_before_its_first_checkpoint_starts_over(tmp_path):
    cfg = finished_run(tmp_path / "run")
    for name in ("last.pt", "best.pt", "summary.json"):
        (tmp_path / "run" / name).unlink()
    assert train(cfg)["status"] == "finished"


def test_a_finished_run_with_other_settings_is_refused(tmp_path):
    cfg = finished_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="optim_ni: saved 6, now 12"):
        train(dataclasses.replace(cfg, optim_ni=12))
    assert train(cfg)["status"] == "finished"  # the same settings: reported, not retrained


def test_a_damaged_summary_is_a_clear_error(tmp_path):
    cfg = finished_run(tmp_path / "run")
    (tmp_path / "run" / "summary.json").write_text("{bad")
    with pytest.raises(CheckpointError, match="summary.json is unreadable.*delete it to resume the run from last.pt"):
        train(cfg)


def test_a_second_process_cannot_train_into_a_busy_folder(tmp_path, capsys):
    with RunFolder(tmp_path / "run").claimed():  # as another process holding the folder would
        code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--device", "cpu",
                     "--save", str(tmp_path / "run")])
    assert code == 2 and "error: another resbench process is training in" in capsys.readouterr().err


def test_a_run_failing_before_training_leaves_no_folder(tmp_path, capsys):
    bad = tmp_path / "data" / "CIFAR10_x32"
    bad.mkdir(parents=True)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        (bad / f"{name}.npy").write_text("not an array")
    code = main(["train", "--data_name", "CIFAR10_x32", "--data_root", str(tmp_path / "data"), "--device", "cpu",
                 "--save", str(tmp_path / "deep" / "er" / "run")])
    assert code == 2 and "not a valid .npy file" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()  # nor the parent folders the run created


def test_another_spelling_of_a_setting_is_the_same_run(unfinished_run):
    assert main(["train", "--resume", unfinished_run.save, "--mixed_precision", "FP32"]) == 0  # saved: false


def test_resume_and_save_naming_two_folders_is_refused(unfinished_run, tmp_path, capsys):
    assert main(["train", "--resume", unfinished_run.save, "--save", str(tmp_path / "elsewhere")]) == 2
    assert "a resumed run stays in its folder" in capsys.readouterr().err


def test_sigterm_outside_the_loop_unwinds_like_ctrl_c(tmp_path):
    """Before the loop takes over the signals (data preparation), SIGTERM must unwind, so the
    cleanup of a just-created run folder and of lock files runs, instead of killing at once."""
    from resbench.cli.main import stop_on_sigterm
    main(["data", "list", "--data_root", str(tmp_path)])
    assert signal.getsignal(signal.SIGTERM) is stop_on_sigterm
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


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


def test_deterministic_mode_sets_every_switch(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    benchmark = torch.backends.cudnn.benchmark
    try:
        configure_determinism(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, benchmark


def test_resume_restores_the_global_rng(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    assert torch.equal(saved["rng"]["torch_cpu"], torch.get_rng_state())  # training draws nothing from it
    saved["rng"]["torch_cpu"] = torch.manual_seed(1234).get_state()
    checkpoint.save_checkpoint(saved, last)
    torch.manual_seed(0)
    train(unfinished_run)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(1234).get_state())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_rng_states_restore_from_a_checkpoint_loaded_onto_the_gpu(tmp_path):
    """A CUDA run loads last.pt with map_location=cuda; generator states must still restore."""
    torch.zeros(1, device="cuda")  # initialise CUDA, so its generator is saved too
    checkpoint.save_checkpoint({"rng": checkpoint.rng_states()}, tmp_path / "last.pt")
    expected = torch.rand(3), torch.rand(3, device="cuda")
    checkpoint.restore_rng_states(checkpoint.load_checkpoint(tmp_path / "last.pt", map_location="cuda")["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert torch.equal(torch.rand(3, device="cuda"), expected[1])


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


def test_checkpoints_hold_cpu_tensors_in_a_plain_structure():
    weights = torch.ones(2, requires_grad=True)
    moved = checkpoint.on_cpu({"model": {"w": weights}, "rng": [torch.zeros(1)], "step": 3, "pair": (weights, "a")})
    assert moved["step"] == 3 and isinstance(moved["pair"], tuple) and moved["pair"][1] == "a"
    assert moved["model"]["w"].device.type == "cpu" and not moved["model"]["w"].requires_grad


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_checkpoints_of_a_gpu_run_load_without_a_gpu(tmp_path):
    checkpoint.save_checkpoint({"w": torch.ones(2, device="cuda")}, tmp_path / "best.pt")
    assert torch.load(tmp_path / "best.pt", weights_only=True)["w"].device.type == "cpu"


def model_of(path: Path) -> dict:
    saved = checkpoint.load_checkpoint(path)
    return saved.get("model", saved)


@pytest.mark.parametrize("poisoned_update, cause", [(5, "the training loss"), (6, "the weight norm")])
def test_divergence_stops_clearly_and_keeps_the_good_checkpoints(tmp_path, monkeypatch, capsys,
                                                                   poisoned_update, cause):
    """Update 5 makes the loss NaN from step 6 on; update 6 (just before the evaluation at 6) only the
    weights: either way the run stops, exit status 1, and last.pt/best.pt keep the finite state of 3."""
    real_step, updates = train_step, []

    def poisoning_step(model, *args, **kwargs):
        result = real_step(model, *args, **kwargs)
        updates.append(1)
        if len(updates) == poisoned_update:
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(math.nan)
        return result

    monkeypatch.setattr(step_module, "train_step", poisoning_step)
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match=f"{cause} became nan by iteration 6"):
        train(cfg)
    run = RunFolder(cfg.save)
    assert checkpoint.load_checkpoint(run.file("last.pt"))["state"]["step"] == 3
    for name in ("last.pt", "best.pt"):
        assert all(t.isfinite().all() for t in model_of(run.file(name)).values()), name
    assert run.summary()["status"] == "diverged"

    (tmp_path / "run2").mkdir()
    updates.clear()
    code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "16",
                 "--optim_ni", "6", "--eval_every", "3", "--device", "cpu", "--save", str(tmp_path / "run2")])
    err = capsys.readouterr().err
    # Progress lines may come first on stderr (it is not a terminal here); the error is the last line.
    assert code == 1 and err.splitlines()[-1].startswith(f"error: {cause} became nan") and "Traceback" not in err


@contextlib.contextmanager
def overflowing_gradients(model: torch.nn.Module):
    """Make one gradient infinite, as an fp16 overflow does."""
    hook = next(model.parameters()).register_hook(lambda grad: torch.full_like(grad, math.inf))
    yield
    hook.remove()


def overflow_at(monkeypatch, iterations: tuple[int, ...], lrs: dict[int, float], stop_after: int | None = None):
    """fp16 loss scaling on CPU, the gradients of `iterations` made infinite; each iteration's learning rate
    recorded in `lrs`; a SIGTERM to this process after iteration `stop_after` (as a scheduler sends it)."""
    real_scale, real_step = lossscale.ConstantLossScale, step_module.Job.step
    monkeypatch.setattr(step_module, "ConstantLossScale", lambda device, enabled: real_scale(device, enabled=True))

    def step(job, iteration, *args, **kwargs):
        with overflowing_gradients(job.model) if iteration in iterations else contextlib.nullcontext():
            result = real_step(job, iteration, *args, **kwargs)
        lrs[iteration] = job.optimizer.param_groups[0]["lr"]
        if iteration == stop_after:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(step_module.Job, "step", step)


def test_loss_scale_skips_are_counted_delay_the_schedule_and_survive_a_resume(tmp_path, monkeypatch):
    """fp16 needs CUDA, so on CPU: loss scaling switched on, and gradients that overflow at iterations 1 and 3.
    A skip is counted, not fatal, and, as in the reference, whose optimiser keeps its step count (the schedule's
    clock) at a skipped update, the step after it takes the skipped step's learning rate: the schedule lags, across
    a stop and resumption too (docs/reference/imagenet-x.md). The scale stays the reference's 65,536."""
    skipped, lrs = (1, 3), {}
    overflow_at(monkeypatch, skipped, lrs, stop_after=1)  # stopped right after the first skip, resumed
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(Interrupted, match="stopped by a signal at iteration 2"):
        train(cfg)
    assert checkpoint.load_checkpoint(tmp_path / "run" / "last.pt")["state"]["skipped_steps"] == 1
    overflow_at(monkeypatch, skipped, lrs)
    summary = train(cfg)
    expected = [learning_rate(t - sum(s < t for s in skipped), cfg) for t in range(6)]
    assert [lrs[t] for t in range(6)] == expected
    assert lrs[2] == lrs[1] and lrs[4] == lrs[3] and len(set(expected)) == 4  # the step after a skip
    run = RunFolder(cfg.save)
    records = [json.loads(line) for line in run.file("metrics.jsonl").read_text().splitlines()]
    assert summary["status"] == "finished" and summary["skipped_steps"] == 2
    assert [r["skipped_steps"] for r in records] == [1, 2]
    assert [r["loss_scale"] for r in records] == [65_536, 65_536]  # the reference's, never grown or halved
    log = run.file("log.txt").read_text()
    assert "trn/skipped_steps 2 (fp16 overflow)" in log and "fp16 loss scale 65,536, constant" in log
    assert log.count("loss scale 65,536") == 2 and log.count("trn/loss_scale 65,536") == 2  # each session, evaluation
    assert checkpoint.load_checkpoint(run.file("last.pt"))["scaler"] == {"scale": 65_536.0}


def test_a_last_pt_with_the_former_dynamic_scaler_state_resumes(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    saved["scaler"] = {"scale": 131_072.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                       "_growth_tracker": 17}  # what torch.amp.GradScaler.state_dict() held
    checkpoint.save_checkpoint(saved, last)
    assert train(unfinished_run)["status"] == "finished"


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_train_step_counts_a_skipped_update(fused):
    torch.manual_seed(0)
    model = resnet(8, num_classes=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)
    scaler = lossscale.ConstantLossScale("cpu", enabled=True)
    x, y, cfg = torch.rand(4, 3, 32, 32), torch.randint(0, 3, (4,)), TrainConfig()
    no_autocast = torch.autocast("cpu", enabled=False)
    before = [p.detach().clone() for p in model.parameters()]
    with overflowing_gradients(model):
        train_step(model, optimizer, scaler, x, y, 0.1, cfg, no_autocast)
    assert scaler.skipped_updates() == 1 and all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    train_step(model, optimizer, scaler, x, y, 0.1, cfg, no_autocast)
    assert scaler.skipped_updates() == 1 and scaler.scale == 65_536


# Loading safely.

class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_needing_pickled_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "payload-ran"
    (tmp_path / "run").mkdir()
    torch.save({"model": Payload(marker)}, tmp_path / "run" / "last.pt")
    with pytest.raises(CheckpointError, match="was refused: it needs more than tensors"):
        RunFolder(tmp_path / "run").load_last()
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", b"abc", bytes(range(256)) * 4, b"PK\x03\x04" * 50])
def test_garbage_checkpoint_is_a_clear_error(tmp_path, content):
    (tmp_path / "last.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupted|refused"):
        checkpoint.load_checkpoint(tmp_path / "last.pt")


def test_malformed_training_state_is_a_clear_error(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    saved = checkpoint.load_checkpoint(last)
    saved["state"]["history"] = [1, 2]
    checkpoint.save_checkpoint(saved, last)
    with pytest.raises(CheckpointError, match="malformed training state .evaluation record 1 is 1, not an object"):
        train(unfinished_run)


def test_truncated_checkpoint_is_a_clear_error(unfinished_run):
    last = Path(unfinished_run.save) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
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


# Writing safely.

def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.save_last({"step": torch.tensor(1)})

    def disk_full(fd):  # the bytes went to the page cache; the disk has no room for them
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match=rf"cannot write {tmp_path}/last.pt \(No space left on device\).*"
                                              "previous last.pt is intact"):
        run.save_last({"step": torch.tensor(2)})
    monkeypatch.undo()
    assert checkpoint.load_checkpoint(run.file("last.pt")) == {"step": torch.tensor(1)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "last.pt.sha256"]  # no temporary file left


@pytest.mark.parametrize("previous", [True, False], ids=["over_a_checkpoint", "the_first"])
def test_a_checkpoint_the_disk_has_no_room_for_leaves_its_digest_file_as_it_was(tmp_path, monkeypatch, previous):
    """A 20 MB tmpfs has room for the small .sha256 file but not for the checkpoint: afterwards
    `sha256sum -c last.pt.sha256` must pass on the previous last.pt, and a first one leaves no digest file."""
    run = RunFolder(tmp_path)
    if previous:
        run.save_last({"step": torch.tensor(1)})
    before = folder_state(tmp_path)
    fsync = os.fsync

    def room_for_small_files(fd):
        if os.fstat(fd).st_size > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        fsync(fd)

    monkeypatch.setattr(files.os, "fsync", room_for_small_files)
    with pytest.raises(CheckpointError, match="No space left on device"):
        run.save_last({"step": torch.tensor(2), "weights": torch.zeros(1000)})
    assert folder_state(tmp_path) == before


def test_run_files_follow_the_umask(tmp_path):
    checkpoint.save_checkpoint({"step": torch.tensor(1)}, tmp_path / "last.pt")
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o666 & ~files.current_umask()


def test_unwritable_folder_is_a_clear_error(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointError, match=r"\(Permission denied\); make that folder writable"):
        RunFolder(tmp_path).save_best({})
    monkeypatch.setattr(writes, "open_own_file", refuse)
    with pytest.raises(CheckpointError, match="Permission denied"):
        RunFolder(tmp_path).log("a line")


# Bad input: one line, the problem and the fix, exit status 2, no traceback.

@pytest.mark.parametrize("args, message", [
    (["--data_name", "MNIST"], "unknown data_name 'MNIST': choose one of CIFAR10_x32"),
    (["--resnet_depth", "21"], "unsupported resnet depth 21: use"),
    (["--resnet_width", "0"], "width must be a positive integer"),
    (["--batch_size", "2000"], "larger than the training split"),
    (["--optim_ni", "0"], "--optim_ni must be a positive integer"),
    (["--save", "{tmp}/a-file"], "a file stands where a folder is needed"),
    (["--resume", "{tmp}"], "it is not a run folder (no config.json)"),
    (["--data_name", "CIFAR10_x32", "--data_root", "{tmp}/data"], "train_labels.npy has labels in [10, 10]"),
    (["--device", "mps"], "--device mps is not supported"),
    (["--seed", "99999999999999999999999"], "--seed must be an integer from 0 to 2**63 - 1"),
])
def test_bad_input_is_one_clear_line(tmp_path, capsys, args, message):
    (tmp_path / "a-file").write_text("")
    mislabelled = tmp_path / "data" / "CIFAR10_x32"  # a prepared dataset whose labels are out of range
    mislabelled.mkdir(parents=True)
    for split in ("train", "test"):
        np.save(mislabelled / f"{split}_images.npy", np.zeros((5, 32, 32, 3), np.uint8))
        np.save(mislabelled / f"{split}_labels.npy", np.full(5, 10))
    base = ["--data_name", "Digits_x32", "--device", "cpu", "--save", str(tmp_path / "run")]
    code = main(["train", *base, *(a.format(tmp=tmp_path) for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_a_gpu_index_beyond_the_machine_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    code = main(["train", "--data_name", "Digits_x32", "--device", "cuda:2", "--save", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err == "error: --device cuda:2 does not exist: this machine has 2 CUDA GPU(s), cuda:0 to cuda:1\n"


def test_a_bad_torchrun_variable_is_one_clear_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "abc")
    code = main(["train", "--data_name", "Digits_x32", "--device", "cpu", "--save", str(tmp_path / "run")])
    assert code == 2 and "environment variable WORLD_SIZE='abc' is not an integer" in capsys.readouterr().err


def test_clipping_off_or_zero_means_no_clipping():
    from resbench.settings.flags import optional_float
    assert optional_float("off") is None and optional_float("0") is None and optional_float("0.0") is None
    assert optional_float("1.5") == 1.5


def test_unknown_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--optim_nii", "5"])
    assert exit_.value.code == 2 and "unrecognized arguments: --optim_nii" in capsys.readouterr().err


# Hostile and damaged run folders (issue 14).

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


def test_a_save_folder_name_too_long_is_one_clear_line(tmp_path, capsys):
    code = main(["train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--device", "cpu",
                 "--save", str(tmp_path / ("a" * 300) / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "(File name too long); use a shorter --save folder name" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", [["train", "--resume", "{long}"], ["eval", "--ckpt", "{long}/best.pt"],
                                     ["data", "list", "--data_root", "{long}"], ["table", "{long}"]])
def test_any_path_too_long_is_one_clear_line(tmp_path, capsys, command):
    long = str(tmp_path / ("a" * 300))
    assert main([part.format(long=long) for part in command]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot use {long}") and err.endswith("(File name too long); check the path you passed\n")


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


@pytest.mark.parametrize("name", ["last.pt", "best.pt"])
def test_a_flipped_byte_in_a_checkpoint_is_named(unfinished_run, capsys, name):
    path = Path(unfinished_run.save) / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(data)
    if name == "last.pt":
        code = main(["train", "--resume", unfinished_run.save])
    else:
        code = main(["eval", "--ckpt", str(path), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: checkpoint {path} is corrupted or truncated: its SHA-256 is not the one "
                                 f"recorded in {name}.sha256 when it was written; restore it, or delete it to start over\n")


def test_checkpoint_digests_survive_a_crash_between_the_writes(tmp_path, monkeypatch):
    """Killed after the new digest is recorded but before the rename: the old checkpoint still loads."""
    path = tmp_path / "last.pt"
    checkpoint.save_checkpoint({"step": torch.tensor(1)}, path)

    def killed(*args):
        raise KeyboardInterrupt

    real_replace = checkpoint.replace_atomically
    monkeypatch.setattr(checkpoint, "replace_atomically",
                        lambda target, write: killed() if target == path else real_replace(target, write))
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint({"step": torch.tensor(2)}, path)
    monkeypatch.undo()
    assert len(checkpoint.recorded_digests(path)) == 2
    assert checkpoint.load_checkpoint(path) == {"step": torch.tensor(1)}
    checkpoint.save_checkpoint({"step": torch.tensor(3)}, path)
    assert len(checkpoint.recorded_digests(path)) == 1 and checkpoint.load_checkpoint(path) == {"step": torch.tensor(3)}


def test_a_zip_bomb_checkpoint_is_refused_unpacked(tmp_path):
    """A deflated 200 MiB record in a 200 KB file: torch would inflate it into memory."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, buffer)
    bomb = tmp_path / "last.pt"
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as original, \
            zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for entry in original.infolist():
            out.writestr(entry.filename, original.read(entry))
        with out.open("archive/data/1", "w") as member:
            for _ in range(200):
                member.write(bytes(2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(CheckpointError, match=r"was refused: it holds compressed entries \(209,715,\d+ bytes unpacked\)"):
        checkpoint.load_checkpoint(bomb)


def test_stale_temporaries_in_a_run_folder_are_removed_by_the_next_run(unfinished_run):
    folder = Path(unfinished_run.save)
    stale = [folder / ".last.pt.k3j4h5g6.tmp", folder / ".metrics.jsonl.a1b2c3d4.tmp", folder / ".last.pt.sha256.x1y2z3w4.tmp"]
    kept = [folder / ".notes.txt.a1b2c3d4.tmp", folder / "mine.tmp"]
    with RunFolder(folder).claimed():  # a live run, writing its temporary files: a second run removes none
        for path in stale + kept:
            path.write_bytes(b"x" * 1000)
        with pytest.raises(CheckpointError, match="another resbench process is training"):
            RunFolder(folder).lock()
        assert all(path.exists() for path in stale)
    train(unfinished_run)  # the live run was killed: the next one removes its leftovers
    assert [path for path in stale if path.exists()] == [] and all(path.exists() for path in kept)


def test_full_disk_before_the_first_checkpoint_does_not_claim_one_is_intact(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "fsync", disk_full)
    with pytest.raises(CheckpointError) as excinfo:
        RunFolder(tmp_path).save_last({"step": torch.tensor(1)})
    assert str(excinfo.value) == (f"cannot write {tmp_path}/last.pt (No space left on device); free space on that "
                                  "disk or use another --save folder")


def test_files_written_in_place_refuse_links_and_special_files(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("mine")
    (tmp_path / "symlink").symlink_to(victim)
    (tmp_path / "dangling").symlink_to(tmp_path / "created-outside")
    os.link(victim, tmp_path / "hardlink")
    os.mkfifo(tmp_path / "fifo")
    for name in ("symlink", "dangling", "hardlink", "fifo"):  # a fifo without a reader: refused, not waited on
        for append in (False, True):
            with pytest.raises(files.UnsafeFileError if name != "fifo" else OSError):
                files.open_own_file(tmp_path / name, append=append)
    assert victim.read_text() == "mine" and not (tmp_path / "created-outside").exists()


@pytest.mark.parametrize("name", [".lock", "log.txt"])
def test_a_symlink_planted_in_a_run_folder_is_not_followed(unfinished_run, name, capsys):
    folder = Path(unfinished_run.save)
    outside = folder.parent / "outside"
    (folder / name).unlink(missing_ok=True)  # the .lock is gone with the run that held it
    (folder / name).symlink_to(outside)
    code = main(["train", "--resume", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and "(a symbolic link stands there; resbench never writes through one); remove it" in err, err
    assert not outside.exists()



def test_a_link_planted_at_the_default_run_folders_level_is_refused(tmp_path, cli):
    """Issue 37: below the folder a run's folder is named by (here the default runs/), every level is the run's
    own: a link planted as runs/<data_name> is one line naming it, and nothing is written where it leads."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "Digits_x32").symlink_to(outside)
    proc = cli("train", "--data_name", "Digits_x32", "--resnet_depth", "8", "--optim_ni", "2", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr == (
        "error: cannot write runs/Digits_x32 (a symbolic link stands there; resbench never writes through one); "
        "remove it, or use another --save folder\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tensorboard").symlink_to(outside)  # and <run>/tensorboard
    with pytest.raises(CheckpointError, match="tensorboard \\(a symbolic link stands there; resbench never writes"):
        RunFolder(tmp_path / "run").open_tensorboard(0)
    assert list(outside.iterdir()) == []
