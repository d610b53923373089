"""Tests of model/transformer.py: shapes, exact parameter counts, causality, variants and shape checks."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.model import sampling
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params, unstack

VOCAB = 50


def make_model(**overrides) -> Transformer:
  """Returns a small transformer with `overrides` applied to the base model config."""
  c = base.get_config().model
  c.update(dict(num_layers=2, num_heads=4, width=32, max_length=16))
  c.update(overrides)
  return Transformer(ModelConfig.from_config(c, VOCAB))


def init(model: Transformer, seed: int = 0):
  """Returns the plain (unboxed) initial params of `model`."""
  init_fn = jax.jit(lambda rng: nn.unbox(model.init(rng, jnp.zeros((1, 1), jnp.int32))['params']))
  return init_fn(jax.random.key(seed))


@functools.partial(jax.jit, static_argnames=('model', 'deterministic'))
def forward(model: Transformer, params, tokens, deterministic: bool = True, rngs=None):
  """Returns the model's logits, compiled once per model (eager op-by-op execution is slow)."""
  return model.apply({'params': params}, tokens, deterministic=deterministic, rngs=rngs)


def random_params(model: Transformer, seed: int = 0):
  """Returns initial params plus noise, so no output depends on the zero-initialised head being zero (drawn by numpy:
  JAX's, op by op, would compile an op per distinct shape)."""
  noise = np.random.default_rng(seed + 1)
  return jax.tree.map(lambda x: np.asarray(x) + 0.05 * noise.standard_normal(x.shape, np.float32), init(model, seed))


def expected_count(c: ModelConfig) -> int:
  """Returns the parameter count by formula: embeddings, L x (attention + MLP + norms), final norm, head."""
  norm = c.width * (2 if c.norm == 'layernorm' else 1)
  attention = c.width * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  matrices = 2 if c.mlp == 'gelu' else 3
  mlp = c.width * c.mlp_width * matrices
  sparse = c.width * c.num_experts + c.num_experts * c.width * c.expert_width * matrices  # router, experts
  if c.use_bias or c.qkv_bias:  # q, k and v biases
    attention += c.head_dim * (c.num_heads + 2 * c.num_kv_heads)
  if c.use_bias:  # out bias; up (and gate) and down biases.
    attention += c.width
    mlp += c.mlp_width * (1 if c.mlp == 'gelu' else 2) + c.width
  if c.qk_norm:  # one scale of K for the queries, one for the keys
    attention += 2 * c.head_dim
  positions = c.max_length * c.width if c.positions == 'learned' else 0
  head = 0 if c.tie_embeddings else c.width * c.vocab_size
  norms = 4 if c.post_norms else 2  # before attention and the MLP (and after each, with post_norms)
  mlps = sum(sparse if c.sparse(i) else mlp for i in range(c.num_layers))
  return c.vocab_size * c.width + positions + c.num_layers * (attention + norms * norm) + mlps + norm + head


VARIANTS = [
    {},
    {'num_kv_heads': 2},
    {'num_kv_heads': 1, 'positions': 'learned', 'norm': 'layernorm', 'mlp': 'gelu', 'tie_embeddings': True},
    {'num_kv_heads': 2, 'use_bias': True},
    {'positions': 'learned', 'norm': 'layernorm', 'mlp': 'gelu', 'tie_embeddings': True, 'use_bias': True},
    {'scan_layers': False, 'remat': 'full'},
    {'dtype': 'bfloat16'},
    # The pretrained families' options (model/hf_families.py), all at once: Gemma 2 and 3's local layers (a window
    # of 4, their own rotary base) and global ones, soft caps included; Qwen3-MoE's experts after a dense first layer,
    # so the scanned pattern starts at its second kind and the fourth layer is beyond it.
    {'num_kv_heads': 1, 'head_dim': 12, 'qkv_bias': True, 'qk_norm': True, 'mlp': 'geglu', 'norm_offset': 1.0,
     'scale_embeddings': True, 'tie_embeddings': True, 'rope_scaling': 'yarn', 'rope_factor': 4.0,
     'rope_original_length': 8, 'num_layers': 4, 'layer_pattern': 'local,global', 'window': 4,
     'rope_local_theta': 50.0, 'query_scalar': 6.0, 'attention_softcap': 3.0, 'logits_softcap': 20.0,
     'post_norms': True, 'num_experts': 4, 'experts_per_token': 2, 'expert_width': 16, 'dense_layers': 1},
    {'width': 30, 'head_dim': 6, 'rope_scaling': 'llama3', 'rope_factor': 8.0, 'rope_original_length': 4},  # K*H != D
]
FAMILY_OPTIONS = VARIANTS[-2]


@pytest.mark.parametrize('overrides', VARIANTS)
def test_output_shape_and_exact_parameter_count(overrides):
  model = make_model(**overrides)  # Traced, not run: the other tests run these variants' numbers.
  params = jax.eval_shape(lambda: init(model))
  logits = jax.eval_shape(lambda p: forward(model, p, jnp.zeros((3, 16), jnp.int32)), params)
  assert logits.shape == (3, 16, VOCAB)
  assert logits.dtype == jnp.float32
  assert count_params(params) == expected_count(model.config)


def test_parameter_count_of_shakespeare_model():
  c = ModelConfig.from_config(base.get_config().model, 65)
  # 65*128 embed + 4 * (4*128*128 attention + 3*128*384 SwiGLU + 2*128 norms) + 128 + 128*65 head.
  assert count_params(jax.eval_shape(lambda: init(Transformer(c)))) == 869_760


@pytest.mark.parametrize('overrides', [{}, {'positions': 'learned'}, {'num_kv_heads': 1, 'scan_layers': False}])
def test_changing_a_future_token_never_changes_an_earlier_logit(overrides):
  model = make_model(**overrides)
  params = random_params(model)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, VOCAB)
  for t in (0, 7, 15):
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % VOCAB)
    before = forward(model, params, tokens)
    after = forward(model, params, changed)
    np.testing.assert_array_equal(before[:, :t], after[:, :t])
    assert not np.allclose(before[:, t:], after[:, t:])


@pytest.mark.parametrize('tie', [False, True])
def test_untrained_loss_is_close_to_log_vocab(tie):
  model = make_model(tie_embeddings=tie, width=128)
  params = init(model)
  tokens = jax.random.randint(jax.random.key(2), (4, 17), 0, VOCAB)
  logits = forward(model, params, tokens[:, :-1])
  loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1).mean()
  assert abs(float(loss) - math.log(VOCAB)) < 0.1


def test_scanned_and_unrolled_layers_give_the_same_output():
  """(Layers of several kinds, scanned in groups and unrolled, against transformers: tests/test_hf_families.py and
  tests/test_convert.py's Gemma 3.)"""
  scanned, unrolled = make_model(scan_layers=True), make_model(scan_layers=False)
  params = random_params(scanned)
  layers = unstack(params['stack'], scanned.config)
  unrolled_params = {**params, 'stack': {f'layer_{i}': layer for i, layer in enumerate(layers)}}
  assert jax.tree.structure(unrolled_params) == jax.tree.structure(init(unrolled))
  tokens = jax.random.randint(jax.random.key(3), (2, 16), 0, VOCAB)
  np.testing.assert_allclose(forward(scanned, params, tokens),
                             forward(unrolled, unrolled_params, tokens), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('policy, scan', [('full', True), ('save_dots', True), ('save_dots', False)])
def test_remat_gives_the_same_gradients(policy, scan):
  plain, remat = make_model(scan_layers=scan), make_model(remat=policy, scan_layers=scan)
  params = random_params(plain)
  tokens = jax.random.randint(jax.random.key(4), (2, 16), 0, VOCAB)
  grad = lambda m: jax.jit(jax.grad(lambda p: m.apply({'params': p}, tokens).sum()))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grad(plain), grad(remat))


def test_dropout_changes_training_output_only():
  model = make_model(dropout=0.5)
  params = random_params(model)
  tokens = jnp.ones((1, 16), jnp.int32)
  eval_a = forward(model, params, tokens)
  eval_b = forward(model, params, tokens)
  train = forward(model, params, tokens, deterministic=False, rngs={'dropout': jax.random.key(5)})
  np.testing.assert_array_equal(eval_a, eval_b)
  assert not np.allclose(eval_a, train)


def test_parameters_are_float32_with_bfloat16_compute():
  model = make_model(dtype='bfloat16')
  params = init(model)
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype('float32')}


@pytest.mark.parametrize('overrides, message', [
    ({'num_heads': 5}, 'does not divide model.width'),
    ({'num_kv_heads': 3}, 'does not divide model.num_heads'),
    ({'norm': 'batchnorm'}, 'model.norm'),
    ({'remat': 'some'}, 'model.remat'),
    ({'attention': 'flash'}, 'model.attention'),
    ({'num_layers': 0}, 'model.num_layers'),
    ({'width': 36, 'num_heads': 4}, 'even head dimension'),
    ({'dropout': 1.5}, r'model.dropout=1.5 must be in \[0, 1\)'),
    ({'dropout': 1.0}, r'model.dropout=1.0 must be in \[0, 1\)'),
    ({'dropout': -0.1}, r'model.dropout=-0.1 must be in \[0, 1\)'),
    ({'dropout': float('nan')}, r'model.dropout=nan must be in \[0, 1\)'),
    ({'norm_eps': 0.0}, 'model.norm_eps=0.0 must be a positive finite number'),
    ({'norm_eps': float('inf')}, 'model.norm_eps=inf must be a positive finite number'),
    ({'rope_theta': -1.0}, 'model.rope_theta=-1.0 must be a positive finite number'),
    ({'rope_theta': float('nan')}, 'model.rope_theta=nan must be a positive finite number'),
    ({'vocab_size': -3}, r'model.vocab_size=-3 must not be negative \(0 takes the tokenizer'),
    ({'mlp_width': -64}, 'model.mlp_width=-64 must not be negative'),
    ({'num_kv_heads': -1}, 'model.num_kv_heads=-1 must not be negative'),
    ({'width': -32}, 'model.width=-32 must be positive'),
    ({'max_length': 0}, 'model.max_length=0 must be positive'),
    ({'head_dim': -8}, r'model.head_dim=-8 must not be negative \(0 takes width / num_heads'),
    ({'head_dim': 7}, 'rotary positions need an even head dimension, not 7'),
    ({'norm_offset': 1.0, 'norm': 'layernorm'}, 'model.norm_offset=1.0 applies to rmsnorm only'),
    ({'norm_offset': float('nan')}, 'model.norm_offset=nan must be a finite number'),
    ({'rope_scaling': 'dynamic'}, 'model.rope_scaling'),
    ({'rope_factor': 0.0}, 'model.rope_factor=0.0 must be a positive finite number'),
    ({'rope_original_length': -1}, 'model.rope_original_length=-1 must not be negative'),
    ({'rope_scaling': 'llama3', 'rope_low_freq_factor': 4.0}, 'must be positive with low < high'),
    ({'layer_pattern': 'local,glocal', 'window': 4}, "model.layer_pattern='local,glocal' names the layer kind "
                                                      "'glocal'; the kinds are global and local"),
    ({'layer_pattern': 'local*x,global', 'window': 4}, "repeats 'local' 'x' times; write a count from 1 to 1024"),
    ({'layer_pattern': 'local*5,global'}, 'has local layers, and model.window is 0: set --config.model.window'),
    ({'attention_softcap': -1.0}, r'model.attention_softcap=-1.0 must be in \[0, inf\)'),
    ({'rope_local_theta': float('nan')}, r'model.rope_local_theta=nan must be in \[0, inf\)'),
])
def test_impossible_shapes_are_refused_with_the_fix(overrides, message):
  with pytest.raises(UserError, match=message):
    make_model(**overrides)


def test_a_vocabulary_of_no_tokens_is_refused_and_edge_values_in_range_are_kept():
  c = base.get_config().model
  with pytest.raises(UserError, match='the vocabulary has 0 tokens'):
    ModelConfig.from_config(c, 0)
  c.update(dropout=0.0, norm_eps=1e-30, rope_theta=1.0)
  assert ModelConfig.from_config(c, VOCAB).dropout == 0.0
  c.dropout = 0.999
  assert ModelConfig.from_config(c, VOCAB).dropout == 0.999


def test_swiglu_width_matches_gelu_parameter_count():
  c = base.get_config().model
  assert ModelConfig.from_config(c, VOCAB).mlp_width == 384  # 8/3 * 128 = 341.3, rounded up to 64s.
  c.mlp = 'gelu'
  assert ModelConfig.from_config(c, VOCAB).mlp_width == 512


def test_attention_stays_inside_its_segment():
  model = make_model()
  params = random_params(model)
  tokens = jax.random.randint(jax.random.key(6), (1, 16), 0, VOCAB)
  segments = jnp.asarray([[0] * 6 + [1] * 10])
  positions = jnp.asarray([list(range(6)) + list(range(10))])
  second_alone = forward(model, params, tokens[:, 6:])
  packed = model.apply({'params': params}, tokens, positions, segments)
  np.testing.assert_allclose(packed[:, 6:], second_alone, rtol=1e-5, atol=1e-5)


def test_the_norm_offset_and_embedding_scale_are_what_gemma_computes():
  """With offset 1 a norm scale s multiplies by 1 + s, and embeddings are multiplied by sqrt(D) (the untied head
  reads nothing else): params shifted by -1 and divided by sqrt(D) give the plain model's logits."""
  plain, gemma = make_model(), make_model(norm_offset=1.0, scale_embeddings=True)
  params = random_params(plain)
  shifted = jax.tree_util.tree_map_with_path(
      lambda path, x: x - 1 if 'RMSNorm_0' in jax.tree_util.keystr(path) else x, params)
  shifted['embed'] = {'embedding': params['embed']['embedding'] / np.sqrt(32)}
  tokens = jax.random.randint(jax.random.key(7), (2, 16), 0, VOCAB)
  np.testing.assert_allclose(forward(gemma, shifted, tokens), forward(plain, params, tokens), rtol=1e-5, atol=1e-5)


def test_token_by_token_decoding_equals_the_full_forward_pass_with_the_families_options():
  """Prompts of 7, 3, 1 and 8 tokens (right-padded: the shorter ones' padding at slots a local layer's window of 4
  would reuse), then a token at a time to position 15 of 16, beyond the window: every step's logits are those of
  the full forward pass over the row's own tokens. A local layer's cache holds W positions, a global one's T."""
  model = make_model(**FAMILY_OPTIONS)
  c, params = model.config, random_params(model)
  tokens_BxT = jax.random.randint(jax.random.key(8), (4, 16), 0, VOCAB)
  lengths_B = np.asarray([7, 3, 1, 8])
  expected_BxTxV = forward(model, params, tokens_BxT)  # Causal: position t's logits read tokens 0..t alone.
  atol = 1e-5 * float(jnp.abs(expected_BxTxV).max())  # reassociation, relative to the logits' scale
  logits_BxV, cache = jax.jit(sampling.prefill, static_argnums=0)(model, params, tokens_BxT[:, :8], lengths_B)
  held = {'global': c.max_length, 'local': c.window}
  for layer, kind in zip(unstack(cache['stack'], c), c.layer_kinds):
    assert layer['attention']['cached_key'].shape == (4, held[kind], c.num_kv_heads, c.head_dim)
  step = jax.jit(sampling.decode_step, static_argnums=0)
  rows = np.arange(4)
  for t in range(8):
    np.testing.assert_allclose(logits_BxV, expected_BxTxV[rows, lengths_B + t - 1], rtol=1e-5, atol=atol)
    logits_BxV, cache = step(model, params, cache, tokens_BxT[rows, lengths_B + t], jnp.asarray(lengths_B + t))
