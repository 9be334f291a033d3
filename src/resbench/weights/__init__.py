"""Exported weights: the folder `resbench export` writes (model.safetensors, config.json, a model card), read
back as a model by `resbench.load_model` and `resbench eval` without a run folder, a pickle or training code."""
