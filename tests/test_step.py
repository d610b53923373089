"""Tests of train/step.py and train/optimizer.py: the update, and that training learns."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import adamw_params_differ
from flaxlm.configs import tiny
from flaxlm.data import pipeline
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import optimizer, sharding, state as state_lib, step as step_lib


def test_weight_decay_applies_to_matrices_only():
  config = tiny.get_config()
  model = Transformer(ModelConfig.from_config(config.model, 20))
  params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  mask = optimizer.decay_mask(params)
  flat = {'/'.join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat['embed/embedding'] and flat['head/kernel'] and flat['stack/layers/mlp/up/kernel']
  assert not flat['final_norm/RMSNorm_0/scale'] and not flat['stack/layers/attention_norm/RMSNorm_0/scale']


def test_schedule_warms_up_then_decays_to_the_minimum():
  c = tiny.get_config().train
  c.steps, c.warmup_steps, c.learning_rate, c.min_learning_rate = 100, 10, 1e-2, 1e-3
  lr = optimizer.schedule(c)
  assert float(lr(0)) == 0.0
  np.testing.assert_allclose(float(lr(5)), 5e-3, rtol=1e-6)
  np.testing.assert_allclose(float(lr(10)), 1e-2, rtol=1e-6)
  np.testing.assert_allclose(float(lr(100)), 1e-3, rtol=1e-6)


def batch_stream(tokens: np.ndarray, batch_size: int, length: int):
  """Returns an iterator of training batches packed from one document of `tokens`."""
  examples = pipeline.PackedExamples(pipeline.TokenStream.from_documents([tokens], None), length, 0)
  return pipeline.train_iterator(examples, batch_size, seed=0, threads=0)


def make_run(config, vocab_size: int, devices: int):
  """Returns (model, train_fn, state, batch_sharding) for `config` on a data-parallel mesh of `devices`."""
  model = Transformer(ModelConfig.from_config(config.model, vocab_size))
  tx = optimizer.make_optimizer(config.train)
  mesh = sharding.make_mesh(config, jax.devices()[:devices])
  abstract = state_lib.abstract_state(model, tx, mesh)
  state = state_lib.init_state(model, tx, config.train.seed, abstract)
  train_fn, eval_fn = step_lib.compile_steps(model, tx, optimizer.schedule(config.train), 0, abstract, mesh,
                                             config.train.microbatches)
  return model, train_fn, eval_fn, state, sharding.batch_sharding(mesh)


def test_training_on_a_repeated_corpus_drives_the_loss_near_zero():
  config = tiny.get_config()
  config.train.learning_rate, config.train.min_learning_rate, config.train.steps = 1e-2, 1e-2, 150
  tokens = np.tile(np.arange(8, dtype=np.int32), 200)  # 0 1 2 ... 7 0 1 2 ...: each token fixes the next.
  _, train_fn, _, state, batch_sharding = make_run(config, 8, 1)
  losses = []
  data = batch_stream(tokens, config.train.batch_size, config.model.max_length)
  for _ in range(config.train.steps):
    state, metrics = train_fn(state, jax.device_put(next(data), batch_sharding))
    losses.append(float(metrics['loss']))
  assert losses[0] == pytest.approx(np.log(8), abs=0.05)
  assert losses[-1] < 0.02
  assert int(state.step) == config.train.steps


MULTI_DEVICE_CPU = tuple(map(int, jax.__version__.split('.')[:2])) >= (0, 12)


@pytest.mark.timeout(120)
def test_four_microbatches_make_the_same_step_as_the_whole_batch():
  config = tiny.get_config()
  tokens = np.arange(2000, dtype=np.int32) % 20
  batch = next(batch_stream(tokens, 8, 16))
  batch['weights'][0, 5:] = 0  # Uneven weights: the microbatches count different numbers of tokens.
  results = []
  for microbatches in (1, 4):
    config.train.microbatches = microbatches
    _, train_fn, _, state, batch_sharding = make_run(config, 20, 2 if MULTI_DEVICE_CPU else 1)
    steps = []
    for _ in range(3):  # Three: step 0's learning rate is 0 and the untied head starts at zero, so only the third
      state, metrics = train_fn(state, jax.device_put(batch, batch_sharding))  # moves every parameter by its gradient.
      steps.append(jax.device_get(metrics))
    results.append((steps, jax.device_get(state.params)))
  assert_same_adamw_run(results[0], results[1])


def assert_same_adamw_run(got, want) -> None:
  """Checks two runs' per-step (metrics, final params) from the same start, where only the order of float sums
  differs: the loss and gradient norm to reassociation alone, the params to Adam's error model (conftest)."""
  for a, b in zip(got[0], want[0]):
    # Sums of up to 32k terms in another order: ~1e-6 relative (eps 1.2e-7 times ~10), 10x margin.
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-5)
    assert a['grad_norm'] == pytest.approx(b['grad_norm'], rel=1e-5)
  assert not adamw_params_differ(got[1], want[1], [float(m['learning_rate']) for m in want[0]])


@pytest.mark.timeout(120)
@pytest.mark.skipif(not MULTI_DEVICE_CPU, reason='in-process CPU all-reduce deadlocks before jax 0.12')
def test_data_parallel_step_matches_a_single_device():
  config = tiny.get_config()
  tokens = np.arange(2000, dtype=np.int32) % 20
  results = []
  for devices in (1, 2):
    _, train_fn, eval_fn, state, batch_sharding = make_run(config, 20, devices)
    data = batch_stream(tokens, 8, 16)
    steps = []
    for _ in range(3):
      state, metrics = train_fn(state, jax.device_put(next(data), batch_sharding))
      steps.append(jax.device_get(metrics))
    assert state.params['embed']['embedding'].sharding.mesh.size == devices
    results.append((steps, jax.device_get(state.params)))
  assert_same_adamw_run(results[1], results[0])
