"""Training: the train step, the loop, sharding, checkpoints, metrics, loading a trained model; commands/ holds the
flaxlm-* commands."""
