"""Tests of train/memory.py: the bytes arrays, shards and storage types take, the tables printed, and the check that a
train state fits its devices."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from test_transformer import init
from flaxlm.configs import llama2_7b, tiny
from flaxlm.configs.errors import UserError
from flaxlm.model import quantize
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import memory

GiB = 2 ** 30


@pytest.fixture(scope='module')
def params() -> dict:
  """Random params of configs/tiny.py at width 128 (vocabulary 256)."""
  c = tiny.get_config().model
  c.update(width=128, vocab_size=256)
  model = Transformer(ModelConfig.from_config(c, 256))
  return init(model)


@pytest.mark.parametrize('mode', ['int8', 'int4'])
def test_memory_bytes_are_the_bytes_the_arrays_hold(params: dict, mode: str):
  """memory_bytes counts each array's bytes on device (int4 packed two to a byte), and matches the table's."""
  qparams = quantize.quantize(params, mode)
  leaves = jax.tree.leaves(qparams)
  held = sum(x.on_device_size_in_bytes() for x in leaves)
  assert memory.memory_bytes(qparams) == held
  assert held == memory.mode_bytes(params)['int8' if mode == 'int8' else 'int4 (groups of 128)']
  assert (held == sum(x.nbytes for x in leaves)) == (mode == 'int8')  # numpy's nbytes gives int4 a whole byte.
  assert memory.memory_bytes(quantize.dequantize(qparams, jnp.bfloat16)) == memory.memory_bytes(params) // 2


def test_memory_table_of_llama2_7b():
  """6,738,415,616 parameters: matrices take 1 (int8) or 1/2 (int4) byte, plus float32 scales and norms.

  int8 has a scale per output channel: per layer D for each of query, key, value, out and down, F for gate and up;
  V for the embedding and V for the head. int4 has one per 128 weights, every contraction being a multiple of 128.
  """
  c = ModelConfig.from_config(llama2_7b.get_config().model, 0)
  abstract = jax.eval_shape(lambda: nn.unbox(Transformer(c).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  lines = memory.memory_table(abstract['params'])
  count, norms = 6_738_415_616, c.num_layers * 2 * c.width + c.width
  matrices = count - norms
  int8_scales = c.num_layers * (5 * c.width + 2 * c.mlp_width) + 2 * c.vocab_size
  expected = {'float32': 4 * count, 'bfloat16': 2 * count, 'int8': matrices + 4 * (int8_scales + norms),
              'int4 (groups of 128)': matrices // 2 + 4 * (matrices // 128 + norms)}
  assert lines[0].startswith('parameter memory (6,738,415,616 parameters)') and 'GiB' in lines[0]
  assert [line.split()[-2] for line in lines[1:]] == [f'{size / 2 ** 30:.2f}' for size in expected.values()]
  assert [line.split()[-2] for line in lines[1:]] == ['25.10', '12.55', '6.28', '3.33']


def test_a_shard_holds_its_share_and_each_device_counts_its_own():
  """An array split over the 2 test devices holds half its bytes on each; a replicated one all of them on both."""
  mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  tree = {'split': jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=split),
          'whole': jax.ShapeDtypeStruct((1024,), jnp.int4, sharding=whole)}
  assert memory.shard_bytes(tree) == 4 * 4 * 1024 + 512  # int4 packed two to a byte.
  assert memory.bytes_per_device(tree) == {device: 4 * 4 * 1024 + 512 for device in mesh.devices.flat}


def test_a_train_state_larger_than_a_device_is_refused_before_anything_is_allocated():
  mesh = jax.make_mesh((2,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  capacity = memory.device_capacity(mesh.devices.flat[0])
  assert capacity and capacity > GiB  # A CPU device: the host's memory shared by the CPU devices.
  rows = capacity // (4 * 1024) + 1  # One float32 array, replicated, a little more than a device holds.
  state = {'params': jax.ShapeDtypeStruct((rows, 1024), jnp.float32,
                                          sharding=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))}
  with pytest.raises(UserError, match='the train state needs .* GiB on each device, more than the .*: shrink the model'):
    memory.check_fits(state)
  memory.check_fits({'params': jax.ShapeDtypeStruct((8, 1024), jnp.float32, sharding=state['params'].sharding)})


def test_training_takes_16_bytes_per_parameter_in_float32_adamw():
  sizes = memory.training_bytes(10)
  assert sizes['training total'] == 160 == sum(v for k, v in sizes.items() if 'total' not in k and 'inference' not in k)
  assert sizes['weights (bfloat16, inference)'] == 20
