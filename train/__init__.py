"""Training: the train step and its loss, the loop, the optimizer, sharding, checkpoints, metrics. use/ holds what
is done with a trained model (loading it, exporting it, converting it to and from Hugging Face), plan/ the tools that
size a run before it starts (the estimator, the TPU compile check, the hardware table), commands/ the flaxlm-*
commands."""
