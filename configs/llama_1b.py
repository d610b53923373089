"""Llama 3.2 1B's shape (1,235,814,400 parameters), trained from scratch with Llama 2's recipe.

Meta made Llama 3.2 1B by pruning Llama 3.1 8B and distilling from the 8B and 70B models, so there is no
from-scratch recipe to copy; this preset uses Llama 2's (AdamW with beta2 0.95, weight decay 0.1, clipping 1.0,
2000 warmup steps, cosine to a tenth of the peak) on about 20 tokens per parameter (Chinchilla): 24,000 steps of
512 x 2048 tokens.

The context is 2048 tokens, not Llama 3's 8192: attention is then 5% of the training FLOPs rather than 18%, and
its score matrices (T x T per head) a sixteenth of the size. Set --config.model.max_length=8192 for Llama 3's.

Llama 3's tokenizer is tiktoken BPE, not SentencePiece; train a SentencePiece BPE model of the same size:

  flaxlm-tokenizer train --input=corpus/*.jsonl --vocab_size=128256 --model_type=bpe --output=llama_bpe.model
  flaxlm-train --config=llama_1b --config.data.path=corpus/*.jsonl --workdir=/tmp/llama_1b

Its batch fits a TPU v5e-8 (TPU_SLICE): parameters and AdamW moments split over the 8 chips (mesh.fsdp), each
chip runs its 64 sequences 4 at a time (16 microbatches; 16 at a time would need 32 GiB a chip). On more chips
fewer microbatches are needed, and 512 must be a multiple of chips x microbatches.
"""

import ml_collections

from flaxlm.configs import llama2_7b

TPU_SLICE = 'v5e-8'  # With train.microbatches=16: `flaxlm-info --config=llama_1b --compile_for=v5e-8` shows it fits.


def get_config() -> ml_collections.ConfigDict:
  """Returns 16 layers, 32 heads (8 key/value heads), width 2048, SwiGLU 8192, context 2048, tied embeddings."""
  config = llama2_7b.get_config()  # Llama 2's recipe and architecture; Llama 3.2 1B's sizes.
  config.data.tokenizer = 'llama_bpe.model'
  config.model.vocab_size = 128_256
  config.model.num_layers = 16
  config.model.num_kv_heads = 8
  config.model.width = 2048
  config.model.mlp_width = 8192
  config.model.max_length = 2048
  config.model.rope_theta = 500_000.0
  config.model.tie_embeddings = True
  config.model.remat = 'save_dots'  # Keep the matmul outputs, recompute the rest: fits 2048-token sequences.
  config.train.steps = 24_000
  config.train.batch_size = 512
  config.train.microbatches = 16  # 4 sequences of 2048 tokens a chip at a time on a v5e-8 (see above).
  config.train.eval_every = 1000
  config.train.eval_batches = 50
  config.train.checkpoint_every = 1000
  return config
