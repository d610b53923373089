"""Prints how much an asynchronous checkpoint save slows the training step that triggers it, and the steps after.

  python benchmarks/checkpoint_stall.py --presets=gpt2_124m --batch_size=2 --max_length=128 --steps=8

The train state (parameters and both AdamW moments) is saved as `flaxlm-train` saves it: Orbax copies it off
the device before `save` returns, then writes the files in the background while training goes on. Every step
is timed on its own (dispatch to result); the figure that matters is the step that also saves, against the
median of normal steps (the target: within 1.2x).
"""

import statistics
import tempfile
import time

import jax
import ml_collections

import mfu  # benchmarks/mfu.py: its flags (--presets, --batch_size, --max_length, --steps), presets and batches.
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import checkpoint, optimizer, sharding, state as state_lib, step as step_lib
from flaxlm.train.commands import cli


def timed_step(train_fn, state, batch, save=None) -> tuple[state_lib.TrainState, float, float]:
  """Returns the state after one step, its seconds including `save(state)` when given, and the save's seconds."""
  start = time.perf_counter()
  state, metrics = train_fn(state, batch)
  jax.block_until_ready(metrics)
  stepped = time.perf_counter()
  if save:
    save(state)
  return state, time.perf_counter() - start, time.perf_counter() - stepped


def benchmark() -> None:
  """Prints normal step times, the saving step's time and ratio, and the steps run while the save is written."""
  config = mfu.preset_config(mfu.PRESETS.value[0])
  sharding.configure_cpu_devices(config)
  c, model_config = config.train, ModelConfig.from_config(config.model, 0)
  model, mesh, tx = Transformer(model_config), sharding.make_mesh(config), optimizer.make_optimizer(config.train)
  abstract = state_lib.abstract_state(model, tx, mesh)
  train_fn, _ = step_lib.compile_steps(model, tx, optimizer.schedule(c), c.seed, abstract, mesh)
  state = state_lib.init_state(model, tx, c.seed, abstract)
  batch = sharding.global_batch(mfu.random_batch(model_config.vocab_size, c.batch_size, config.model.max_length), mesh)
  state, *_ = timed_step(train_fn, state, batch)  # Compiles.
  normal = []
  for _ in range(mfu.STEPS.value):
    state, seconds, _ = timed_step(train_fn, state, batch)
    normal.append(seconds)
  manager = checkpoint.checkpoint_manager(tempfile.mkdtemp(), 1)
  save = lambda s: checkpoint.save(manager, s, {}, ml_collections.ConfigDict(config.to_dict()))
  state, saving, save_call = timed_step(train_fn, state, batch, save)
  during, written = [], time.perf_counter()
  while not during or manager.is_saving_in_progress():
    state, seconds, _ = timed_step(train_fn, state, batch)
    during.append(seconds)
  manager.wait_until_finished()
  written = time.perf_counter() - written
  manager.close()
  median = statistics.median(normal)
  size = sum(x.nbytes for x in jax.tree.leaves(state))
  print(f'{mfu.PRESETS.value[0]}: {count_params(state.params):,} parameters, state {size / 2**30:.2f} GiB, '
        f'{jax.device_count()} x {jax.devices()[0].device_kind}, batch {c.batch_size} x {config.model.max_length}')
  print(f'normal step (median of {len(normal)}): {median * 1e3:.1f} ms')
  print(f'step that saves: {saving * 1e3:.1f} ms = {saving / median:.2f}x a normal step '
        f'(of which the save call: {save_call * 1e3:.1f} ms)')
  print(f'steps while the files are written in the background ({len(during)}, {written:.1f} s): '
        f'max {max(during) * 1e3:.1f} ms = {max(during) / median:.2f}x')


if __name__ == '__main__':
  cli.run(benchmark)
