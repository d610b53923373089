"""Gemma 3 12B's language model (11,765,788,416 parameters) adapted with LoRA (rank 16) on a user's examples.

The 12B checkpoint is multimodal (Gemma3ForConditionalGeneration); flaxlm-convert takes its language model and
leaves the vision tower out. Convert it, then train adapters on the frozen base:

  flaxlm-convert --from_hf=gemma-3-12b-it --output=/tmp/gemma3_12b
  flaxlm-train --config=gemma3_12b --config.train.init_from=/tmp/gemma3_12b \
      --config.data.path=examples.jsonl --workdir=/tmp/gemma3_12b_lora

Its batch fits a TPU v5e-8 (TPU_SLICE, 16 GiB a chip): the bfloat16 base (22 GiB) split over the 8 chips
(mesh.fsdp), adapters on every attention and MLP matrix, each chip running 2 sequences of 4096 tokens at a time and
keeping only each layer's input for the backward pass. The global layers' rotary frequencies are scaled linearly by
8 (a 131,072-token context); the local layers (a window of 1024) are not.
"""

import ml_collections

from flaxlm.configs import gemma3_1b

TPU_SLICE = 'v5e-8'  # `flaxlm-info --config=gemma3_12b --compile_for=v5e-8` shows it fits (benchmarks/RESULTS.md).


def get_config() -> ml_collections.ConfigDict:
  """Returns 48 layers, 16 heads (8 key/value heads) of 256, width 3840, GeGLU 15360, a window of 1024; LoRA rank 16
  on 4096-token examples, 32 a step, for 500 steps at 1e-4."""
  config = gemma3_1b.get_config()  # Gemma 3's options, examples, FSDP over the slice; the 12B's sizes:
  config.model.num_layers = 48
  config.model.num_heads = 16
  config.model.num_kv_heads = 8
  config.model.width = 3840
  config.model.mlp_width = 15_360
  config.model.window = 1024
  config.model.rope_scaling = 'linear'
  config.model.rope_factor = 8.0
  config.model.max_length = 4096  # The fine-tune's context (the checkpoint's is 131,072).
  config.model.remat = 'full'
  config.model.lora_rank = 16
  config.model.lora_alpha = 32.0
  config.model.lora_targets = 'query,key,value,out,gate,up,down'
  config.model.lora_base = 'bfloat16'
  config.train.steps = 500
  config.train.batch_size = 32
  config.train.microbatches = 4  # 1 sequence of 4096 tokens a chip at a time on a v5e-8.
  config.train.learning_rate = 1e-4
  config.train.min_learning_rate = 1e-5
  config.train.warmup_steps = 20
  config.train.eval_every = 50
  config.train.checkpoint_every = 50
  return config
