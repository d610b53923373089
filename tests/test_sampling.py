"""Tests of model/sampling.py: decoding matches the full model, filtering, seeds and the sliding window."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import tiny
from model import sampling
from model.transformer import ModelConfig, Transformer

VOCAB = 12


def trained_like_model():
  """Returns (model, params) with random weights, so the distribution over next tokens is far from uniform."""
  config = tiny.get_config()
  config.model.tie_embeddings = True
  model = Transformer(ModelConfig.from_config(config.model, VOCAB))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  params = jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(1), x.shape), params)
  return model, params


@functools.partial(jax.jit, static_argnums=0)
def last_logits(model, params, window):
  """Returns the logits after the last token of each row of `window`."""
  return model.apply({'params': params}, window)[:, -1]


def test_greedy_decoding_equals_the_argmax_of_full_forward_passes_beyond_the_context():
  model, params = trained_like_model()
  prompt = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7], np.int32)  # 14 of the 16-token context.
  new = 30  # more than the context of 16: the window slides.
  tokens = sampling.generate(model, params, prompt, new, temperature=0.0)[0]
  sequence = list(prompt)
  for _ in range(new):
    window = jnp.asarray([sequence[-model.config.max_length:]])
    sequence.append(int(jnp.argmax(last_logits(model, params, window)[0])))
  np.testing.assert_array_equal(tokens, sequence[len(prompt):])


def test_top_k_keeps_exactly_the_k_most_likely_tokens():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  filtered = sampling.filter_logits(logits, 1.0, 2)
  assert set(np.flatnonzero(np.isfinite(filtered[0]))) == {1, 3}
  draws = [int(sampling.next_token(logits, jax.random.key(i), 1.0, 2)[0]) for i in range(50)]
  assert set(draws) == {1, 3}
  assert np.isfinite(sampling.filter_logits(logits, 1.0, 5)).all()  # k >= V keeps every token.


def test_temperature_sharpens_and_flattens_the_distribution():
  logits = jnp.log(jnp.array([[0.6, 0.25, 0.15]]))
  cold = jax.nn.softmax(sampling.filter_logits(logits, 0.5, 0))[0]
  hot = jax.nn.softmax(sampling.filter_logits(logits, 2.0, 0))[0]
  assert cold[0] > 0.6 > hot[0]


def test_the_same_seed_gives_the_same_samples():
  model, params = trained_like_model()
  prompt = np.array([1, 2, 3], np.int32)
  run = lambda seed: sampling.generate(model, params, prompt, 20, seed=seed, num_samples=3, temperature=1.0)
  first = run(0)
  assert first.shape == (3, 20)
  np.testing.assert_array_equal(first, run(0))
  assert not np.array_equal(first, run(1))
  assert len({tuple(row) for row in first}) > 1  # each sample draws its own tokens.
