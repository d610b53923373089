"""The train state (step, params, optimizer state), created directly in its shardings on the mesh."""

import functools
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from flaxlm.model import lora
from flaxlm.train import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and updates; a pytree that jit and the shardings walk alike.

  The params are partitioned in two: `params`, those trained, and `frozen`, those held fixed. The optimizer's state
  is of `params` alone, and gradients are taken of them alone. Without LoRA every param is trained and `frozen` is
  None; with LoRA (model.lora_rank > 0) `params` are the float32 adapters and `frozen` the pretrained base, held as
  model.lora_base says (model/lora.py). A checkpoint holds the rest (`checkpointed`), never the base: a run reads it
  again from train.init_from, the same bits each time, so resuming is exact and checkpoints stay adapter-sized.
  """
  step: jax.Array
  params: Any
  opt_state: Any
  frozen: Any = None


def checkpointed(state: TrainState) -> dict[str, Any]:
  """Returns what a checkpoint holds of `state` (arrays or shape structs): its step, trained params and optimizer
  state, under the names checkpoints have always had."""
  return {'step': state.step, 'params': state.params, 'opt_state': state.opt_state}


def model_params(state: TrainState) -> Any:
  """Returns the params the model computes with: the trained ones, with LoRA on the frozen base."""
  return lora.combine(state.frozen, state.params)


def boxed_params(model: nn.Module, rng: jax.Array) -> Any:
  """Returns fresh params of `model` that still carry logical axis names."""
  return model.init(rng, jnp.zeros((1, 1), jnp.int32))['params']


def boxed_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Returns a fresh state (its frozen part left out) whose trained parameters and their optimizer moments still
  carry logical axis names: all the params, or with LoRA the adapters."""
  params = boxed_params(model, rng)
  if model.config.lora.rank:
    params = lora.split(params)[1]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def placed(boxed: Any, mesh: jax.sharding.Mesh) -> Any:
  """Returns shape structs of a boxed abstract tree, each with the sharding its logical axis names give on `mesh`."""
  shardings = sharding.logical_shardings(boxed, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                   lora_base: str = 'float32') -> TrainState:
  """Returns the state's shapes, dtypes and shardings, without allocating it; with LoRA, its frozen base held as
  `lora_base` (model.lora_base)."""
  boxed = jax.eval_shape(functools.partial(boxed_state, model, tx), jax.random.key(0))
  state = placed(boxed.replace(opt_state=None), mesh)
  return state.replace(opt_state=placed_moments(boxed.opt_state, mesh), frozen=abstract_frozen(model, mesh, lora_base))


def placed_moments(boxed: Any, mesh: jax.sharding.Mesh) -> Any:
  """Returns shape structs of an optimizer state made from boxed params (`boxed_state`'s), each moment split as its
  param is along every axis the split divides, and its counts whole on every device.

  A moment of another rank than its param (Adafactor's factored rows and columns) is whole on every device too; a box
  around one of Optax's placeholders for params another optimizer updates (Muon's masked parts) is dropped.
  """
  def place(x):
    if isinstance(x, nn.Partitioned) and not hasattr(x.value, 'shape'):
      return x.value  # optax.MaskedNode: no array.
    value = x.value if isinstance(x, nn.Partitioned) else x
    if not isinstance(x, nn.Partitioned) or value.ndim != len(x.names):
      return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding.replicated(mesh))
    split = nn.logical_to_mesh_sharding(jax.sharding.PartitionSpec(*x.names), mesh, sharding.RULES)
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=fitted(split, value.shape))
  return jax.tree.map(place, boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def abstract_frozen(model: nn.Module, mesh: jax.sharding.Mesh, lora_base: str) -> Any:
  """Returns the shape structs of a LoRA model's frozen base held as `lora_base` (None without LoRA).

  An int8/int4 matrix's integers are split as the float matrix is; its scales too, along each axis the split divides
  (a contraction axis shrunk to its groups may not split: int8's single scale per output is whole on each device).
  """
  if not model.config.lora.rank:
    return None
  base = placed(lora.split(jax.eval_shape(functools.partial(boxed_params, model), jax.random.key(0)))[0], mesh)
  held = jax.eval_shape(functools.partial(lora.hold_base, storage=lora_base), base)
  return jax.tree.map(lambda x, h: jax.tree.map(lambda y: jax.ShapeDtypeStruct(
      y.shape, y.dtype, sharding=fitted(x.sharding, y.shape)), h), base, held)


def hold_frozen(base: Any, abstract_frozen: Any, lora_base: str) -> Any:
  """Returns LoRA's pretrained params `base` held as `lora_base` says (`lora.hold_base`), laid out as
  `abstract_frozen`; `base` (donated) is read in `lora.read_dtype(lora_base)`. The same bits on every call."""
  hold = jax.jit(functools.partial(lora.hold_base, storage=lora_base),
                 out_shardings=jax.tree.map(lambda x: x.sharding, abstract_frozen), donate_argnums=0)
  return hold(base)


def fitted(placement: jax.sharding.NamedSharding, shape: tuple[int, ...]) -> jax.sharding.NamedSharding:
  """Returns `placement` for an array of `shape`, each axis left whole where its mesh axes do not divide it."""
  mesh, spec = placement.mesh, tuple(placement.spec) + (None,) * (len(shape) - len(placement.spec))
  size = lambda axes: math.prod(mesh.shape[a] for a in ((axes,) if isinstance(axes, str) else axes or ()))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      *(axes if n % size(axes) == 0 else None for n, axes in zip(shape, spec))))


def init_state(model: nn.Module, tx: optax.GradientTransformation, seed: int, abstract: TrainState) -> TrainState:
  """Returns a fresh state, each array created on its devices by a jitted init (never whole on one host); its frozen
  part, LoRA's pretrained base, is left None for the caller to read (train/loop.py)."""
  init = lambda rng: nn.unbox(boxed_state(model, tx, rng))
  shardings = jax.tree.map(lambda x: x.sharding, abstract.replace(frozen=None))
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
