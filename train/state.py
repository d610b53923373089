"""The train state (step, params, optimizer state), created directly in its shardings on the mesh."""

import collections
import functools
import math
import os
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from flaxlm.configs.errors import UserError
from flaxlm.model import lora
from flaxlm.train import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates; a pytree that jit, Orbax and the shardings walk alike."""
  step: jax.Array
  params: Any
  opt_state: Any


def boxed_params(model: nn.Module, rng: jax.Array) -> Any:
  """Returns fresh params of `model` that still carry logical axis names."""
  return model.init(rng, jnp.zeros((1, 1), jnp.int32))['params']


def boxed_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Returns a fresh state whose trained parameters (and their optimizer moments) still carry logical axis names.

  With LoRA (model.lora_rank > 0) the state holds the adapters only: the pretrained params stay outside it.
  """
  params = boxed_params(model, rng)
  if model.config.lora_rank:
    params = lora.split(params)[1]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def placed(boxed: Any, mesh: jax.sharding.Mesh) -> Any:
  """Returns shape structs of a boxed abstract tree, each with the sharding its logical axis names give on `mesh`."""
  shardings = sharding.logical_shardings(boxed, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
  """Returns the state's shapes, dtypes and shardings, without allocating it."""
  return placed(jax.eval_shape(functools.partial(boxed_state, model, tx), jax.random.key(0)), mesh)


def abstract_frozen(model: nn.Module, mesh: jax.sharding.Mesh) -> Any:
  """Returns the shapes and shardings of a LoRA model's frozen pretrained params ({} for a model without LoRA)."""
  if not model.config.lora_rank:
    return {}
  return placed(lora.split(jax.eval_shape(functools.partial(boxed_params, model), jax.random.key(0)))[0], mesh)


def init_state(model: nn.Module, tx: optax.GradientTransformation, seed: int, abstract: TrainState) -> TrainState:
  """Returns a fresh state, each array created on its devices by a jitted init (never whole on one host)."""
  init = lambda rng: nn.unbox(boxed_state(model, tx, rng))
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))


def bytes_per_device(abstract: Any) -> dict[jax.Device, int]:
  """Returns the bytes of `abstract` (shape structs with shardings) that each of this process's devices holds: its
  shards' sizes. Other hosts' devices are left out: their memory cannot be asked about from here, and each host
  checks its own."""
  held = collections.Counter()
  for x in jax.tree.leaves(abstract):
    shard_bytes = math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
    for device in x.sharding.addressable_devices:
      held[device] += shard_bytes
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


def check_fits(abstract: TrainState) -> None:
  """Raises UserError if the train state alone (params and optimizer moments) exceeds a device's memory, before
  anything is allocated: such a run could only fail, or stall for minutes trying."""
  for device, size in bytes_per_device(abstract).items():
    capacity = device_capacity(device)
    if capacity is not None and size > capacity:
      raise UserError(f'the train state needs {size / 2**30:,.1f} GiB on each device, more than the '
                      f'{capacity / 2**30:,.1f} GiB a {device.platform} device has: shrink the model (model.width, '
                      'model.num_layers), or split it over more devices (mesh.fsdp, mesh.tensor).')
