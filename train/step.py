"""One training step, read like the loop it is: predict, measure the loss, backpropagate, update.

Shape key: B batch, T sequence length, V vocabulary.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from train import sharding
from train.state import TrainState

Batch = dict[str, jax.Array]


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Returns the weighted mean over tokens of -log p(target): how surprised the model is by the true next token."""
  losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  return (losses_BxT * weights_BxT).sum() / jnp.maximum(weights_BxT.sum(), 1)


def loss_fn(params, batch: Batch, model: nn.Module, dropout_rng: jax.Array | None) -> jax.Array:
  """Returns the next-token loss of `params` on `batch` (dropout on when `dropout_rng` is given)."""
  logits_BxTxV = model.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids'],
                             deterministic=dropout_rng is None,
                             rngs={'dropout': dropout_rng} if dropout_rng is not None else None)
  return cross_entropy(logits_BxTxV, batch['targets'], batch['weights'])


def train_step(state: TrainState, batch: Batch, *, model: nn.Module, tx: optax.GradientTransformation,
               schedule: optax.Schedule, seed: int) -> tuple[TrainState, dict[str, jax.Array]]:
  """Returns the state after one update on `batch`, and the step's metrics."""
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)
  loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, model, dropout_rng)  # predict, loss, backprop
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)  # update
  metrics = {'loss': loss, 'grad_norm': optax.tree.norm(grads), 'learning_rate': schedule(state.step)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: Batch, *, model: nn.Module) -> jax.Array:
  """Returns the loss of `params` on `batch`, without dropout."""
  return loss_fn(params, batch, model, None)


def compile_steps(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
                  abstract: TrainState, mesh: jax.sharding.Mesh):
  """Returns (train_step, eval_step) jitted with explicit shardings; train_step donates the state it is given."""
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  batch_shardings = sharding.batch_sharding(mesh)  # Every array of the batch is B x T.
  scalar = sharding.replicated(mesh)
  train = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, seed=seed),
                  in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, scalar),
                  donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, model=model),
                     in_shardings=(state_shardings.params, batch_shardings), out_shardings=scalar)
  return with_mesh(train, mesh), with_mesh(evaluate, mesh)


def with_mesh(fn, mesh: jax.sharding.Mesh):
  """Returns `fn` run under `mesh` and the logical-axis rules, so activation constraints resolve when traced."""
  def run(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      return fn(*args)
  return run
