"""Llama-2-7B (6,738,415,616 parameters) with the recipe of the Llama 2 paper (Touvron et al., 2023).

Llama 2's tokenizer is a SentencePiece BPE model of 32,000 pieces, so Meta's `tokenizer.model` loads as it is:

  flaxlm-train --config=llama2_7b --config.data.tokenizer=tokenizer.model \
      --config.data.path=corpus/*.jsonl --workdir=/tmp/llama2_7b

Its batch fits a TPU v5p-16 (TPU_SLICE, 8 chips of 95 GiB): parameters and AdamW moments split over the 8 chips
(mesh.fsdp), each chip runs its 128 sequences 16 at a time (8 microbatches), keeping only each layer's input for the
backward pass (model.remat=full). On more chips fewer microbatches are needed, and 1024 must be a multiple of
chips x microbatches.
"""

import ml_collections

from flaxlm.configs import base

TPU_SLICE = 'v5p-16'  # With train.microbatches=8: `flaxlm-info --config=llama2_7b --compile_for=v5p-16` shows it fits.


def get_config() -> ml_collections.ConfigDict:
  """Returns 32 layers, 32 heads, width 4096, SwiGLU 11008, context 4096; 4M-token batches for 2T tokens."""
  config = base.get_config()
  config.data.tokenizer = 'tokenizer.model'
  config.model.vocab_size = 32_000
  config.model.num_layers = 32
  config.model.num_heads = 32
  config.model.width = 4096
  config.model.mlp_width = 11008
  config.model.norm_eps = 1e-5
  config.model.max_length = 4096
  config.model.dtype = 'bfloat16'
  config.model.remat = 'full'  # Keep only each layer's input: 32 layers of 4096-token activations do not fit otherwise.
  config.mesh.data = 1  # FSDP over all devices: parameters, gradients and AdamW moments (108 GB) split across them.
  config.mesh.fsdp = -1
  config.train.steps = 476_837  # 2.0T tokens / (1024 x 4096 tokens a step).
  config.train.batch_size = 1024
  config.train.microbatches = 8  # 16 sequences of 4096 tokens a chip at a time on a v5p-16 (see above).
  config.train.learning_rate = 3e-4
  config.train.min_learning_rate = 3e-5
  config.train.warmup_steps = 2000
  config.train.beta2 = 0.95
  config.train.eval_every = 2000
  config.train.eval_batches = 20
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  return config
