"""Tests of train/optimizer.py: each optimizer's first step against the update written out by hand, the schedules'
rates, and their resumes and bad values."""

import math
import shutil

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flaxlm.configs import base, tiny
from flaxlm.configs.errors import UserError
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import loop, optimizer

LR, MUON_LR, WD = 0.01, 0.03, 0.1
NS_COEFFS = (3.4445, -4.775, 2.0315)  # Muon's quintic Newton-Schulz iteration (Keller Jordan's).


def model_params() -> dict:
  """Returns random float64 params of a 1-layer model of width 128 and MLP width 256 (so Adafactor factors the MLP's
  second moments: it does for matrices of 128 rows and columns or more), unscanned, as a flat {path: array}."""
  c = tiny.get_config().model
  c.update(num_layers=1, width=128, mlp_width=256, num_heads=4, num_kv_heads=2, scan_layers=False)
  model = Transformer(ModelConfig.from_config(c, 40))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: rng.standard_normal(x.shape) * 0.05, shapes)


def train_config(name: str) -> ml_collections.ConfigDict:
  """Returns a train section for `name` at a constant rate from the first step, without clipping."""
  c = base.train_config()
  c.update(optimizer=name, learning_rate=LR, muon_learning_rate=MUON_LR, weight_decay=WD, warmup_steps=0,
           schedule='constant', grad_clip=0.0)
  return c


def flat(tree) -> dict[tuple[str, ...], np.ndarray]:
  """Returns {path of key names: array} of a params tree."""
  return {tuple(k.key for k in path): np.asarray(x)
          for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def decayed(path: tuple[str, ...]) -> bool:
  """Whether weight decay applies: matrices (kernels, the embedding), never norms."""
  return path[-1] in ('kernel', 'embedding')


def adamw_reference(g: np.ndarray, p: np.ndarray, path: tuple[str, ...], lr: float = LR) -> np.ndarray:
  """AdamW's first update: its bias-corrected moments are g and g^2, so the step is lr (g / (|g| + eps) + wd p)."""
  return -lr * (g / (np.abs(g) + 1e-8) + WD * decayed(path) * p)


def lion_reference(g: np.ndarray, p: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """Lion's first update: the sign of (1 - b1) g, plus decay."""
  return -LR * (np.sign(g) + WD * decayed(path) * p)


def adafactor_reference(g: np.ndarray, p: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """Adafactor's first update (its second-moment decay is 0 at the first step): g over the root of the factored
  estimate of g^2 for a matrix whose two largest axes reach 128, of g^2 itself otherwise; each param's update
  scaled to an RMS of at most 1; then lr, and decay times lr."""
  g2 = g ** 2 + 1e-30
  if g.ndim >= 2 and sorted(g.shape)[-2] >= 128:
    small, large = np.argsort(g.shape)[-2:]
    rows, cols = g2.mean(axis=large), g2.mean(axis=small)  # Row and column means of g^2.
    estimate = np.expand_dims(rows / rows.mean(), large) * np.expand_dims(cols, small)
    assert estimate.shape == g.shape
    u = g / np.sqrt(estimate)
  else:
    u = g / np.sqrt(g2)
  u = u / max(1.0, np.sqrt((u ** 2).mean()))
  return -LR * (u + WD * decayed(path) * p)


def orthogonalized(m: np.ndarray) -> np.ndarray:
  """Returns the Newton-Schulz approximation of the nearest semi-orthogonal matrix to m (5 quintic steps)."""
  x = m / (np.linalg.norm(m) + 1e-8)
  wide = x.shape[0] <= x.shape[1]
  x = x if wide else x.T
  a, b, c = NS_COEFFS
  for _ in range(5):
    s = x @ x.T
    x = a * x + (b * s + c * s @ s) @ x
  return x if wide else x.T


MATRIX_SPLIT = {'query': 1, 'key': 1, 'value': 1, 'out': 2, 'gate': 1, 'up': 1, 'down': 1}  # leading input axes.


def muon_reference(g: np.ndarray, p: np.ndarray, path: tuple[str, ...]) -> np.ndarray:
  """Muon's first update for the layers' matrices (the rest AdamW's): Nesterov momentum with Optax's bias correction
  (a multiple of g at the first step), as a fan_in x fan_out matrix orthogonalised, times sqrt(max(1, out/in)),
  plus decay, times Muon's rate."""
  if path[-1] != 'kernel' or path[-2] not in MATRIX_SPLIT:
    return adamw_reference(g, p, path)
  beta = 0.95
  nesterov = beta * (1 - beta) * g / (1 - beta ** 2) + (1 - beta) * g / (1 - beta)
  fan_in = math.prod(g.shape[:MATRIX_SPLIT[path[-2]]])
  u = orthogonalized(nesterov.reshape(fan_in, -1)).reshape(g.shape)
  u *= math.sqrt(max(1.0, g.size / fan_in / fan_in))
  return -MUON_LR * (u + WD * p)


REFERENCES = {'adamw': adamw_reference, 'muon': muon_reference, 'adafactor': adafactor_reference,
              'lion': lion_reference}


@pytest.mark.parametrize('name', list(optimizer.OPTIMIZERS))
def test_the_first_step_of_each_optimizer_is_its_update_written_out(name):
  assert set(REFERENCES) == set(optimizer.OPTIMIZERS)
  params = model_params()
  grads = jax.tree.map(lambda x: np.random.default_rng(x.size).standard_normal(x.shape), params)
  tx = optimizer.make_optimizer(train_config(name))
  with jax.enable_x64(True):  # In float64, as the references: float32's five Newton-Schulz steps stray ~1e-6.
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  got, g, p = flat(updates), flat(grads), flat(params)
  for path in got:
    want = REFERENCES[name](g[path], p[path], path)
    # The same float64 terms in another order: ~1e-15 relative. A wrong axis split, scale or decay moves a param's
    # update by over 1e-2 of its size.
    assert got[path].dtype == np.float64
    assert np.linalg.norm(got[path] - want) <= 1e-6 * np.linalg.norm(want), path
  if name == 'muon':  # Every layer matrix is Muon's, and nothing else is.
    labels = {path: label for path, label in flat_labels(params).items()}
    assert {path[-2] for path, label in labels.items() if label == 'muon'} == set(MATRIX_SPLIT)
    assert all(label == 'adamw' for path, label in labels.items() if path[-2] not in MATRIX_SPLIT)


def flat_labels(params) -> dict:
  """Returns {path: 'muon' or 'adamw'} of `optimizer.muon_labels`."""
  labels = optimizer.muon_labels(params)
  return {tuple(k.key for k in path): x for path, x in jax.tree_util.tree_flatten_with_path(labels)[0]}


def rates(c: ml_collections.ConfigDict, steps) -> np.ndarray:
  """Returns the schedule of the train section `c` at `steps`."""
  return np.array([float(optimizer.schedule(c)(s)) for s in steps])


def test_schedules_warm_up_then_hold_or_decay_to_the_minimum():
  c = base.train_config()
  c.update(steps=100, warmup_steps=10, learning_rate=1.0, min_learning_rate=0.1, decay_fraction=0.2)
  np.testing.assert_allclose(rates(c, [0, 5, 10]), [0, 0.5, 1.0], atol=1e-6)  # Every schedule's warmup.
  c.schedule = 'constant'
  np.testing.assert_allclose(rates(c, [5, 10, 50, 99]), [0.5, 1, 1, 1], atol=1e-6)
  c.schedule = 'linear'
  np.testing.assert_allclose(rates(c, [10, 55, 100]), [1, 0.55, 0.1], atol=1e-6)
  c.schedule = 'wsd'  # Stable to step 80, then the last 20 steps decay.
  np.testing.assert_allclose(rates(c, [10, 80, 90, 100]), [1, 1, 0.55, 0.1], atol=1e-6)
  c.decay_shape = '1-sqrt'
  np.testing.assert_allclose(rates(c, [80, 85, 100]), [1, 0.1 + 0.9 * (1 - 0.5), 0.1], atol=1e-6)
  longer = ml_collections.ConfigDict(c.to_dict())
  longer.steps = 200  # A run extended before its decay begins had the same rates: WSD's point.
  np.testing.assert_allclose(rates(longer, range(0, 81, 5)), rates(c, range(0, 81, 5)), atol=0)
  c.update(schedule='cosine', learning_rate=0.0)  # A rate of 0 stays 0 (and Muon's minimum with it).
  assert rates(c, [50]).max() == 0 and float(optimizer.schedule(c, 0.02)(100)) == 0


@pytest.mark.parametrize('key, value, message', [
    ('optimizer', 'sgd', "train.optimizer='sgd' is not one of ('adamw', 'muon', 'adafactor', 'lion')"),
    ('schedule', 'step', "train.schedule='step' is not one of ('cosine', 'wsd', 'linear', 'constant')"),
    ('muon_learning_rate', 2.0, 'train.muon_learning_rate=2.0 must be in (0, 0.5]'),
    ('decay_shape', 'cosine', "is not one of ('linear', '1-sqrt')"),
    ('z_loss', -1e-4, 'train.z_loss=-0.0001 must be in [0, inf)'),
])
def test_a_bad_optimizer_schedule_or_rate_is_refused_naming_the_choices(key, value, message):
  config = tiny.get_config()
  config.train[key] = value
  with pytest.raises(UserError) as raised:
    base.check(config)
  assert message in str(raised.value) and '\n' not in str(raised.value)


def test_muon_and_lion_resume_exactly_and_a_resume_with_another_optimizer_is_refused(corpus, tmp_path):
  # AdamW's resumes are killed at every step in tests/test_resume.py, Adafactor's resumed on two processes in
  # tests/test_distributed.py; Muon's state is split between two optimizers, Lion's is one moment.
  for name in ('muon', 'lion'):
    config = tiny.get_config()
    config.data.path = str(corpus)
    config.train.update(optimizer=name, steps=4, checkpoint_every=2, eval_every=4, log_every=1)
    whole = loop.train(config, str(tmp_path / name))
    shutil.rmtree(tmp_path / name / 'checkpoints' / '4')  # As if killed after step 3: resumes from step 2.
    resumed = loop.train(config, str(tmp_path / name))
    for a, b in zip(jax.tree.leaves((whole.params, whole.opt_state)), jax.tree.leaves((resumed.params,
                                                                                       resumed.opt_state))):
      np.testing.assert_array_equal(a, b, err_msg=name)
  config.train.optimizer = 'adamw'
  with pytest.raises(UserError, match="train.optimizer: 'lion' there, 'adamw' here"):
    loop.train(config, str(tmp_path / 'lion'))


def test_muon_reads_each_kernel_and_lora_adapter_as_the_matrix_its_layer_multiplies_by():
  dims = lambda *path: optimizer.muon_dimensions(path)
  as_matrix = lambda d: (d.reduction_axis, d.output_axis)
  assert as_matrix(dims('layers', 'attention', 'query', 'kernel')) == ((-3,), (-2, -1))  # D x (H K)
  assert as_matrix(dims('layers', 'attention', 'out', 'kernel')) == ((-3, -2), (-1,))  # (H K) x D
  assert as_matrix(dims('layers', 'moe', 'down', 'kernel')) == ((-2,), (-1,))  # Each expert's F x D.
  assert as_matrix(dims('layers', 'attention', 'out_lora', 'lora_a')) == ((-3, -2), (-1,))  # (H K) x rank
  assert as_matrix(dims('layers', 'attention', 'query_lora', 'lora_b')) == ((-3,), (-2, -1))  # rank x (H K)
  for adamw_param in (('embed', 'embedding'), ('head', 'kernel'), ('layers', 'moe', 'router', 'kernel'),
                      ('layers', 'attention', 'query', 'bias'), ('layers', 'mlp_norm', 'RMSNorm_0', 'scale')):
    assert dims(*adamw_param) is None, adamw_param
