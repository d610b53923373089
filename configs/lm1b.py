"""A SentencePiece language model of the One Billion Word benchmark (lm1b), read from TFDS.

Train its tokenizer first (where the machine can download lm1b):

  flaxlm-tokenizer train --input=tfds:lm1b --vocab_size=32000 --model_type=bpe --output=lm1b.model
  flaxlm-train --config=lm1b --workdir=/tmp/lm1b

lm1b's sentences are short, so many are packed into each 128-token example (separated by EOS).

On a TPU v5e-4 the batch of 256 is split 64 a chip (data parallelism over the 4).
"""

import ml_collections

from flaxlm.configs import base

TPU_SLICE = 'v5e-4'  # 64 sequences of 128 tokens a chip (flaxlm-info --compile_for=v5e-4 prints the memory).


def get_config() -> ml_collections.ConfigDict:
  """Returns a 6-layer, width-512 model with 8 heads (2 key/value heads) on 128-token lm1b examples."""
  config = base.get_config()
  config.data.path = 'tfds:lm1b'
  config.data.tokenizer = 'lm1b.model'
  config.model.num_layers = 6
  config.model.num_heads = 8
  config.model.num_kv_heads = 2
  config.model.width = 512
  config.model.max_length = 128
  config.model.dtype = 'bfloat16'
  config.train.steps = 100_000
  config.train.batch_size = 256
  config.train.learning_rate = 3e-4
  config.train.min_learning_rate = 3e-5
  config.train.warmup_steps = 2000
  config.train.beta2 = 0.95
  config.train.eval_every = 2000
  config.train.eval_batches = 20
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  return config
