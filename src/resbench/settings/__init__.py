"""The settings of a run: TrainConfig, the one schema of the train flags and config.json."""
