"""Llama-2-7B (6,738,415,616 parameters) with the recipe of the Llama 2 paper (Touvron et al., 2023).

Llama 2's tokenizer is a SentencePiece BPE model of 32,000 pieces, so Meta's `tokenizer.model` loads as it is:

  flaxlm-train --config=llama2_7b --config.data.tokenizer=tokenizer.model \
      --config.data.path=corpus/*.jsonl --workdir=/tmp/llama2_7b
"""

import ml_collections

from flaxlm.configs import base


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
  config.train.learning_rate = 3e-4
  config.train.min_learning_rate = 3e-5
  config.train.warmup_steps = 2000
  config.train.beta2 = 0.95
  config.train.eval_every = 2000
  config.train.eval_batches = 20
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  return config
