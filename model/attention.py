"""Causal attention inside documents, by one of several implementations of the same function.

'xla' runs anywhere; 'cudnn' is cuDNN's flash attention on NVIDIA GPUs; 'splash' is the Pallas splash attention
kernel on TPUs; 'auto' picks the fastest one the platform has.

Shape key: B batch, T sequence length, H query heads, G key/value heads, K head dimension.
"""

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


def available(platform: str) -> tuple[str, ...]:
  """Returns the concrete implementations a platform ('cpu', 'gpu' or 'cuda', 'tpu') has; others have 'xla'."""
  return PLATFORMS.get(platform, ('xla',))


def cudnn_problem(dtype: str, head_dim: int) -> str | None:
  """Returns what keeps cuDNN flash attention from taking this dtype and head dimension, with the fix; None if fine."""
  if dtype not in CUDNN_DTYPES:
    return f'needs bfloat16 or float16, not {dtype}: set --config.model.dtype=bfloat16'
  if head_dim % 8 or head_dim > CUDNN_MAX_HEAD_DIM:
    return (f'needs a head dimension that is a multiple of 8 and at most {CUDNN_MAX_HEAD_DIM}, not {head_dim}: '
            'change model.width or model.num_heads')
  return None


def resolve(implementation: str, platform: str, dtype: str, head_dim: int) -> str:
  """Returns the concrete implementation `implementation` means on `platform`; raises UserError if it cannot run."""
  has = available(platform)
  if implementation not in IMPLEMENTATIONS:
    raise UserError(f'model.attention={implementation!r} is not one of {IMPLEMENTATIONS}: '
                    'set --config.model.attention.')
  if implementation == 'auto':
    if 'splash' in has:
      return 'splash'
    return 'cudnn' if 'cudnn' in has and cudnn_problem(dtype, head_dim) is None else 'xla'
  if implementation not in has:
    raise UserError(f'model.attention={implementation!r} needs {NEEDS[implementation]}, and this platform '
                    f'({platform}) has: {", ".join(has)}: set --config.model.attention=auto (or {" or ".join(has)}).')
  if implementation == 'cudnn' and (problem := cudnn_problem(dtype, head_dim)):
    raise UserError(f"model.attention='cudnn' {problem}, or set --config.model.attention=auto (or xla).")
  return implementation


def segment_mask(segment_ids_BxT: jax.Array | None) -> jax.Array | None:
  """Returns B x 1 x T x T, True where query and key positions share a segment; None without segments."""
  if segment_ids_BxT is None:
    return None
  return segment_ids_BxT[:, None, :, None] == segment_ids_BxT[:, None, None, :]


def fused_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array,
                    segment_ids_BxT: jax.Array | None, implementation: str) -> jax.Array:
  """Returns B x T x H x K causal attention within segments by jax.nn.dot_product_attention ('xla' or 'cudnn')."""
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask=segment_mask(segment_ids_BxT),
                                      is_causal=True, implementation=implementation)


def splash_block(length: int) -> int:
  """Returns the longest splash block (query and key positions) that divides `length`, a multiple of 128."""
  return next(block for block in SPLASH_BLOCKS if length % block == 0)


def make_splash_kernel(length: int, heads: int, interpret: bool):
  """Returns the causal splash kernel for one sequence: (H x T x K, G x T x K, G x T x K, segment ids) -> H x T x K."""
  # Imported here, not at the top: Pallas's TPU kernels cost every command a seventh of a second to import.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash_kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as splash_mask
  mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((length, length)) for _ in range(heads)])
  block = splash_block(length)
  sizes = splash_kernel.BlockSizes(block_q=block, block_kv=block, block_q_dkv=block, block_kv_dkv=block,
                                   block_q_dq=block, block_kv_dq=block)
  return splash_kernel.make_splash_mha_single_device(mask, block_sizes=sizes, interpret=interpret)


def splash_local(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, segment_ids_BxT: jax.Array,
                 interpret: bool) -> jax.Array:
  """Returns B x T x H x K splash attention on one device's whole sequences (T a multiple of 128)."""
  _, length, heads, head_dim = q_BxTxHxK.shape
  kernel = make_splash_kernel(length, heads, interpret)
  q_BxHxTxK = jnp.swapaxes(q_BxTxHxK, 1, 2) * head_dim ** -0.5  # The kernel does not scale the logits.
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
                   interpret: bool) -> jax.Array:
  """Returns B x T x H x K splash attention run per device by shard_map: batch and heads split as the rules say."""
  batch, _, heads, _ = q_BxTxHxK.shape
  batch_axes, head_axes = mesh_split('batch', batch) or None, mesh_split('heads', heads)
  if k_BxTxGxK.shape[2] % mesh_devices(head_axes):  # G does not split like H: one key/value head per query head.
    repeats = heads // k_BxTxGxK.shape[2]
    k_BxTxGxK, v_BxTxGxK = (jnp.repeat(x, repeats, axis=2) for x in (k_BxTxGxK, v_BxTxGxK))
  qkv_spec = P(batch_axes, None, head_axes or None, None)
  local = functools.partial(splash_local, interpret=interpret)
  return jax.shard_map(local, in_specs=(qkv_spec, qkv_spec, qkv_spec, P(batch_axes, None)), out_specs=qkv_spec,
                       check_vma=False)(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT)


def splash_attention(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array,
                     segment_ids_BxT: jax.Array | None, interpret: bool = False) -> jax.Array:
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
  return run(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, interpret)[:, :length]


ATTENTION = {'xla': functools.partial(fused_attention, implementation='xla'),
             'cudnn': functools.partial(fused_attention, implementation='cudnn'),
             'splash': splash_attention}


def attend_cache(q_BxTxHxK: jax.Array, k_BxSxGxK: jax.Array, v_BxSxGxK: jax.Array,
                 positions_BxT: jax.Array) -> jax.Array:
  """Returns B x T x H x K attention of queries at `positions_BxT` to the cache's positions at or before theirs."""
  cache_positions_S = jnp.arange(k_BxSxGxK.shape[1])
  mask_Bx1xTxS = (cache_positions_S[None, None, None, :] <= positions_BxT[:, None, :, None])
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxGxK, v_BxSxGxK, mask=mask_Bx1xTxS)


def platform() -> str:
  """Returns the platform the computation being traced is for: that of the devices of the mesh `jax.set_mesh` set
  (a TPU slice's when `flaxlm-info --compile_for` compiles for one from a CPU host), else JAX's default backend."""
  device = jax.sharding.get_abstract_mesh().abstract_device
  return jax.default_backend() if device is None else device.platform


def attend(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, segment_ids_BxT: jax.Array | None,
           implementation: str) -> jax.Array:
  """Returns softmax(q k^T / sqrt(K)) v, B x T x H x K, where position t attends to positions <= t of its segment."""
  q_dtype, head_dim = q_BxTxHxK.dtype.name, q_BxTxHxK.shape[-1]
  concrete = resolve(implementation, platform(), q_dtype, head_dim)
  return ATTENTION[concrete](q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT)
