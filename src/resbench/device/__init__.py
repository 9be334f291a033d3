"""How a run uses its device: the hot path's speed choices, data parallelism, memory limits, CPU
threads, and BatchNorm statistics across processes."""
