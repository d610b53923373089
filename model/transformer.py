"""A decoder-only transformer in Flax linen, read top to bottom: embeddings, attention, MLP, block, stack, head.

Shape key for tensor names:
  B batch, T sequence length, D model width, H query heads, G key/value heads, K head dimension,
  F MLP width, V vocabulary, L layers.

Parameters carry logical axis names (`embed`, `heads`, `kv_heads`, `head_dim`, `mlp`, `vocab`, `layers`, and a
sparse layer's `experts`, `expert_mlp`);
`train.sharding` maps them onto the device mesh.
"""

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxlm.model import attention, lora, moe, quantize, rope
from flaxlm.model.config import ModelConfig

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
REMAT_POLICIES = {'full': jax.checkpoint_policies.nothing_saveable,
                  'save_dots': jax.checkpoint_policies.dots_with_no_batch_dims_saveable}
GATES = {'swiglu': nn.silu, 'geglu': functools.partial(nn.gelu, approximate=True)}  # gated MLPs' activations


def param_init(std: float, axes: tuple[str | None, ...]) -> nn.initializers.Initializer:
  """Returns a normal(std) initializer whose parameters carry the logical axis names `axes`."""
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def zeros_init(axes: tuple[str | None, ...]) -> nn.initializers.Initializer:
  """Returns a zeros initializer (biases, an untied head) whose parameters carry the logical axis names `axes`."""
  return nn.with_logical_partitioning(nn.initializers.zeros, axes)


def with_adapter(c: ModelConfig, name: str, x: jax.Array, y: jax.Array, in_axes: tuple[str, ...],
                 out_axes: tuple[str, ...]) -> jax.Array:
  """Returns y = x W, plus the LoRA update of x when `model.lora_targets` names matrix `name` (see model/lora.py)."""
  if name not in c.lora.adapted:
    return y
  adapter = lora.LowRank(y.shape[-len(out_axes):], in_axes, out_axes, c.lora.rank, c.lora.alpha, DTYPES[c.dtype],
                         name=name + lora.SUFFIX)
  return y + adapter(x)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
  """Returns `x` with its sharding constrained by logical axis names (a no-op outside a mesh)."""
  return nn.with_logical_constraint(x, axes)


class Embed(nn.Embed):
  """The token embedding; of an int8/int4 table (sampling, model/quantize.py) a lookup expands only the rows it reads
  and the tied head multiplies the integers as stored."""

  def __call__(self, tokens_BxT: jax.Array) -> jax.Array:
    """Returns the rows of `tokens_BxT`, B x T x D in the model's dtype; of a quantized table only those rows."""
    if quantize.is_quantized(self.embedding):
      return quantize.dequantize_array(quantize.take_rows(self.embedding, tokens_BxT), self.dtype)
    return super().__call__(tokens_BxT)

  def attend(self, x_BxTxD: jax.Array) -> jax.Array:
    """Returns x times the table's transpose, B x T x V (the tied output head)."""
    if quantize.is_quantized(self.embedding):
      return quantize.dot(x_BxTxD, self.embedding, self.dtype)
    return super().attend(x_BxTxD)


class RMSNorm(nn.Module):
  """x / rms(x) times (offset + scale), computed in float32: flax's nn.RMSNorm (its params are named alike,
  'RMSNorm_0'), plus Gemma's offset of 1, whose checkpoints store the scale less 1."""
  epsilon: float
  dtype: Any
  offset: float
  axis: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns x normalized over its last axis (of any shape), in `dtype`."""
    init = nn.with_logical_partitioning(nn.initializers.constant(1.0 - self.offset), (self.axis,))
    scale = self.param('scale', init, (x.shape[-1],), jnp.float32).astype(jnp.float32)  # 1 + a bfloat16 w loses w
    x = x.astype(jnp.float32)
    inverse = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
    return (x * (inverse * (self.offset + scale))).astype(self.dtype)


class Norm(nn.Module):
  """RMSNorm or LayerNorm over the last axis (`axis` names it), with a learned scale (and bias for LayerNorm)."""
  config: ModelConfig
  axis: str = 'embed'

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    c = self.config
    if c.norm == 'rmsnorm':
      return RMSNorm(c.norm_eps, DTYPES[c.dtype], c.norm_offset, self.axis)(x_BxTxD)
    ones = nn.with_logical_partitioning(nn.initializers.ones, (self.axis,))
    return nn.LayerNorm(epsilon=c.norm_eps, dtype=DTYPES[c.dtype], scale_init=ones,
                        bias_init=zeros_init((self.axis,)))(x_BxTxD)


class Attention(nn.Module):
  """Causal self-attention with grouped-query heads; `model.attention` picks the implementation.

  Options of pretrained families: biases on q, k and v alone (`qkv_bias`, Qwen2), an RMSNorm over each head of q and
  of k before the rotation (`qk_norm`, Qwen3, Gemma 3), Gemma's logit scale and soft cap. A layer of kind 'local'
  (model/pattern.py) sees the last `window` positions, with its own rotary base where `rope_local_theta` sets one.

  With `decode`, keys and values are also written into a cache (the 'cache' collection) at each token's position,
  and queries attend to the cache: a prompt is run once, then each new token costs one position's work. A global
  layer's cache holds all T positions; a local layer's holds the last min(W, T), position p in slot p mod W, with the
  position each slot holds (-1: empty), so its memory does not grow with the context.
  """
  config: ModelConfig
  decode: bool = False
  kind: str = 'global'

  def project(self, x_BxTxD: jax.Array, heads: int, axis: str, name: str) -> jax.Array:
    """Returns x projected to `heads` heads of width K: B x T x heads x K."""
    c = self.config
    x_BxTxHxK = nn.Einsum((c.width, heads, c.head_dim), 'BTD,DHK->BTHK', use_bias=c.use_bias or c.qkv_bias,
                          dtype=DTYPES[c.dtype],
                          kernel_init=param_init(c.width ** -0.5, ('embed', axis, 'head_dim')),
                          bias_init=zeros_init((axis, 'head_dim')), name=name)(x_BxTxD)
    x_BxTxHxK = with_adapter(c, name, x_BxTxD, x_BxTxHxK, ('embed',), (axis, 'head_dim'))
    return constrain(x_BxTxHxK, ('batch', 'length', axis, 'head_dim'))

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
               deterministic: bool) -> jax.Array:
    c = self.config
    q_BxTxHxK = self.project(x_BxTxD, c.num_heads, 'heads', 'query')
    k_BxTxGxK = self.project(x_BxTxD, c.num_kv_heads, 'kv_heads', 'key')
    v_BxTxGxK = self.project(x_BxTxD, c.num_kv_heads, 'kv_heads', 'value')
    if c.qk_norm:
      q_BxTxHxK = Norm(c, 'head_dim', name='query_norm')(q_BxTxHxK)
      k_BxTxGxK = Norm(c, 'head_dim', name='key_norm')(k_BxTxGxK)
    if c.positions == 'rotary':
      q_BxTxHxK = rope.rotate(q_BxTxHxK, positions_BxT, c.rotary_of(self.kind))
      k_BxTxGxK = rope.rotate(k_BxTxGxK, positions_BxT, c.rotary_of(self.kind))
    self.sow('intermediates', 'rotated', (q_BxTxHxK, k_BxTxGxK))  # what model/inspect.py reads the weights from
    scores = c.scores(self.kind)
    if self.decode:
      k_BxSxGxK, v_BxSxGxK, key_positions_BxS = self.cache(k_BxTxGxK, v_BxTxGxK, positions_BxT)
      out_BxTxHxK = attention.attend_cache(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, positions_BxT, key_positions_BxS, scores)
    else:
      out_BxTxHxK = attention.attend(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, c.attention, scores)
    out_init = param_init((c.width * 2 * c.num_layers) ** -0.5, ('heads', 'head_dim', 'embed'))
    out_BxTxD = nn.Einsum((c.num_heads, c.head_dim, c.width), 'BTHK,HKD->BTD', use_bias=c.use_bias,
                          dtype=DTYPES[c.dtype], kernel_init=out_init, bias_init=zeros_init(('embed',)),
                          name='out')(out_BxTxHxK)
    out_BxTxD = with_adapter(c, 'out', out_BxTxHxK, out_BxTxD, ('heads', 'head_dim'), ('embed',))
    return nn.Dropout(c.dropout)(out_BxTxD, deterministic=deterministic)

  def cache(self, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, positions_BxT: jax.Array) -> tuple[jax.Array, ...]:
    """Writes k and v into the cache and returns the keys, values and key positions to attend to: a global layer's
    whole cache (S = T_max, written at each row's consecutive positions), a local layer's `ring`."""
    c = self.config
    if self.kind == 'local':
      return self.ring(k_BxTxGxK, v_BxTxGxK, positions_BxT)
    shape = (k_BxTxGxK.shape[0], c.max_length, c.num_kv_heads, c.head_dim)
    written = []
    for name, new_BxTxGxK in (('cached_key', k_BxTxGxK), ('cached_value', v_BxTxGxK)):
      cached = self.variable('cache', name, jnp.zeros, shape, new_BxTxGxK.dtype)
      cached.value = jax.vmap(lambda cache_SxGxK, new_TxGxK, start: jax.lax.dynamic_update_slice_in_dim(
          cache_SxGxK, new_TxGxK, start, axis=0))(cached.value, new_BxTxGxK, positions_BxT[:, 0])
      written.append(cached.value)
    return (*written, jnp.broadcast_to(jnp.arange(c.max_length), (shape[0], c.max_length)))

  def ring(self, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, positions_BxT: jax.Array) -> tuple[jax.Array, ...]:
    """Returns the keys, values and positions a local layer attends to, the S = min(W, T_max) slots it held before
    these tokens then the new ones (S + T), and keeps the last S of them (positions -1, prompt padding, are not
    kept). A slot holding a position the new tokens hold again (a stopped sequence rewriting its last) is left out."""
    c = self.config
    batch, slots = k_BxTxGxK.shape[0], min(c.window, c.max_length)
    shape = (batch, slots, c.num_kv_heads, c.head_dim)
    keys = self.variable('cache', 'cached_key', jnp.zeros, shape, k_BxTxGxK.dtype)
    values = self.variable('cache', 'cached_value', jnp.zeros, shape, v_BxTxGxK.dtype)
    held = self.variable('cache', 'cached_position', jnp.full, (batch, slots), -1, jnp.int32)
    first_B = jnp.min(jnp.where(positions_BxT >= 0, positions_BxT, jnp.iinfo(jnp.int32).max), axis=1)
    held_BxS = jnp.where(held.value < first_B[:, None], held.value, -1)
    k_BxRxGxK = jnp.concatenate([keys.value, k_BxTxGxK], axis=1)
    v_BxRxGxK = jnp.concatenate([values.value, v_BxTxGxK], axis=1)
    positions_BxR = jnp.concatenate([held_BxS, positions_BxT], axis=1)
    last_B = jnp.max(positions_BxT, axis=1)
    kept_BxT = (positions_BxT >= 0) & (positions_BxT > last_B[:, None] - slots)
    slot_BxT = jnp.where(kept_BxT, positions_BxT % slots, slots)  # slot S is outside the ring: not written
    write = jax.vmap(lambda ring, slot_T, new: ring.at[slot_T].set(new, mode='drop'))
    keys.value = write(keys.value, slot_BxT, k_BxTxGxK)
    values.value = write(values.value, slot_BxT, v_BxTxGxK)
    held.value = write(held_BxS, slot_BxT, positions_BxT)
    return k_BxRxGxK, v_BxRxGxK, positions_BxR


class Mlp(nn.Module):
  """The feed-forward layer: gated, (act(x W_gate) * x W_up) W_down with act silu (SwiGLU) or tanh-GELU (GeGLU,
  Gemma), or GELU(x W_up) W_down."""
  config: ModelConfig

  def dense(self, x: jax.Array, features: int, std: float, axes: tuple[str, str], name: str) -> jax.Array:
    """Returns x times a `features`-wide kernel (plus a bias with `model.use_bias`, and a LoRA adapter if targeted)."""
    c = self.config
    y = nn.Dense(features, use_bias=c.use_bias, dtype=DTYPES[c.dtype], kernel_init=param_init(std, axes),
                 bias_init=zeros_init(axes[1:]), name=name)(x)
    return with_adapter(c, name, x, y, axes[:1], axes[1:])

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
    c = self.config
    up_BxTxF = self.dense(x_BxTxD, c.mlp_width, c.width ** -0.5, ('embed', 'mlp'), 'up')
    if c.mlp in GATES:
      gate_BxTxF = self.dense(x_BxTxD, c.mlp_width, c.width ** -0.5, ('embed', 'mlp'), 'gate')
      h_BxTxF = GATES[c.mlp](gate_BxTxF) * up_BxTxF
    else:
      h_BxTxF = nn.gelu(up_BxTxF)
    h_BxTxF = constrain(h_BxTxF, ('batch', 'length', 'mlp'))
    out_BxTxD = self.dense(h_BxTxF, c.width, (c.mlp_width * 2 * c.num_layers) ** -0.5, ('mlp', 'embed'), 'down')
    return nn.Dropout(c.dropout)(out_BxTxD, deterministic=deterministic)


class Block(nn.Module):
  """One pre-norm transformer layer: x + attention(norm(x)), then x + mlp(norm(x)); with `post_norms` (Gemma 2 and 3)
  each output is normed again before it is added. `kind` is 'global' or 'local' (model/pattern.py); a `sparse`
  layer's MLP is a mixture of experts (model/moe.py), named 'moe'."""
  config: ModelConfig
  decode: bool = False
  kind: str = 'global'
  sparse: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
               deterministic: bool):
    c = self.config
    x_BxTxD = constrain(x_BxTxD, ('batch', 'length', 'embed'))
    attended_BxTxD = Attention(c, self.decode, self.kind, name='attention')(
        Norm(c, name='attention_norm')(x_BxTxD), positions_BxT, segment_ids_BxT, deterministic)
    x_BxTxD += Norm(c, name='attention_post_norm')(attended_BxTxD) if c.post_norms else attended_BxTxD
    mlp = moe.Moe(c, GATES.get(c.mlp, nn.gelu), c.mlp in GATES, name='moe') if self.sparse else Mlp(c, name='mlp')
    mixed_BxTxD = mlp(Norm(c, name='mlp_norm')(x_BxTxD), deterministic)
    x_BxTxD += Norm(c, name='mlp_post_norm')(mixed_BxTxD) if c.post_norms else mixed_BxTxD
    return x_BxTxD, None  # (carry, output) as nn.scan expects.


class Group(nn.Module):
  """One repeat of the layer pattern, a block of each kind in turn (`block_0`, `block_1`, ...): what the stack scans
  over when layers differ (Gemma 3: five local blocks, then a global one)."""
  config: ModelConfig
  decode: bool
  kinds: tuple[str, ...]
  sparse: bool
  block: Any  # the Block class, wrapped for remat or quantized params as the stack wraps it

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
               deterministic: bool):
    for j, kind in enumerate(self.kinds):
      x_BxTxD, _ = self.block(self.config, self.decode, kind, self.sparse, name=f'block_{j}')(
          x_BxTxD, positions_BxT, segment_ids_BxT, deterministic)
    return x_BxTxD, None


def expanding(module: type[nn.Module], c: ModelConfig) -> type[nn.Module]:
  """Returns `module` reading int8/int4 params (model/quantize.py) expanded to the model's dtype where it is called:
  inside the layer scan, one layer's matrices at a time, never the whole tree. Decoding a quantized model and LoRA
  on a quantized base (whose gradients flow into the adapters alone) both read them so.
  """
  return nn.map_variables(module, 'params', trans_in_fn=functools.partial(quantize.expand, dtype=DTYPES[c.dtype]))


class Stack(nn.Module):
  """The L layers: one scanned Block with stacked parameters (and caches), or L separate Blocks. Layers of several
  kinds scan as groups of one pattern (`Group`); the dense layers before a sparse model's first sparse one, and the
  layers a last, partial group leaves, are separate Blocks (`layer_i`): compile time grows with the pattern's length,
  never with depth. `unstack` reads each layer back."""
  config: ModelConfig
  decode: bool = False

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, positions_BxT: jax.Array, segment_ids_BxT: jax.Array | None,
               deterministic: bool) -> jax.Array:
    c, block = self.config, Block
    if quantize.holds_quantized(self.variables.get('params', {})):
      block = expanding(block, c)
    if c.remat != 'none' and not self.decode:  # Decoding takes no gradients: nothing to recompute. The expansion is
      # recomputed with the layer: the backward pass keeps no expanded copy of a quantized base.
      block = nn.remat(block, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers, static_argnums=(4,))
    kinds, (first, end) = c.layer_kinds, scanned_span(c)
    run = lambda i, x_BxTxD: block(c, self.decode, kinds[i], c.sparse(i), name=f'layer_{i}')(
        x_BxTxD, positions_BxT, segment_ids_BxT, deterministic)[0]
    for i in range(first):
      x_BxTxD = run(i, x_BxTxD)
    if end > first:
      width, sparse = len(c.pattern), c.sparse(first)
      layer, settings = ((block, (kinds[first], sparse)) if width == 1 else
                         (Group, (kinds[first:first + width], sparse, block)))
      layers = nn.scan(layer, variable_axes={'params': 0, 'cache': 0, 'intermediates': 0, 'losses': 0},
                       split_rngs={'params': True, 'dropout': True},
                       in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=(end - first) // width,
                       metadata_params={nn.PARTITION_NAME: 'layers'})
      x_BxTxD, _ = layers(c, self.decode, *settings, name='layers')(x_BxTxD, positions_BxT, segment_ids_BxT,
                                                                     deterministic)
    for i in range(end, c.num_layers):
      x_BxTxD = run(i, x_BxTxD)
    return x_BxTxD


def scanned_span(c: ModelConfig) -> tuple[int, int]:
  """Returns (first, end): the stack scans over layers first..end-1, the whole repeats of the layer pattern after a
  sparse model's dense layers; (0, 0) unscanned."""
  if not c.scan_layers:
    return 0, 0
  first = c.dense_layers if c.num_experts else 0
  return first, c.num_layers - (c.num_layers - first) % len(c.pattern)


def unstack(stack: Any, c: ModelConfig) -> list[Any]:
  """Returns the L layers' subtrees, in depth order, of the stack's params (or sown intermediates) however `Stack`
  holds them: arrays stacked on a leading axis (numpy ones give views), grouped by pattern, or one per layer."""
  (first, end), width = scanned_span(c), len(c.pattern)
  if end == first:
    scanned = []
  elif width == 1:
    scanned = [jax.tree.map(lambda x: x[i], stack['layers']) for i in range(end - first)]
  else:
    scanned = [jax.tree.map(lambda x: x[i // width], stack['layers'][f'block_{i % width}'])
               for i in range(end - first)]
  return ([stack[f'layer_{i}'] for i in range(first)] + scanned +
          [stack[f'layer_{i}'] for i in range(end, c.num_layers)])


class Head(nn.Module):
  """The untied output head, a D x V kernel; an int8/int4 one (sampling, model/quantize.py) is multiplied as stored."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
    c, dtype = self.config, DTYPES[self.config.dtype]
    kernel_DxV = self.param('kernel', zeros_init(('embed', 'vocab')), (c.width, c.vocab_size))
    if quantize.is_quantized(kernel_DxV):
      return quantize.dot(x_BxTxD, kernel_DxV, dtype)
    return jnp.dot(x_BxTxD.astype(dtype), kernel_DxV.astype(dtype))


class Transformer(nn.Module):
  """Token ids in, next-token logits out: embed, add positions, L blocks, final norm, output head.

  With `scale_embeddings` (Gemma) the token embeddings are multiplied by sqrt(D), rounded to the model's dtype; the
  tied head uses the table as stored.

  `hidden` runs everything up to the output head and `logits` the head alone, so a caller that needs the logits of
  a few positions (sampling's last one) or of a few at a time (the chunked loss, train/loss.py) never makes all
  B x T x V of them: `model.apply(variables, x, method=Transformer.logits)`.

  `decode=True` gives the same model with key/value caches, for sampling (see model/sampling.py): apply it
  with `mutable=['cache']` and each token's absolute position. It also takes int8/int4 params (model/quantize.py),
  expanding each layer's matrices inside the layer scan and only the embedding rows it looks up.
  """
  config: ModelConfig
  decode: bool = False

  def setup(self):
    c = self.config
    self.embed = Embed(c.vocab_size, c.width, dtype=DTYPES[c.dtype],
                       embedding_init=param_init(0.02, ('vocab', 'embed')))
    if c.positions == 'learned':
      self.position_embed = nn.Embed(c.max_length, c.width, dtype=DTYPES[c.dtype],
                                     embedding_init=param_init(0.02, (None, 'embed')))
    self.dropout = nn.Dropout(c.dropout)
    self.stack = Stack(c, self.decode)
    self.final_norm = Norm(c)
    if not c.tie_embeddings:  # Zero-initialised, so an untrained model predicts the uniform distribution: loss ln V.
      self.head = Head(c)

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
               segment_ids_BxT: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    """Returns float32 logits B x T x V; position t sees tokens 0..t of its own segment (document) only."""
    return self.logits(self.hidden(tokens_BxT, positions_BxT, segment_ids_BxT, deterministic))

  def hidden(self, tokens_BxT: jax.Array, positions_BxT: jax.Array | None = None,
             segment_ids_BxT: jax.Array | None = None, deterministic: bool = True) -> jax.Array:
    """Returns the final norm's output B x T x D (in the model's dtype): what the head turns into logits."""
    if positions_BxT is None:
      positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    x_BxTxD = self.embed(tokens_BxT)
    if self.config.scale_embeddings:
      x_BxTxD *= jnp.asarray(self.config.width ** 0.5, x_BxTxD.dtype)
    if self.config.positions == 'learned':  # A prompt's padding, at position -1 (model/sampling.py), reads row 0.
      x_BxTxD += self.position_embed(jnp.maximum(positions_BxT, 0))
    x_BxTxD = self.dropout(x_BxTxD, deterministic=deterministic)
    x_BxTxD = self.stack(x_BxTxD, positions_BxT, segment_ids_BxT, deterministic)
    return self.final_norm(x_BxTxD)

  def logits(self, x_BxTxD: jax.Array) -> jax.Array:
    """Returns the float32 logits B x T x V of final-norm outputs (any B x T: a few positions, or a chunk), soft-capped
    with `logits_softcap` (Gemma 2)."""
    c = self.config
    logits_BxTxV = self.embed.attend(x_BxTxD) if c.tie_embeddings else self.head(x_BxTxD)
    logits_BxTxV = constrain(logits_BxTxV, ('batch', 'length', 'vocab')).astype(jnp.float32)
    return attention.soft_cap(logits_BxTxV, c.logits_softcap)


def shapes_model(c: ModelConfig) -> Transformer:
  """Returns the model `c` with 'xla' attention, whose init traces on any host: the param shapes do not depend on
  the attention, and a TPU's ('splash') refuses to trace on a CPU host outside a TPU mesh."""
  return Transformer(dataclasses.replace(c, attention='xla'))


def param_shapes(c: ModelConfig) -> Any:
  """Returns the params of Transformer(c) as shape structs (no logical-axis boxes), without allocating them."""
  init = lambda: nn.unbox(shapes_model(c).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  return jax.eval_shape(init)


def shape_differences(params: Any, expected: Any) -> list[tuple[str, tuple | None, tuple | None]]:
  """Returns (name, shape in `params`, shape in `expected`) for each parameter where the two trees differ."""
  shapes = lambda tree: {jax.tree_util.keystr(k): x.shape for k, x in jax.tree_util.tree_leaves_with_path(tree)}
  have, want = shapes(params), shapes(expected)
  return [(name, have.get(name), want.get(name)) for name in {**want, **have} if have.get(name) != want.get(name)]


def count_params(params: Any) -> int:
  """Returns the exact number of scalars in a params pytree (arrays or shape structs)."""
  return sum(math.prod(x.shape) for x in jax.tree.leaves(params))
