"""The settings of a run: TrainConfig and the train flags that fill it; the floor every other package stands on."""
