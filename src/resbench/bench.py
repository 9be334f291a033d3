"""`resbench bench`: training throughput of one configuration, measured against the device's peak.

The timed loop is the training loop's own hot path (TrainBatches augmentation, `train_step`,
device-side loss accumulation, one synchronisation per window as at a logging point) on random
uint8 images of the dataset's shape, so the figure is what `resbench train` gets between
evaluations. The "fraction of peak" divides the model's counted FLOPs (FlopCounterMode over one
forward and backward) by a matrix product timed in the same process, so both numbers share the
machine's state (other processes, clocks, threads) rather than a datasheet.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import cpus, data, hotpath, models
from .config import ConfigError, TrainConfig, precision_for, resolve_device, validate_config
from .hotpath import autocast_for, sync
from .lossscale import ConstantLossScale
from .train import learning_rate, train_step

BENCH_POOL = 2_048  # generated training images; enough for several distinct batches
SPREAD_LIMIT = 0.2  # (max - min) / median images/s over the windows beyond which the figure is shaky


@dataclass
class Trainer:
    """One way of running training steps: `step(i)` runs iteration i and returns the device loss."""

    name: str
    step: Callable[[int], torch.Tensor]


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig the benchmark mirrors (a full 48k-iteration row unless --optim_ni says otherwise)."""
    cfg = TrainConfig(data_name=args.data_name, resnet_depth=args.resnet_depth, resnet_width=args.resnet_width,
                      batch_size=args.batch_size, mixed_precision=args.mixed_precision, compile=args.compile,
                      device=args.device, optim_ni=args.optim_ni)
    validate_config(cfg)
    return cfg


def generated_batches(cfg: TrainConfig, device: torch.device) -> data.TrainBatches:
    """Random uint8 images in the dataset's shape, through the real augmentation path."""
    spec = data.dataset_spec(cfg.data_name)
    gen = torch.Generator().manual_seed(0)
    count = max(BENCH_POOL, cfg.batch_size)
    images = torch.randint(0, 256, (count, spec.image_size, spec.image_size, 3), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, spec.num_classes, (count,), generator=gen)
    return data.TrainBatches(images.to(device), labels.to(device), cfg.batch_size, cfg.seed)


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    spec = data.dataset_spec(cfg.data_name)
    torch.manual_seed(cfg.seed)
    return models.resnet(cfg.resnet_depth, cfg.resnet_width, spec.num_classes, spec.image_size)


def optimised_trainer(cfg: TrainConfig, device: torch.device, batches: data.TrainBatches) -> Trainer:
    """The hot path `resbench train` runs: every choice of `hotpath` applied."""
    precision = precision_for(cfg.mixed_precision, device)
    model = hotpath.prepare_model(build_model(cfg), device)
    optimizer = hotpath.make_optimizer(model, cfg.optim_momentum, cfg.optim_weight_decay, device)
    compiled = hotpath.use_compile(cfg.compile, device, cfg.optim_ni)
    step_model = hotpath.step_model_of(model, compiled, device)
    scaler = ConstantLossScale(device, enabled=precision == "fp16")
    autocast = autocast_for(precision, device)

    def step(i: int) -> torch.Tensor:
        images, labels = batches.batch(i)
        return train_step(step_model, optimizer, scaler, images, labels, learning_rate(i, cfg), cfg, autocast)[0]

    return Trainer(f"resbench{' compiled' if compiled else ''}", step)


def plain_trainer(cfg: TrainConfig, device: torch.device, batches: data.TrainBatches) -> Trainer:
    """The textbook eager step: NCHW model and input, default SGD, no compile; the `--vs` baseline."""
    precision = precision_for(cfg.mixed_precision, device)
    model = build_model(cfg).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=cfg.optim_momentum,
                                weight_decay=cfg.optim_weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_for(precision, device)

    def step(i: int) -> torch.Tensor:
        images, labels = batches.batch(i)
        with autocast:
            logits = model(images.contiguous())
        loss = F.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return Trainer("plain eager", step)


def timed_windows(trainers: list[Trainer], device: torch.device, warmup: int, iters: int, windows: int,
                  probe: Callable[[], float]) -> tuple[dict[str, list[float]], list[float]]:
    """Seconds per window of `iters` steps for each trainer, and one `probe()` per round.

    Trainers' windows are interleaved, and the probe (the matmul peak) runs in every round, so
    all of them see the same background load on a shared machine. A window ends with one
    synchronisation (reading the accumulated loss), as a logging point of the training loop does.
    """
    for trainer in trainers:
        for i in range(warmup):
            trainer.step(i)
        sync(device)
    seconds: dict[str, list[float]] = {t.name: [] for t in trainers}
    probes = []
    for window in range(windows):
        first = window * iters
        for trainer in trainers:
            loss_sum = torch.zeros((), device=device)
            start = time.perf_counter()
            for i in range(first, first + iters):
                loss_sum += trainer.step(i)
            loss_sum.item()
            seconds[trainer.name].append(time.perf_counter() - start)
        probes.append(probe())
    return seconds, probes


def step_flops(cfg: TrainConfig, device: torch.device, batches: data.TrainBatches) -> float:
    """FLOPs of one training step (forward and backward), counted by FlopCounterMode."""
    model = hotpath.prepare_model(build_model(cfg), device)
    images, labels = batches.batch(0)
    with FlopCounterMode(display=False) as counter:
        with autocast_for(precision_for(cfg.mixed_precision, device), device):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, tf32: bool, reps: int = 2) -> float:
    """FLOP/s of the best of `reps` square matrix products: the device's practical ceiling.

    `tf32`: let the fp32 product use TF32 tensor cores, as cuDNN's fp32 convolutions do by default.
    """
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    inner = 20 if device.type == "cuda" else 1
    best = float("inf")
    saved_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        for _ in range(reps + 1):  # the first product warms up the library
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync(device)
            best = min(best, (time.perf_counter() - start) / inner)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return 2 * n**3 / best


def peak_dtype(precision: str, device: torch.device) -> tuple[torch.dtype, bool, str]:
    """The dtype the convolutions compute in: (dtype, TF32 allowed, name for the report)."""
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    tf32 = device.type == "cuda" and precision == "fp32" and torch.backends.cudnn.allow_tf32
    return dtype, tf32, "tf32" if tf32 else precision


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak; CPU: the process's peak resident set (whole process)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def summarise(seconds: list[float], iters: int, batch_size: int) -> dict[str, Any]:
    """Median and spread over windows; images/s and ms/step both from the median window time."""
    rates = [iters * batch_size / s for s in seconds]
    return {
        "images_per_sec": iters * batch_size / statistics.median(seconds),
        "images_per_sec_min": min(rates),
        "images_per_sec_max": max(rates),
        "ms_per_step": 1000 * statistics.median(seconds) / iters,
        "window_images_per_sec": [round(r, 1) for r in rates],
    }


def run_bench(cfg: TrainConfig, warmup: int, iters: int, windows: int, vs: bool) -> dict[str, Any]:
    """Measure the configuration (and the plain baseline with `vs`); returns the JSON record."""
    device = resolve_device(cfg.device)
    precision = precision_for(cfg.mixed_precision, device)
    hotpath.warn_if_slow_precision(precision, device)
    batches = generated_batches(cfg, device)
    trainers = [optimised_trainer(cfg, device, batches)]
    if vs:
        trainers.append(plain_trainer(cfg, device, batches))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dtype, tf32, peak_name = peak_dtype(precision, device)
    memory: list[int] = []

    def probe() -> float:
        memory.append(peak_memory_bytes(device))  # read before the matrices add to it
        return matmul_peak(device, dtype, tf32)

    start = time.perf_counter()
    seconds, peaks = timed_windows(trainers, device, warmup, iters, windows, probe)
    elapsed = time.perf_counter() - start
    flops_per_image = step_flops(cfg, device, batches) / cfg.batch_size
    peak = statistics.median(peaks)
    results = {t.name: summarise(seconds[t.name], iters, cfg.batch_size) for t in trainers}
    main = results[trainers[0].name]
    record = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "data_name": cfg.data_name, "depth": cfg.resnet_depth, "width": cfg.resnet_width,
        "batch_size": cfg.batch_size, "precision": precision,
        "compile": hotpath.use_compile(cfg.compile, device, cfg.optim_ni),
        "warmup": warmup, "iters": iters, "windows": windows,
        **main,
        "minutes_per_48k_iters": 48_000 * main["ms_per_step"] / 60_000,
        "peak_memory_mb": memory[0] / 2**20,  # training's peak, reached in warm-up and window 1
        "gflop_per_image": flops_per_image / 1e9,
        "achieved_tflops": main["images_per_sec"] * flops_per_image / 1e12,
        "matmul_peak_tflops": peak / 1e12,  # median over the windows' rounds
        "matmul_peak_dtype": peak_name,
        "fraction_of_peak": main["images_per_sec"] * flops_per_image / peak,
        "bench_seconds": elapsed,
    }
    if vs:
        baseline = results["plain eager"]
        record["baseline"] = baseline
        record["speedup_vs_baseline"] = main["images_per_sec"] / baseline["images_per_sec"]
    return record


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.backends.cpu.get_cpu_capability()})"


def format_table(record: dict[str, Any]) -> str:
    """The record as an aligned two-column table, for people."""
    rows = [
        ("device", f"{record['device']}, {record['threads']} threads, torch {record['torch']}"),
        ("configuration", f"{record['data_name']} depth {record['depth']} width {record['width']} "
                          f"batch {record['batch_size']} {record['precision']}"
                          f"{' compiled' if record['compile'] else ''}"),
        ("images/s", f"{record['images_per_sec']:.1f} (median of {record['windows']} windows, "
                     f"{record['images_per_sec_min']:.1f}..{record['images_per_sec_max']:.1f})"),
        ("ms/step", f"{record['ms_per_step']:.2f}"),
        ("48k iterations", f"{record['minutes_per_48k_iters']:.1f} min"),
        ("peak memory", f"{record['peak_memory_mb']:.0f} MiB"),
        ("model FLOPs", f"{record['gflop_per_image']:.3f} GFLOP/image (fwd+bwd, counted)"),
        ("achieved", f"{record['achieved_tflops'] * 1e3:.1f} GFLOP/s"),
        ("matmul peak", f"{record['matmul_peak_tflops'] * 1e3:.1f} GFLOP/s ({record['matmul_peak_dtype']})"),
        ("fraction of peak", f"{100 * record['fraction_of_peak']:.1f}%"),
    ]
    if "baseline" in record:
        rows.append(("plain eager", f"{record['baseline']['images_per_sec']:.1f} images/s "
                                    f"({record['speedup_vs_baseline']:.2f}x speed-up)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def spread_warning(record: dict[str, Any]) -> str | None:
    """A warning when the timed windows disagree by more than SPREAD_LIMIT: the figure is then shaky."""
    spread = (record["images_per_sec_max"] - record["images_per_sec_min"]) / record["images_per_sec"]
    if spread <= SPREAD_LIMIT:
        return None
    return (f"warning: the timed windows spread {100 * spread:.0f}% ({record['images_per_sec_min']:.1f} to "
            f"{record['images_per_sec_max']:.1f} images/s), more than {100 * SPREAD_LIMIT:.0f}%: the machine was "
            "not steady (other processes, clock changes). Rerun on a quiet machine, or with more --windows "
            "and --iters")


def run_bench_command(args: argparse.Namespace) -> int:
    """`resbench bench` (its flags are defined in cli.py, so that `--help` does not load torch)."""
    for name, least in (("warmup", 0), ("iters", 1), ("windows", 1), ("threads", 1)):
        if getattr(args, name) is not None and getattr(args, name) < least:
            raise ConfigError(f"--{name} must be an integer >= {least}, got {getattr(args, name)}")
    if busy := cpus.busy_warning():
        print(busy, file=sys.stderr)
    cpus.use_threads(args.threads)
    record = run_bench(bench_config(args), args.warmup, args.iters, args.windows, args.vs)
    print(json.dumps(record, indent=2) if args.json else format_table(record))
    if warning := spread_warning(record):
        print(warning, file=sys.stderr)
    return 0
