"""The Optax optimizer: AdamW on a warmup-cosine schedule, global-norm clipping, decay on matrices only."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

DECAYED = ('kernel', 'embedding')  # parameter names that get weight decay; norms' scales do not.


def schedule(c: ml_collections.ConfigDict) -> optax.Schedule:
  """Returns the learning rate at each step: linear warmup to `learning_rate`, cosine down to the minimum."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=c.learning_rate, warmup_steps=c.warmup_steps,
      decay_steps=max(c.steps, c.warmup_steps + 1), end_value=c.min_learning_rate)


def decay_mask(params):
  """Returns a tree of bools, True for the matrices that weight decay applies to."""
  is_box = lambda x: isinstance(x, nn.meta.AxisMetadata)
  return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key in DECAYED, params, is_leaf=is_box)


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns clip-by-global-norm then AdamW for the `train` config section `c`.

  It is applied to the train state's trained params alone (train/state.py): with LoRA the adapters, so AdamW's
  moments exist for them alone and the norm clipped is theirs. (Masking a whole-params optimizer instead, with
  optax.masked, would need a gradient tree of the whole model's shape, and could not add updates to an int8 base.)

  With `train.nonfinite=skip`, an update whose gradients are not finite is dropped (Optax's apply_if_finite,
  never giving up) and counted in the optimizer state.
  """
  tx = optax.adamw(schedule(c), b1=c.beta1, b2=c.beta2, weight_decay=c.weight_decay, mask=decay_mask)
  if c.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
  if c.nonfinite == 'skip':
    tx = optax.apply_if_finite(tx, max_consecutive_errors=jnp.iinfo(jnp.int32).max)
  return tx
