"""Tests that need a GPU or TPU: its attention kernel (local windows and soft caps too), bfloat16 training through it,
and int8/int4 decoding, each against XLA's computation of the same thing on the same device.

  FLAXLM_TEST_DEVICE=1 python -m pytest -q tests/test_device.py   # benchmarks/device_check.py runs it too

Without FLAXLM_TEST_DEVICE=1 conftest.py keeps JAX on the CPU, and on the CPU every test here skips. The tolerances
count in bfloat16's unit roundoff EPS = 2^-8 (8 significant bits): rounding x to bfloat16 moves it by at most EPS |x|.

Shape key: B batch, T sequence length, H query heads, G key/value heads, K head dimension, N steps, V vocabulary.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.configs import tiny
from flaxlm.data import pipeline
from flaxlm.model import attention, quantize, sampling
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import optimizer, sharding, state as state_lib, step as step_lib

BACKEND = jax.default_backend()
KERNEL = {'gpu': 'cudnn', 'tpu': 'splash'}.get(BACKEND)  # What model.attention=auto runs there in bfloat16.
pytestmark = pytest.mark.skipif(KERNEL is None, reason=f'needs a GPU or TPU, and FLAXLM_TEST_DEVICE=1 to leave the '
                                f'CPU (JAX\'s backend here: {BACKEND})')
EPS = 2.0 ** -8
VOCAB = 64
GREEDY = sampling.Settings(temperature=0.0)
attend = jax.jit(attention.attend, static_argnames='implementation')
attend_scored = jax.jit(attention.attend, static_argnames=('implementation', 'scores'))
prefill = jax.jit(sampling.prefill, static_argnums=0)
decode_step = jax.jit(sampling.decode_step, static_argnums=0)


def packed_qkv(head_dim: int) -> tuple[jax.Array, ...]:
  """Returns bfloat16 N(0, 1) q (B x T x H x K), k and v (B x T x G x K), and the B x T segment ids of documents
  packed three to a row, 2 x 256 x 4 (2) x K."""
  keys = jax.random.split(jax.random.key(0), 3)
  q_BxTxHxK = jax.random.normal(keys[0], (2, 256, 4, head_dim), jnp.bfloat16)
  k_BxTxGxK, v_BxTxGxK = (jax.random.normal(key, (2, 256, 2, head_dim), jnp.bfloat16) for key in keys[1:])
  lengths = [[37, 100, 119], [5, 250, 1]]
  segment_ids_BxT = jnp.asarray([np.repeat(np.arange(3), row) for row in lengths], jnp.int32)
  return q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT


@pytest.mark.parametrize('head_dim', [64, 128])
def test_the_device_kernel_gives_xla_attention_within_bfloat16_rounding(head_dim: int):
  """Both compute the logits q k / sqrt(K) and their softmax in float32 from the same bfloat16 inputs (splash rounds
  q / sqrt(K) to bfloat16 first: exact for K = 64; for K = 128 each logit sums K products each off by up to EPS, the
  errors of random sign averaging out). Each rounds the probabilities (flash attention: its unnormalised
  exponentials) to bfloat16 for the product with v, moving the output by at most EPS sum_s p_s |v_s| <= EPS max|v|,
  and rounds the output, by at most EPS max|v| again: each is within 2 EPS max|v| of the exact attention of its
  inputs, so the two within 4 EPS max|v| of each other. Observed on the CPU, splash in the Pallas interpreter against
  'xla': a quarter of that; a position seeing another document is off by 50 times it."""
  q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT = packed_qkv(head_dim)
  run = lambda implementation, segments: np.asarray(
      attend(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segments, implementation=implementation), np.float32)
  want_BxTxHxK = run('xla', segment_ids_BxT)
  atol = 4 * EPS * float(jnp.abs(v_BxTxGxK).max())
  np.testing.assert_allclose(run(KERNEL, segment_ids_BxT), want_BxTxHxK, rtol=0, atol=atol)
  assert np.abs(run('xla', None) - want_BxTxHxK).max() > 10 * atol  # The tolerance tells documents apart.


@pytest.mark.parametrize('softcap', [0.0, 20.0])
def test_the_device_kernel_gives_xla_local_attention_within_bfloat16_rounding(softcap: float):
  """A local layer's window of 50 positions (Gemma's kind), within packed documents, and with Gemma 2's soft cap
  (splash caps in its kernel; cuDNN has none, so a capped model's `auto` is XLA on a GPU): the bound of the test
  above. Seeing every earlier position instead errs by far more."""
  if softcap and KERNEL == 'cudnn':
    assert attention.resolve('auto', BACKEND, 'bfloat16', 64, softcap) == 'xla'
    return
  q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT = packed_qkv(64)
  run = lambda implementation, window: np.asarray(attend_scored(
      q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, segment_ids_BxT, implementation=implementation,
      scores=attention.Scores(64 ** -0.5, softcap, window)), np.float32)
  want_BxTxHxK = run('xla', 50)
  atol = 4 * EPS * float(jnp.abs(v_BxTxGxK).max())
  np.testing.assert_allclose(run(KERNEL, 50), want_BxTxHxK, rtol=0, atol=atol)
  assert np.abs(run('xla', 0) - want_BxTxHxK).max() > 10 * atol  # The tolerance tells the window apart.


def packed_batch(batch_size: int, length: int) -> dict[str, np.ndarray]:
  """Returns one training batch (B x T arrays) of documents packed 1 to 4 a row, each counting from a random start
  in a random stride, modulo V."""
  rng = np.random.default_rng(0)
  documents = [(start + stride * np.arange(n)) % VOCAB for n, stride, start in
               zip(rng.integers(20, 200, 40), rng.integers(1, 6, 40), rng.integers(0, VOCAB, 40))]
  examples = pipeline.PackedExamples(pipeline.TokenStream.from_documents(documents, 0), length, 0)
  return examples.gather(np.arange(batch_size))


def train_losses(implementation: str, steps: int = 6) -> np.ndarray:
  """Returns the N losses of `steps` updates of the tiny preset at width 128 (K = 64, T = 128) in bfloat16 with
  model.attention=`implementation`, on one device, each step on the same batch."""
  config = tiny.get_config()
  config.model.update(width=128, num_heads=2, num_kv_heads=1, max_length=128, dtype='bfloat16',
                      attention=implementation)
  config.train.update(learning_rate=3e-3, min_learning_rate=3e-3, warmup_steps=1, steps=steps)
  model, tx = Transformer(ModelConfig.from_config(config.model, VOCAB)), optimizer.make_optimizer(config.train)
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  abstract = state_lib.abstract_state(model, tx, mesh)
  state = state_lib.init_state(model, tx, config.train.seed, abstract)
  train_fn, _ = step_lib.compile_steps(model, tx, optimizer.schedule(config.train), 0, abstract, mesh)
  batch = jax.device_put(packed_batch(config.train.batch_size, 128), sharding.batch_sharding(mesh))
  losses = []
  for _ in range(steps):
    state, metrics = train_fn(state, batch)
    losses.append(float(metrics['loss']))
  return np.asarray(losses)


def test_bfloat16_training_through_the_device_kernel_follows_xla_and_learns():
  """Each loss is a mean over the batch's 1,024 tokens, whose attention outputs the kernel rounds otherwise (the test
  above): independent errors of a few EPS that average to ~EPS / 30 in the mean, then compounded by Adam, which can
  flip the sign of an update whose gradient cancels (conftest.py). EPS / 2 leaves room for both. Observed on the
  CPU, splash in the Pallas interpreter against 'xla': 3e-4 (EPS / 13) at most; positions seeing the other documents
  of their row: 0.35% to 1.7% (EPS to 4 EPS) from the second update on."""
  assert attention.resolve('auto', BACKEND, 'bfloat16', 64) == KERNEL
  got_N, want_N = train_losses('auto'), train_losses('xla')
  np.testing.assert_allclose(got_N, want_N, rtol=EPS / 2)
  assert got_N[-1] < 0.9 * got_N[0]  # From ln V = 4.16 (the untied head starts at zero) to 3.5 on the CPU.


def random_model() -> tuple[Transformer, dict]:
  """Returns the tiny preset at width 128 in bfloat16, tied head, with N(0, 1) added to its initial params (so the
  next token is far from uniform), and those float32 params."""
  config = tiny.get_config().model
  config.update(width=128, num_heads=2, num_kv_heads=1, dtype='bfloat16', tie_embeddings=True)
  model = Transformer(ModelConfig.from_config(config, VOCAB))
  params = nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params'])
  return model, jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(1), x.shape), params)


def step_logits(model: Transformer, params, prompt: np.ndarray, tokens: list[int]) -> np.ndarray:
  """Returns the N x V logits decoding reads before each of the N `tokens`, fed one by one after `prompt`."""
  logits_1xV, cache = prefill(model, params, jnp.asarray([prompt]), jnp.asarray([len(prompt)]))
  rows = [logits_1xV]
  for n, token in enumerate(tokens[:-1]):
    logits_1xV, cache = decode_step(model, params, cache, jnp.asarray([token]), jnp.asarray([len(prompt) + n]))
    rows.append(logits_1xV)
  return np.asarray(jnp.concatenate(rows), np.float32)


@pytest.mark.parametrize('mode', ['int8', 'int4'])
def test_quantized_decoding_picks_the_greedy_tokens_of_its_dequantized_weights(mode: str):
  """The layers read the same bfloat16 weights either way (expanded in the scan, or the float32 ones cast); the int8
  head scales its integer sums once where the dequantized one rounds each weight, and both round the logits to
  bfloat16 (spacing 2 EPS |logit|): 4 EPS max|logit|, two spacings at the largest, holds them (observed on the CPU:
  one). Logits there are ~60, spaced 0.25 or 0.5, and greedy ties do happen, so the tokens may part at a near-tie
  alone: there the two tokens' float logits are within the two models' tolerances."""
  model, params = random_model()
  qparams = quantize.quantize(params, mode)
  floats = quantize.dequantize(qparams)
  prompt = np.asarray([3, 1, 4, 1, 5], np.int32)
  got, want = (sampling.generate(model, p, [prompt], 11, settings=GREEDY)[0].tokens for p in (qparams, floats))
  float_NxV = step_logits(model, floats, prompt, want)
  tolerance = 4 * EPS * float(np.abs(float_NxV).max())
  np.testing.assert_allclose(step_logits(model, qparams, prompt, want), float_NxV, rtol=0, atol=tolerance)
  first = next((n for n, (a, b) in enumerate(zip(got, want)) if a != b), None)
  assert first is None or abs(float_NxV[first, got[first]] - float_NxV[first, want[first]]) <= 2 * tolerance
