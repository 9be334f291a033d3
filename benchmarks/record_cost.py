"""What recording like the reference costs: per-step statistics, and the test split at every evaluation.

    PYTHONPATH=src python benchmarks/record_cost.py [--device cpu] [--resnet_depth 20] [--iters 5] [--windows 5]

1. The training step with and without `StepStats` (the weight norm and the norm of g + wd·p of
   every step, summed on the device), timed in interleaved windows as `resbench bench --vs` does,
   so both see the same background load; and `StepStats.add` alone, timed over many calls, which
   is the cost itself without the noise of whole steps.
2. One evaluation of a test split of the real size (10,000 generated images), against the
   training time of the `eval_every` = 1,000 steps between two evaluations (from step 1's
   figure): scoring the test split at every evaluation instead of only where validation improved
   adds at most this fraction to a run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from resbench.bench.measure import build_model, generated_batches, optimised_trainer, summarise, timed_windows
from resbench.data.facts import dataset_spec
from resbench.device import hotpath
from resbench.evaluate.metrics import evaluate, reports_top5
from resbench.settings.config import TrainConfig, precision_for, resolve_device
from resbench.train.checks import validate_config
from resbench.train.resume import RunState
from resbench.train.step import StepStats

TEST_SIZE = 10_000
EVAL_EVERY = 1_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data_name", default="CIFAR10_x32")
    parser.add_argument("--resnet_depth", type=int, default=20)
    parser.add_argument("--compile", default="false", help="auto | true | false (default false: eager steps)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--evals", type=int, default=3, help="timed test evaluations (median reported)")
    parser.add_argument("--adds", type=int, default=200, help="timed StepStats.add calls")
    args = parser.parse_args()
    cfg = TrainConfig(data_name=args.data_name, resnet_depth=args.resnet_depth, device=args.device,
                      compile=args.compile)
    validate_config(cfg)
    device = resolve_device(cfg.device)
    batches = generated_batches(cfg, device)
    trainers = [optimised_trainer(cfg, device, batches, step_stats=True),
                optimised_trainer(cfg, device, batches, step_stats=False)]
    seconds, _ = timed_windows(trainers, device, args.warmup, args.iters, args.windows, probe=lambda: 0.0)
    with_stats, without = (summarise(seconds[t.name], args.iters, cfg.batch_size) for t in trainers)

    spec = dataset_spec(cfg.data_name)
    model = hotpath.prepare_model(build_model(cfg), device)
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    stats = StepStats(RunState(), device)
    stats.add(params, cfg.optim_weight_decay, 0.1)
    hotpath.sync(device)
    start = time.perf_counter()
    for _ in range(args.adds):
        stats.add(params, cfg.optim_weight_decay, 0.1)
    hotpath.sync(device)
    add_ms = 1000 * (time.perf_counter() - start) / args.adds

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (TEST_SIZE, spec.image_size, spec.image_size, 3), dtype=torch.uint8,
                           generator=gen).to(device)
    labels = torch.randint(0, spec.num_classes, (TEST_SIZE,), generator=gen).to(device)
    autocast = hotpath.autocast_for(precision_for(cfg.mixed_precision, device), device)
    eval_seconds = []
    for _ in range(args.evals + 1):  # the first warms up
        hotpath.sync(device)
        start = time.perf_counter()
        evaluate(model, images, labels, autocast, top5=reports_top5(spec.num_classes))
        hotpath.sync(device)
        eval_seconds.append(time.perf_counter() - start)
    test_eval = statistics.median(eval_seconds[1:])
    interval = EVAL_EVERY * with_stats["ms_per_step"] / 1000
    print(json.dumps({
        "device": str(device), "threads": torch.get_num_threads(), "data_name": cfg.data_name,
        "depth": cfg.resnet_depth, "batch_size": cfg.batch_size,
        "ms_per_step_with_stats": with_stats["ms_per_step"], "ms_per_step_without_stats": without["ms_per_step"],
        "step_stats_cost": with_stats["ms_per_step"] / without["ms_per_step"] - 1,
        "step_stats_add_ms": add_ms, "step_stats_add_fraction": add_ms / without["ms_per_step"],
        "windows_with_stats": with_stats["window_images_per_sec"], "windows_without": without["window_images_per_sec"],
        "test_eval_seconds": test_eval, "train_seconds_per_1000_steps": interval,
        "test_every_eval_cost": test_eval / interval,
    }, indent=2))


if __name__ == "__main__":
    main()
