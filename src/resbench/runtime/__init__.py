"""How a run uses its device: speed choices, data parallelism, memory limits, fp16 loss scale, BatchNorm statistics, threads, progress."""
