"""Tests of model/moe.py: routing, the router losses by hand, dropless expert outputs, and the options' checks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.model import moe
from flaxlm.model.config import ModelConfig


def test_routing_keeps_the_k_most_probable_experts_renormalised_or_not():
  logits_NxE = jnp.log(jnp.asarray([[0.1, 0.6, 0.2, 0.1], [0.4, 0.1, 0.1, 0.4]]))
  route = jax.jit(moe.route, static_argnums=(1, 2))  # one program each, not op by op
  experts, weights = route(logits_NxE, 2, False)
  np.testing.assert_array_equal(np.sort(experts, axis=1), [[1, 2], [0, 3]])
  np.testing.assert_allclose(np.sort(weights, axis=1), [[0.2, 0.6], [0.4, 0.4]], rtol=1e-6)
  _, renormalised = route(logits_NxE, 2, True)
  np.testing.assert_allclose(np.sort(renormalised, axis=1), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)


def test_the_router_losses_equal_a_hand_computation():
  # Two experts, k = 1, three tokens: probabilities (0.75, 0.25), (0.25, 0.75), (0.5, 0.5) by their logits.
  logits_NxE = jnp.asarray([[np.log(3.0), 0.0], [0.0, np.log(3.0)], [1.0, 1.0]])
  experts_Nxk = jnp.asarray([[0], [1], [0]])
  balance = jax.jit(moe.balance_loss)
  # f = (2/3, 1/3) of the tokens, P = (0.5, 0.5) mean probabilities: E * sum f P = 2 * (1/3 + 1/6) = 1.
  np.testing.assert_allclose(balance(logits_NxE, experts_Nxk), 1.0, rtol=1e-6)
  # Every token to expert 0, whose mean probability is 0.5: 2 * (1 * 0.5) = 1 again; P skewed too: more.
  np.testing.assert_allclose(balance(logits_NxE, jnp.zeros((3, 1), jnp.int32)), 1.0, rtol=1e-6)
  skewed = jnp.asarray([[np.log(3.0), 0.0]] * 3)
  np.testing.assert_allclose(balance(skewed, jnp.zeros((3, 1), jnp.int32)), 1.5, rtol=1e-6)
  # z: log(3 + 1)^2, log(1 + 3)^2 and (1 + log 2)^2, averaged.
  expected = (2 * np.log(4.0) ** 2 + (1 + np.log(2.0)) ** 2) / 3
  np.testing.assert_allclose(jax.jit(moe.z_loss)(logits_NxE), expected, rtol=1e-6)


def reference_outputs(x_NxD, experts_Nxk, weights_Nxk, gate, up, down):
  """Returns each token's weighted sum of its experts' SwiGLU outputs, one token and expert at a time, in float64."""
  x, gate, up, down = (np.asarray(a, np.float64) for a in (x_NxD, gate, up, down))
  out = np.zeros_like(x)
  for n in range(x.shape[0]):
    for e, w in zip(np.asarray(experts_Nxk[n]), np.asarray(weights_Nxk[n])):
      g = x[n] @ gate[e]
      out[n] += w * ((g / (1 + np.exp(-g))) * (x[n] @ up[e])) @ down[e]
  return out


@pytest.mark.parametrize('skew', ['spread', 'one expert takes every token'])
def test_expert_outputs_are_every_token_s_weighted_experts_dropping_none(skew):
  rng = np.random.default_rng(0)
  N, D, E, F, k = 12, 8, 4, 6, 2
  x = rng.standard_normal((N, D), np.float32)
  gate, up = (rng.standard_normal((E, D, F), np.float32) / 3 for _ in range(2))
  down = rng.standard_normal((E, F, D), np.float32) / 3
  logits = rng.standard_normal((N, E), np.float32) + (np.asarray([9.0, 0, 0, 0]) if skew != 'spread' else 0)
  experts, weights = jax.jit(moe.route, static_argnums=(1, 2))(jnp.asarray(logits), k, True)
  outputs = jax.jit(functools.partial(moe.expert_outputs, activation=jax.nn.silu))  # one program, not op by op
  got = outputs(jnp.asarray(x), experts, weights, jnp.asarray(gate), jnp.asarray(up), jnp.asarray(down))
  # float32 products of length D and F against float64: rounding alone, relative to the outputs' scale.
  want = reference_outputs(x, experts, weights, gate, up, down)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def model_section(**overrides):
  """Returns the base config's model section with `overrides`."""
  c = base.get_config().model
  c.update(overrides)
  return c


@pytest.mark.parametrize('overrides, message', [
    (dict(num_experts=4, experts_per_token=5), 'model.experts_per_token=5 is above model.num_experts=4'),
    (dict(num_experts=4, experts_per_token=0), 'model.experts_per_token=0 must be positive'),
    (dict(num_experts=4, dense_layers=4), 'model.dense_layers=4 leaves none of the 4 layers sparse'),
    (dict(num_experts=4, lora_rank=4, lora_targets='query,up'), "names no matrix 'up' in this model: set "
     '--config.model.lora_targets to some of query,key,value,out'),
])
def test_sparse_options_that_cannot_be_built_are_refused_in_one_line(overrides, message):
  with pytest.raises(UserError, match=message):
    ModelConfig.from_config(model_section(**overrides), 20)


def test_a_sparse_model_s_expert_width_defaults_to_the_mlp_s():
  c = ModelConfig.from_config(model_section(num_experts=4, mlp_width=96), 20)
  assert (c.expert_width, [c.sparse(i) for i in range(c.num_layers)]) == (96, [True] * 4)
  dense = ModelConfig.from_config(model_section(dense_layers=2), 20)
  assert (dense.expert_width, dense.sparse(3)) == (0, False)


def test_the_validation_loss_of_a_sparse_model_is_its_next_token_loss_alone():
  """The router losses are added to what training minimizes, never to what the model is judged by."""
  from flaxlm.model.transformer import Transformer
  from flaxlm.train import loss as loss_lib, step as step_lib
  c = ModelConfig.from_config(model_section(num_layers=2, num_experts=4, expert_width=32, balance_loss=1.0,
                                            router_z_loss=1.0), 20)
  model = Transformer(c)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, (2, 9)), jnp.int32)
  batch = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'positions': jnp.broadcast_to(jnp.arange(8), (2, 8)),
           'segment_ids': jnp.ones((2, 8), jnp.int32), 'weights': jnp.ones((2, 8), jnp.float32)}
  loss_sum, weight = jax.jit(functools.partial(step_lib.eval_step, model=model))(params, batch)
  logits = jax.jit(model.apply)({'params': params}, batch['inputs'])
  expected = loss_lib.cross_entropy(logits, batch['targets'], batch['weights'])
  np.testing.assert_allclose(loss_sum / weight, expected, rtol=1e-5)
  minimized = jax.jit(functools.partial(loss_lib.loss_fn, model=model, dropout_rng=None))(params, batch)
  assert minimized > expected + 1  # balance alone is at least k = 2 here, at weight 1
