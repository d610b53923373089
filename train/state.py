"""The train state (step, params, optimizer state), created directly in its shardings on the mesh."""

import functools
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from train import sharding


@flax.struct.dataclass
class TrainState:
  """Everything a training step updates; a pytree that jit, Orbax and the shardings walk alike."""
  step: jax.Array
  params: Any
  opt_state: Any


def boxed_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
  """Returns a fresh state whose parameters (and their optimizer moments) still carry logical axis names."""
  params = model.init(rng, jnp.zeros((1, 1), jnp.int32))['params']
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def abstract_state(model: nn.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh) -> TrainState:
  """Returns the state's shapes, dtypes and shardings, without allocating it."""
  boxed = jax.eval_shape(functools.partial(boxed_state, model, tx), jax.random.key(0))
  shardings = sharding.logical_shardings(boxed, mesh)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed), shardings)


def init_state(model: nn.Module, tx: optax.GradientTransformation, seed: int, abstract: TrainState) -> TrainState:
  """Returns a fresh state, each array created on its devices by a jitted init (never whole on one host)."""
  init = lambda rng: nn.unbox(boxed_state(model, tx, rng))
  shardings = jax.tree.map(lambda x: x.sharding, abstract)
  return jax.jit(init, out_shardings=shardings)(jax.random.key(seed))

