"""Tests of train/sharding.py: mesh sizes from the config, the logical-axis table, and CPU device counts."""

import json
import math
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from flaxlm.configs import tiny
from flaxlm.configs.errors import UserError
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import sharding


def mesh_config(data=-1, fsdp=1, expert=1, tensor=1, batch_size=8):
  """Returns the tiny config with the given mesh sizes and batch size."""
  config = tiny.get_config()
  config.mesh.update(dict(data=data, fsdp=fsdp, expert=expert, tensor=tensor))
  config.train.batch_size = batch_size
  return config


@pytest.mark.parametrize('sizes, devices, expected', [
    ((-1, 1, 1, 1), 8, (8, 1, 1, 1)), ((2, -1, 1, 1), 8, (2, 4, 1, 1)), ((1, 2, 1, -1), 8, (1, 2, 1, 4)),
    ((2, 1, 2, 2), 8, (2, 1, 2, 2)), ((1, 2, -1, 1), 8, (1, 2, 4, 1)),
])
def test_minus_one_takes_the_remaining_devices(sizes, devices, expected):
  assert sharding.mesh_shape(mesh_config(*sizes), devices) == expected


@pytest.mark.parametrize('sizes, devices', [((-1, -1, 1, 1), 8), ((3, -1, 1, 1), 8), ((2, 2, 1, 1), 8)])
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
  assert sharding.batch_sharding(mesh).spec == P(('data', 'fsdp', 'expert'))


def test_experts_split_over_the_expert_axis_and_the_batch_too():
  config = mesh_config(data=1, expert=2)
  config.model.update(num_experts=4, expert_width=32)
  mesh = sharding.make_mesh(config, jax.devices()[:2])
  boxed = jax.eval_shape(Transformer(ModelConfig.from_config(config.model, 20)).init, jax.random.key(0),
                         jnp.zeros((1, 1), jnp.int32))['params']
  experts = sharding.logical_shardings(boxed, mesh)['stack']['layers']['moe']
  assert experts['up']['kernel'].spec == P(None, 'expert', 'fsdp', 'tensor')  # (layers, experts, embed, expert_mlp)
  assert experts['down']['kernel'].spec == P(None, 'expert', 'tensor', 'fsdp')
  config.model.num_experts = 3
  boxed = jax.eval_shape(Transformer(ModelConfig.from_config(config.model, 20)).init, jax.random.key(0),
                         jnp.zeros((1, 1), jnp.int32))['params']
  with pytest.raises(UserError, match=r'experts dimension \(3\) does not split over mesh axes expert \(2 devices\): '
                     r'make model.num_experts a multiple of 2, or change --config.mesh.expert'):
    sharding.logical_shardings(boxed, mesh)
  with pytest.raises(UserError, match=r'batch_size=3 does not split over 2 data shards \(mesh.data x mesh.fsdp x '
                     'mesh.expert'):
    sharding.make_mesh(mesh_config(data=1, expert=2, batch_size=3), jax.devices()[:2])


def test_a_dimension_that_a_rule_cannot_split_evenly_is_refused_with_the_key_to_change():
  config = mesh_config(data=1, tensor=2)
  config.model.num_kv_heads = 1
  mesh = sharding.make_mesh(config, jax.devices()[:2])
  model = Transformer(ModelConfig.from_config(config.model, 20))
  boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']
  with pytest.raises(UserError, match=r'kv_heads dimension \(1\) does not split over mesh axes tensor \(2 devices\): '
                     'make model.num_kv_heads a multiple of 2'):
    sharding.logical_shardings(boxed, mesh)


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


# A sparse tiny model (model/moe.py: a dense first layer, then 4 experts), on one device and on meshes that split every
# axis: the experts over 2 devices (the batch too), and over 2 of 8 with fsdp and tensor (each compile costs ~6 s on
# CI).
MESHES = [(1, 1, 1, 1), (1, 1, 2, 1), (1, 2, 2, 2)]


def step_on_mesh(sizes: tuple[int, ...]) -> tuple[list[dict], dict, object]:
  """Returns (each step's metrics, params) after three train steps of the sparse tiny model on a mesh of `sizes`, and
  the state. Three: step 0's learning rate is 0 and the untied head starts at zero, so only the third moves every
  parameter by its gradient. Both router losses are weighted, so their gradients are compared too."""
  from flaxlm.data import pipeline
  from flaxlm.train import optimizer, state as state_lib, step as step_lib
  config = mesh_config(*sizes)
  config.model.update(num_layers=3, dense_layers=1, num_experts=4, experts_per_token=2, expert_width=32,
                      router_z_loss=1e-3)
  mesh = sharding.make_mesh(config, jax.devices()[:math.prod(sizes)])
  model = Transformer(ModelConfig.from_config(config.model, 20))
  tx = optimizer.make_optimizer(config.train)
  abstract = state_lib.abstract_state(model, tx, mesh)
  state = state_lib.init_state(model, tx, 0, abstract)
  train_fn, _ = step_lib.compile_steps(model, tx, optimizer.schedule(config.train), 0, abstract, mesh)
  tokens = np.random.default_rng(0).integers(0, 20, 4000).astype(np.int32)
  data = pipeline.train_iterator(pipeline.PackedExamples(pipeline.TokenStream.from_documents([tokens], None), 16, 0),
                                 8, seed=0, threads=0)
  steps = []
  for _ in range(3):
    state, metrics = train_fn(state, sharding.global_batch(next(data), mesh))
    steps.append({k: float(v) for k, v in metrics.items()})
  return steps, jax.device_get(state.params), state


def compare_meshes() -> None:
  """Prints, as JSON, how far each mesh's metrics and params are from one device's, and how the dense layer's MLP
  and the experts are laid out."""
  from conftest import adamw_params_differ
  jax.config.update('jax_num_cpu_devices', 8)
  reference, reference_params, _ = step_on_mesh(MESHES[0])
  report = {}
  for sizes in MESHES[1:]:
    steps, params, state = step_on_mesh(sizes)
    gaps = {key: max(abs(a[key] - b[key]) / b[key] for a, b in zip(steps, reference)) for key in reference[0]
            if key != 'learning_rate'}
    dense, experts = state.params['stack']['layer_0']['mlp']['up']['kernel'], state.params['stack']['layers']['moe']
    report[str(sizes)] = {**gaps, 'params': adamw_params_differ(params, reference_params,
                                                                [m['learning_rate'] for m in steps]),
                          'dense_up': str(dense.sharding.spec), 'up': str(experts['up']['kernel'].sharding.spec),
                          'up_shard': list(experts['up']['kernel'].addressable_shards[0].data.shape)}
  print(json.dumps(report))


@pytest.mark.timeout(300)
@pytest.mark.skipif(tuple(map(int, jax.__version__.split('.')[:2])) < (0, 12),
                    reason='in-process CPU all-reduce deadlocks before jax 0.12')
def test_data_fsdp_expert_tensor_and_mixed_meshes_match_one_device():
  out = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=280,
                       cwd=pathlib.Path(__file__).parents[1], check=True).stdout
  report = json.loads(out.strip().splitlines()[-1])
  assert set(report) == {str(sizes) for sizes in MESHES[1:]}
  for sizes, result in report.items():
    # The same sums split over other devices: reassociation alone (~1e-6 relative), and Adam's strays (conftest).
    gaps = {key: result[key] for key in ('loss', 'grad_norm', 'balance_loss', 'router_z_loss')}
    assert max(gaps.values()) < 1e-5 and not result['params'], (sizes, result)
  # The dense MLP's up kernel (embed, mlp) is split over fsdp and tensor, as the rules say; the experts' (layers,
  # experts, embed, expert_mlp) over expert, fsdp and tensor.
  assert report['(1, 2, 2, 2)']['dense_up'] == str(P('fsdp', 'tensor'))
  assert report['(1, 2, 2, 2)']['up'] == str(P(None, 'expert', 'fsdp', 'tensor'))
  assert report['(1, 1, 2, 1)']['up_shard'] == [2, 2, 32, 32] and report['(1, 2, 2, 2)']['up_shard'] == [2, 2, 16, 16]


if __name__ == '__main__':
  compare_meshes()
