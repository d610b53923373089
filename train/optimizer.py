"""The Optax optimizer, chosen by name (`train.optimizer`), on a learning-rate schedule chosen by name
(`train.schedule`), after global-norm clipping; weight decay on matrices only (never on norms' scales or biases).

- `adamw` (the default): Adam's two moments per parameter, decoupled weight decay.
- `muon`: Newton-Schulz-orthogonalised momentum (optax.contrib's Muon, modded-nanogpt's and nanochat's choice) for
  the layers' weight matrices, at `train.muon_learning_rate`; AdamW, as above, for the embedding, the head, the
  routers, norms and biases (`MUON_MATRICES` states the split). One moment per matrix.
- `adafactor`: factored second moments (a row and a column vector per large matrix), no momentum.
- `lion`: the sign of an interpolated momentum; one moment per parameter. Its steps are as large as the learning
  rate in every coordinate, so it wants a rate 3-10x below AdamW's.

Every schedule warms up linearly from 0 over `train.warmup_steps`, then:
- `cosine`: cosine decay to `train.min_learning_rate` at the last step;
- `wsd` (warmup-stable-decay): constant, then over the last `train.decay_fraction` of the steps a `linear` or
  `1-sqrt` decay (`train.decay_shape`) to the minimum. A run resumed with more steps from a checkpoint before its
  decay starts is the run that had those steps all along;
- `linear`: linear decay to the minimum at the last step;
- `constant`: the peak to the end.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from optax import contrib

from flaxlm.model import lora

DECAYED = ('kernel', 'embedding')  # parameter names that get weight decay; norms' scales do not.
SCHEDULES = ('cosine', 'wsd', 'linear', 'constant')
DECAY_SHAPES = ('linear', '1-sqrt')  # WSD's decay.

# The layer matrices Muon orthogonalises: module name -> (input axes, output axes), the kernel's last axes (leading
# axes, the scanned layers and the experts, are a stack of matrices). A LoRA adapter of one of them (`query_lora`)
# is two matrices: lora_a maps the layer's input axes to the rank, lora_b the rank to its output axes.
MUON_MATRICES = {'query': (1, 2), 'key': (1, 2), 'value': (1, 2), 'out': (2, 1), 'gate': (1, 1), 'up': (1, 1),
                 'down': (1, 1)}


def schedule(c: ml_collections.ConfigDict, peak: float | None = None) -> optax.Schedule:
  """Returns the learning rate at each step of `train.schedule`, rising to `peak` (default `train.learning_rate`)
  and, where it decays, ending at `train.min_learning_rate` scaled as `peak` is (Muon's rate keeps the shape)."""
  peak = c.learning_rate if peak is None else peak
  end = c.min_learning_rate * (peak / c.learning_rate if c.learning_rate else 0.0)
  if c.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=peak, warmup_steps=c.warmup_steps,
                                              decay_steps=max(c.steps, c.warmup_steps + 1), end_value=end)
  after_warmup = {'constant': lambda: optax.constant_schedule(peak),
                  'linear': lambda: optax.linear_schedule(peak, end, max(c.steps - c.warmup_steps, 1)),
                  'wsd': lambda: stable_then_decay(c, peak, end)}[c.schedule]()
  warmup = optax.linear_schedule(0.0, peak, c.warmup_steps)
  return optax.join_schedules([warmup, after_warmup], [c.warmup_steps])


def stable_then_decay(c: ml_collections.ConfigDict, peak: float, end: float) -> optax.Schedule:
  """Returns WSD's part after the warmup (step 0 is the warmup's end): `peak` until the last `train.decay_fraction`
  of the run's steps, then a `train.decay_shape` decay to `end` at the last step."""
  decay_steps = max(1, round(c.decay_fraction * c.steps))
  stable_steps = max(0, c.steps - c.warmup_steps - decay_steps)
  if c.decay_shape == 'linear':
    decay = optax.linear_schedule(peak, end, decay_steps)
  else:  # 1-sqrt (Hägele et al., 2024): falls fast at first, then flattens towards the end.
    decay = lambda step: end + (peak - end) * (1 - jnp.sqrt(jnp.clip(step / decay_steps, 0.0, 1.0)))
  return optax.join_schedules([optax.constant_schedule(peak), decay], [stable_steps])


def is_box(x: Any) -> bool:
  """Returns whether `x` is a param boxed with its logical axis names (the optimizer's init sees those)."""
  return isinstance(x, nn.meta.AxisMetadata)


def by_path(fn: Callable[[tuple[str, ...]], Any], params: Any) -> Any:
  """Returns a tree shaped as `params` (boxed or not) holding `fn` of each param's path of names."""
  return jax.tree_util.tree_map_with_path(lambda path, _: fn(tuple(k.key for k in path)), params, is_leaf=is_box)


def decay_mask(params: Any) -> Any:
  """Returns a tree of bools, True for the matrices that weight decay applies to."""
  return by_path(lambda path: path[-1] in DECAYED, params)


def muon_dimensions(path: tuple[str, ...]) -> contrib.MuonDimensionNumbers | None:
  """Returns how Muon reads the param at `path` as a matrix (its input and output axes, counted from the end), or
  None for the params AdamW updates."""
  layer, name = path[-2].removesuffix(lora.SUFFIX), path[-1]
  if layer not in MUON_MATRICES or name not in ('kernel', 'lora_a', 'lora_b'):
    return None
  inputs, outputs = MUON_MATRICES[layer]
  inputs, outputs = {'kernel': (inputs, outputs), 'lora_a': (inputs, 1), 'lora_b': (1, outputs)}[name]
  return contrib.MuonDimensionNumbers(reduction_axis=tuple(range(-inputs - outputs, -outputs)),
                                      output_axis=tuple(range(-outputs, 0)))


def muon_labels(params: Any) -> Any:
  """Returns a tree of 'muon' or 'adamw' for each param: who updates it."""
  return by_path(lambda path: 'adamw' if muon_dimensions(path) is None else 'muon', params)


def muon_dimension_tree(params: Any) -> Any:
  """Returns Muon's dimension numbers for each param of `params`, Muon's matrices alone."""
  return by_path(muon_dimensions, params)


def adamw(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns AdamW with train.beta1, beta2 and weight_decay on `schedule(c)`, decaying matrices only."""
  return optax.adamw(schedule(c), b1=c.beta1, b2=c.beta2, weight_decay=c.weight_decay, mask=decay_mask)


def muon(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns Muon (momentum train.muon_momentum, Nesterov, 5 Newton-Schulz steps, Keller Jordan's width scaling) at
  train.muon_learning_rate for MUON_MATRICES, and `adamw(c)` for every other param."""
  matrices = contrib.muon(  # Given Muon's matrices alone: optax.partition masks out the others.
      schedule(c, c.muon_learning_rate), beta=c.muon_momentum, weight_decay=c.weight_decay,
      weight_decay_mask=decay_mask, muon_weight_dimension_numbers=muon_dimension_tree)
  return optax.partition({'muon': matrices, 'adamw': adamw(c)}, muon_labels)


def adafactor(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns Adafactor (factored second moments for matrices of 128 rows and columns or more, no momentum) on
  `schedule(c)`, its weight decay scaled by the learning rate as AdamW's is."""
  rate = schedule(c)
  return optax.adafactor(rate, multiply_by_parameter_scale=False, weight_decay_mask=decay_mask,
                         weight_decay_rate=lambda step: c.weight_decay * rate(step))


def lion(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns Lion with train.beta1, beta2 and weight_decay on `schedule(c)`, decaying matrices only."""
  return optax.lion(schedule(c), b1=c.beta1, b2=c.beta2, weight_decay=c.weight_decay, mask=decay_mask)


OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict], optax.GradientTransformation]] = {
    'adamw': adamw, 'muon': muon, 'adafactor': adafactor, 'lion': lion}


def make_optimizer(c: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Returns clip-by-global-norm then `train.optimizer` for the `train` config section `c`.

  It is applied to the train state's trained params alone (train/state.py): with LoRA the adapters, so the
  optimizer's moments exist for them alone and the norm clipped is theirs. (Masking a whole-params optimizer
  instead, with optax.masked, would need a gradient tree of the whole model's shape, and could not add updates to an
  int8 base.)

  With `train.nonfinite=skip`, an update whose gradients are not finite is dropped (Optax's apply_if_finite,
  never giving up) and counted in the optimizer state.
  """
  tx = OPTIMIZERS[c.optimizer](c)
  if c.grad_clip:
    tx = optax.chain(optax.clip_by_global_norm(c.grad_clip), tx)
  if c.nonfinite == 'skip':
    tx = optax.apply_if_finite(tx, max_consecutive_errors=jnp.iinfo(jnp.int32).max)
  return tx
