"""Text in, token batches out: tokenizers, text sources and the batches the train loop reads."""
