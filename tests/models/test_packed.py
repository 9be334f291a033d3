"""K seeds packed into one network train exactly as K separate runs; `bench --grid` and `--pack` report."""

import contextlib
import copy
import json

import pytest
import torch

from resbench.bench import measure
from resbench.data.batches import TrainBatches
from resbench.models import packed
from resbench.models.resnet import resnet
from resbench.settings.config import TrainConfig
from resbench.train.lossscale import ConstantLossScale
from resbench.train.step import train_step

K = 3
CFG = TrainConfig(optim_momentum=0.9, optim_weight_decay=0.01)


def perturbed_models(k: int, depth: int = 8, num_classes: int = 10) -> list[torch.nn.Module]:
    """K differently seeded models, nudged off the zero-init layers so every gradient path is live."""
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model = resnet(depth, num_classes=num_classes)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        models.append(model.to(memory_format=torch.channels_last))
    return models


def toy_batches(k: int) -> list[TrainBatches]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (96, 32, 32, 3), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (96,), generator=gen)
    return [TrainBatches(images, labels, batch_size=32, seed=100 + i) for i in range(k)]


def test_pack_then_unpack_gives_back_every_model_exactly():
    models = perturbed_models(K)
    for model in models:  # non-trivial running statistics too
        model(torch.rand(8, 3, 32, 32))
    copies = packed.unpack(packed.pack(models), resnet(8), K)
    for model, state in zip(models, copies):
        assert state.keys() == model.state_dict().keys()
        for key, tensor in model.state_dict().items():
            assert torch.equal(state[key], tensor), key


def test_packed_logits_are_each_models_own():
    models = [m.eval() for m in perturbed_models(K)]
    net = packed.pack(models).eval()
    images = [torch.rand(4, 3, 32, 32) for _ in range(K)]
    logits = net(packed.packed_input(images))
    for i, model in enumerate(models):
        torch.testing.assert_close(logits[:, i], model(images[i]), rtol=0, atol=1e-5)


def test_each_packed_run_trains_as_it_would_alone():
    """Own weights, own BN statistics, own data order and augmentation: after 4 SGD steps (weight
    decay and momentum on) every copy equals the same run trained alone, within float tolerance."""
    alone = perturbed_models(K)
    net = packed.pack(copy.deepcopy(alone))
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01) for m in alone]
    packed_optimizer = torch.optim.SGD(net.parameters(), lr=0.0, momentum=0.9, weight_decay=0.01)
    scaler = ConstantLossScale("cpu", enabled=False)
    batches = toy_batches(K)
    for step in range(4):
        pairs = [b.batch(step) for b in batches]
        for model, optimizer, (x, y) in zip(alone, optimizers, pairs):
            train_step(model, optimizer, scaler, x, y, 0.1, CFG, contextlib.nullcontext())
        packed.packed_step(net, packed_optimizer, [x for x, _ in pairs], [y for _, y in pairs], 0.1,
                           CFG.optim_label_smoothing, contextlib.nullcontext())
    for model, state in zip(alone, packed.unpack(net, resnet(8), K)):
        for key, tensor in model.state_dict().items():
            torch.testing.assert_close(state[key], tensor, rtol=0, atol=2e-5, msg=key)


def test_runs_that_decide_per_run_are_not_packed():
    assert packed.packable("fp32", global_clipping=1.0)
    assert packed.packable("fp16")
    assert packed.packable("fp32", bn_groups=2)
    assert packed.packable("bf16") is None


def test_bench_pack_reports_the_packed_runs_together(cli):
    proc = cli("bench", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "16",
               "--compile", "false", "--device", "cpu", "--warmup", "1", "--iters", "1", "--windows", "2",
               "--pack", "2", "--json", check=True)
    record = json.loads(proc.stdout)["packed"]
    assert record["runs"] == 2 and record["images_per_sec"] > 0
    assert record["ms_per_step"] == pytest.approx(2 * 16 * 1000 / record["images_per_sec"])
    assert record["speedup_vs_one_run"] == pytest.approx(
        record["images_per_sec"] / json.loads(proc.stdout)["images_per_sec"])


def test_bench_grid_times_each_distinct_row_and_totals_them(tmp_path, cli, monkeypatch):
    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nresnet_depth = [8, 14]\nseed = [1, 2]\n'
                    "[flags]\nbatch_size = 16\noptim_ni = 120\neval_every = 50\n")
    proc = cli("bench", "--grid", grid, "--device", "cpu", "--compile", "false", "--warmup", "1",
               "--iters", "1", "--windows", "1", "--json", check=True)
    result = json.loads(proc.stdout)
    rows = result["rows"]
    assert [row["depth"] for row in rows] == [8, 14]  # the two seeds of a configuration are timed once
    for row in rows:
        assert row["evaluations"] == 3  # at 50, 100 and the last iteration, 120
        assert row["train_minutes"] == pytest.approx(120 * 16 / row["images_per_sec"] / 60)
        assert row["eval_minutes"] == pytest.approx(3 * (217 + 300) / row["eval_images_per_sec"] / 60)
        assert row["run_minutes"] == pytest.approx(row["warmup_seconds"] / 60 + row["train_minutes"]
                                                   + row["eval_minutes"])
    assert result["total_minutes"] == pytest.approx(sum(row["run_minutes"] for row in rows))
    measured = iter(rows)  # the table of the same rows, without timing them again
    monkeypatch.setattr(measure, "bench_row", lambda *args: next(measured))
    table = cli("bench", "--grid", grid, "--device", "cpu", "--compile", "false", check=True).stdout.splitlines()
    assert [line.split(" | ")[:3] for line in table[2:4]] == [["| Digits_x32", "8", "1"], ["| Digits_x32", "14", "1"]]
    assert f"2 runs of grid {grid} take {result['total_minutes']:,.1f} min" in table[-1], table
    refused = cli("bench", "--grid", grid, "--resnet_depth", "20")
    assert refused.returncode == 2 and "--resnet_depth cannot go with --grid" in refused.stderr


def test_bench_grid_compiles_every_row_past_dynamos_recompile_limit(tmp_path, monkeypatch):
    """Each row is a new network whose forward shares one code object with the previous rows';
    without a reset, dynamo's cache for it fills (recompile_limit) and later rows silently run eager."""
    from torch._dynamo.testing import CompileCounter

    grid = tmp_path / "grid.toml"
    grid.write_text('data_name = ["Digits_x32"]\nresnet_depth = [8, 14, 20]\n')
    frames = []

    def compiled_row(cfg, warmup, iters, windows):
        counter = CompileCounter()
        torch.compile(torch.nn.Linear(2, 2), backend=counter)(torch.ones(1, 2))
        frames.append(counter.frame_count)
        return {"run_minutes": 1.0}

    monkeypatch.setattr(measure, "bench_row", compiled_row)
    with torch._dynamo.config.patch(recompile_limit=1):  # (monkeypatch's undo would delete the setting)
        assert measure.run_grid(str(grid), "cpu", "true", 1, 1, 1)["total_minutes"] == 3.0
    assert frames == [1, 1, 1]  # every row compiled, none fell back to eager


def test_bench_grid_imagenet_projects_each_row_beside_the_references_wall_time(cli, monkeypatch):
    """The six rows on this one device, each with the reference's per-device BatchNorm (--bn_groups 2 at 32 px,
    4 at 64 px), beside the reference's hours on its 2 or 4 GPUs. The steps are not timed here (a depth-50
    64 px step of 1,024 images needs about 32 GiB): a fixed rate stands in for the measurement."""
    from resbench.device import memory

    timed = []

    def fixed_rate(cfg, *args, **kwargs):
        timed.append(cfg)
        return {"precision": "bf16", "compile": False, "images_per_sec": 2048.0, "window_images_per_sec": [2048.0],
                "ms_per_step": 500.0, "warmup_seconds": 60.0, "peak_memory_mb": 1.0}

    monkeypatch.setattr(memory, "check_training_fits", lambda *args: None)
    monkeypatch.setattr(measure, "run_bench", fixed_rate)
    monkeypatch.setattr(measure, "eval_images_per_sec", lambda cfg, device: 10_000.0)
    result = json.loads(cli("bench", "--grid", "imagenet", "--device", "cpu", "--json", check=True).stdout)
    assert [(c.data_name, c.resnet_depth, c.bn_groups, c.batch_size, c.optim_ni) for c in timed] == [
        (f"ImageNet1k_x{size}", depth, size // 16, 1024, 128_000) for size in (32, 64) for depth in (18, 34, 50)]
    rows = result["rows"]
    assert [(row["reference_minutes"], row["reference_devices"]) for row in rows] == [
        (127.3, 2), (235.9, 2), (341.0, 2), (224.2, 4), (415.1, 4), (707.3, 4)]  # imagenet_results.tsv
    assert rows[0]["train_minutes"] == 128_000 * 1024 / 2048 / 60
    assert rows[0]["eval_minutes"] == 128 * 50_000 / 10_000 / 60  # validation = test: the one set, scored once
    table = cli("bench", "--grid", "imagenet", "--device", "cpu", check=True).stdout.splitlines()
    assert table[2].endswith("| 127.3 on 2 GPUs |") and table[7].endswith("| 707.3 on 4 GPUs |")
    assert table[-1].endswith("; the reference took 34.18 h of wall time for the 6 of them it ran, on 2-4 RTX 3090 "
                              "per run")
