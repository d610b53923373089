"""Weight-only int8 and int4 quantization of a trained model's matrices, for sampling and evaluation, and of LoRA's
frozen base in training (model/lora.py's hold_base).

Each matrix w is stored as integers q and float32 scales s, with w ~ q * s. The scales are symmetric (no zero
point) and are taken along w's contraction axis C, the axis a matmul sums over, so that each output of the matmul
has its own scales:
  int8: one scale per output channel, s = max |w| over C / 127, q in [-127, 127].
  int4: one scale per group of `group_size` consecutive entries of C, s = max |w| over the group / 7, q in [-7, 7].
        Where C is shorter than `group_size` or not a multiple of it, the group is the whole of C.
Rounding to the nearest integer then bounds the error of every weight: |w - q * s| <= s / 2.

Which axes are C is set per parameter by `CONTRACTION_AXES`, counted from the end so that the leading `layers` axis
of scanned (stacked) parameters always keeps scales of its own. The token embedding (V x D) is both a lookup of rows
and, when tied, the output head contracting D: its scales run along D, one per row (or group of a row), serving both.
Norms, biases and learned position embeddings stay float.

int4 values are stored as `jnp.int4`, which XLA packs two to a byte; train/memory.py counts what each storage takes.

Decoding (model/sampling.py) reads the integers and scales as they are stored: the decoding model expands each
layer's matrices inside the layer scan (`expand`, in the model's dtype), the embedding lookup expands only the rows
it reads (`take_rows`) and the output head multiplies its integers as stored (`dot`), so no float copy of the weights
is ever made whole. Training with LoRA on an int8/int4 base expands each layer's matrices inside the scan the same
way (the gradients flow into the adapters alone). `dequantize` expands a whole tree at once, for evaluating a
quantized model with the ordinary forward pass.

Shape key: C the contraction axis (or axes, flattened), N the number of groups along it, G the group length.
"""

import functools
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from flaxlm.configs.errors import UserError

MODES = ('none', 'int8', 'int4')
STORAGE = {'int8': (jnp.int8, 127), 'int4': (jnp.int4, 7)}  # mode: (integer dtype, largest magnitude stored)
CONTRACTION_AXES = {  # (module, parameter): the axes a matmul sums over, counted from the end.
    ('query', 'kernel'): (-3,), ('key', 'kernel'): (-3,), ('value', 'kernel'): (-3,),  # D x H x K
    ('out', 'kernel'): (-3, -2),  # H x K x D
    ('up', 'kernel'): (-2,), ('gate', 'kernel'): (-2,), ('down', 'kernel'): (-2,),  # in x out
    ('head', 'kernel'): (-2,),  # D x V
    ('embed', 'embedding'): (-1,),  # V x D
}


@flax.struct.dataclass
class QuantizedArray:
  """A matrix as integers `values` (its own shape) and float32 `scale` (its shape, with C replaced by N groups)."""
  values: jax.Array  # int8 or int4, the original shape.
  scale: jax.Array  # float32: shape[:first] + (N,) + shape[last + 1:], where first..last are the axes C.
  axes: tuple[int, ...] = flax.struct.field(pytree_node=False)  # the contraction axes, counted from the end.
  group_size: int = flax.struct.field(pytree_node=False)  # G, the entries of C that share a scale.


def grouped_shape(shape: tuple[int, ...], axes: tuple[int, ...], group_size: int) -> tuple[int, ...]:
  """Returns `shape` with the consecutive `axes` flattened to C and split into C / group_size x group_size."""
  first, last = len(shape) + axes[0], len(shape) + axes[-1]
  contraction = math.prod(shape[first:last + 1])
  return (*shape[:first], contraction // group_size, group_size, *shape[last + 1:])


def effective_group_size(shape: tuple[int, ...], axes: tuple[int, ...], mode: str, group_size: int) -> int:
  """Returns G: for int4 `group_size` where it divides the length C of `axes` (and so is no longer), else C."""
  contraction = math.prod(shape[len(shape) + axis] for axis in axes)
  return group_size if mode == 'int4' and contraction % group_size == 0 else contraction


def quantize_array(w: jax.Array, axes: tuple[int, ...], mode: str, group_size: int) -> QuantizedArray:
  """Returns `w` rounded to `mode`'s integers, with symmetric scales per group of G entries along `axes`."""
  dtype, largest = STORAGE[mode]
  group = effective_group_size(w.shape, axes, mode, group_size)
  w_NxG = w.astype(jnp.float32).reshape(grouped_shape(w.shape, axes, group))  # ...N x G...
  group_axis = len(w.shape) + axes[0] + 1
  max_abs_Nx1 = jnp.max(jnp.abs(w_NxG), axis=group_axis, keepdims=True)
  scale_Nx1 = jnp.maximum(max_abs_Nx1 / largest, jnp.finfo(jnp.float32).tiny)  # all-zero groups stay zero.
  values_NxG = jnp.clip(jnp.round(w_NxG / scale_Nx1), -largest, largest).astype(dtype)
  return QuantizedArray(values_NxG.reshape(w.shape), scale_Nx1.squeeze(group_axis), axes, group)


def dequantize_array(q: QuantizedArray, dtype: Any) -> jax.Array:
  """Returns values x scale in `dtype`, computed in float32, in the original shape."""
  group_axis = len(q.values.shape) + q.axes[0] + 1
  values_NxG = q.values.astype(jnp.float32).reshape(grouped_shape(q.values.shape, q.axes, q.group_size))
  w_NxG = values_NxG * jnp.expand_dims(q.scale, group_axis)
  return w_NxG.reshape(q.values.shape).astype(dtype)


def path_key(path: tuple) -> tuple[str, ...]:
  """Returns the last two names of a params path: (module, parameter), as `CONTRACTION_AXES` is keyed."""
  return tuple(str(getattr(entry, 'key', entry)) for entry in path[-2:])


@functools.partial(jax.jit, static_argnames=('mode', 'group_size'))
def quantize(params: Any, mode: str, group_size: int = 128) -> Any:
  """Returns `params` with every matrix of `CONTRACTION_AXES` a QuantizedArray (mode 'none': `params` as they are)."""
  if mode not in MODES:
    raise UserError(f'quantization mode {mode!r} is not one of {MODES}: pick one of those.')
  if mode == 'none':
    return params
  def leaf(path: tuple, w: jax.Array) -> Any:
    axes = CONTRACTION_AXES.get(path_key(path))
    return w if axes is None else quantize_array(w, axes, mode, group_size)
  return jax.tree_util.tree_map_with_path(leaf, params)


def is_quantized(x: Any) -> bool:
  """Returns whether `x` is a QuantizedArray (a leaf to stop at when walking quantized params)."""
  return isinstance(x, QuantizedArray)


def take_rows(q: QuantizedArray, ids: jax.Array) -> QuantizedArray:
  """Returns the rows `ids` (any shape I) of a matrix quantized along its last axes: I x ... values and scales.

  The contraction axes are counted from the end, so they keep their meaning after the first axis becomes I's.
  """
  return QuantizedArray(jnp.take(q.values, ids, axis=0), jnp.take(q.scale, ids, axis=0), q.axes, q.group_size)


def dot(x_BxTxD: jax.Array, q: QuantizedArray, dtype: Any) -> jax.Array:
  """Returns x times a matrix quantized along D, the tied head's table V x D or the untied head's kernel D x V,
  contracting D: B x T x V in `dtype`.

  x is spread over N copies, copy n zero outside group n, so that one matmul over D, reading the integers as they
  are stored, gives each group's sum (B x T x N x V, float32), which the group's scale then weighs. Neither the
  scales broadcast to the matrix's shape nor the matrix regrouped is ever made (XLA on TPU writes either out whole).
  It costs N times a plain matmul's multiply-adds: small beside reading the matrix, for the few positions sampling
  asks for.
  """
  rows = q.axes == (-1,)  # V x D, as the embedding is stored.
  values_DxV, scale_NxV = (q.values.T, q.scale.T) if rows else (q.values, q.scale)
  width, groups = values_DxV.shape[0], scale_NxV.shape[0]
  in_group_NxD = jnp.arange(width) // q.group_size == jnp.arange(groups)[:, None]
  x_BxTxNxD = jnp.where(in_group_NxD, x_BxTxD[..., None, :], 0).astype(dtype)
  sums_BxTxNxV = jnp.einsum('...nd,dv->...nv', x_BxTxNxD, values_DxV.astype(dtype), preferred_element_type=jnp.float32)
  return jnp.einsum('...nv,nv->...v', sums_BxTxNxV, scale_NxV).astype(dtype)


def expand(tree: Any, dtype: Any) -> Any:
  """Returns `tree` with each QuantizedArray dequantized to `dtype`, its other leaves as they are."""
  return jax.tree.map(lambda x: dequantize_array(x, dtype) if is_quantized(x) else x, tree, is_leaf=is_quantized)


def holds_quantized(tree: Any) -> bool:
  """Returns whether any leaf of `tree` is a QuantizedArray."""
  return any(is_quantized(x) for x in jax.tree.leaves(tree, is_leaf=is_quantized))


def integers(tree: Any) -> Any:
  """Returns `tree` with each QuantizedArray replaced by its integers, in the matrix's shape (to count or lay out the
  parameters it stands for); its other leaves as they are."""
  return jax.tree.map(lambda x: x.values if is_quantized(x) else x, tree, is_leaf=is_quantized)


@functools.partial(jax.jit, static_argnames='dtype')
def dequantize(qparams: Any, dtype: Any = jnp.float32) -> Any:
  """Returns plain params of `dtype`: quantized matrices expanded, float parameters cast."""
  return jax.tree.map(lambda x: x.astype(dtype), expand(qparams, dtype))
