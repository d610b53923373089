"""Causal attention inside documents, by one of several implementations of the same function.

'xla' runs anywhere; 'cudnn' is cuDNN's flash attention on NVIDIA GPUs; 'splash' is the Pallas splash attention
kernel on TPUs; 'auto' picks the fastest one the platform has. Each takes a layer's `Scores`: the logits' scale, a
soft cap on them (Gemma 2), and a window (a local layer sees its last W positions, its own included).

Shape key: B batch, T sequence length, H query heads, G key/value heads, K head dimension.
"""

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flaxlm.configs.errors import UserError

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash')
PLATFORMS = {'cpu': ('xla',), 'gpu': ('xla', 'cudnn'), 'cuda': ('xla', 'cudnn'), 'tpu': ('xla', 'splash')}
NEEDS = {'cudnn': 'an NVIDIA GPU', 'splash': 'a TPU'}
CUDNN_DTYPES = ('bfloat16', 'float16')
CUDNN_MAX_HEAD_DIM = 128  # Hopper and later take 256; 128 fits every GPU cuDNN flash attention runs on.
SPLASH_TILE = 128  # Splash blocks are multiples of 128 positions (a TPU vector's lanes).
SPLASH_BLOCKS = (512, 256, 128)  # Block lengths to try, largest (fastest) first.


def soft_cap(logits: jax.Array, cap: float) -> jax.Array:
  """Returns cap * tanh(logits / cap): logits squashed into (-cap, cap), near-unchanged where small (Gemma 2's
  attention and output logits); `logits` unchanged for a cap of 0."""
  return cap * jnp.tanh(logits / cap) if cap else logits


@dataclasses.dataclass(frozen=True)
class Scores:
  """How a layer turns queries and keys into attention logits, and which keys it sees."""
  scale: float  # logits are q.k * scale: K^-0.5, or Gemma's query_pre_attn_scalar^-0.5
  softcap: float = 0.0  # logits become softcap * tanh(logits / softcap) (Gemma 2); 0: not capped
  window: int = 0  # a query sees the last `window` positions, its own included; 0: all before it

  def cap(self, logits: jax.Array) -> jax.Array:
    """Returns scaled q.k logits soft-capped (unchanged without a cap)."""
    return soft_cap(logits, self.softcap)

  def sees(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
    """Returns where a query at a position may see a key at one: at or before it, and within the window."""
    seen = key_positions <= query_positions
    return seen & (query_positions - key_positions < self.window) if self.window else seen


def available(platform: str) -> tuple[str, ...]:
  """Returns the concrete implementations a platform ('cpu', 'gpu' or 'cuda', 'tpu') has; others have 'xla'."""
  return PLATFORMS.get(platform, ('xla',))


def cudnn_problem(dtype: str, head_dim: int, softcap: float = 0.0) -> str | None:
  """Returns what keeps cuDNN flash attention from taking this dtype, head dimension and soft cap, with the fix;
  None if fine."""
  if softcap:
    return 'has no soft cap of attention logits (model.attention_softcap, Gemma 2)'
  if dtype not in CUDNN_DTYPES:
    return f'needs bfloat16 or float16, not {dtype}: set --config.model.dtype=bfloat16'
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return (f'needs a head dimension that is a multiple of 8 and at most {CUDNN_MAX_HEAD_DIM}, not {head_dim}: '
            'change model.width or model.num_heads')
  return None


def resolve(implementation: str, platform: str, dtype: str, head_dim: int, softcap: float = 0.0) -> str:
  """Returns the concrete implementation `implementation` means on `platform`; raises UserError if it cannot run."""
  has = available(platform)
  if implementation not in IMPLEMENTATIONS:
    raise UserError(f'model.attention={implementation!r} is not one of {IMPLEMENTATIONS}: '
                    'set --config.model.attention.')
  if implementation == 'auto':
    if 'splash' in has:
      return 'splash'
    return 'cudnn' if 'cudnn' in has and cudnn_problem(dtype, head_dim, softcap) is None else 'xla'
  if implementation not in has:
    raise UserError(f'model.attention={implementation!r} needs {NEEDS[implementation]}, and this platform '
                    f'({platform}) has: {", ".join(has)}: set --config.model.attention=auto (or {" or ".join(has)}).')
  if implementation == 'cudnn' and (problem := cudnn_problem(dtype, head_dim, softcap)):
    raise UserError(f"model.attention='cudnn' {problem}, or set --config.model.attention=auto (or xla).")
  return implementation


def segment_mask(segment_ids_BxT: jax.Array | None) -> jax.Array | None:
  """Returns B x 1 x T x T, True where query and key positions share a segment; None without segments."""
  if segment_ids_BxT is None:
    return None
  return segment_ids_BxT[:, None, :, None] == segment_ids_BxT[:, None, None, :]


def fused_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array,
                    segment_ids_BxT: jax.Array | None, scores: Scores, implementation: str) -> jax.Array:
  """Returns B x T x H x K causal attention within segments by jax.nn.dot_product_attention ('xla' or 'cudnn'), or
  with a soft cap, which it lacks, by `masked_attention` (xla)."""
  if scores.softcap:
    positions_T = jnp.arange(q_BxTxHxK.shape[1])
    mask_1x1xTxT = scores.sees(positions_T[:, None], positions_T[None, :])[None, None]
    segments = segment_mask(segment_ids_BxT)
    return masked_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask_1x1xTxT if segments is None else
                            segments & mask_1x1xTxT, scores)
  window = (scores.window - 1, 0) if scores.window else None
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask=segment_mask(segment_ids_BxT),
                                      scale=scores.scale, is_causal=True, local_window_size=window,
                                      implementation=implementation)


def masked_attention(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, mask_Bx1xTxS: jax.Array,
                     scores: Scores) -> jax.Array:
  """Returns B x T x H x K attention of T queries to S keys where `mask` allows (broadcast over heads and batch).

  jax.nn.dot_product_attention's xla path without a soft cap; with one, the same computation written out (float32
  logits and softmax, a masked logit the same large negative number), the cap applied to the scaled logits.
  """
  if not scores.softcap:
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask_Bx1xTxS, scale=scores.scale)
  batch, length, heads, head_dim = q_BxTxHxK.shape
  groups = k_BxSxGxK.shape[2]
  q_BxTxGxRxK = q_BxTxHxK.reshape(batch, length, groups, heads // groups, head_dim)  # head h reads h // (H/G)
  logits_BxGxRxTxS = jnp.einsum('btgrk,bsgk->bgrts', q_BxTxGxRxK, k_BxSxGxK, preferred_element_type=jnp.float32)
  logits_BxGxRxTxS = scores.cap(logits_BxGxRxTxS * scores.scale)
  mask_Bx1x1xTxS = mask_Bx1xTxS[:, :, None]
  logits_BxGxRxTxS = jnp.where(mask_Bx1x1xTxS, logits_BxGxRxTxS, -0.7 * jnp.finfo(jnp.float32).max)
  weights_BxGxRxTxS = jax.nn.softmax(logits_BxGxRxTxS, axis=-1).astype(v_BxSxGxK.dtype)
  out_BxTxGxRxK = jnp.einsum('bgrts,bsgk->btgrk', weights_BxGxRxTxS, v_BxSxGxK)
  return out_BxTxGxRxK.reshape(batch, length, heads, head_dim)


def splash_block(length: int) -> int:
  """Returns the longest splash block (query and key positions) that divides `length`, a multiple of 128."""
  return next(block for block in SPLASH_BLOCKS if length % block == 0)


def make_splash_kernel(length: int, heads: int, scores: Scores, interpret: bool):
  """Returns the causal splash kernel for one sequence: (H x T x K, G x T x K, G x T x K, segment ids) -> H x T x K;
  a local window is its mask's (blocks wholly outside it are skipped), a soft cap the kernel's own."""
  # Imported here, not at the top: Pallas's TPU kernels cost every command a seventh of a second to import.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
  shape = (length, length)
  one = (splash_mask.LocalMask(shape, (scores.window - 1, 0), offset=0) if scores.window else
         splash_mask.CausalMask(shape))
  mask = splash_mask.MultiHeadMask([one for _ in range(heads)])
  block = splash_block(length)
  sizes = splash_kernel.BlockSizes(block_q=block, block_kv=block, block_q_dkv=block, block_kv_dkv=block,
                                   block_q_dq=block, block_kv_dq=block)
  return splash_kernel.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret,
                                                     attn_logits_soft_cap=scores.softcap or None)


def splash_local(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, segment_ids_BxT: jax.Array,
                 scores: Scores, interpret: bool) -> jax.Array:
  """Returns B x T x H x K splash attention on one device's whole sequences (T a multiple of 128)."""
  _, length, heads, _ = q_BxTxHxK.shape
  kernel = make_splash_kernel(length, heads, scores, interpret)
  q_BxHxTxK = jnp.swapaxes(q_BxTxHxK, 1, 2) * scores.scale  # The kernel does not scale the logits.
  k_BxGxTxK, v_BxGxTxK = jnp.swapaxes(k_BxTxGxK, 1, 2), jnp.swapaxes(v_BxTxGxK, 1, 2)
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
  segments = splash_kernel.SegmentIds(q=segment_ids_BxT, kv=segment_ids_BxT)
  out_BxHxTxK = jax.vmap(kernel)(q_BxHxTxK, k_BxGxTxK, v_BxGxTxK, segments)
  return jnp.swapaxes(out_BxHxTxK, 1, 2)


def mesh_split(logical: str, size: int) -> tuple[str, ...]:
  """Returns the mesh axes the active logical-axis rules split `logical` over; () if they do not divide `size`."""
  axes = nn.logical_to_mesh_axes((logical,))[0]
  axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
  return axes if size % mesh_devices(axes) == 0 else ()


def mesh_devices(axes: tuple[str, ...]) -> int:
  """Returns how many devices of the current mesh the mesh axes `axes` span together."""
  return math.prod(jax.sharding.get_abstract_mesh().shape[axis] for axis in axes)


def splash_sharded(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, segment_ids_BxT: jax.Array,
                   scores: Scores, interpret: bool) -> jax.Array:
  """Returns B x T x H x K splash attention run per device by shard_map: batch and heads split as the rules say."""
  batch, _, heads, _ = q_BxTxHxK.shape
  batch_axes, head_axes = mesh_split('batch', batch) or None, mesh_split('heads', heads)
  if k_BxTxGxK.shape[2] % mesh_devices(head_axes):  # G does not split like H: one key/value head per query head.
    repeats = heads // k_BxTxGxK.shape[2]
    k_BxTxGxK, v_BxTxGxK = (jnp.repeat(x, repeats, axis=2) for x in (k_BxTxGxK, v_BxTxGxK))
  qkv_spec = P(batch_axes, None, head_axes or None, None)
  local = functools.partial(splash_local, scores=scores, interpret=interpret)
  return jax.shard_map(local, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch_axes, None)), out_specs=qkv_spec,
                       check_vma=False)(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT)


def splash_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array,
                     segment_ids_BxT: jax.Array | None, scores: Scores, interpret: bool = False) -> jax.Array:
  """Returns B x T x H x K causal attention within segments by the splash kernel (`interpret`: Pallas interpreter).

  T is padded at the end to a multiple of 128: causality keeps the padding out of every real position's view.
  """
  batch, length = q_BxTxHxK.shape[:2]
  if segment_ids_BxT is None:
    segment_ids_BxT = jnp.zeros((batch, length), jnp.int32)
  pad = -length % SPLASH_TILE
  q_BxTxHxK, k_BxTxGxK, v_BxTxGxK = (jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
                                     for x in (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK))
  segment_ids_BxT = jnp.pad(segment_ids_BxT.astype(jnp.int32), ((0, 0), (0, pad)))
  run = splash_local if jax.sharding.get_abstract_mesh().empty else splash_sharded
  return run(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, scores, interpret)[:, :length]


ATTENTION = {'xla': functools.partial(fused_attention, implementation='xla'),
             'cudnn': functools.partial(fused_attention, implementation='cudnn'),
             'splash': splash_attention}


def attend_cache(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array, positions_BxT: jax.Array,
                 key_positions_BxS: jax.Array, scores: Scores) -> jax.Array:
  """Returns B x T x H x K attention of queries at `positions_BxT` to cached keys at `key_positions_BxS` (-1: an
  empty slot) that they see: at or before theirs, within a local layer's window."""
  seen_BxTxS = scores.sees(positions_BxT[:, :, None], key_positions_BxS[:, None, :])
  mask_Bx1xTxS = (seen_BxTxS & (key_positions_BxS[:, None, :] >= 0))[:, None]
  return masked_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask_Bx1xTxS, scores)


def platform() -> str:
  """Returns the platform the computation being traced is for: that of the devices of the mesh `jax.set_mesh` set
  (a TPU slice's when `flaxlm-info --compile_for` compiles for one from a CPU host), else JAX's default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return jax.default_backend() if device is None else device.platform


def attend(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, segment_ids_BxT: jax.Array | None,
           implementation: str, scores: Scores | None = None) -> jax.Array:
  """Returns softmax(cap(q k^T * scale)) v, B x T x H x K, where position t attends to positions <= t of its
  segment (the last W of them in a local layer); `scores` None: scale K^-0.5, no cap, no window."""
  q_dtype, head_dim = q_BxTxHxK.dtype.name, q_BxTxHxK.shape[-1]
  scores = scores or Scores(head_dim ** -0.5)
  concrete = resolve(implementation, platform(), q_dtype, head_dim, scores.softcap)
  return ATTENTION[concrete](q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, scores)
