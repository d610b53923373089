"""Tests of train/loss.py: the cross-entropy of logits in hand, and the chunked loss training calls against optax's
on the full logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flaxlm.configs import tiny
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import loss as loss_lib, step as step_lib

V, B, T, CHUNK = 37, 3, 13, 4  # T = 3 chunks of 4 and one padded position: padding is exercised.


def test_cross_entropy_is_minus_log_probability_of_the_target():
  logits = jnp.log(jnp.array([[[0.6, 0.25, 0.15], [0.1, 0.1, 0.8]]]))
  targets = jnp.array([[0, 1]])
  expected = -(np.log(0.6) + np.log(0.1)) / 2
  np.testing.assert_allclose(loss_lib.cross_entropy(logits, targets, jnp.ones((1, 2))), expected, rtol=1e-6)
  only_first = loss_lib.cross_entropy(logits, targets, jnp.array([[1.0, 0.0]]))  # padding weighs nothing.
  np.testing.assert_allclose(only_first, -np.log(0.6), rtol=1e-6)


def small_model(tie_embeddings: bool, dropout: float) -> tuple[Transformer, dict]:
  """Returns a 1-layer float32 model of vocabulary V and its params, every matrix random (the untied head too)."""
  c = tiny.get_config().model
  c.update(tie_embeddings=tie_embeddings, dropout=dropout, num_layers=1)
  model = Transformer(ModelConfig.from_config(c, V))
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  rng = np.random.default_rng(0)
  return model, jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), jnp.float32), shapes)


def batch() -> loss_lib.Batch:
  """Returns a B x T batch of random tokens, two documents in row 0, and some positions weighing 0."""
  inputs, targets = np.random.default_rng(1).integers(0, V, (2, B, T), np.int32)
  segment_ids, positions = np.ones((B, T), np.int32), np.tile(np.arange(T, dtype=np.int32), (B, 1))
  segment_ids[0, 7:], positions[0, 7:] = 2, np.arange(T - 7)
  weights = np.ones((B, T), np.float32)
  weights[1, 9:], weights[2, :3] = 0, 0
  return {'inputs': inputs, 'targets': targets, 'positions': positions, 'segment_ids': segment_ids,
          'weights': weights}


def plain_loss_sum(params, batch: loss_lib.Batch, model: Transformer, dropout_rng: jax.Array | None,
                   z_loss: float = 0.0) -> jax.Array:
  """Returns the reference: optax's cross-entropy on all of `model`'s B x T x V logits, plus `z_loss` times the
  squared logsumexp of each position's logits (PaLM's z-loss), weighted and summed."""
  logits_BxTxV = model.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids'],
                             deterministic=dropout_rng is None,
                             rngs=None if dropout_rng is None else {'dropout': dropout_rng})
  losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch['targets'])
  losses_BxT += z_loss * jax.nn.logsumexp(logits_BxTxV, axis=-1) ** 2
  return (losses_BxT * batch['weights']).sum()


@pytest.mark.parametrize('tie_embeddings,dropout,z_loss', [(True, 0.0, 0.0), (False, 0.1, 0.1)])
def test_chunked_loss_and_gradients_match_optax_on_the_full_logits(monkeypatch, tie_embeddings, dropout, z_loss):
  monkeypatch.setattr(loss_lib, 'LOGITS_PER_CHUNK', CHUNK * V)  # loss_fn's chunks: 4 positions.
  assert loss_lib.chunk_length(V, T) == CHUNK
  model, params = small_model(tie_embeddings, dropout)
  data, rng = batch(), jax.random.key(2) if dropout else None
  weight = data['weights'].sum()
  parts = lambda p: loss_lib.loss_parts(p, data, model, rng, z_loss=z_loss)
  (chunked, logged), chunked_grads = jax.jit(jax.value_and_grad(parts, has_aux=True))(params)
  plain, plain_grads = jax.jit(jax.value_and_grad(
      lambda p: plain_loss_sum(p, data, model, rng, z_loss) / weight))(params)
  cross_entropy = jax.jit(lambda p: plain_loss_sum(p, data, model, rng) / weight)(params)
  np.testing.assert_allclose(logged['loss'], cross_entropy, rtol=1e-6)  # The z-loss is logged apart, and
  if z_loss:  # is large enough here (logits of scale ~3) to fail the comparison below if it were dropped.
    np.testing.assert_allclose(logged['z_loss'], (plain - cross_entropy) / z_loss, rtol=1e-5)
    assert plain - cross_entropy > 0.1 * plain
  else:
    assert 'z_loss' not in logged
  # The same float32 terms summed in another order: ~1e-7 relative (unit roundoff 6e-8 times a few); a lost chunk,
  # a padded position counted or a target misplaced changes the loss by ~1/32 (one token of 32).
  np.testing.assert_allclose(chunked, plain, rtol=1e-6)
  jax.tree_util.tree_map_with_path(assert_close_gradients, chunked_grads, plain_grads)


def assert_close_gradients(path, got: jax.Array, want: jax.Array) -> None:
  """Checks one parameter's gradients agree to float32 reassociation, and that the parameter has a gradient."""
  # Each component sums terms of up to its leaf's largest size: their rounding is relative to that size.
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max(),
                             err_msg=jax.tree_util.keystr(path))
  assert np.abs(want).max() > 0  # Every parameter takes part in the loss.


def test_eval_step_sums_match_the_full_logits(monkeypatch):
  monkeypatch.setattr(loss_lib, 'LOGITS_PER_CHUNK', CHUNK * V)
  model, params = small_model(False, 0.0)
  data = batch()
  loss_sum, weight = jax.jit(lambda p: step_lib.eval_step(p, data, model=model))(params)
  np.testing.assert_allclose(loss_sum, jax.jit(lambda p: plain_loss_sum(p, data, model, None))(params), rtol=1e-6)
  assert float(weight) == float(data['weights'].sum()) == B * T - 7


def test_chunk_length_keeps_a_sequence_chunk_of_logits_within_the_budget():
  assert loss_lib.chunk_length(128_256, 2048) == 256  # llama_1b: 32M logits per sequence's chunk.
  assert loss_lib.chunk_length(32_000, 4096) == 1024
  assert loss_lib.chunk_length(50_257, 1024) == 512
  assert loss_lib.chunk_length(65, 256) == 256  # A small vocabulary: all T positions in one chunk.
  assert loss_lib.chunk_length(2 ** 26, 8) == 1
