"""Datasets: their facts, the prepared arrays as device tensors, batched augmentation, evaluation-only sets,
imported ones; fetch/ downloads and prepares them, recipes/ reads each official archive."""
