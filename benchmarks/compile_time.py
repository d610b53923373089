"""Prints how long the train step takes to compile at 2 and at 24 layers, with scanned and with unrolled layers.

  python benchmarks/compile_time.py
  python benchmarks/compile_time.py --width=256 --max_length=256
  python benchmarks/compile_time.py --layer_pattern=local*5,global --window=16 --depths=6,26   # Gemma 3's pattern

Scanned layers (`model.scan_layers`, the default) are one layer compiled once inside a loop, so compile time
should hardly grow with depth; the target is 24 scanned layers within 1.5x of 2. Unrolled layers are shown for
comparison. Layers of several kinds (`--layer_pattern`) scan as groups of one pattern, the layers a last, partial
group leaves unscanned: 26 layers of Gemma 3's pattern are 4 groups of 6 and 2 more. Each time is `jax.jit(train_step).lower(state, batch).compile()` on abstract (unallocated) inputs,
after one untimed compile that pays for JAX's own warm-up.
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import flags

from flaxlm.configs import base
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import optimizer, sharding, state as state_lib, step as step_lib
from flaxlm.train.commands import cli

DEPTHS = flags.DEFINE_list('depths', ['2', '24'], 'The two depths compared.')
LAYER_PATTERN = flags.DEFINE_string('layer_pattern', 'global', 'model.layer_pattern: the kinds of the layers.')
WINDOW = flags.DEFINE_integer('window', 0, 'model.window: the positions a local layer sees.')
WIDTH = flags.DEFINE_integer('width', 64, 'Model width D (4 heads).')
MAX_LENGTH = flags.DEFINE_integer('max_length', 64, 'Sequence length T.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 2, 'Sequences per step.')


def small_config(num_layers: int, scan_layers: bool) -> ml_collections.ConfigDict:
  """Returns the base config with `num_layers` layers of the flags' small width, scanned or unrolled."""
  config = base.get_config()
  config.model.update(vocab_size=256, num_layers=num_layers, num_heads=4, width=WIDTH.value,
                      max_length=MAX_LENGTH.value, scan_layers=scan_layers, layer_pattern=LAYER_PATTERN.value,
                      window=WINDOW.value)
  config.train.batch_size = BATCH_SIZE.value
  return config


def abstract_batch(batch_size: int, length: int, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """Returns the shapes, dtypes and shardings of a B x T training batch."""
  batch_sharding = sharding.batch_sharding(mesh)
  dtypes = {'inputs': jnp.int32, 'targets': jnp.int32, 'positions': jnp.int32, 'segment_ids': jnp.int32,
            'weights': jnp.float32}
  return {k: jax.ShapeDtypeStruct((batch_size, length), dtype, sharding=batch_sharding) for k, dtype in dtypes.items()}


def compile_seconds(config: ml_collections.ConfigDict) -> tuple[float, float]:
  """Returns (seconds to trace and lower, seconds to compile) the train step of `config`."""
  model, tx = Transformer(ModelConfig.from_config(config.model, 0)), optimizer.make_optimizer(config.train)
  mesh = sharding.make_mesh(config)
  abstract = state_lib.abstract_state(model, tx, mesh)
  step = functools.partial(step_lib.train_step, model=model, tx=tx, schedule=optimizer.schedule(config.train), seed=0)
  batch = abstract_batch(config.train.batch_size, config.model.max_length, mesh)
  start = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
    lowered = jax.jit(step, donate_argnums=0).lower(abstract, batch)
    lowered_at = time.perf_counter()
    lowered.compile()
  return lowered_at - start, time.perf_counter() - lowered_at


def benchmark() -> None:
  """Prints the compile times of the two depths, scanned then unrolled, and their ratios."""
  depths = [int(depth) for depth in DEPTHS.value]
  sharding.configure_cpu_devices(small_config(1, True))
  compile_seconds(small_config(1, True))
  print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}; width {WIDTH.value}, '
        f'{BATCH_SIZE.value} x {MAX_LENGTH.value} tokens, layer pattern {LAYER_PATTERN.value}')
  for scan_layers in (True, False):
    totals = []
    for depth in depths:
      lower, compile_ = compile_seconds(small_config(depth, scan_layers))
      totals.append(lower + compile_)
      print(f'{"scanned" if scan_layers else "unrolled"} {depth:>2} layers: trace and lower {lower:6.2f} s, '
            f'compile {compile_:6.2f} s, total {lower + compile_:6.2f} s', flush=True)
    print(f'{"scanned" if scan_layers else "unrolled"} {depths[1]} / {depths[0]} layers: {totals[1] / totals[0]:.2f}x')


if __name__ == '__main__':
  cli.run(benchmark)
