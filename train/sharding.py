"""The device mesh and the one table that maps the model's logical axes onto it.

Changing the parallelism is a config change: `mesh.data`, `mesh.fsdp`, `mesh.expert` and `mesh.tensor` size the
mesh, and RULES says which mesh axes each logical axis of a parameter or activation is split over. The batch is split
over the data, fsdp and expert axes; a sparse model's experts over the expert axis (model/moe.py exchanges the tokens).
"""

import functools
import math
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from flaxlm.configs.errors import UserError
from flaxlm.model.config import ModelConfig

MESH_AXES = ('data', 'fsdp', 'expert', 'tensor')
BATCH_AXES = ('data', 'fsdp', 'expert')  # the axes a batch's rows are split over
RULES = (
    ('batch', BATCH_AXES),
    ('experts', 'expert'),
    ('expert_mlp', 'tensor'),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('head_dim', None),
    ('length', None),
    ('layers', None),
)
SIZE_KEYS = {'vocab': 'model.vocab_size', 'embed': 'model.width', 'heads': 'model.num_heads',
             'kv_heads': 'model.num_kv_heads', 'mlp': 'model.mlp_width', 'experts': 'model.num_experts',
             'expert_mlp': 'model.expert_width'}  # the config key that sizes each axis.
TENSOR_SPLIT = tuple(axis for axis, mesh_axes in RULES if mesh_axes == 'tensor')  # expert_mlp, heads, ..., vocab.


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
  """Returns the (data, fsdp, expert, tensor) sizes; a -1 takes the devices the other axes leave."""
  sizes = [config.mesh[axis] for axis in MESH_AXES]
  known = math.prod(s for s in sizes if s != -1)
  if sizes.count(-1) > 1 or known <= 0 or num_devices % known:
    raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: '
                    'make the product of mesh.data, mesh.fsdp, mesh.expert and mesh.tensor divide the device count '
                    '(at most one of them -1).')
  sizes = [num_devices // known if s == -1 else s for s in sizes]
  if math.prod(sizes) != num_devices:
    raise UserError(f'mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} of {num_devices} devices: '
                    'set one of mesh.data, mesh.fsdp, mesh.expert, mesh.tensor to -1.')
  return tuple(sizes)


def make_mesh(config: ml_collections.ConfigDict, devices: list | None = None) -> jax.sharding.Mesh:
  """Returns the (data, fsdp, expert, tensor) mesh over `devices` (default: all), checking the batch splits evenly.

  With `mesh.dcn_data` > 1 the data axis spans that many slices (TPU) or processes (elsewhere) over the
  data-center network, and the rest of the mesh stays within each, on the fast interconnect.
  """
  devices = devices or jax.devices()
  shape = mesh_shape(config, len(devices))
  data_shards = batch_shards(dict(zip(MESH_AXES, shape))) * config.train.microbatches
  if config.train.batch_size % data_shards:
    raise UserError(f'train.batch_size={config.train.batch_size} does not split over {data_shards} data shards '
                    '(mesh.data x mesh.fsdp x mesh.expert x train.microbatches): use a multiple of it, or set '
                    '--config.mesh.cpu_devices on CPU.')
  axis_types = (AxisType.Auto,) * len(MESH_AXES)
  if config.mesh.dcn_data == 1:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=np.asarray(devices).reshape(-1))
  return jax.sharding.Mesh(hybrid_devices(shape, config.mesh.dcn_data, devices), MESH_AXES, axis_types=axis_types)


def hybrid_devices(shape: tuple[int, ...], dcn_data: int, devices: list) -> np.ndarray:
  """Returns `devices` laid out as `shape`, the data axis split into `dcn_data` groups of slices or processes."""
  slices = len({getattr(d, 'slice_index', 0) for d in devices}) > 1  # TPU multi-slice; else one group per process.
  groups = len({d.slice_index if slices else d.process_index for d in devices})
  if shape[0] % dcn_data or groups != dcn_data:
    raise UserError(f'mesh.dcn_data={dcn_data} must divide mesh.data={shape[0]} and equal the number of '
                    f'{"slices" if slices else "processes"} ({groups}): set --config.mesh.dcn_data={groups}.')
  ici_shape = (shape[0] // dcn_data, *shape[1:])
  dcn_shape = (dcn_data,) + (1,) * (len(shape) - 1)
  return mesh_utils.create_hybrid_device_mesh(ici_shape, dcn_shape, devices, process_is_granule=not slices)


def single_device_mesh() -> jax.sharding.Mesh:
  """Returns a mesh of the first device alone."""
  return jax.make_mesh((1,) * len(MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=jax.devices()[:1])


def inference_mesh(config: ModelConfig, devices: list | None = None) -> jax.sharding.Mesh:
  """Returns the (data=1, fsdp=1, expert=1, tensor=N) mesh a model is sampled and scored on: over the first N of
  `devices` (default: all), N the most of them that divides every dimension split over the tensor axis (heads,
  key/value heads, MLP and expert width, vocabulary), so 1 on one device. Each device then holds 1/N of the split
  matrices."""
  devices = devices or jax.devices()
  sizes = [getattr(config, SIZE_KEYS[axis].removeprefix('model.')) for axis in TENSOR_SPLIT]
  n = max(n for n in range(1, len(devices) + 1) if all(size % n == 0 for size in sizes))
  return jax.make_mesh((1, 1, 1, n), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices[:n])


def mesh_of(tree) -> jax.sharding.Mesh:
  """Returns the mesh the arrays (or shape structs) of `tree` are placed on: its first leaf's."""
  return jax.tree.leaves(tree)[0].sharding.mesh


def logical_shardings(tree, mesh: jax.sharding.Mesh):
  """Returns NamedShardings for a pytree whose leaves carry logical axis names (unannotated: replicated).

  Raises UserError if a rule splits a dimension over mesh axes whose size does not divide it.
  """
  is_box = lambda x: isinstance(x, nn.Partitioned)
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree, is_leaf=is_box):
    if is_box(leaf):
      name = '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)
      check_divisible(name, leaf.value.shape, leaf.names, mesh)
  return nn.logical_to_mesh_sharding(nn.get_partition_spec(tree), mesh, RULES)


def check_divisible(name: str, shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: jax.sharding.Mesh) -> None:
  """Raises UserError if a dimension of the array `name` does not split evenly over the mesh axes its rule names."""
  for size, axis, mesh_axes in zip(shape, axes, nn.logical_to_mesh_axes(axes, RULES)):
    mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes or ()
    devices = math.prod(mesh.shape[a] for a in mesh_axes)
    if size % devices:
      raise UserError(f'{name}: its {axis} dimension ({size}) does not split over mesh axes {"x".join(mesh_axes)} '
                      f'({devices} devices): make {SIZE_KEYS.get(axis, axis)} a multiple of {devices}, or change '
                      f'--config.mesh.{mesh_axes[-1]}.')


def batch_shards(sizes) -> int:
  """Returns how many blocks a batch's rows are split into on a mesh of axis `sizes` (a mesh's shape, or a dict)."""
  return math.prod(sizes[axis] for axis in BATCH_AXES)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Returns the sharding of a B x T batch: B split over data x fsdp x expert, T whole."""
  return NamedSharding(mesh, P(BATCH_AXES))


@functools.lru_cache(maxsize=16)
def process_rows(mesh: jax.sharding.Mesh, batch_size: int) -> np.ndarray:
  """Returns, in order, the rows of a global batch that this process's devices hold (all rows on one process)."""
  index_map = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  return np.asarray(sorted({row for index in index_map.values() for row in range(batch_size)[index[0]]}))


def global_batch(local_batch: dict, mesh: jax.sharding.Mesh) -> dict[str, jax.Array]:
  """Returns the global batch arrays assembled from this process's rows of it (`local_batch`, rows in order).

  Every process reads the same global batches and keeps its `process_rows`, so a batch's content does not
  depend on how many processes share it.
  """
  sharding = batch_sharding(mesh)

  shards = batch_shards(mesh.shape)  # The batch's row blocks, of which this process holds some.
  held = len(process_rows(mesh, shards))  # All of them when the processes span only the tensor axis.

  def assemble(x_RxT: np.ndarray) -> jax.Array:
    shape = (x_RxT.shape[0] * shards // held, *x_RxT.shape[1:])
    rows = process_rows(mesh, shape[0])
    return jax.make_array_from_callback(
        shape, sharding, lambda index: x_RxT[np.searchsorted(rows, np.arange(shape[0])[index[0]])])

  return {k: assemble(v) for k, v in local_batch.items()}


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  """Returns the sharding that keeps a whole copy on every device (scalars, metrics)."""
  return NamedSharding(mesh, P())
