"""Training: the train step, the loop, sharding, checkpoints, metrics and the command-line entry points."""
