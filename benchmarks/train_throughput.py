"""Trains a config for N steps and prints training tokens per second (compilation excluded) and peak memory.

  python benchmarks/train_throughput.py --config=shakespeare_char --steps=200
"""

import collections
import glob
import gzip
import json
import re
import resource
import tempfile
import time

import jax
from absl import flags
from ml_collections import config_flags

from flaxlm.data import pipeline
from flaxlm.train import loop, sharding, state as state_lib
from flaxlm.train.commands import cli

CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file to benchmark.', lock_config=True)
STEPS = flags.DEFINE_integer('steps', 200, 'Timed steps, after one untimed step that compiles.')
PROFILE = flags.DEFINE_integer('profile_steps', 0, 'Also trace this many steps and print where their time goes.')


def peak_memory() -> str:
  """Returns the peak host memory of this process and, where the device reports it, the device peak."""
  host = f'host peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB'
  stats = jax.devices()[0].memory_stats() or {}
  device = f', device peak {stats["peak_bytes_in_use"] / 2**30:.2f} GiB' if 'peak_bytes_in_use' in stats else ''
  return host + device


def time_by_op(trace_dir: str, steps: int, top: int = 12) -> list[str]:
  """Returns lines of milliseconds per step spent in each kind of XLA op (names without their number suffix)."""
  path = sorted(glob.glob(f'{trace_dir}/**/*.trace.json.gz', recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)['traceEvents']
  totals = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and not e['name'].startswith(('$', 'ThunkExecutor', 'end:')):
      totals[re.sub(r'\.\d+$', '', e['name'])] += e.get('dur', 0) / 1e3 / steps
  return [f'  {ms:7.2f} ms/step  {name}' for name, ms in totals.most_common(top)]


def profile(train_fn, state, put, steps: int) -> None:
  """Traces `steps` train steps and prints the time per step of each kind of op, summed over devices."""
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for step in range(steps):
      state, metrics = train_fn(state, put(step))
    jax.block_until_ready(metrics)
  print('time by op kind, summed over devices and threads:')
  print('\n'.join(time_by_op(trace_dir, steps)))


def benchmark() -> None:
  """Prints the throughput of `--steps` train steps of `--config`."""
  config = cli.config(CONFIG)
  sharding.configure_cpu_devices(config)
  setup = loop.prepare(config, tempfile.mkdtemp())
  c, length = setup.config.train, setup.config.model.max_length
  tx, abstract, train_fn, _ = loop.build_steps(setup)
  state = state_lib.init_state(setup.model, tx, c.seed, abstract)
  data = pipeline.train_iterator(setup.train_examples, c.batch_size, c.seed, config.data.read_threads,
                                 sharding.process_rows(setup.mesh, c.batch_size))
  put = lambda step: sharding.global_batch(next(data), setup.mesh)
  state, metrics = train_fn(state, put(0))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for step in range(1, STEPS.value + 1):
    state, metrics = train_fn(state, put(step))
  jax.block_until_ready(metrics)
  seconds = time.perf_counter() - start
  tokens = STEPS.value * c.batch_size * length
  print(f'devices {len(jax.devices())} x {jax.devices()[0].platform}, mesh {dict(setup.mesh.shape)}, '
        f'jax {jax.__version__}')
  print(f'{STEPS.value} steps of {c.batch_size} x {length} tokens: {seconds / STEPS.value * 1e3:.1f} ms/step, '
        f'{tokens / seconds:,.0f} tokens/s; {peak_memory()}')
  if PROFILE.value:
    profile(train_fn, state, put, PROFILE.value)


if __name__ == '__main__':
  cli.run(benchmark)
