"""The device mesh and the one table that maps the model's logical axes onto it.

Changing the parallelism is a config change: `mesh.data`, `mesh.fsdp` and `mesh.tensor` size the mesh,
and RULES says which mesh axes each logical axis of a parameter or activation is split over.
"""

import math
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from configs.errors import UserError

MESH_AXES = ('data', 'fsdp', 'tensor')
RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('head_dim', None),
    ('length', None),
    ('layers', None),
)


def cpu_device_count(config: ml_collections.ConfigDict) -> int:
  """Returns how many devices to split a CPU host into: `mesh.cpu_devices`, or one per core dividing the batch.

  One device per core runs the data-parallel shards side by side, which XLA's CPU runtime does not do for a
  single device on small matrices. jax before 0.12 deadlocks in CPU all-reduces, so there auto means 1.
  """
  if config.mesh.cpu_devices:
    return config.mesh.cpu_devices
  if tuple(int(v) for v in jax.__version__.split('.')[:2]) < (0, 12):
    return 1
  cores = os.cpu_count() or 1
  return max(d for d in range(1, cores + 1) if config.train.batch_size % d == 0)


def configure_cpu_devices(config: ml_collections.ConfigDict) -> None:
  """Splits the CPU host into `cpu_device_count(config)` devices, if JAX has not started its backends yet."""
  try:
    jax.config.update('jax_num_cpu_devices', cpu_device_count(config))
  except RuntimeError:
    pass  # Backends already started (a notebook's second run): keep the devices they have.


def mesh_shape(config: ml_collections.ConfigDict, num_devices: int) -> tuple[int, ...]:
  """Returns the (data, fsdp, tensor) sizes; a -1 takes the devices the other axes leave."""
  sizes = [config.mesh[axis] for axis in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or known <= 0 or num_devices % known:
    raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: '
                    'make the product of mesh.data, mesh.fsdp and mesh.tensor divide the device count '
                    '(at most one of them -1).')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of {num_devices} devices: '
                    'set one of mesh.data, mesh.fsdp, mesh.tensor to -1.')
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict, devices: list | None = None) -> jax.sharding.Mesh:
  """Returns the (data, fsdp, tensor) mesh over `devices` (default: all), checking the batch splits evenly."""
  devices = devices or jax.devices()
  shape = mesh_shape(config, len(devices))
  data_shards = shape[0] * shape[1]
  if config.train.batch_size % data_shards:
    raise UserError(f'train.batch_size={config.train.batch_size} does not split over {data_shards} data shards '
                    '(mesh.data x mesh.fsdp): use a multiple of it, or set --config.mesh.cpu_devices on CPU.')
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=np.asarray(devices).reshape(-1))


def single_device_mesh() -> jax.sharding.Mesh:
  """Returns a mesh of the first device alone, for loading a model to sample from."""
  return jax.make_mesh((1,) * len(MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=jax.devices()[:1])


def logical_shardings(tree, mesh: jax.sharding.Mesh):
  """Returns NamedShardings for a pytree whose leaves carry logical axis names (unannotated: replicated)."""
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(tree), mesh, RULES)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Returns the sharding of a B x T batch: B split over data x fsdp, T whole."""
  return NamedSharding(mesh, P(('data', 'fsdp')))


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Returns the global batch arrays assembled from every process's rows (`local_batch`)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Returns the sharding that keeps a whole copy on every device (scalars, metrics)."""
  return NamedSharding(mesh, P())
