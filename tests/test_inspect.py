"""Tests of model/inspect.py: attention weights are causal distributions that reproduce the model's attention."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.configs import tiny
from flaxlm.model import inspect
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, unstack

VOCAB = 20
VARIANTS = {'scanned in groups of local and global layers (Gemma), rotary, grouped-query, capped, q/k norms': dict(
                num_layers=4, layer_pattern='local*2,global', window=5, rope_local_theta=100.0, query_scalar=8.0,
                attention_softcap=2.0, post_norms=True, qk_norm=True),
            'unrolled, learned positions, multi-head': dict(scan_layers=False, positions='learned', num_kv_heads=0)}


def make_model(**overrides) -> Transformer:
  """Returns the tiny preset's transformer (4 heads, 2 key/value heads, T = 16) with `overrides`."""
  c = tiny.get_config().model
  c.update(overrides)
  return Transformer(ModelConfig.from_config(c, VOCAB))


def random_params(model: Transformer, seed: int = 0):
  """Returns initial params plus noise (drawn by numpy: nothing to compile), so that attention is far from uniform."""
  init = jax.jit(lambda rng: nn.unbox(model.init(rng, jnp.zeros((1, 1), jnp.int32))['params']))
  noise = np.random.default_rng(seed)
  return jax.tree.map(lambda x: np.asarray(x) + 0.3 * noise.standard_normal(x.shape, np.float32),
                      init(jax.random.key(seed)))


def record_attention(next_fun, args, kwargs, context):
  """A method interceptor that sows each attention's values (B x T x G x K) and the input of its output projection
  (the heads' B x T x H x K)."""
  out = next_fun(*args, **kwargs)
  if context.module.name in ('value', 'out') and context.method_name == '__call__':
    context.module.sow('intermediates', 'seen', out if context.module.name == 'value' else args[0])
  return out


@functools.partial(jax.jit, static_argnums=0)
def values_and_outputs(model: Transformer, params, tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns what the model computes in each layer: values L x B x T x G x K and attention outputs L x B x T x H x K."""
  with nn.intercept_methods(record_attention):
    _, state = model.apply({'params': params}, tokens_BxT, mutable=['intermediates'])
  layers = unstack(state['intermediates']['stack'], model.config)
  return tuple(jnp.stack([layer['attention'][name]['seen'][0] for layer in layers]) for name in ('value', 'out'))


def tokens(batch: int = 2, length: int = 16) -> jax.Array:
  """Returns random token ids, B x T."""
  return jax.random.randint(jax.random.key(7), (batch, length), 0, VOCAB)


@pytest.fixture(scope='module', params=VARIANTS.values(), ids=VARIANTS.keys())
def setup(request) -> tuple[Transformer, object, jax.Array]:
  """Returns (model, random params, tokens B x T) for each variant, made once for this file's tests."""
  model = make_model(**request.param)
  return model, random_params(model), tokens()


def test_weights_are_causal_distributions(setup):
  weights = np.asarray(inspect.attention_weights(*setup))
  c = setup[0].config
  assert weights.shape == (c.num_layers, 2, 4, 16, 16)  # L x B x H x T x T
  np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-6)
  assert np.all(weights >= 0)
  assert np.all(np.triu(weights, k=1) == 0)
  assert weights[..., 0, 0].min() == 1  # The first position can only read itself.
  assert weights[..., 1:, :].std() > 0.05  # Random params give uneven weights, not uniform ones.
  for layer, kind in zip(weights, c.layer_kinds):  # A local layer's row reads its last W positions alone.
    assert np.all(np.tril(layer, k=-c.window) == 0) == (kind == 'local')


def test_weights_times_values_reproduce_the_models_attention(setup):
  model, params, tokens_BxT = setup
  weights_LxBxHxTxT = inspect.attention_weights(model, params, tokens_BxT)
  v_LxBxTxGxK, out_LxBxTxHxK = values_and_outputs(model, params, tokens_BxT)
  v_LxBxTxHxK = jnp.repeat(v_LxBxTxGxK, model.config.num_heads // model.config.num_kv_heads, axis=-2)
  mixed_LxBxTxHxK = jnp.einsum('lbhts,lbshk->lbthk', weights_LxBxHxTxT, v_LxBxTxHxK)
  np.testing.assert_allclose(mixed_LxBxTxHxK, out_LxBxTxHxK, atol=1e-5)
