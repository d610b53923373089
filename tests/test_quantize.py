"""Tests of model/quantize.py: error bounds, which parameters are quantized, the bytes held, logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_transformer import init
from flaxlm.configs import tiny
from flaxlm.configs.errors import UserError
from flaxlm.model import quantize
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import memory as memory_lib

LARGEST = {'int8': 127, 'int4': 7}
CASES = [  # module, parameter, shape, mode, group_size, the shape grouped as (..., N, G, ...), the axis of G in it.
    ('up', 'kernel', (2, 256, 48), 'int4', 64, (2, 4, 64, 48), 2),  # scanned: the layers axis keeps its own scales.
    ('up', 'kernel', (2, 256, 48), 'int8', 64, (2, 1, 256, 48), 2),  # int8: one scale per output channel.
    ('out', 'kernel', (4, 32, 16), 'int8', 128, (1, 128, 16), 1),  # H x K x D contracts H and K.
    ('out', 'kernel', (4, 32, 16), 'int4', 64, (2, 64, 16), 1),
    ('query', 'kernel', (192, 2, 8), 'int4', 128, (1, 192, 2, 8), 1),  # 192 not a multiple of 128: the whole of D.
    ('embed', 'embedding', (10, 96), 'int4', 128, (10, 1, 96), 2),  # D shorter than 128: one group per row.
    ('embed', 'embedding', (10, 96), 'int8', 128, (10, 1, 96), 2),
]


def model_and_params(**overrides) -> tuple[Transformer, dict]:
  """Returns a random-init Transformer of configs/tiny.py with width 128 (and `overrides`) and its params."""
  c = tiny.get_config().model
  c.update(width=128, vocab_size=256, **overrides)
  model = Transformer(ModelConfig.from_config(c, 256))
  return model, init(model)


def test_each_weight_is_within_half_a_scale_of_its_dequantized_value():
  """|w - q s| <= s / 2, with s the group's max |w| / largest integer; float32 rounding adds a few ulps of max |w|."""
  for module, name, shape, mode, group_size, grouped, axis in CASES:
    w = np.asarray(jax.random.normal(jax.random.key(len(shape)), shape))
    q = quantize.quantize({module: {name: w}}, mode, group_size)[module][name]
    scale_NxG = np.abs(w.reshape(grouped)).max(axis=axis, keepdims=True) / LARGEST[mode]
    assert q.values.dtype == {'int8': jnp.int8, 'int4': jnp.int4}[mode] and q.scale.dtype == jnp.float32
    assert q.values.shape == shape and q.group_size == grouped[axis]
    np.testing.assert_allclose(q.scale, scale_NxG.squeeze(axis), rtol=1e-6)
    assert np.abs(np.asarray(q.values, np.int32)).max() == LARGEST[mode]
    scale = np.broadcast_to(scale_NxG, grouped).reshape(shape)
    error = np.abs(w - np.asarray(quantize.dequantize({module: {name: q}})[module][name]))
    assert (error <= scale * (0.5 + LARGEST[mode] * 2.0 ** -22)).all(), (module, mode)


@pytest.mark.parametrize('mode', ['int8', 'int4'])
def test_matrices_are_quantized_and_the_rest_kept_exactly(mode: str):
  """Kernels and the token embedding become QuantizedArrays; norms, biases, position embeddings are untouched."""
  _, params = model_and_params(positions='learned', norm='layernorm', use_bias=True)
  qparams = quantize.quantize(params, mode)
  flat = dict(jax.tree_util.tree_flatten_with_path(qparams, is_leaf=quantize.is_quantized)[0])
  names = {jax.tree_util.keystr(path): leaf for path, leaf in flat.items()}
  quantized = {name for name, leaf in names.items() if quantize.is_quantized(leaf)}
  assert quantized == {name for name in names if name.endswith("['kernel']") or name.startswith("['embed']")}
  restored = dict(jax.tree_util.tree_flatten_with_path(quantize.dequantize(qparams))[0])
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    if jax.tree_util.keystr(path) not in quantized:
      assert names[jax.tree_util.keystr(path)].dtype == jnp.float32
      np.testing.assert_array_equal(names[jax.tree_util.keystr(path)], w)
      np.testing.assert_array_equal(restored[path], w)


@pytest.fixture(scope='module')
def params() -> dict:
  """The params of configs/tiny.py at width 128: 459,392 parameters, all but 640 (the norms) in matrices."""
  return model_and_params()[1]


@pytest.mark.parametrize('mode', ['int8', 'int4'])
def test_a_quantized_table_s_rows_and_the_heads_products_are_those_of_the_expanded_matrices(mode: str):
  """take_rows gathers integers and scales: expanded, exactly the expanded table's rows. dot (the output head, tied:
  the V x D table; untied: a D x V kernel) sums each group of 32 and then scales it: against numpy's float64 product
  of the expanded matrix, float32 rounding of sums of 96 terms of size ~1 (about 1e-5), where a wrong scale or group
  errs by O(1)."""
  matrices = {'embed': {'embedding': jax.random.normal(jax.random.key(0), (10, 96))},
              'head': {'kernel': jax.random.normal(jax.random.key(1), (96, 10))}}
  qparams = quantize.quantize(matrices, mode, 32)
  table, kernel = qparams['embed']['embedding'], qparams['head']['kernel']
  expanded = jax.tree.map(lambda x: np.asarray(x, np.float64), quantize.dequantize(qparams))
  ids_BxT = jnp.asarray([[3, 0, 9], [3, 3, 1]])
  rows = quantize.take_rows(table, ids_BxT)
  assert rows.values.shape == (2, 3, 96) and rows.values.dtype == table.values.dtype
  np.testing.assert_array_equal(quantize.dequantize_array(rows, jnp.float32),
                                expanded['embed']['embedding'][np.asarray(ids_BxT)])
  x_BxTxD = jax.random.normal(jax.random.key(2), (2, 3, 96))
  for q, expanded_DxV in ((table, expanded['embed']['embedding'].T), (kernel, expanded['head']['kernel'])):
    np.testing.assert_allclose(quantize.dot(x_BxTxD, q, jnp.float32), np.asarray(x_BxTxD, np.float64) @ expanded_DxV,
                               rtol=0, atol=1e-4)


def test_int8_holds_about_a_quarter_of_float32(params: dict):
  """A byte per weight, plus a float32 scale per output channel (every contraction is >= 128 long: <= 4/128 bytes
  a weight) and the float32 norms (640 of 459,392 parameters): between 1/4 and 1/4 + 1/128 + 3/4 x 640/459,392."""
  assert count_params(params) == 459_392
  ratio = memory_lib.memory_bytes(quantize.quantize(params, 'int8')) / memory_lib.memory_bytes(params)
  assert 0.25 < ratio < 0.25 + 1 / 128 + 0.75 * 640 / 459_392


def test_quantized_logits_are_close_to_float_logits():
  """Logits of a dequantized model stay close to the float model's.

  At random init the weights' relative (2-norm) error is 0.7% for int8 and 12% (10%) for int4 in groups of 128
  (32); the small residual stream, normalized before the tied head, amplifies it about 3.5 times in the logits.
  """
  model, params = model_and_params(tie_embeddings=True)  # An untied head starts at zero: all logits 0.
  tokens_BxT = jax.random.randint(jax.random.key(1), (2, 16), 0, 256)
  logits = jax.jit(lambda p: model.apply({'params': p}, tokens_BxT))  # compiled once, for float params.
  float_BxTxV = logits(params)
  error = lambda mode, group: float(jnp.linalg.norm(logits(quantize.dequantize(quantize.quantize(params, mode, group)))
                                                    - float_BxTxV) / jnp.linalg.norm(float_BxTxV))
  errors = {'int8': error('int8', 128), 'int4/128': error('int4', 128), 'int4/32': error('int4', 32)}
  assert 0 < errors['int8'] < 0.04 and errors['int8'] < errors['int4/32'] < errors['int4/128'] < 0.6, errors


def test_unknown_mode_is_a_user_error():
  """A mode outside MODES names the choices."""
  with pytest.raises(UserError, match='int8'):
    quantize.quantize({}, 'int2')
