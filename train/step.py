"""One training step, read like the loop it is: predict and measure the loss (train/loss.py), backpropagate, update.

Shape key: B batch, T sequence length, M microbatches.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxlm.model import lora
from flaxlm.train import sharding
from flaxlm.train.loss import Batch, batch_weight, loss_parts
from flaxlm.train.state import TrainState, model_params

def split_microbatches(x_BxT: jax.Array, microbatches: int) -> jax.Array:
  """Returns x as M x B/M: microbatch m holds rows m, m+M, m+2M..., so each takes rows from every data shard."""
  x_BMxMxT = x_BxT.reshape(x_BxT.shape[0] // microbatches, microbatches, *x_BxT.shape[1:])
  return nn.with_logical_constraint(x_BMxMxT.swapaxes(0, 1), (None, 'batch', 'length'))


def gradients(state: TrainState, batch: Batch, model: nn.Module, dropout_rng: jax.Array, microbatches: int,
              z_loss: float = 0.0) -> tuple[dict[str, jax.Array], object]:
  """Returns (the loss's parts, `loss_parts`' second, and the gradients of the state's trained params) on `batch`,
  computed over `microbatches` pieces in turn to bound activation memory; `z_loss` weighs the z-loss.

  The frozen params (LoRA's base) take part in the loss as constants: no gradient of their size is ever made. The
  gradients of the pieces are summed (Optax's MultiSteps instead averages whole optimizer calls, one per microbatch),
  so the result equals the whole batch's up to float rounding, padding included.
  """
  def parts_and_grads(trained, micro: Batch, rng: jax.Array, total: jax.Array | None):
    objective = lambda trained: loss_parts(lora.combine(state.frozen, trained), micro, model, rng, total, z_loss)
    (_, parts), grads = jax.value_and_grad(objective, has_aux=True)(trained)
    return parts, grads

  if microbatches == 1:
    return parts_and_grads(state.params, batch, dropout_rng, None)
  total_weight = batch_weight(batch['weights'])
  micro_batches = jax.tree.map(lambda x: split_microbatches(x, microbatches), batch)

  def accumulate(totals, micro_and_index):
    micro, index = micro_and_index
    piece = parts_and_grads(state.params, micro, jax.random.fold_in(dropout_rng, index), total_weight)
    return jax.tree.map(jnp.add, totals, piece), None

  first = jax.tree.map(lambda x: x[0], micro_batches)
  zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(parts_and_grads, state.params, first, dropout_rng, total_weight))
  (parts, grads), _ = jax.lax.scan(accumulate, zeros, (micro_batches, jnp.arange(microbatches)))
  return parts, grads


def train_step(state: TrainState, batch: Batch, *, model: nn.Module, tx: optax.GradientTransformation,
               schedule: optax.Schedule, seed: int, microbatches: int = 1,
               z_loss: float = 0.0) -> tuple[TrainState, dict[str, jax.Array]]:
  """Returns the state after one update of its trained params on `batch`, and the step's metrics."""
  dropout_rng = jax.random.fold_in(jax.random.key(seed), state.step)
  parts, grads = gradients(state, batch, model, dropout_rng, microbatches, z_loss)  # predict, loss, backprop
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)  # update
  metrics = {**parts, 'grad_norm': optax.tree.norm(grads), 'learning_rate': schedule(state.step)}
  if isinstance(opt_state, optax.ApplyIfFiniteState):  # train.nonfinite=skip
    metrics['skipped_steps'] = opt_state.total_notfinite
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(params, batch: Batch, *, model: nn.Module) -> tuple[jax.Array, jax.Array]:
  """Returns (the sum of the weighted token losses, the sum of the weights) of `params` (all the model's:
  `state.model_params`) on `batch`, without dropout: summed over batches, their quotient is the mean loss per trained
  token. The next-token loss alone: a sparse model's router losses are training's, not part of what it predicts."""
  _, parts = loss_parts(params, batch, model, None, total_weight=jnp.ones(()))  # Divided by 1.
  return parts['loss'], batch['weights'].sum()


def jit_steps(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
              abstract: TrainState, mesh: jax.sharding.Mesh, microbatches: int = 1, z_loss: float = 0.0):
  """Returns (train_step(state, batch), eval_step(params, batch)) jitted with explicit shardings on `mesh` (those of
  `abstract`, its frozen part included, and the batch's); train_step donates the state (its frozen part comes back
  as it went in). Call or lower them under `with_mesh`: `flaxlm-info --compile_for` lowers them for a TPU slice
  without running them.
  """
  state_shardings = jax.tree.map(lambda x: x.sharding, abstract)
  batch_shardings = sharding.batch_sharding(mesh)  # Every array of the batch is B x T.
  scalar = sharding.replicated(mesh)
  train = jax.jit(functools.partial(train_step, model=model, tx=tx, schedule=schedule, seed=seed,
                                    microbatches=microbatches, z_loss=z_loss),
                  in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, scalar),
                  donate_argnums=0)
  evaluate = jax.jit(functools.partial(eval_step, model=model),
                     in_shardings=(model_params(state_shardings), batch_shardings), out_shardings=scalar)
  return train, evaluate


def compile_steps(model: nn.Module, tx: optax.GradientTransformation, schedule: optax.Schedule, seed: int,
                  abstract: TrainState, mesh: jax.sharding.Mesh, microbatches: int = 1, z_loss: float = 0.0):
  """Returns (train_step(state, batch), eval_step(params, batch)) jitted with explicit shardings and run under
  `mesh`; train_step donates the state it is given."""
  steps = jit_steps(model, tx, schedule, seed, abstract, mesh, microbatches, z_loss)
  return tuple(with_mesh(fn, mesh) for fn in steps)


def with_mesh(fn, mesh: jax.sharding.Mesh):
  """Returns `fn` run under `mesh` and the logical-axis rules, so activation constraints resolve when traced."""
  def run(*args):
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
      return fn(*args)
  return run
