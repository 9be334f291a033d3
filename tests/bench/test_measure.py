"""`resbench bench` (bench/measure.py): one configuration's images/s as JSON or a table, --quick, --pack, a
whole grid's rows and their run times beside the reference's, and a warning when the timed windows spread."""

from __future__ import annotations

import json

import pytest
import torch

from resbench.bench import measure


def test_bench_reports_a_tiny_configuration_as_json(cli):
    proc = cli("bench", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "32",
               "--compile", "false", "--device", "cpu", "--warmup", "1", "--iters", "2", "--windows", "2",
               "--vs", "--json", check=True)
    record = json.loads(proc.stdout)
    assert record["precision"] == "fp32" and record["compile"] is False
    assert record["images_per_sec_min"] <= record["images_per_sec"] <= record["images_per_sec_max"]
    assert len(record["window_images_per_sec"]) == 2
    assert record["ms_per_step"] == pytest.approx(32 * 1000 / record["images_per_sec"])
    assert 0 < record["gflop_per_image"] < 1  # depth 8 is tiny
    assert 0 < record["fraction_of_peak"] < 1.5
    assert record["peak_memory_mb"] > 0 and record["matmul_peak_tflops"] > 0
    assert record["baseline"]["images_per_sec"] > 0 and record["speedup_vs_baseline"] > 0


def test_bench_quick_is_an_eager_look_and_the_default_says_it_compiles(cli, monkeypatch):
    """A 'short' bench took 4 minutes: train's defaults mirror a 48,000-iteration run, which compiles (issue 39)."""
    from resbench.bench import measure

    timed = []

    def run_bench(cfg, warmup, iters, windows, vs, pack=1):
        timed.append((measure.will_compile(cfg), warmup, iters, windows))
        return {"images_per_sec": 1.0, "images_per_sec_min": 1.0, "images_per_sec_max": 1.0}

    monkeypatch.setattr(measure, "run_bench", run_bench)
    config = ("--data_name", "Digits_x32", "--resnet_depth", "8", "--device", "cpu", "--json")
    quick = cli("bench", *config, "--quick", check=True)
    assert timed.pop() == (False, 1, 3, 1) and "compiling" not in quick.stderr
    cli("bench", *config, "--quick", "--compile", "true", "--windows", "2", check=True)
    assert timed.pop() == (True, 1, 3, 2)  # what is given wins
    default = cli("bench", *config, check=True)
    assert timed.pop() == (True, 3, 10, 3)
    assert ("bench: compiling the training step first, as `train --compile auto` does for a run of 48,000 "
            "iterations (a long warm-up on a CPU); --quick for a quick look without it") in default.stderr
    helped = " ".join(cli("bench", "--help").stdout.split())
    assert "steps per timed window (default: 10; --quick: 3)" in helped


def test_bench_table_and_bad_flags(cli):
    table = cli("bench", "--data_name", "Digits_x32", "--resnet_depth", "8", "--batch_size", "16",
                "--optim_ni", "400", "--device", "cpu", "--warmup", "0", "--iters", "1", "--windows", "1",
                check=True).stdout
    assert "images/s" in table and "fraction of peak" in table
    # The default --compile auto leaves a 400-iteration CPU run eager, and the bench says which run it times.
    assert "a run of 400 iterations, which `train --compile auto` runs eager" in table
    proc = cli("bench", "--iters", "0")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --iters")


def test_bench_warns_when_its_windows_spread():
    from resbench.bench.measure import spread_warning

    steady = {"images_per_sec": 100.0, "images_per_sec_min": 95.0, "images_per_sec_max": 110.0}
    shaky = {**steady, "images_per_sec_min": 70.0}
    assert spread_warning(steady) is None
    assert "spread 40% (70.0 to 110.0 images/s), more than 20%" in spread_warning(shaky)


def test_bench_runs_with_threads_and_dashed_flags(cli, tmp_path):
    proc = cli("bench", "--device", "cpu", "--data-name", "Digits_x32", "--resnet-depth", "8", "--batch-size",
               "8", "--warmup", "0", "--iters", "1", "--windows", "1", "--threads", "1", "--compile", "false", "--json",
               check=True)
    assert json.loads(proc.stdout)["threads"] == 1


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
