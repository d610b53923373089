"""GPT-2 small (124M parameters) with nanoGPT's OpenWebText recipe.

The architecture is GPT-2's: learned positions, LayerNorm, GELU MLP, biases, and an output head tied to the
token embedding; 124,439,808 parameters. GPT-2's own BPE is not a SentencePiece model, so train a SentencePiece
BPE tokenizer of the same size on the corpus first (the model's vocabulary stays 50,257 either way):

  flaxlm-tokenizer train --input=openwebtext/*.jsonl --vocab_size=50257 --model_type=bpe --output=gpt2_bpe.model
  flaxlm-train --config=gpt2_124m --config.data.path=openwebtext/*.jsonl --workdir=/tmp/gpt2

nanoGPT reaches its 480 sequences a step by accumulating gradients: 5 pieces of 12 sequences on each of 8 GPUs.
This preset does the same on the 8 chips of a TPU v5e-8 (TPU_SLICE): the 480 are split across the data-parallel
devices and run in 5 microbatches, 12 sequences of 1,024 tokens a chip at a time (60 at once would not fit a chip's
16 GiB). On more chips fewer microbatches are needed, and 480 must be a multiple of chips x microbatches.
"""

import ml_collections

from flaxlm.configs import base

TPU_SLICE = 'v5e-8'  # With train.microbatches=5: `flaxlm-info --config=gpt2_124m --compile_for=v5e-8` shows it fits.


def get_config() -> ml_collections.ConfigDict:
  """Returns GPT-2 small: 12 layers, 12 heads, width 768, context 1024, batch 480, 600,000 steps (lr 6e-4)."""
  config = base.get_config()
  config.data.tokenizer = 'gpt2_bpe.model'
  config.model.vocab_size = 50257
  config.model.num_layers = 12
  config.model.num_heads = 12
  config.model.width = 768
  config.model.mlp_width = 3072
  config.model.max_length = 1024
  config.model.positions = 'learned'
  config.model.norm = 'layernorm'
  config.model.mlp = 'gelu'
  config.model.tie_embeddings = True
  config.model.use_bias = True
  config.model.norm_eps = 1e-5
  config.model.dtype = 'bfloat16'
  config.train.steps = 600_000
  config.train.batch_size = 480
  config.train.microbatches = 5  # 12 sequences a device at a time on 8 devices, as nanoGPT (see above).
  config.train.learning_rate = 6e-4
  config.train.min_learning_rate = 6e-5
  config.train.warmup_steps = 2000
  config.train.beta2 = 0.95
  config.train.eval_every = 2000
  config.train.eval_batches = 200
  config.train.log_every = 100
  config.train.checkpoint_every = 2000
  return config
