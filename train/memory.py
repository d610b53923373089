"""What a model and its training take in memory: the bytes of arrays as devices hold them, of each device's shards,
of the weights in each storage type, and of AdamW training; the check that a train state fits its devices; and the
tables the commands print (flaxlm-info, flaxlm-estimate, flaxlm-sample --quantize).

Every size comes from shapes and dtypes alone (arrays or jax.ShapeDtypeStruct), so a 70B model counts on a laptop.
int4 is packed two to a byte, as XLA stores it (checked on CPU with jax 0.12: `jax.Array.on_device_size_in_bytes` is
half of numpy's `nbytes`).
"""

import collections
import math
import os
from typing import Any

import jax
import jax.numpy as jnp

from flaxlm.configs.errors import UserError
from flaxlm.model import quantize

GiB = 2 ** 30


def array_bytes(x: jax.Array | jax.ShapeDtypeStruct) -> int:
  """Returns the bytes an array holds on device: sub-byte types (int4) packed, as XLA stores them."""
  return -(-math.prod(x.shape) * jax.dtypes.itemsize_bits(x.dtype) // 8)


def memory_bytes(tree: Any) -> int:
  """Returns the bytes held by all arrays of `tree` (concrete or shape structs), quantized ones' scales included."""
  return sum(array_bytes(x) for x in jax.tree.leaves(tree))


def shard(x: jax.Array | jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """Returns the shape struct of one device's shard of `x` (which carries a sharding)."""
  return jax.ShapeDtypeStruct(x.sharding.shard_shape(x.shape), x.dtype)


def shard_bytes(tree: Any) -> int:
  """Returns the bytes one device holds of `tree` (shape structs whose shardings split them evenly)."""
  return sum(array_bytes(shard(x)) for x in jax.tree.leaves(tree))


def bytes_per_device(tree: Any) -> dict[jax.Device, int]:
  """Returns the bytes of `tree` (shape structs with shardings) that each of this process's devices holds: its
  shards' sizes. Other hosts' devices are left out: their memory cannot be asked about from here, and each host
  checks its own."""
  held = collections.Counter()
  for x in jax.tree.leaves(tree):
    for device in x.sharding.addressable_devices:
      held[device] += array_bytes(shard(x))
  return dict(held)


def device_capacity(device: jax.Device) -> int | None:
  """Returns the bytes of memory `device` offers: its allocator's limit on accelerators; on a CPU, the host's memory
  shared by its CPU devices; None where neither is known."""
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'bytes_limit' in stats:
    return stats['bytes_limit']
  if device.platform == 'cpu':
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // len(jax.local_devices(backend='cpu'))
  return None


def check_fits(abstract_state: Any) -> None:
  """Raises UserError if the train state alone (params, frozen ones included, and optimizer moments) exceeds a
  device's memory, before anything is allocated: such a run could only fail, or stall for minutes trying."""
  for device, size in bytes_per_device(abstract_state).items():
    capacity = device_capacity(device)
    if capacity is not None and size > capacity:
      raise UserError(f'the train state needs {size / GiB:,.1f} GiB on each device, more than the '
                      f'{capacity / GiB:,.1f} GiB a {device.platform} device has: shrink the model (model.width, '
                      'model.num_layers), or split it over more devices (mesh.fsdp, mesh.tensor).')


def mode_bytes(params: Any, group_size: int = 128) -> dict[str, int]:
  """Returns the bytes `params` take in float32, bfloat16, int8 and int4 (matrices quantized, the rest float32)."""
  cast = lambda dtype: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), params)
  quantized = lambda mode: jax.eval_shape(lambda p: quantize.quantize(p, mode, group_size), params)
  return {'float32': memory_bytes(cast(jnp.float32)), 'bfloat16': memory_bytes(cast(jnp.bfloat16)),
          'int8': memory_bytes(quantized('int8')), f'int4 (groups of {group_size})': memory_bytes(quantized('int4'))}


def memory_table(params: Any, group_size: int = 128) -> list[str]:
  """Returns the lines of a table of the parameters' memory per storage type, in GiB (MiB below 1 GiB).

  `params` is a loaded model's params (float or not: only shapes count) or, for a preset, their shapes from
  `jax.eval_shape` of the model's init. int8 and int4 include their float32 scales and the float32 parameters
  left unquantized (norms, biases, position embeddings); they are exactly `memory_bytes(quantize(params, mode))`.
  """
  sizes, count = mode_bytes(params, group_size), sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  unit, scale = ('GiB', GiB) if sizes['float32'] >= GiB else ('MiB', 2 ** 20)
  lines = [f'{f"parameter memory ({count:,} parameters)":<44}{unit:>10}{"bytes/param":>14}']
  for name, size in sizes.items():
    lines.append(f'  {name:<42}{size / scale:>10,.2f}{size / count:>14.3f}')
  return lines


def training_bytes(params: int, optimizer_state: tuple[str, int] | None = None) -> dict[str, int]:
  """Returns the bytes of float32 weights, gradients, the optimizer's state (`optimizer_state`: its name and bytes;
  default AdamW's two moments), their total, and bfloat16 weights, for a model of `params` parameters."""
  weights = 4 * params
  name, moments = optimizer_state or ('AdamW moments (2 x float32)', 2 * weights)
  return {'weights (float32)': weights, 'gradients (float32)': weights, name: moments,
          'training total': 2 * weights + moments, 'weights (bfloat16, inference)': weights // 2}


def training_lines(params: int, shards: int | None, optimizer_state: tuple[str, int] | None = None) -> list[str]:
  """Returns the training memory table's lines (`training_bytes`), in GiB (MiB below 1 GiB): the total, and per
  device if the split is known."""
  sizes = training_bytes(params, optimizer_state)
  unit, scale = ('GiB', GiB) if sizes['training total'] >= GiB else ('MiB', 2 ** 20)
  lines = [f'{f"memory ({unit})":<32}{"total":>16}' + (f'{"per device":>14}' if shards else '')]
  for name, size in sizes.items():
    lines.append(f'  {name:<30}{size / scale:>16,.2f}' + (f'{size / scale / shards:>14,.2f}' if shards else ''))
  if shards is None:
    lines.append('  per device: divide by mesh.fsdp x mesh.tensor, the devices each parameter is split over')
  lines.append('  activations come on top: they grow with the batch, the context and model.remat')
  return lines
