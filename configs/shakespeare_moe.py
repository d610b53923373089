"""shakespeare_char made sparse: each MLP 8 experts of half its width, each character routed to 2 of them, so a token
computes with as many parameters as in the dense model (its active parameters) while the layers hold four times its
MLP weights.

  flaxlm-train --config=shakespeare_moe --workdir=/tmp/moe

benchmarks/RESULTS.md compares its validation loss with shakespeare_char's on the same tokens. On a TPU, one chip
holds its batch many times over (TPU_SLICE).
"""

import ml_collections

from flaxlm.configs import shakespeare_char

TPU_SLICE = 'v5e-1'  # One v5e chip: the train step needs a few MiB of its 15.75 GiB.


def get_config() -> ml_collections.ConfigDict:
  """Returns shakespeare_char with 8 experts of width 192 in each layer (its MLP's 384 / 2), 2 a token."""
  config = shakespeare_char.get_config()
  config.model.num_experts = 8
  config.model.experts_per_token = 2
  config.model.expert_width = 192
  return config
