"""`resbench bench`: training throughput of one configuration, measured against the device's peak.

The timed loop is the training loop's own hot path (TrainBatches augmentation, `train_step` with
its per-step statistics, device-side loss accumulation, one synchronisation per window as at a
logging point) on random uint8 images of the dataset's shape, so the figure is what `resbench train`
gets between evaluations. The "fraction of peak" divides the model's counted FLOPs (FlopCounterMode over one
forward and backward) by a matrix product timed in the same process, so both numbers share the
machine's state (other processes, clocks, threads) rather than a datasheet.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from resbench.data.batches import TrainBatches
from resbench.data.facts import dataset_spec
from resbench.device import hotpath
from resbench.device.hotpath import autocast_for, sync
from resbench.errors import ResbenchError
from resbench.evaluate.metrics import EVAL_BATCH_SIZE, eval_batch_size, predict_logits
from resbench.models import packed
from resbench.models.resnet import resnet
from resbench.results.reference import published_row
from resbench.settings.config import ConfigError, TrainConfig, learning_rate, precision_for, resolve_device
from resbench.settings.flags import given_flags, parse_train_flags
from resbench.train.assemble import config_from
from resbench.train.checks import validate_config
from resbench.train.resume import RunState
from resbench.train.step import StepStats, build_job

BENCH_POOL = 2_048  # generated training images; enough for several distinct batches
SPREAD_LIMIT = 0.2  # (max - min) / median images/s over the windows beyond which the figure is shaky


@dataclass
class Trainer:
    """One way of running training steps: `step(i)` runs iteration i and returns the device loss."""

    name: str
    step: Callable[[int], torch.Tensor]
    runs: int = 1  # runs one step trains (packed seeds); images per step = runs × batch size


def bench_config(given: dict[str, Any], compile_choice: str, device: str, optim_ni: int) -> TrainConfig:
    """The TrainConfig the benchmark mirrors (a full 48k-iteration row unless `optim_ni` says otherwise):
    train's defaults, with the `given` settings of CONFIG_FLAGS."""
    cfg = TrainConfig(**given, compile=compile_choice, device=device, optim_ni=optim_ni)
    validate_config(cfg)
    return cfg


def will_compile(cfg: TrainConfig) -> bool:
    """Whether the benchmark's step is compiled, as `train` would decide for the run it mirrors."""
    return hotpath.use_compile(cfg.compile, resolve_device(cfg.device), cfg.optim_ni)


def generated_batches(cfg: TrainConfig, device: torch.device) -> TrainBatches:
    """Random uint8 images in the dataset's shape, through the real augmentation path."""
    spec = dataset_spec(cfg.data_name, cfg.data_root)
    gen = torch.Generator().manual_seed(0)
    count = max(BENCH_POOL, cfg.batch_size)
    images = torch.randint(0, 256, (count, spec.image_size, spec.image_size, 3), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, spec.num_classes, (count,), generator=gen)
    return TrainBatches(images.to(device), labels.to(device), cfg.batch_size, cfg.seed)


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    spec = dataset_spec(cfg.data_name, cfg.data_root)
    torch.manual_seed(cfg.seed)
    return resnet(cfg.resnet_depth, cfg.resnet_width, spec.num_classes, spec.image_size)


def optimised_trainer(cfg: TrainConfig, device: torch.device, batches: TrainBatches,
                      step_stats: bool = True) -> Trainer:
    """The hot path `resbench train` runs, built by the same `build_job` (and, unless `step_stats`
    is off, with the per-step statistics the loop accumulates)."""
    job = build_job(cfg, dataset_spec(cfg.data_name, cfg.data_root), batches, device,
                    precision_for(cfg.mixed_precision, device))
    stats = StepStats(RunState(), device) if step_stats else None

    def step(i: int) -> torch.Tensor:
        return job.step(i, stats)[0]

    return Trainer(f"resbench{' compiled' if job.compiled else ''}{'' if step_stats else ' without step statistics'}",
                   step)


def plain_trainer(cfg: TrainConfig, device: torch.device, batches: TrainBatches) -> Trainer:
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


def packed_trainer(cfg: TrainConfig, device: torch.device, batches: TrainBatches, runs: int) -> Trainer:
    """`runs` seeds of the configuration packed into one network (packed.py): one step trains all of
    them, each on its own data order and augmentation. The `--pack` candidate for filling a GPU."""
    precision = precision_for(cfg.mixed_precision, device)
    if reason := packed.packable(precision, cfg.optim_global_clipping, cfg.bn_groups):
        raise ConfigError(f"--pack: runs with these settings cannot be packed ({reason})")
    seeds = [cfg.seed + i for i in range(runs)]
    pool = [TrainBatches(batches.images, batches.labels, cfg.batch_size, seed) for seed in seeds]
    model = packed.pack([build_model(dataclasses.replace(cfg, seed=seed)) for seed in seeds])
    model = hotpath.prepare_model(model, device)
    optimizer = hotpath.make_optimizer(model, cfg.optim_momentum, cfg.optim_weight_decay, device)
    step_model = hotpath.step_model_of(model, hotpath.use_compile(cfg.compile, device, cfg.optim_ni), device)
    autocast = autocast_for(precision, device)

    def step(i: int) -> torch.Tensor:
        pairs = [b.batch(i) for b in pool]
        return packed.packed_step(step_model, optimizer, [x for x, _ in pairs], [y for _, y in pairs],
                                  learning_rate(i, cfg), cfg.optim_label_smoothing, autocast)

    return Trainer(f"{runs} runs packed", step, runs)


def timed_windows(trainers: list[Trainer], device: torch.device, warmup: int, iters: int, windows: int,
                  probe: Callable[[], float]) -> tuple[dict[str, list[float]], list[float], float]:
    """Seconds per window of `iters` steps for each trainer, one `probe()` per round, and the
    seconds the first trainer's warm-up took (compilation happens there).

    Trainers' windows are interleaved, and the probe (the matmul peak) runs in every round, so
    all of them see the same background load on a shared machine. A window ends with one
    synchronisation (reading the accumulated loss), as a logging point of the training loop does.
    """
    warmup_seconds = []
    for trainer in trainers:
        start = time.perf_counter()
        for i in range(warmup):
            trainer.step(i)
        sync(device)
        warmup_seconds.append(time.perf_counter() - start)
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
    return seconds, probes, warmup_seconds[0]


def step_flops(cfg: TrainConfig, device: torch.device, batches: TrainBatches) -> float:
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


def run_bench(cfg: TrainConfig, warmup: int, iters: int, windows: int, vs: bool, pack: int = 1) -> dict[str, Any]:
    """Measure the configuration (and the plain baseline with `vs`, and `pack` seeds packed into
    one network when `pack` > 1); returns the JSON record."""
    device = resolve_device(cfg.device)
    precision = precision_for(cfg.mixed_precision, device)
    hotpath.warn_if_slow_precision(precision, device)
    batches = generated_batches(cfg, device)
    trainers = [optimised_trainer(cfg, device, batches)]
    if vs:
        trainers.append(plain_trainer(cfg, device, batches))
    if pack > 1:
        trainers.append(packed_trainer(cfg, device, batches, pack))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dtype, tf32, peak_name = peak_dtype(precision, device)
    memory: list[int] = []

    def probe() -> float:
        memory.append(peak_memory_bytes(device))  # read before the matrices add to it
        return matmul_peak(device, dtype, tf32)

    start = time.perf_counter()
    seconds, peaks, warmup_seconds = timed_windows(trainers, device, warmup, iters, windows, probe)
    elapsed = time.perf_counter() - start
    flops_per_image = step_flops(cfg, device, batches) / cfg.batch_size
    peak = statistics.median(peaks)
    results = {t.name: summarise(seconds[t.name], iters, t.runs * cfg.batch_size) for t in trainers}
    main = results[trainers[0].name]
    record = {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "data_name": cfg.data_name, "depth": cfg.resnet_depth, "width": cfg.resnet_width,
        "batch_size": cfg.batch_size, "precision": precision, "bn_groups": cfg.bn_groups,
        "compile": hotpath.use_compile(cfg.compile, device, cfg.optim_ni),
        "compile_choice": hotpath.parse_compile(cfg.compile), "optim_ni": cfg.optim_ni,  # the run it mirrors
        "warmup": warmup, "iters": iters, "windows": windows,
        "warmup_seconds": warmup_seconds,
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
    if pack > 1:
        together = results[trainers[-1].name]  # images/s of all the packed runs together
        record["packed"] = {"runs": pack, **together,
                            "speedup_vs_one_run": together["images_per_sec"] / main["images_per_sec"]}
    return record


# ---------------------------------------------------------------- a whole grid (`--grid seed`)

def grid_configs(grid: str, device: str, compile_choice: str) -> list[TrainConfig]:
    """Each distinct configuration of a sweep grid as `resbench sweep` would train it, checked as
    `train` checks it. Rows that differ only in their seed run at the same speed: timed once."""
    from resbench.sweep.grid import load_grid  # sweep's grids; sweep does not import bench

    configs: dict[tuple, TrainConfig] = {}
    for flags in load_grid(grid):
        try:
            cfg = config_from(given_flags(parse_train_flags(flags)))
        except ResbenchError as exc:
            raise ConfigError(f"grid {grid}: {exc}") from None
        cfg = dataclasses.replace(cfg, device=device, compile=compile_choice, seed=TrainConfig.seed,
                                  save=None, tensorboard=False)
        validate_config(cfg)
        configs.setdefault(tuple(sorted(dataclasses.asdict(cfg).items())), cfg)
    return list(configs.values())


def evaluations_of(cfg: TrainConfig) -> int:
    """How many evaluations a run makes: every `eval_every` iterations and one at the last."""
    return cfg.optim_ni // cfg.eval_every + (1 if cfg.optim_ni % cfg.eval_every else 0)


def eval_images_per_sec(cfg: TrainConfig, device: torch.device, images: int = 2 * EVAL_BATCH_SIZE) -> float:
    """Images/s of the evaluation path (BatchNorm in inference mode, the run's evaluation batch and
    autocast), timed over `images` generated images after one warm-up batch."""
    spec = dataset_spec(cfg.data_name, cfg.data_root)
    model = hotpath.prepare_model(build_model(cfg), device)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (images, spec.image_size, spec.image_size, 3), dtype=torch.uint8, generator=gen)
    pixels = pixels.to(device)
    autocast = autocast_for(precision_for(cfg.mixed_precision, device), device)
    batch_size = eval_batch_size(device)
    predict_logits(model, pixels[:batch_size], batch_size, autocast)
    sync(device)
    start = time.perf_counter()
    predict_logits(model, pixels, batch_size, autocast)
    sync(device)
    return images / (time.perf_counter() - start)


def bench_row(cfg: TrainConfig, warmup: int, iters: int, windows: int) -> dict[str, Any]:
    """One grid row: training images/s after warm-up, evaluation images/s, and what a whole run costs,
    beside what the reference's run of the row took on its GPUs (its published wall time, scaled to
    the row's iterations and batch; None where it has no such row).

    The run's minutes are measured rates times known counts: `optim_ni` steps of `batch_size`
    images, plus every evaluation's validation and test images (the test split counted at every
    evaluation, an upper bound), plus the measured warm-up (compilation, CUDA-graph capture).
    """
    device = resolve_device(cfg.device)
    spec = dataset_spec(cfg.data_name, cfg.data_root)
    record = run_bench(cfg, warmup, iters, windows, vs=False)
    eval_rate = eval_images_per_sec(cfg, device)
    eval_images = evaluations_of(cfg) * spec.images_per_evaluation
    train_minutes = cfg.optim_ni * cfg.batch_size / record["images_per_sec"] / 60
    eval_minutes = eval_images / eval_rate / 60
    setup_minutes = record["warmup_seconds"] / 60
    reference = published_row(cfg.data_name, cfg.resnet_depth, cfg.resnet_width, record["precision"])
    return {
        "data_name": cfg.data_name, "depth": cfg.resnet_depth, "width": cfg.resnet_width,
        "precision": record["precision"], "compile": record["compile"], "batch_size": cfg.batch_size,
        "optim_ni": cfg.optim_ni, "evaluations": evaluations_of(cfg),
        "images_per_sec": record["images_per_sec"], "window_images_per_sec": record["window_images_per_sec"],
        "ms_per_step": record["ms_per_step"], "eval_images_per_sec": eval_rate,
        "warmup_seconds": record["warmup_seconds"], "peak_memory_mb": record["peak_memory_mb"],
        "train_minutes": train_minutes, "eval_minutes": eval_minutes,
        "run_minutes": setup_minutes + train_minutes + eval_minutes, "bn_groups": cfg.bn_groups,
        "reference_minutes": None if reference is None else reference.minutes_for(cfg.optim_ni, cfg.batch_size),
        "reference_devices": None if reference is None else reference.devices,
    }


def run_grid(grid: str, device: str, compile_choice: str, warmup: int, iters: int, windows: int,
             report: Callable[[dict[str, Any]], None] = lambda row: None) -> dict[str, Any]:
    """Every row of `grid` benchmarked in turn (`report` sees each as it is done), and the total."""
    configs = grid_configs(grid, device, compile_choice)
    result = {"grid": grid, "device": device_name(resolve_device(device)), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "warmup": warmup, "iters": iters, "windows": windows, "rows": []}
    for cfg in configs:
        # Each row is a new network whose forward dynamo would add to the same code object's cache;
        # past its recompile limit (8) it silently runs eager. Forget the previous rows' graphs.
        torch._dynamo.reset()
        result["rows"].append(bench_row(cfg, warmup, iters, windows))
        report(result["rows"][-1])
    result["total_minutes"] = sum(row["run_minutes"] for row in result["rows"])
    result["reference_minutes"] = sum(row.get("reference_minutes") or 0.0 for row in result["rows"])
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.backends.cpu.get_cpu_capability()})"


def spread_warning(record: dict[str, Any]) -> str | None:
    """A warning when the timed windows disagree by more than SPREAD_LIMIT: the figure is then shaky."""
    spread = (record["images_per_sec_max"] - record["images_per_sec_min"]) / record["images_per_sec"]
    if spread <= SPREAD_LIMIT:
        return None
    return (f"warning: the timed windows spread {100 * spread:.0f}% ({record['images_per_sec_min']:.1f} to "
            f"{record['images_per_sec_max']:.1f} images/s), more than {100 * SPREAD_LIMIT:.0f}%: the machine was "
            "not steady (other processes, clock changes). Rerun on a quiet machine, or with more --windows "
            "and --iters")
