"""Tests of train/sharding.py: mesh sizes from the config, the logical-axis table, and CPU device counts."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from configs import tiny
from configs.errors import UserError
from model.transformer import ModelConfig, Transformer
from train import sharding


def mesh_config(data=-1, fsdp=1, tensor=1, batch_size=8):
  """Returns the tiny config with the given mesh sizes and batch size."""
  config = tiny.get_config()
  config.mesh.update(dict(data=data, fsdp=fsdp, tensor=tensor))
  config.train.batch_size = batch_size
  return config


@pytest.mark.parametrize('sizes, devices, expected', [
    ((-1, 1, 1), 8, (8, 1, 1)), ((2, -1, 1), 8, (2, 4, 1)), ((1, 2, -1), 8, (1, 2, 4)), ((2, 2, 2), 8, (2, 2, 2)),
])
def test_minus_one_takes_the_remaining_devices(sizes, devices, expected):
  assert sharding.mesh_shape(mesh_config(*sizes), devices) == expected


@pytest.mark.parametrize('sizes, devices', [((-1, -1, 1), 8), ((3, -1, 1), 8), ((2, 2, 1), 8)])
def test_meshes_that_do_not_fit_the_devices_are_refused(sizes, devices):
  with pytest.raises(UserError, match='mesh'):
    sharding.mesh_shape(mesh_config(*sizes), devices)


def test_a_batch_that_does_not_split_over_the_data_shards_is_refused():
  with pytest.raises(UserError, match='batch_size=7'):
    sharding.make_mesh(mesh_config(batch_size=7), jax.devices()[:2])


def test_parameters_map_to_mesh_axes_through_the_rules():
  mesh = sharding.make_mesh(mesh_config(data=1, fsdp=1, tensor=2), jax.devices()[:2])
  model = Transformer(ModelConfig.from_config(tiny.get_config().model, 20))
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  shardings = sharding.logical_shardings(boxed, mesh)
  assert shardings['embed']['embedding'].spec == P('tensor', 'fsdp')  # (vocab, embed)
  assert shardings['stack']['layers']['mlp']['up']['kernel'].spec == P(None, 'fsdp', 'tensor')  # (layers, ...)
  assert shardings['stack']['layers']['attention']['query']['kernel'].spec == P(None, 'fsdp', 'tensor', None)
  assert sharding.batch_sharding(mesh).spec == P(('data', 'fsdp'))


@pytest.mark.parametrize('batch_size, explicit, cores, expected', [(12, 0, 2, 2), (12, 0, 8, 6), (7, 0, 2, 1),
                                                                   (12, 3, 2, 3)])
def test_cpu_device_count_is_one_per_core_dividing_the_batch(monkeypatch, batch_size, explicit, cores, expected):
  config = mesh_config(batch_size=batch_size)
  config.mesh.cpu_devices = explicit
  monkeypatch.setattr('os.cpu_count', lambda: cores)
  monkeypatch.setattr(jax, '__version__', '0.12.0')
  assert sharding.cpu_device_count(config) == expected
  monkeypatch.setattr(jax, '__version__', '0.11.2')
  assert sharding.cpu_device_count(config) == (explicit or 1)
