"""A model small enough to train in seconds on a CPU, for tests and the quickstart notebook.

One TPU chip holds its batch many times over (`flaxlm-info --config=tiny --config.model.vocab_size=65
--compile_for=v5e-1` compiles its train step for one).
"""

import ml_collections

from flaxlm.configs import base

TPU_SLICE = 'v5e-1'  # The smallest slice: the batch of 8 x 16 tokens takes a few MiB.


def get_config() -> ml_collections.ConfigDict:
  """Returns 2 layers of width 32 with context 16, trained for 20 steps."""
  config = base.get_config()
  config.model.num_layers = 2
  config.model.num_heads = 4
  config.model.num_kv_heads = 2
  config.model.width = 32
  config.model.max_length = 16
  config.train.steps = 20
  config.train.batch_size = 8
  config.train.warmup_steps = 2
  config.train.eval_every = 10
  config.train.eval_batches = 2
  config.train.log_every = 5
  config.train.checkpoint_every = 10
  return config
