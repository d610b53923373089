"""LoRA: fine-tune a frozen pretrained model by learning a low-rank change to some of its matrices.

A targeted weight W (inputs x outputs) is left as it was, and its layer adds (alpha / r) * x A B, where A is
inputs x r and B is r x outputs, for a rank r far below both. B starts at zero, so a fresh adapter leaves the model
exactly as it was. Training updates A and B only: r * (inputs + outputs) numbers per matrix instead of
inputs * outputs. `merge` folds an adapter into its weight, W + (alpha / r) A B, so a fine-tuned model samples at
the base model's cost.

In the params tree the adapter of a matrix sits beside it: `attention/query/kernel` gets
`attention/query_lora/{lora_a, lora_b}` (with the layers axis first when layers are scanned). Training splits the
tree in two (`split`): the adapters, trained in float32 with their optimizer state, and the frozen base, which takes
part in the loss as a constant and is held as `model.lora_base` says (`hold_base`): float32, bfloat16, or its layers'
matrices int8/int4 (model/quantize.py; QLoRA-style), expanded one layer at a time inside the layer scan.

Shape key: B batch, T sequence length, R rank; `...I` the matrix's input axes, `...O` its output axes.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from flaxlm.configs.options import NonNegative, OneOf, option
from flaxlm.model import quantize

TARGETS = ('query', 'key', 'value', 'out', 'gate', 'up', 'down')  # every matrix an adapter can change.
SUFFIX = '_lora'  # the adapter of matrix `query` is the module `query_lora`.
BASES = ('float32', 'bfloat16', 'int8', 'int4')  # how the frozen base may be held (model.lora_base).


def matrices(mlp: str, num_experts: int = 0) -> tuple[str, ...]:
  """Returns the names of the matrices adapters can change in a model with this MLP kind (plain GELU has no gate;
  SwiGLU, GeGLU do): the attention's alone in a sparse model (`num_experts` > 0), whose experts take none."""
  attention = TARGETS[:4]
  if num_experts:
    return attention
  return tuple(t for t in TARGETS if not (t == 'gate' and mlp == 'gelu'))


def parse_targets(targets: str) -> tuple[str, ...]:
  """Returns the matrix names of a comma-separated `model.lora_targets`, such as 'query,value'."""
  return tuple(name.strip() for name in targets.split(',') if name.strip())


@dataclasses.dataclass(frozen=True)
class Lora:
  """LoRA fine-tuning: the adapters' rank, scale and matrices, and how the frozen base is held."""
  rank: int = option(0, 'rank r of the adapters; 0 turns LoRA off. With r > 0 the pretrained weights '
                     '(train.init_from, required) stay frozen and only the adapters are trained and checkpointed',
                     NonNegative('no LoRA'))
  alpha: float = option(16.0, "the adapters' update is scaled by lora_alpha / lora_rank")
  targets: str = option('query,value', 'comma-separated matrices that get adapters: query, key, value, out '
                        '(attention), gate, up, down (a dense MLP; gate only with swiglu or geglu)')
  base: str = option('bfloat16', "how the frozen pretrained weights are held: 'float32', 'bfloat16', or 'int8' / "
                     "'int4' (QLoRA-style: the layers' matrices quantized, expanded a layer at a time; embedding and "
                     'head bfloat16). The adapters and their AdamW moments stay float32', OneOf(BASES))

  @property
  def adapted(self) -> tuple[str, ...]:
    """Returns the names of the matrices that carry adapters (none when the rank is 0)."""
    return parse_targets(self.targets) if self.rank else ()


def problem(settings: Lora, mlp: str, num_experts: int = 0) -> str | None:
  """Returns what is wrong with a LoRA setting's relations (one line naming the key to change), or None if it can be
  built (each value's own range is its option's rule)."""
  if settings.rank and not 0 < settings.alpha < math.inf:
    return f'model.lora_alpha={settings.alpha} must be positive with model.lora_rank={settings.rank}: set it.'
  known = matrices(mlp, num_experts)
  unknown = [name for name in parse_targets(settings.targets) if name not in known]
  if settings.rank and (unknown or not parse_targets(settings.targets)):
    return (f'model.lora_targets={settings.targets!r} names no matrix {unknown[0]!r} in this model' if unknown else
            'model.lora_targets is empty') + f': set --config.model.lora_targets to some of {",".join(known)}.'
  return None


def read_dtype(storage: str) -> Any:
  """Returns the dtype the base is read in before it is held as `storage`: float32 for float32, else bfloat16."""
  return jnp.float32 if storage == 'float32' else jnp.bfloat16


def hold_base(base: Any, storage: str) -> Any:
  """Returns the frozen base params as `storage` holds them (params or shape structs): cast to float32 or bfloat16;
  for int8/int4 the layers' matrices quantized (model/quantize.py, int4 in groups of 128) and the rest bfloat16.

  The embedding and output head stay bfloat16, as in QLoRA: a quantized head multiplies each of its N scale groups
  separately (quantize.dot), N times a plain matmul's work at every position of every training batch.
  """
  held = jax.tree.map(lambda x: x.astype(read_dtype(storage)), base)
  if storage in ('float32', 'bfloat16'):
    return held
  return {**held, 'stack': quantize.quantize(held['stack'], storage)}


class LowRank(nn.Module):
  """The adapter's update of one matrix: (alpha / rank) * x A B, with B zero at the start."""
  features: tuple[int, ...]  # the matrix's output shape, e.g. (H, K) for query.
  in_axes: tuple[str, ...]  # logical names of the matrix's input axes (the last axes of x).
  out_axes: tuple[str, ...]  # logical names of its output axes.
  rank: int
  alpha: float
  dtype: Any

  @nn.compact
  def __call__(self, x_BxTxI: jax.Array) -> jax.Array:
    inputs = x_BxTxI.shape[-len(self.in_axes):]
    a_init = nn.initializers.normal(math.prod(inputs) ** -0.5)
    a_IxR = self.param('lora_a', nn.with_logical_partitioning(a_init, (*self.in_axes, None)), (*inputs, self.rank))
    b_RxO = self.param('lora_b', nn.with_logical_partitioning(nn.initializers.zeros, (None, *self.out_axes)),
                       (self.rank, *self.features))
    x_BxTxI, a_IxR, b_RxO = (t.astype(self.dtype) for t in (x_BxTxI, a_IxR, b_RxO))
    h_BxTxR = jnp.tensordot(x_BxTxI, a_IxR, axes=len(self.in_axes))
    return jnp.tensordot(h_BxTxR, b_RxO, axes=1) * (self.alpha / self.rank)


def is_adapter(path: tuple[str, ...]) -> bool:
  """Returns whether a flattened params path belongs to an adapter."""
  return any(name.endswith(SUFFIX) for name in path)


def split(params: Any) -> tuple[dict, dict]:
  """Returns (base, adapters): the params of the pretrained model and those of its adapters, as two trees."""
  flat = traverse_util.flatten_dict(params)
  part = lambda adapters: traverse_util.unflatten_dict({k: v for k, v in flat.items() if is_adapter(k) == adapters})
  return part(False), part(True)


def combine(base: Any, adapters: Any) -> Any:
  """Returns the full params of a LoRA model from its frozen base and its adapters (just `adapters` if no base)."""
  if not base:
    return adapters
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(base), **traverse_util.flatten_dict(adapters)})


def delta(a: jax.Array, b: jax.Array, kernel_ndim: int, scale: float) -> jax.Array:
  """Returns scale * A B shaped as the kernel: (...I, ...O), per layer when the kernel has a leading layers axis."""
  product = lambda a_IxR, b_RxO: jnp.tensordot(a_IxR, b_RxO, axes=1) * scale
  if kernel_ndim == a.ndim + b.ndim - 3:  # Both carry the layers axis, the kernel once.
    return jax.vmap(product)(a, b)
  return product(a, b)


def merge(params: Any, alpha: float, rank: int) -> dict:
  """Returns the base params with every adapter folded into its matrix: W + (alpha / rank) A B, in W's dtype."""
  base, adapters = split(params)
  flat_base, flat_adapters = traverse_util.flatten_dict(base), traverse_util.flatten_dict(adapters)
  for path in flat_adapters:
    if path[-1] != 'lora_a':
      continue
    kernel_path = (*path[:-2], path[-2].removesuffix(SUFFIX), 'kernel')
    kernel = flat_base[kernel_path]
    change = delta(flat_adapters[path], flat_adapters[(*path[:-1], 'lora_b')], kernel.ndim, alpha / rank)
    flat_base[kernel_path] = (kernel + change).astype(kernel.dtype)
  return traverse_util.unflatten_dict(flat_base)
