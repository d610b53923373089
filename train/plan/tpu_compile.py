"""Compiling flaxlm's steps for a TPU slice ahead of time, on any machine: does a config fit the slice's memory?

`flaxlm-info --compile_for=v5e-8` asks libtpu for compile-only devices laid out as that slice (its topology; no
chip is touched, none need be present), builds the config's mesh over them, lowers the train step (or, with
--decode, the decode step) on abstract arrays and has XLA:TPU compile it, exactly as a run on the slice would. The
compiler places every buffer, so its memory analysis is what the step needs on each device: its arguments (params
and optimizer state, or weights and cache, and the batch), its temporaries, the outputs not written into donated
arguments, and its code. Their sum is compared with the HBM a device's program may use: the step fits if the sum
does not exceed it. (XLA itself refuses to compile a step whose peak of live buffers exceeds it, with
RESOURCE_EXHAUSTED; its peak can be lower than the sum, which is the safer figure.) A step that does not fit
becomes one line naming the excess and the config keys that would fix it.

The figures are compile-time: nothing runs. Times are not shown: `cost_analysis()` of a program compiled for
compile-only devices gives a negative `optimal_seconds`.
"""

import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from flaxlm.configs.errors import UserError
from flaxlm.model import attention, quantize, sampling
from flaxlm.model.transformer import DTYPES, Transformer, shapes_model
from flaxlm.train import memory, optimizer, sharding, state as state_lib, step as step_lib
from flaxlm.train.plan import estimate

GiB = 2 ** 30
OOM = re.compile(r'\(([\d.]+)G\) exceeds available HBM \(([\d.]+)G\)')  # XLA:TPU's CompileTimeHbmOom, in GiB.
BATCH = {'inputs': jnp.int32, 'targets': jnp.int32, 'segment_ids': jnp.int32, 'positions': jnp.int32,
         'weights': jnp.float32}  # A training batch's B x T arrays (data/pipeline.py).


@dataclasses.dataclass(frozen=True)
class Slice:
  """A TPU slice as libtpu's compile-only topology describes it, and the memory of each of its devices."""
  topology: str  # get_topology_desc's topology_name: the generation and the chips' grid.
  chip_config: str  # 'default'; v4's 'megacore' makes one device of each chip's two TensorCores, as a v4 VM does.
  chips_per_host: tuple[int, int, int]  # the grid of chips one host (VM) drives.
  hbm_bytes: int  # HBM one device's program may use: XLA:TPU's compile-time limit (the chip's, less a reserve).
  devices: int  # JAX devices of the slice: one per chip.
  accelerator_type: str  # Cloud TPU's name for the slice (gcloud --accelerator-type).


# Slices are named as Cloud TPU names them: v5e and v6e by chips, v4 and v5p by TensorCores (two a chip), so
# v4-8 and v5p-8 have 4 chips and v5e-8 and v6e-8 have 8. A v5e or v6e host drives 8 chips up to 8, then 4 each.
# The HBM limits are those XLA:TPU (libtpu 0.0.50.1) reports in its out-of-memory error for each generation.
SLICES = {
    'v4-8': Slice('v4:2x2x1', 'megacore', (2, 2, 1), int(30.75 * GiB), 4, 'v4-8'),
    'v4-16': Slice('v4:2x2x2', 'megacore', (2, 2, 1), int(30.75 * GiB), 8, 'v4-16'),
    'v5e-1': Slice('v5e:1x1', 'default', (1, 1, 1), int(15.75 * GiB), 1, 'v5litepod-1'),
    'v5e-4': Slice('v5e:2x2', 'default', (2, 2, 1), int(15.75 * GiB), 4, 'v5litepod-4'),
    'v5e-8': Slice('v5e:2x4', 'default', (2, 4, 1), int(15.75 * GiB), 8, 'v5litepod-8'),
    'v5e-16': Slice('v5e:4x4', 'default', (2, 2, 1), int(15.75 * GiB), 16, 'v5litepod-16'),
    'v5p-8': Slice('v5p:2x2x1', 'default', (2, 2, 1), int(95.73 * GiB), 4, 'v5p-8'),
    'v5p-16': Slice('v5p:2x2x2', 'default', (2, 2, 1), int(95.73 * GiB), 8, 'v5p-16'),
    'v5p-32': Slice('v5p:2x2x4', 'default', (2, 2, 1), int(95.73 * GiB), 16, 'v5p-32'),
    'v5p-64': Slice('v5p:2x4x4', 'default', (2, 2, 1), int(95.73 * GiB), 32, 'v5p-64'),
    'v6e-1': Slice('v6e:1x1', 'default', (1, 1, 1), int(31.24 * GiB), 1, 'v6e-1'),
    'v6e-4': Slice('v6e:2x2', 'default', (2, 2, 1), int(31.24 * GiB), 4, 'v6e-4'),
    'v6e-8': Slice('v6e:2x4', 'default', (2, 4, 1), int(31.24 * GiB), 8, 'v6e-8'),
}


def check_slice(name: str) -> Slice:
  """Returns the slice `name` names; raises UserError listing the known slices otherwise."""
  if name not in SLICES:
    raise UserError(f'--compile_for={name} is not a slice flaxlm knows: pass one of {", ".join(SLICES)}.')
  return SLICES[name]


def prepare_environment(name: str) -> None:
  """Lets libtpu describe the slice `name` on a host without TPUs, and keeps every JAX backend but the CPU's
  unstarted; call it before anything starts one. Raises UserError for an unknown slice or a missing libtpu.

  Compiling touches no chip, so the lock libtpu takes on them is not needed (a run may hold it); the metadata
  server is not asked for the host's TPU; the accelerator type and worker names stop libtpu's warnings about them.
  """
  tpu = check_slice(name)
  if importlib.util.find_spec('libtpu') is None:
    raise UserError(f'--compile_for={name} compiles with libtpu, which is not installed: pip install -e ".[tpu]" '
                    '(in the flaxlm folder; no TPU is needed).')
  os.environ['ALLOW_MULTIPLE_LIBTPU_LOAD'] = '1'
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', tpu.accelerator_type)
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  jax.config.update('jax_platforms', 'cpu')


def slice_devices(name: str) -> list:
  """Returns the compile-only devices of the slice `name`; raises UserError as `prepare_environment` does."""
  prepare_environment(name)
  tpu = SLICES[name]
  from jax.experimental import topologies  # After prepare_environment: its import may start libtpu.
  devices = topologies.get_topology_desc(platform='tpu', topology_name=tpu.topology, chip_config_name=tpu.chip_config,
                                         chips_per_host_bounds=tpu.chips_per_host, num_slices=1,
                                         wrap=(False, False, False)).devices
  assert len(devices) == tpu.devices, f'{name}: libtpu gave {len(devices)} devices, the table says {tpu.devices}'
  return devices


def abstract_batch(mesh: jax.sharding.Mesh, batch_size: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
  """Returns a training batch's arrays as shape structs, B x T each, split over the batch's mesh axes."""
  placed = sharding.batch_sharding(mesh)
  return {k: jax.ShapeDtypeStruct((batch_size, length), dtype, sharding=placed) for k, dtype in BATCH.items()}


@contextlib.contextmanager
def tracing_for(mesh: jax.sharding.Mesh):
  """Traces what is jitted inside for `mesh`: its devices' platform picks the attention (model/attention.py), and
  the logical-axis rules place the activations on it. Nothing may run eagerly inside: the devices compile only."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    yield


def compile_for(jitted, args: tuple, mesh: jax.sharding.Mesh, name: str, what: str, fixes: str):
  """Returns `jitted` compiled for the slice `name` on `args` (shape structs on `mesh`); call it `tracing_for(mesh)`.

  Raises UserError naming the bytes needed and available and `fixes` when XLA:TPU finds it does not fit.
  """
  lowered = jitted.lower(*args)
  try:
    return lowered.compile()
  except Exception as e:  # XLA's runtime error type differs across jaxlib versions; only an OOM is the user's.
    if 'RESOURCE_EXHAUSTED' not in str(e):
      raise
    found, kind = OOM.search(str(e)), mesh.devices.flat[0].device_kind
    excess = (f'XLA:TPU finds it needs {found[1]} GiB per device, {float(found[1]) - float(found[2]):.2f} GiB more '
              f'than the {found[2]} GiB a {kind} device has' if found else str(e).splitlines()[0].strip())
    raise UserError(f'{what} does not fit {name}: {excess}: {fixes}.') from None


def fits_line(what: str, name: str, total: int, kind: str, fixes: str) -> str:
  """Returns the report's verdict on `total` bytes per device on the slice `name`; raises UserError naming the excess
  and `fixes` if they exceed its devices' HBM."""
  capacity = SLICES[name].hbm_bytes
  if total > capacity:
    raise UserError(f'{what} does not fit {name}: its arguments, temporaries and outputs take {total / GiB:.2f} GiB '
                    f'per device, {(total - capacity) / GiB:.2f} GiB more than the {capacity / GiB:.2f} GiB a {kind} '
                    f'device has: {fixes}.')
  return f'{"fits":<34}yes: {total / GiB:.2f} of {capacity / GiB:.2f} GiB ({total / capacity:.0%})'


def memory_lines(stats, arguments: list[tuple[str, int]]) -> tuple[list[str], int]:
  """Returns the per-device memory lines of a compiled step's `memory_analysis()`, and their total in bytes.

  The arguments are broken down as `arguments` says (name, bytes per device). Outputs written into donated
  arguments (the train state) take no memory of their own: only the rest of the outputs are added.
  """
  outputs = stats.output_size_in_bytes - stats.alias_size_in_bytes
  parts = ', '.join(f'{label} {size / GiB:.3f}' for label, size in arguments)
  total = stats.argument_size_in_bytes + stats.temp_size_in_bytes + outputs + stats.generated_code_size_in_bytes
  return [
      'per device, as XLA:TPU compiled it (GiB):',
      f'{"  arguments":<34}{stats.argument_size_in_bytes / GiB:>8.3f}  ({parts})',
      f'{"  temporaries":<34}{stats.temp_size_in_bytes / GiB:>8.3f}',
      f'{"  outputs beside donated inputs":<34}{outputs / GiB:>8.3f}',
      f'{"  program code":<34}{stats.generated_code_size_in_bytes / GiB:>8.3f}',
      f'{"  total":<34}{total / GiB:>8.3f}',
  ], total


def report(name: str, mesh: jax.sharding.Mesh, described: dict[str, str], compiled, arguments: list[tuple[str, int]],
           what: str, fixes: str) -> list[str]:
  """Returns the lines of a step compiled for the slice `name`: the slice, the step (`described`), its mesh and its
  memory per device, and the verdict; raises UserError, naming `what` and `fixes`, if it does not fit."""
  kind = mesh.devices.flat[0].device_kind
  lines, total = memory_lines(compiled.memory_analysis(), arguments)
  return [
      f'compiled for {name} ({kind} x {SLICES[name].devices}, {SLICES[name].hbm_bytes / GiB:.2f} GiB HBM each): '
      'compile-time figures, nothing ran',
      *[f'{"  " + label:<34}{text}' for label, text in described.items()],
      f'{"  mesh":<34}' + ' '.join(f'{axis}={size}' for axis, size in mesh.shape.items()),
      *lines,
      fits_line(what, name, total, kind, fixes),
  ]


def train_fixes(config: ml_collections.ConfigDict) -> str:
  """Returns the config changes that make a train step need less memory per device, with their values now (a sparse
  model's experts split over more devices, first)."""
  more_experts = config.model.num_experts and 0 < config.mesh.expert < config.model.num_experts
  experts = (f'split the experts over more devices (--config.mesh.expert, now {config.mesh.expert}, a divisor of '
             f'model.num_experts={config.model.num_experts}), ' if more_experts else '')
  return (f'{experts}split params and optimizer state over more devices (--config.mesh.fsdp, now {config.mesh.fsdp}), '
          f'recompute activations (--config.model.remat=full, now {config.model.remat}), run the batch in more '
          f'pieces (--config.train.microbatches, now {config.train.microbatches}) or shrink it '
          f'(--config.train.batch_size, now {config.train.batch_size})')


def train_report(config: ml_collections.ConfigDict, name: str) -> list[str]:
  """Returns the lines describing the train step of `config` compiled for the slice `name` and its memory per
  device; raises UserError if it does not fit."""
  c = estimate.model_config(config)
  mesh = sharding.make_mesh(config, slice_devices(name))
  model, tx = Transformer(c), optimizer.make_optimizer(config.train)
  what, fixes = f'the train step ({config.train.batch_size} x {c.max_length} tokens)', train_fixes(config)
  abstract = state_lib.abstract_state(shapes_model(c), tx, mesh, config.model.lora_base)
  batch = abstract_batch(mesh, config.train.batch_size, c.max_length)
  with tracing_for(mesh):
    train, _ = step_lib.jit_steps(model, tx, optimizer.schedule(config.train), config.train.seed, abstract, mesh,
                                  config.train.microbatches, config.train.z_loss)
    compiled = compile_for(train, (abstract, batch), mesh, name, what, fixes)
  arguments = [('train state', memory.shard_bytes(state_lib.checkpointed(abstract))),
               ('frozen params', memory.shard_bytes(abstract.frozen)), ('batch', memory.shard_bytes(batch))]
  described = {'step': f'train, {config.train.batch_size:,} x {c.max_length:,} tokens in '
                       f'{config.train.microbatches} microbatch(es)',
               'attention': attention.resolve(c.attention, 'tpu', c.dtype, c.head_dim, c.attention_softcap)}
  if c.lora.rank:
    described['LoRA'] = f'rank {c.lora.rank} on {c.lora.targets}, the frozen base {config.model.lora_base}'
  return report(name, mesh, described, compiled, [a for a in arguments if a[1] or a[0] == 'batch'], what, fixes)


def decode_fixes(config: ml_collections.ConfigDict, mode: str, batch_size: int) -> str:
  """Returns the changes that make a decode step need less memory per device, with their values now."""
  return (f'hold the weights as int8 or int4 (--quantize, now {mode}), decode fewer sequences together '
          f'(--decode_batch, now {batch_size}), shorten the cache (--config.model.max_length, now '
          f'{config.model.max_length}), or compile for a slice of more chips')


def abstract_weights(model: Transformer, mesh: jax.sharding.Mesh, mode: str) -> Any:
  """Returns the params sampling holds, as shape structs on `mesh`: in the model's dtype, or int8/int4 with mode.

  The quantized tree's shardings are those XLA gives `quantize.quantize` of the placed params (compiled, not run).
  """
  boxed = jax.eval_shape(functools.partial(state_lib.boxed_params, shapes_model(model.config)), jax.random.key(0))
  dtype = DTYPES[model.config.dtype]
  weights = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding),
                         state_lib.placed(boxed, mesh))
  if mode == 'none':
    return weights
  compiled = quantize.quantize.lower(weights, mode).compile()
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      jax.eval_shape(functools.partial(quantize.quantize, mode=mode), weights),
                      compiled.output_shardings)


def abstract_cache(model: Transformer, weights: Any, mesh: jax.sharding.Mesh, batch_size: int) -> Any:
  """Returns the key/value cache of `batch_size` sequences (all T positions) as shape structs, with the shardings
  XLA gives the cache a prefill outputs (compiled, not run). Call it `tracing_for(mesh)`."""
  replicated = sharding.replicated(mesh)
  prompts = jax.ShapeDtypeStruct((batch_size, 1), jnp.int32, sharding=replicated)
  lengths = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=replicated)
  prefill = jax.jit(functools.partial(sampling.prefill, model))
  compiled = prefill.lower(weights, prompts, lengths).compile()
  _, cache = jax.eval_shape(prefill, weights, prompts, lengths)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), cache,
                      compiled.output_shardings[1])


def decode_report(config: ml_collections.ConfigDict, name: str, mode: str, batch_size: int) -> list[str]:
  """Returns the lines describing the decode step of `config` (one new token for each of `batch_size` sequences,
  with a key/value cache of all T positions; weights held as `mode`) compiled for the slice `name`, and its memory
  per device; raises UserError if it does not fit."""
  c = estimate.model_config(config).without_lora()  # Sampling merges LoRA's adapters.
  mesh = sharding.inference_mesh(c, slice_devices(name))
  model, replicated = Transformer(c), sharding.replicated(mesh)
  tokens = jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=replicated)
  shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)
  what, fixes = f'the decode step ({batch_size} x 1 token, {mode} weights)', decode_fixes(config, mode, batch_size)
  weights = abstract_weights(model, mesh, mode)
  with tracing_for(mesh):
    cache = abstract_cache(model, weights, mesh, batch_size)
    step = jax.jit(functools.partial(sampling.decode_step, model),
                   in_shardings=(shardings(weights), shardings(cache), replicated, replicated),
                   out_shardings=(replicated, shardings(cache)), donate_argnums=1)
    compiled = compile_for(step, (weights, cache, tokens, tokens), mesh, name, what, fixes)
  arguments = [('weights', memory.shard_bytes(weights)), ('cache', memory.shard_bytes(cache)), ('tokens', 2 * memory.shard_bytes(tokens))]
  described = {'step': f'decode, 1 new token for each of {batch_size:,} sequence(s), a cache of {c.max_length:,} '
                       'positions',
               'weights': c.dtype if mode == 'none' else mode}
  return report(name, mesh, described, compiled, arguments, what, fixes)
