"""Mixtral-8x7B's shape (46,702,792,704 parameters, 12,879,925,248 active per token): 32 layers of Mistral-7B's
attention, each MLP 8 SwiGLU experts of width 14,336 of which the router picks 2 per token.

Fine-tune the released model (flaxlm-convert --from_hf=Mixtral-8x7B-v0.1 --output=/tmp/mixtral, then
--config.train.init_from=/tmp/mixtral) or train its shape from scratch:

  flaxlm-train --config=mixtral_8x7b --config.data.tokenizer=tokenizer.model --config.data.path=corpus/*.jsonl \
      --workdir=/tmp/mixtral_8x7b

Its batch fits a TPU v5p-64 (TPU_SLICE, 32 chips of 95 GiB): the experts split over 8 chips (mesh.expert, one expert
each) and the parameters over 4 more (mesh.fsdp), AdamW's float32 state of 46.7B parameters (700 GiB) 22 GiB a chip;
each chip runs 2 sequences of 4096 tokens at a time, keeping only each layer's input (model.remat=full).
"""

import ml_collections

from flaxlm.configs import llama2_7b

TPU_SLICE = 'v5p-64'  # `flaxlm-info --config=mixtral_8x7b --compile_for=v5p-64` shows it fits (benchmarks/RESULTS.md).


def get_config() -> ml_collections.ConfigDict:
  """Returns Mixtral-8x7B: llama2_7b's attention (but 8 key/value heads and rotary base 1e6) and recipe, each MLP 8
  experts of 14,336 (2 a token); batches of 256 x 4096 tokens."""
  config = llama2_7b.get_config()  # Llama 2's tokenizer, width, depth, context, bfloat16, remat=full and AdamW recipe
  config.model.num_kv_heads = 8
  config.model.mlp_width = 14_336
  config.model.num_experts = 8
  config.model.experts_per_token = 2
  config.model.expert_width = 14_336
  config.model.balance_loss = 0.02
  config.model.rope_theta = 1e6
  config.mesh.expert = 8  # One expert per chip of each group of 8; fsdp takes the rest.
  config.train.steps = 100_000
  config.train.batch_size = 256
  config.train.microbatches = 4  # 2 sequences of 4096 tokens a chip at a time on a v5p-64.
  return config
