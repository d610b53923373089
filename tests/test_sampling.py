"""Tests of model/sampling.py: prefill and cached decode equal the full model (quantized params too), decoding reads
int8/int4 weights as stored, filtering, batching, seeds and EOS."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_transformer import init
from flaxlm.configs import tiny
from flaxlm.model import quantize, sampling
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, param_shapes
from flaxlm.train import sharding

VOCAB = 12
GREEDY = sampling.Settings(temperature=0.0)


def trained_like_model(**overrides):
  """Returns (model, params) with random weights, so the distribution over next tokens is far from uniform."""
  config = tiny.get_config()
  config.model.tie_embeddings = True
  config.model.update(overrides)
  model = Transformer(ModelConfig.from_config(config.model, VOCAB))
  params = jax.jit(lambda p: jax.tree.map(lambda x: x + jax.random.normal(jax.random.key(1), x.shape), p))(init(model))
  return model, params


@functools.partial(jax.jit, static_argnums=0)
def full_logits(model, params, tokens_BxT):
  """Returns the logits of a full forward pass (no cache)."""
  return model.apply({'params': params}, tokens_BxT)


def greedy_without_cache(model, params, prompt, new):
  """Returns `new` greedy tokens, each from a full forward pass over (up to) the last T tokens."""
  sequence = list(prompt)
  for _ in range(new):
    window = jnp.asarray([sequence[-model.config.max_length:]])
    sequence.append(int(jnp.argmax(full_logits(model, params, window)[0, -1])))
  return sequence[len(prompt):]


# One token's matmuls against the whole sequence's: reassociation errs by ~1e-6 of the logits' scale (~30 from O(1)
# random weights), not of each logit (a logit near 0 is a cancelling sum); a wrong cache entry or layer errs by O(1).
scale_tolerance = lambda expected: 1e-5 * float(jnp.abs(expected).max())
prefill = jax.jit(sampling.prefill, static_argnums=0)
decode_step = jax.jit(sampling.decode_step, static_argnums=0)


@pytest.mark.parametrize('overrides', [{'num_kv_heads': 1, 'scan_layers': False}, {'positions': 'learned'}],
                         ids=['unrolled-mqa', 'learned-scanned'])  # rotary, scanned: test_transformer's families test
def test_cached_decode_logits_equal_a_full_forward_pass_at_every_step(overrides):
  model, params = trained_like_model(**overrides)
  tokens_1xT = jax.random.randint(jax.random.key(2), (1, model.config.max_length), 0, VOCAB)
  logits, cache = prefill(model, params, tokens_1xT[:, :5], jnp.asarray([5]))
  expected = full_logits(model, params, tokens_1xT)
  atol = scale_tolerance(expected)
  np.testing.assert_allclose(logits, expected[:, 4], rtol=1e-5, atol=atol)
  c = model.config
  assert jax.tree.leaves(cache)[0].shape[-3:] == (c.max_length, c.num_kv_heads, c.head_dim)  # GQA: G heads cached.
  for t in range(5, model.config.max_length):
    logits, cache = decode_step(model, params, cache, tokens_1xT[:, t], jnp.asarray([t]))
    np.testing.assert_allclose(logits, expected[:, t], rtol=1e-5, atol=atol)


PROMPTS_BxP = jax.random.randint(jax.random.key(3), (4, 8), 0, VOCAB)
LENGTHS_B = jnp.asarray([7, 3, 1, 8])  # right-padded with random tokens, which come after: no row sees them.


def test_prefill_gives_the_full_forward_pass_logits_at_each_prompt_s_last_position():
  """Rows of 7, 3, 1 and 8 tokens, through an untied head and separate layers (the tied and scanned ones' prefill of
  one row is checked above)."""
  model, params = trained_like_model(tie_embeddings=False, scan_layers=False)
  logits_BxV, _ = prefill(model, params, PROMPTS_BxP, LENGTHS_B)
  expected_BxV = full_logits(model, params, PROMPTS_BxP)[jnp.arange(4), LENGTHS_B - 1]
  assert logits_BxV.shape == (4, VOCAB) and logits_BxV.dtype == jnp.float32
  np.testing.assert_allclose(logits_BxV, expected_BxV, rtol=1e-5, atol=scale_tolerance(expected_BxV))


@pytest.mark.parametrize('mode, overrides, prompts_BxP, lengths_B', [
    ('int4', {}, PROMPTS_BxP[:1, :5], jnp.asarray([5])),
    ('int8', {'tie_embeddings': False, 'scan_layers': False, 'num_layers': 3, 'dense_layers': 1, 'num_experts': 4,
              'expert_width': 16}, PROMPTS_BxP, LENGTHS_B)],
    ids=['int4-scanned-tied', 'int8-separate_layers-untied-experts'])
def test_decoding_quantized_params_equals_decoding_them_dequantized_up_front(mode, overrides, prompts_BxP, lengths_B):
  """Each layer expanded inside the scan (or the loop of layers: a dense one, then two of experts), the embedding's rows
  alone and the head multiplied group by group give the logits of the whole tree expanded at once.

  Both compute the same products in float32 (the model's dtype here), summed in another order (XLA's fusions, the
  head's groups summed before their scales): rounding; a layer given another layer's matrices, the wrong embedding
  rows or a group the wrong scale errs by O(1).
  """
  model, params = trained_like_model(**overrides)
  qparams = quantize.quantize(params, mode, 16)  # int4: groups of 16 along the width of 32, two per column.
  reference = quantize.dequantize(qparams)  # float32, the whole tree at once.
  logits, cache = prefill(model, qparams, prompts_BxP, lengths_B)
  expected, expected_cache = prefill(model, reference, prompts_BxP, lengths_B)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=scale_tolerance(expected))
  tokens_B = jnp.arange(len(lengths_B))
  logits, _ = decode_step(model, qparams, cache, tokens_B, lengths_B)
  expected, _ = decode_step(model, reference, expected_cache, tokens_B, lengths_B)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=scale_tolerance(expected))


def expanded_shapes(fn, params, *args) -> set[tuple[int, ...]]:
  """Returns the shapes of `params`' stacked (L x ...) quantized matrices and of its embedding table that appear as
  float arrays anywhere in fn(params, *args)'s jaxpr, the layer scan's body included."""
  text = str(jax.make_jaxpr(fn)(params, *args))
  whole = [params['embed']['embedding'], *jax.tree.leaves(params['stack'], is_leaf=quantize.is_quantized)]
  shapes = {q.values.shape for q in whole if quantize.is_quantized(q)}
  named = lambda shape: ','.join(map(str, shape))
  return {shape for shape in shapes if any(f'{dtype}[{named(shape)}]' in text for dtype in ('f32', 'bf16'))}


def test_decode_step_reads_int8_and_int4_weights_as_stored_one_layer_at_a_time():
  """A bfloat16 model whose weights (3.4 MB) dwarf its 16-position cache (16 KB).

  The compiled step's arguments hold a byte (int8) or half a byte (int4) per weight where bfloat16 holds 2, plus
  float32 scales: 4/C bytes a weight for int8 (C >= 256 here), 4/128 for int4's groups; so about 0.51 and 0.27 of
  bfloat16's, under the 0.55 and 0.3 asked of llama_1b. And no layer's matrices are expanded for all layers at once
  (a float array of a stacked kernel's shape), nor the embedding table (only its looked-up rows), as expanding the
  whole tree up front does: the check finds the table and the 5 stacked shapes (key and value share one, as do gate
  and up) there.
  """
  c = tiny.get_config().model
  c.update(width=256, vocab_size=512, dtype='bfloat16')
  model = Transformer(ModelConfig.from_config(c, 512))
  bf16 = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), param_shapes(model.config))
  tokens_B = jax.ShapeDtypeStruct((1,), jnp.int32)
  _, cache = jax.eval_shape(lambda p: sampling.prefill(model, p, jnp.zeros((1, 4), jnp.int32), jnp.ones(1, int)), bf16)
  argument_bytes = lambda params: decode_step.lower(model, params, cache, tokens_B, tokens_B).compile(
      ).memory_analysis().argument_size_in_bytes
  step = functools.partial(sampling.decode_step, model)
  whole_tree = lambda params, *args: step(quantize.dequantize(params, jnp.bfloat16), *args)
  bf16_bytes = argument_bytes(bf16)
  for mode, most in (('int8', 0.55), ('int4', 0.3)):
    qparams = jax.eval_shape(lambda p: quantize.quantize(p, mode), bf16)
    assert argument_bytes(qparams) < most * bf16_bytes, mode
    assert expanded_shapes(step, qparams, cache, tokens_B, tokens_B) == set()
    assert len(expanded_shapes(whole_tree, qparams, cache, tokens_B, tokens_B)) == 6


def test_greedy_decoding_with_the_cache_equals_decoding_without_it_beyond_the_context():
  model, params = trained_like_model()
  prompt = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3], np.int32)  # 10 of the 16-token context.
  cached = sampling.generate(model, params, [prompt], 6, settings=GREEDY)[0].tokens
  # Tokens, not logits: an argmax flips only if its top two logits are within reassociation (~1e-5); in the greedy
  # paths of these tests they are at least 0.01 apart.
  assert cached == greedy_without_cache(model, params, prompt, 6)
  # Beyond the context the cache restarts from the last T/2 tokens, so only each new token's own window is the same
  # as nanoGPT's while it fits: the tokens go on, all in the vocabulary.
  longer = sampling.generate(model, params, [prompt], 40, settings=GREEDY)[0].tokens
  assert longer[:6] == cached and len(longer) == 40 and max(longer) < VOCAB


def test_prompts_of_different_lengths_in_one_batch_decode_as_each_alone():
  model, params = trained_like_model()
  prompts = [np.array([1, 2, 3], np.int32), np.array([5, 4, 3, 2, 1, 0, 7, 8, 9], np.int32), np.array([11], np.int32)]
  together = sampling.generate(model, params, prompts, 12, settings=GREEDY)
  for prompt, sample in zip(prompts, together):
    assert sample.tokens == sampling.generate(model, params, [prompt], 12, settings=GREEDY)[0].tokens


def until_first(tokens: list[int], eos_ids: tuple[int, ...]) -> list[int]:
  """Returns `tokens` up to and including the first of `eos_ids` among them (all of them if none is)."""
  stops = [i for i, token in enumerate(tokens) if token in eos_ids]
  return tokens[:stops[0] + 1] if stops else tokens


def test_a_sequence_stops_at_any_of_several_eos_ids_and_the_others_go_on():
  model, params = trained_like_model()
  prompts = [np.array([1, 2, 3], np.int32), np.array([4, 5], np.int32)]
  free = sampling.generate(model, params, prompts, 12, settings=GREEDY)
  eos_ids = (free[0].tokens[6], free[1].tokens[3])  # Each sequence has one of them (at least) within its 12 tokens.
  stopped = sampling.generate(model, params, prompts, 12, settings=sampling.Settings(0.0, eos_ids=eos_ids))
  assert [s.tokens for s in stopped] == [until_first(f.tokens, eos_ids) for f in free]
  assert len(stopped[0].tokens) <= 7 and len(stopped[1].tokens) <= 4


def test_top_k_keeps_exactly_the_k_most_likely_tokens():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))
  settings = sampling.Settings(top_k=2)
  assert set(np.flatnonzero(np.isfinite(sampling.filter_logits(logits, settings)[0]))) == {1, 3}
  draws = {int(sampling.next_token(logits, jax.random.key(i), settings)[0]) for i in range(50)}
  assert draws == {1, 3}
  assert np.isfinite(sampling.filter_logits(logits, sampling.Settings(top_k=5))).all()  # k >= V keeps all.


@pytest.mark.parametrize('top_p, nucleus', [(0.5, {1, 3}), (0.4, {1}), (0.71, {1, 3, 4}), (1.0, {0, 1, 2, 3, 4})])
def test_top_p_keeps_the_smallest_set_of_tokens_reaching_p(top_p, nucleus):
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]]))  # sorted: 0.4, 0.3, 0.15, 0.1, 0.05.
  settings = sampling.Settings(top_p=top_p)
  assert set(np.flatnonzero(np.isfinite(sampling.filter_logits(logits, settings)[0]))) == nucleus
  draws = {int(sampling.next_token(logits, jax.random.key(i), settings)[0]) for i in range(60)}
  assert draws <= nucleus


def test_temperature_sharpens_and_flattens_the_distribution():
  logits = jnp.log(jnp.array([[0.6, 0.25, 0.15]]))
  cold = jax.nn.softmax(sampling.filter_logits(logits, sampling.Settings(temperature=0.5)))[0]
  hot = jax.nn.softmax(sampling.filter_logits(logits, sampling.Settings(temperature=2.0)))[0]
  assert cold[0] > 0.6 > hot[0]


@pytest.mark.parametrize('temperature', [1e-30, 1e-40, 1e-300])
def test_a_tiny_temperature_is_greedy_never_nan(temperature):
  logits = jnp.array([[1.0, 3.0, 2.0, -1.0, 0.0], [30.0, -5.0, 31.0, 0.0, 29.0]])  # float32: 31 / 1e-38 overflows.
  settings = sampling.Settings(temperature=temperature)
  assert not np.isnan(sampling.filter_logits(logits, settings)).any()
  draws = {tuple(sampling.next_token(logits, jax.random.key(i), settings).tolist()) for i in range(20)}
  assert draws == {(1, 2)}


def test_a_huge_temperature_draws_uniformly():
  logits = jnp.log(jnp.array([[0.6, 0.25, 0.15]]))
  probs = jax.nn.softmax(sampling.filter_logits(logits, sampling.Settings(temperature=1e300)))[0]
  np.testing.assert_allclose(probs, [1 / 3] * 3, rtol=1e-6)


def test_the_same_seed_gives_the_same_samples_and_candidates_are_the_model_s_top_tokens():
  model, params = trained_like_model()
  prompts = [np.array([1, 2, 3], np.int32)] * 3
  run = lambda seed: [s.tokens for s in sampling.generate(model, params, prompts, 20, seed, sampling.Settings())]
  first = run(0)
  assert first == run(0) and first != run(1)
  assert len({tuple(row) for row in first}) > 1  # each sample draws its own tokens.
  sample = sampling.generate(model, params, prompts[:1], 3, settings=sampling.Settings(0.0, candidates=4))[0]
  probs = jax.nn.softmax(full_logits(model, params, jnp.asarray([[1, 2, 3]]))[0, -1])
  assert sample.top_ids[0] == list(np.argsort(-np.asarray(probs))[:4])
  # The prefill is the same forward pass over the same 3 tokens: rounding alone (seen: equal).
  np.testing.assert_allclose(sample.top_probs[0], np.sort(np.asarray(probs))[::-1][:4], rtol=1e-5)
  assert sample.tokens[0] == sample.top_ids[0][0]  # greedy takes the first candidate.


def test_stream_sees_every_emitted_token_in_order():
  model, params = trained_like_model()
  seen = []
  stream = lambda tokens_B, emitted_B: seen.extend(int(t) for t, e in zip(tokens_B, emitted_B) if e)
  sample = sampling.generate(model, params, [np.array([1, 2], np.int32)], 25, settings=GREEDY, stream=stream)[0]
  assert seen == sample.tokens and len(seen) == 25


@pytest.mark.timeout(120)
@pytest.mark.skipif(tuple(map(int, jax.__version__.split('.')[:2])) < (0, 12),
                    reason='in-process CPU all-reduce deadlocks before jax 0.12')
def test_decoding_a_tensor_parallel_model_gives_the_same_tokens():
  model, params = trained_like_model()
  config = tiny.get_config()
  config.mesh.update(dict(data=1, tensor=2))
  mesh = sharding.make_mesh(config, jax.devices()[:2])
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  sharded = jax.device_put(params, sharding.logical_shardings(boxed, mesh))
  assert sharded['stack']['layers']['mlp']['up']['kernel'].sharding.spec[-1] == 'tensor'
  prompt = [np.array([3, 1, 4, 1, 5], np.int32)]
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    on_mesh = sampling.generate(model, sharded, prompt, 10, settings=GREEDY)[0].tokens
  # Tokens: the split matmuls' reassociation (~1e-5) is far below the top-two logit gaps (over 0.01 here).
  assert on_mesh == sampling.generate(model, params, prompt, 10, settings=GREEDY)[0].tokens
