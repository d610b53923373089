"""Every default of a flaxlm run, documented. Presets start from `get_config()` and change a few fields.

Any field can be overridden from the command line, for example `--config.train.steps=100`.
"""

import ml_collections


def model_config() -> ml_collections.ConfigDict:
  """Returns the transformer's shape and options (read by `model.transformer.ModelConfig`)."""
  c = ml_collections.ConfigDict()
  c.vocab_size = 0  # 0: taken from the tokenizer.
  c.num_layers = 4
  c.num_heads = 4
  c.num_kv_heads = 0  # 0: same as num_heads (multi-head); fewer gives grouped-query attention.
  c.width = 128  # D, the residual stream's width; must be a multiple of num_heads.
  c.mlp_width = 0  # F; 0: 4 * width for gelu, 8/3 * width rounded up to a multiple of 64 for swiglu.
  c.max_length = 64  # T, the context length the model is trained on.
  c.positions = 'rotary'  # 'rotary' or 'learned'.
  c.rope_theta = 10_000.0  # base wavelength of rotary positions.
  c.norm = 'rmsnorm'  # 'rmsnorm' or 'layernorm'.
  c.norm_eps = 1e-6  # added to the variance in the norms (GPT-2 and Llama 2 use 1e-5).
  c.mlp = 'swiglu'  # 'swiglu' or 'gelu'.
  c.tie_embeddings = False  # True: the output head reuses the token embedding matrix (GPT-2).
  c.use_bias = False  # True: biases in the attention and MLP projections (GPT-2); Llama has none.
  c.dropout = 0.0  # dropout rate on embeddings, attention output and MLP output.
  c.dtype = 'float32'  # compute dtype: 'float32' or 'bfloat16'; parameters stay float32.
  c.scan_layers = True  # stack layers with nn.scan so compile time does not grow with depth.
  c.remat = 'none'  # backward-pass recomputation per layer: 'none', 'full' (keep only layer inputs), or
  # 'save_dots' (keep the weight matmuls' outputs, recompute the rest): less memory, more FLOPs.
  c.attention = 'auto'  # 'xla' (any platform), 'cudnn' (NVIDIA flash attention, bfloat16), 'splash' (TPU
  # Pallas kernel), or 'auto': the fastest the platform supports.
  c.lora_rank = 0  # LoRA fine-tuning (model/lora.py): rank r of the adapters; 0 turns LoRA off. With r > 0 the
  # pretrained weights (train.init_from, required) stay frozen and only the adapters are trained and checkpointed.
  c.lora_alpha = 16.0  # the adapters' update is scaled by lora_alpha / lora_rank.
  c.lora_targets = 'query,value'  # comma-separated matrices that get adapters: query, key, value, out (attention),
  # gate, up, down (MLP; gate only with swiglu).
  c.lora_base = 'bfloat16'  # how LoRA holds the frozen pretrained weights: 'float32', 'bfloat16', or 'int8' / 'int4'
  # (QLoRA-style: the layers' matrices quantized, expanded a layer at a time; embedding and head bfloat16). The
  # adapters and their AdamW moments stay float32.
  # Options of pretrained model families (flaxlm-convert sets them; the defaults are flaxlm's own models):
  c.head_dim = 0  # K, the width of one attention head; 0: width / num_heads (Gemma and Qwen3 set it).
  c.qkv_bias = False  # True: biases on the query, key and value projections alone (Qwen2).
  c.qk_norm = False  # True: an RMSNorm over each head of the queries and keys, before the rotation (Qwen3).
  c.norm_offset = 0.0  # the rmsnorms multiply by norm_offset + scale; Gemma's 1 (its checkpoints store scale - 1).
  c.scale_embeddings = False  # True: token embeddings times sqrt(width) in the model's dtype (Gemma).
  c.rope_scaling = 'none'  # rotary frequencies stretched for a longer context: 'none', 'linear' (all divided by
  # rope_factor), 'llama3' (Llama 3.1's: long wavelengths divided, short kept) or 'yarn' (model/rope.py).
  c.rope_factor = 1.0  # how many times the context is stretched (linear, llama3, yarn).
  c.rope_original_length = 0  # llama3, yarn: the context the model was pretrained on; 0: max_length.
  c.rope_low_freq_factor = 1.0  # llama3: wavelengths above rope_original_length / this are divided by rope_factor.
  c.rope_high_freq_factor = 4.0  # llama3: wavelengths below rope_original_length / this are kept.
  c.hf_model_type = ''  # the Hugging Face model_type the model was converted from, which flaxlm-convert --to_hf
  # writes when the options allow it (llama and mistral have the same); '': the first type that fits the options.
  return c


def train_config() -> ml_collections.ConfigDict:
  """Returns the optimizer, schedule and loop settings (read by `train.optimizer` and `train.loop`)."""
  c = ml_collections.ConfigDict()
  c.steps = 2000  # number of optimizer updates.
  c.batch_size = 12  # sequences per step, across all devices.
  c.microbatches = 1  # gradient accumulation: each step's batch is run in this many pieces, its gradients summed.
  c.learning_rate = 1e-3  # peak learning rate, reached after the warmup.
  c.min_learning_rate = 1e-4  # where the cosine decay ends, at the last step.
  c.warmup_steps = 100  # linear warmup from 0 to learning_rate.
  c.beta1 = 0.9
  c.beta2 = 0.99
  c.weight_decay = 0.1  # AdamW decay, applied to matrices (kernels and embeddings) only.
  c.grad_clip = 1.0  # global-norm gradient clipping; 0 turns it off.
  c.eval_every = 250  # steps between validation evaluations (and at the last step).
  c.eval_batches = 50  # validation batches per evaluation, the same ones every time.
  c.log_every = 10  # steps between metrics lines.
  c.checkpoint_every = 500  # steps between checkpoints (and at the last step).
  c.keep_checkpoints = 3  # how many recent checkpoints the workdir keeps (plus the best by val_loss).
  c.seed = 0  # seeds parameters, dropout and the order of training batches.
  c.init_from = ''  # fine-tuning: start from a flaxlm-export directory or a run's workdir (its latest checkpoint)
  # with a fresh optimizer and this config's schedule; the run then uses that model's tokenizer.
  c.nonfinite = 'stop'  # a step whose loss or gradients are not finite: 'stop' the run, or 'skip' its update.
  return c


def data_config() -> ml_collections.ConfigDict:
  """Returns where the training text comes from and how it becomes tokens (read by `train.loop`)."""
  c = ml_collections.ConfigDict()
  c.path = ''  # a token store (flaxlm-data prepare), or what one is prepared from at the first run (cached in
  # $FLAXLM_CACHE, default ~/.cache/flaxlm): text, JSONL or Parquet files (comma-separated, globs allowed), or
  # tfds:NAME[/CONFIG].
  c.format = 'text'  # 'text': learn every token; 'examples': one JSONL file of prompt/response (or chat messages)
  # examples, learning the responses only (see data/examples.py).
  c.text_field = 'text'  # the text field of JSONL records and TFDS examples.
  c.tfds_dir = ''  # where TFDS datasets are prepared; '' is TFDS's default (~/tensorflow_datasets).
  c.max_documents = 0  # read at most this many documents per TFDS split; 0 reads them all.
  c.tokenizer = 'char'  # 'char' (built from the text; with a store: the store's), 'byte' (UTF-8 bytes), or a
  # SentencePiece .model file.
  c.val_fraction = 0.1  # the share held out for validation: of the text's documents (and pieces of a long text),
  # evenly spread; of fine-tuning examples, the last.
  c.store_digest = ''  # set by the run: the SHA-256 of its token store's manifest (a resume reads the same tokens).
  c.read_threads = 0  # Grain threads preparing batches ahead; 0 prepares them in the training thread.
  return c


def mesh_config() -> ml_collections.ConfigDict:
  """Returns the device mesh's shape (read by `train.sharding`)."""
  c = ml_collections.ConfigDict()
  c.data = -1  # data-parallel axis; -1 takes all devices the other axes leave.
  c.fsdp = 1  # parameter-sharded data-parallel axis.
  c.tensor = 1  # tensor-parallel axis (heads, MLP width, vocab).
  c.dcn_data = 1  # multi-slice TPU (or multi-process) runs: how many slices (processes) the data axis spans.
  c.cpu_devices = 0  # on CPU, split the host into this many devices; 0: one per core that divides the batch.
  return c


def get_config() -> ml_collections.ConfigDict:
  """Returns the full default config: model, train, data and mesh sections."""
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.train = train_config()
  config.data = data_config()
  config.mesh = mesh_config()
  return config
