"""Tests of model/attention.py: every implementation against a hand-written softmax, and choosing one per platform.

Splash attention runs in the Pallas interpreter on CPU; the cuDNN kernel needs an NVIDIA GPU, so only its choice
(and refusal) is tested here.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractDevice, AbstractMesh, AxisType

from flaxlm.configs.errors import UserError
from flaxlm.model import attention
from flaxlm.model.attention import Scores
from flaxlm.train import sharding


def qkv(batch: int, length: int, heads: int, kv_heads: int, head_dim: int = 16, seed: int = 0):
  """Returns random float32 q (B x T x H x K), k and v (B x T x G x K)."""
  keys = jax.random.split(jax.random.key(seed), 3)
  q_BxTxHxK = jax.random.normal(keys[0], (batch, length, heads, head_dim))
  k_BxTxGxK = jax.random.normal(keys[1], (batch, length, kv_heads, head_dim))
  v_BxTxGxK = jax.random.normal(keys[2], (batch, length, kv_heads, head_dim))
  return q_BxTxHxK, k_BxTxGxK, v_BxTxGxK


def two_segments(batch: int, length: int) -> jax.Array:
  """Returns B x T segment ids: row b is segment 1 up to position 10 + 7b, then segment 2."""
  return jnp.asarray([[1 if t < 10 + 7 * b else 2 for t in range(length)] for b in range(batch)], jnp.int32)


def reference(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, scale: float | None = None, softcap: float = 0.0,
              window: int = 0) -> np.ndarray:
  """Returns causal attention within segments, written out in numpy float64: B x T x H x K. The logits are
  q.k * scale (K^-0.5 by default), soft-capped to cap * tanh(logits / cap) with a cap, and a query sees the last
  `window` positions alone with a window."""
  q, k, v = (np.asarray(x, np.float64) for x in (q_BxTxHxK, k_BxTxGxK, v_BxTxGxK))
  length, heads, head_dim = q.shape[1:]
  k, v = (np.repeat(x, heads // x.shape[2], axis=2) for x in (k, v))  # Query head h reads key/value head h // (H/G).
  logits_BxHxTxT = np.einsum('bthk,bshk->bhts', q, k) * (head_dim ** -0.5 if scale is None else scale)
  if softcap:
    logits_BxHxTxT = softcap * np.tanh(logits_BxHxTxT / softcap)
  allowed_BxTxT = np.tril(np.ones((length, length), bool))[None]
  if window:
    allowed_BxTxT &= ~np.tril(np.ones((length, length), bool), k=-window)[None]
  if segment_ids_BxT is not None:
    segments = np.asarray(segment_ids_BxT)
    allowed_BxTxT = allowed_BxTxT & (segments[:, :, None] == segments[:, None, :])
  logits_BxHxTxT = np.where(allowed_BxTxT[:, None], logits_BxHxTxT, -np.inf)
  weights_BxHxTxT = np.exp(logits_BxHxTxT - logits_BxHxTxT.max(-1, keepdims=True))
  weights_BxHxTxT /= weights_BxHxTxT.sum(-1, keepdims=True)
  return np.einsum('bhts,bshk->bthk', weights_BxHxTxT, v)


def splash(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, scores: Scores | None = None):
  """Returns splash attention run by the Pallas interpreter, compiled (scores: K^-0.5, no cap, no window)."""
  scores = scores or Scores(q_BxTxHxK.shape[-1] ** -0.5)
  return jax.jit(attention.splash_attention, static_argnames=('scores', 'interpret'))(
      q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, scores, interpret=True)


def xla(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, scores: Scores | None = None):
  """Returns attention by the 'xla' implementation, compiled."""
  return jax.jit(attention.attend, static_argnames=('implementation', 'scores'))(
      q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, implementation='xla', scores=scores)


def loss_grads(fn, q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT):
  """Returns the gradients in q, k and v of a fixed weighted sum of the attention output of `fn`."""
  weights_BxTxHxK = jnp.cos(jnp.arange(q_BxTxHxK.size).reshape(q_BxTxHxK.shape))
  loss = lambda q, k, v: (fn(q, k, v, segment_ids_BxT) * weights_BxTxHxK).sum()
  return jax.grad(loss, argnums=(0, 1, 2))(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK)


@pytest.mark.parametrize('kv_heads, segmented', [(4, False), (4, True), (2, True), (1, True)])
def test_xla_attention_equals_a_hand_written_softmax(kv_heads, segmented):
  q, k, v = qkv(2, 24, 4, kv_heads)
  segments = two_segments(2, 24) if segmented else None
  # float32 softmax-weighted means of O(1) values against float64: ~1e-7 * log T (used: 2% of the band).
  np.testing.assert_allclose(xla(q, k, v, segments), reference(q, k, v, segments), rtol=1e-5, atol=1e-5)


WINDOWED = {'window and cap': Scores(0.3, softcap=2.0, window=7), 'window past the first segment': Scores(0.3, window=30)}


@pytest.mark.parametrize('implementation', ['xla', 'splash'])
@pytest.mark.parametrize('scores', WINDOWED.values(), ids=WINDOWED.keys())
def test_windows_and_soft_caps_equal_the_hand_written_softmax(implementation, scores):
  """A local layer (the last W positions, its own included) and Gemma 2's capped logits, within segments, by every
  implementation the CPU runs (splash in the Pallas interpreter): the mask built by hand in float64."""
  q, k, v = qkv(2, 40, 4, 2)
  segments = two_segments(2, 40)
  got = (xla if implementation == 'xla' else splash)(q, k, v, segments, scores)
  # As above: float32 means of O(1) values (used: 2% of the band).
  np.testing.assert_allclose(got, reference(q, k, v, segments, scores.scale, scores.softcap, scores.window),
                             rtol=1e-5, atol=1e-5)


def test_splash_gradients_with_a_window_and_a_cap_equal_xla():
  q, k, v = qkv(2, 128, 4, 2)
  segments = two_segments(2, 128)
  scores = Scores(0.3, softcap=2.0, window=20)
  grads = [loss_grads(functools.partial(f, scores=scores), q, k, v, segments) for f in (splash, xla)]
  # Sums over T=128 keys of O(1) terms in another order: ~1e-7 * 128 (used: under 1% of the band). Plain causal
  # splash's gradients: the mesh test below.
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_auto_attention_on_cpu_is_the_xla_result():
  q, k, v = qkv(2, 24, 4, 2)
  segments = two_segments(2, 24)
  np.testing.assert_allclose(attention.attend(q, k, v, segments, 'auto'), reference(q, k, v, segments),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('length, kv_heads, segmented', [(128, 2, True), (384, 1, True), (40, 4, False)])
def test_splash_attention_equals_xla(length, kv_heads, segmented):
  q, k, v = qkv(2, length, 4, kv_heads)
  segments = two_segments(2, length) if segmented else None
  # Blockwise online softmax against the whole row: the same O(1) means reassociated (used: 2% of the band).
  np.testing.assert_allclose(splash(q, k, v, segments), xla(q, k, v, segments), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mesh_shape, heads, kv_heads', [((2, 1, 1, 1), 4, 2), ((1, 1, 1, 2), 4, 2), ((1, 1, 1, 2), 6, 3)])
def test_splash_attention_on_a_mesh_runs_per_shard_and_equals_xla(mesh_shape, heads, kv_heads):
  mesh = jax.make_mesh(mesh_shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
  q, k, v = qkv(2, 128, heads, kv_heads)
  segments = two_segments(2, 128)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    assert 'shard_map' in str(jax.make_jaxpr(splash)(q, k, v, segments))
    got = splash(q, k, v, segments)
    grads = loss_grads(splash, q, k, v, segments)
  np.testing.assert_allclose(got, xla(q, k, v, segments), rtol=1e-5, atol=1e-5)  # As above, per shard.
  for got, want in zip(grads, loss_grads(xla, q, k, v, segments)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('platform, dtype, head_dim, expected', [
    ('cpu', 'bfloat16', 64, 'xla'),
    ('tpu', 'float32', 64, 'splash'),
    ('tpu', 'bfloat16', 12, 'splash'),
    ('gpu', 'bfloat16', 64, 'cudnn'),
    ('cuda', 'float16', 128, 'cudnn'),
    ('gpu', 'float32', 64, 'xla'),
    ('gpu', 'bfloat16', 12, 'xla'),
    ('gpu', 'bfloat16', 256, 'xla'),
])
def test_auto_picks_the_fastest_implementation_the_platform_has(platform, dtype, head_dim, expected):
  assert attention.resolve('auto', platform, dtype, head_dim) == expected
  assert attention.resolve('auto', platform, dtype, head_dim, softcap=50.0) == expected.replace('cudnn', 'xla')


@pytest.mark.parametrize('implementation, platform', [('xla', 'cpu'), ('cudnn', 'gpu'), ('splash', 'tpu')])
def test_an_explicit_implementation_the_platform_has_is_kept(implementation, platform):
  assert attention.resolve(implementation, platform, 'bfloat16', 64) == implementation


def test_available_implementations_per_platform():
  assert attention.available('cpu') == ('xla',)
  assert attention.available('gpu') == attention.available('cuda') == ('xla', 'cudnn')
  assert attention.available('tpu') == ('xla', 'splash')


@pytest.mark.parametrize('implementation, platform, dtype, head_dim, message', [
    ('cudnn', 'cpu', 'bfloat16', 64, r"'cudnn' needs an NVIDIA GPU, and this platform \(cpu\) has: xla: set "
                                     r'--config.model.attention=auto \(or xla\)'),
    ('splash', 'cpu', 'float32', 64, r"'splash' needs a TPU, and this platform \(cpu\) has: xla"),
    ('splash', 'gpu', 'bfloat16', 64, r'has: xla, cudnn: set --config.model.attention=auto \(or xla or cudnn\)'),
    ('cudnn', 'gpu', 'float32', 64, 'needs bfloat16 or float16, not float32: set --config.model.dtype=bfloat16'),
    ('cudnn', 'gpu', 'bfloat16', 12, 'multiple of 8 and at most 128, not 12'),
    ('flash', 'gpu', 'bfloat16', 64, 'is not one of'),
    ('cudnn', 'gpu', 'bfloat16', 64, r'has no soft cap of attention logits \(model.attention_softcap, Gemma 2\)'),
])
def test_an_implementation_that_cannot_run_is_refused_with_the_fix(implementation, platform, dtype, head_dim, message):
  with pytest.raises(UserError, match=message):
    attention.resolve(implementation, platform, dtype, head_dim, softcap=2.0 if 'soft cap' in message else 0.0)


def test_auto_follows_the_platform_of_the_mesh_the_step_is_traced_for():
  # flaxlm-info --compile_for traces on a CPU host for a TPU slice: 'auto' must pick what that slice runs.
  q, k, v = qkv(2, 128, 4, 2)
  traced = lambda: str(jax.make_jaxpr(lambda q, k, v: attention.attend(q, k, v, None, 'auto'))(q, k, v))
  tpu = AbstractDevice(device_kind='TPU v5 lite', num_cores=1, platform='tpu')
  tpu_mesh = AbstractMesh((2, 1, 1, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 4, abstract_device=tpu)
  with jax.sharding.use_abstract_mesh(tpu_mesh), nn.logical_axis_rules(sharding.RULES):
    assert attention.platform() == 'tpu'
    assert 'pallas_call' in traced()  # The splash kernel.
  cpu_mesh = jax.make_mesh((2, 1, 1, 1), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
  with jax.set_mesh(cpu_mesh), nn.logical_axis_rules(sharding.RULES):
    assert attention.platform() == 'cpu'
    assert 'pallas_call' not in traced()
  assert attention.platform() == jax.default_backend() == 'cpu'  # No mesh: the default backend.


def test_attend_refuses_splash_on_cpu():
  q, k, v = qkv(1, 8, 2, 2)
  with pytest.raises(UserError, match='needs a TPU'):
    attention.attend(q, k, v, None, 'splash')
