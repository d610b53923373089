"""Using a trained model: loading a run, an export or a converted model (pretrained.py), exporting its params
(export.py), and converting to and from Hugging Face checkpoints (convert.py)."""
