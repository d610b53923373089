"""Gemma 3 1B (999,885,952 parameters) fine-tuned in full on a user's examples, from its converted checkpoint.

Gemma 3's text model is Gemma's (GeGLU, RMSNorm times 1 + w, scaled embeddings, a tied head) with norms after
attention and the MLP too, q/k norms, and five local layers (a window of 512 positions, rotary base 10,000) for each
global one (base 1,000,000): docs/huggingface.md. Convert Google's checkpoint, then fine-tune it:

  flaxlm-convert --from_hf=gemma-3-1b-it --output=/tmp/gemma3_1b
  flaxlm-train --config=gemma3_1b --config.train.init_from=/tmp/gemma3_1b \
      --config.data.path=examples.jsonl --workdir=/tmp/gemma3_1b_tuned

The run takes the checkpoint's model and tokenizer; this file's model section is the same shape, so that
`flaxlm-info --config=gemma3_1b --compile_for=v5e-8` needs no checkpoint. Its batch fits a TPU v5e-8 (TPU_SLICE):
parameters and AdamW moments split over the 8 chips (mesh.fsdp), 2 sequences of 2048 tokens a chip at a time
(with 2 microbatches, 4 at a time, the step needs 17.9 GiB a chip).
"""

import ml_collections

from flaxlm.configs import base

TPU_SLICE = 'v5e-8'  # `flaxlm-info --config=gemma3_1b --compile_for=v5e-8` shows it fits (benchmarks/RESULTS.md).


def get_config() -> ml_collections.ConfigDict:
  """Returns 26 layers, 4 heads (1 key/value head) of 256, width 1152, GeGLU 6912, a window of 512; 2048-token
  examples, 64 a step, for 1000 steps at 1e-5."""
  config = base.get_config()
  m = config.model  # What every Gemma 3 text model has, as flaxlm-convert reads it from config.json:
  m.vocab_size, m.head_dim, m.mlp, m.norm_offset, m.scale_embeddings = 262_144, 256, 'geglu', 1.0, True
  m.tie_embeddings, m.post_norms, m.qk_norm, m.layer_pattern = True, True, True, 'local*5,global'
  m.query_scalar, m.rope_theta, m.rope_local_theta, m.hf_model_type = 256.0, 1_000_000.0, 10_000.0, 'gemma3_text'
  config.model.num_layers = 26
  config.model.num_heads = 4
  config.model.num_kv_heads = 1
  config.model.width = 1152
  config.model.mlp_width = 6912
  config.model.window = 512
  config.model.max_length = 2048  # The fine-tune's context (the checkpoint's is 32,768).
  config.model.dtype = 'bfloat16'
  config.model.remat = 'save_dots'
  config.data.format = 'examples'
  config.mesh.data = 1
  config.mesh.fsdp = -1
  config.train.steps = 1000
  config.train.batch_size = 64
  config.train.microbatches = 4  # 2 sequences of 2048 tokens a chip at a time on a v5e-8.
  config.train.learning_rate = 1e-5
  config.train.min_learning_rate = 1e-6
  config.train.warmup_steps = 50
  config.train.eval_every = 100
  config.train.checkpoint_every = 100
  return config
