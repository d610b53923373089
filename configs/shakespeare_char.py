"""nanoGPT's CPU recipe: a small character-level model of Shakespeare, trained on the text flaxlm ships.

  flaxlm-train --config=shakespeare_char --workdir=/tmp/run

On a TPU, one chip holds its batch of 12 x 64 characters many times over (TPU_SLICE).
"""

import ml_collections

from flaxlm.configs import base

TPU_SLICE = 'v5e-1'  # One v5e chip: the train step needs a few MiB of its 15.75 GiB.


def get_config() -> ml_collections.ConfigDict:
  """Returns 4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps of AdamW (lr 1e-3 -> 1e-4)."""
  config = base.get_config()
  config.data.path = 'flaxlm:tinyshakespeare'  # installed with flaxlm; --config.data.path=FILE for another text.
  config.model.num_layers = 4
  config.model.num_heads = 4
  config.model.width = 128
  config.model.max_length = 64
  config.model.dropout = 0.0
  config.model.scan_layers = False  # Four layers compile fast unrolled, and run faster so on CPU.
  config.train.steps = 2000
  config.train.batch_size = 12
  config.train.learning_rate = 1e-3
  config.train.min_learning_rate = 1e-4
  config.train.warmup_steps = 100
  config.train.beta2 = 0.99
  config.train.eval_every = 250
  return config
