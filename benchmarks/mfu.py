"""Prints each preset's training step time, tokens per second and model FLOPs utilization (MFU) on this machine.

  python benchmarks/mfu.py --presets=gpt2_124m,llama_1b --steps=20
  python benchmarks/mfu.py --presets=gpt2_124m --batch_size=2 --max_length=128 --steps=2  # small enough for a CPU

The state is created sharded on a mesh of all devices and the step jitted as `flaxlm-train` does. Batches are
random tokens (a step costs the same whatever the tokens), made once and reused; one untimed step compiles.
MFU = training FLOPs per token (model/flops.py) x tokens per second per device / the device's peak FLOP/s
(train/plan/hardware.py); it is 'n/a' where the peak is not known, as on a CPU.
"""

import time

import jax
import ml_collections
import numpy as np
from absl import flags

from flaxlm import configs
from flaxlm.configs.errors import UserError
from flaxlm.model import flops
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import optimizer, sharding, state as state_lib, step as step_lib
from flaxlm.train.plan import hardware
from flaxlm.train.commands import cli

PRESETS = flags.DEFINE_list('presets', ['gpt2_124m', 'llama_1b'], 'Preset names, comma-separated.')
STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps, after one untimed step that compiles.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 0, 'Sequences per step, across all devices; 0 keeps the preset\'s.')
MAX_LENGTH = flags.DEFINE_integer('max_length', 0, 'Sequence length T; 0 keeps the preset\'s.')
COLUMNS = ('preset', 'device', 'devices', 'params', 'ms/step', 'tokens/s', 'tokens/s/device', 'MFU')


def preset_config(name: str) -> ml_collections.ConfigDict:
  """Returns the preset's config with --batch_size and --max_length applied; raises UserError if it cannot run."""
  config = configs.load(name)
  if not config.model.vocab_size:
    raise UserError(f'preset {name} takes its vocabulary from a tokenizer: name a preset that sets '
                    'model.vocab_size.')
  config.train.batch_size = BATCH_SIZE.value or config.train.batch_size
  config.model.max_length = MAX_LENGTH.value or config.model.max_length
  config.train.microbatches = 1  # The presets' microbatches size their TPU slice's batch; this times whole steps.
  return config


def random_batch(vocab_size: int, batch_size: int, length: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Returns a batch of B x T random tokens, one document per row: inputs, targets, positions, segment ids, weights."""
  tokens_BxT1 = np.random.default_rng(seed).integers(0, vocab_size, (batch_size, length + 1), dtype=np.int32)
  positions_BxT = np.broadcast_to(np.arange(length, dtype=np.int32), (batch_size, length))
  return {'inputs': tokens_BxT1[:, :-1], 'targets': tokens_BxT1[:, 1:], 'positions': positions_BxT,
          'segment_ids': np.zeros((batch_size, length), np.int32),
          'weights': np.ones((batch_size, length), np.float32)}


def seconds_per_step(train_fn, state: state_lib.TrainState, batch: dict[str, jax.Array], steps: int) -> float:
  """Returns the mean seconds of `steps` train steps, after one untimed step that compiles."""
  state, metrics = train_fn(state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = train_fn(state, batch)
  jax.block_until_ready((state, metrics))
  return (time.perf_counter() - start) / steps


def measure(name: str) -> tuple[str, ...]:
  """Returns the table row of preset `name`: its step time, throughput and MFU on all devices."""
  config = preset_config(name)
  c, length, batch_size = config.train, config.model.max_length, config.train.batch_size
  model_config = ModelConfig.from_config(config.model, 0)
  model, mesh, tx = Transformer(model_config), sharding.make_mesh(config), optimizer.make_optimizer(c)
  abstract = state_lib.abstract_state(model, tx, mesh)
  train_fn, _ = step_lib.compile_steps(model, tx, optimizer.schedule(c), c.seed, abstract, mesh)
  state = state_lib.init_state(model, tx, c.seed, abstract)
  batch = sharding.global_batch(random_batch(model_config.vocab_size, batch_size, length), mesh)
  seconds = seconds_per_step(train_fn, state, batch, STEPS.value)
  kind, devices = jax.devices()[0].device_kind, jax.device_count()
  per_device = batch_size * length / seconds / devices
  mfu = hardware.mfu(flops.training_flops_per_token(model_config), per_device, kind)
  return (name, kind, str(devices), f'{count_params(abstract.params):,}', f'{seconds * 1e3:.1f}',
          f'{batch_size * length / seconds:,.0f}', f'{per_device:,.0f}',
          f'{mfu:.1%}' if mfu is not None else f'n/a (unknown peak for {kind})')


def benchmark() -> None:
  """Prints one row per preset of --presets."""
  sharding.configure_cpu_devices(preset_config(PRESETS.value[0]))
  print(f'jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}, {STEPS.value} timed steps')
  print(' | '.join(COLUMNS))
  for name in PRESETS.value:
    print(' | '.join(measure(name)), flush=True)


if __name__ == '__main__':
  cli.run(benchmark)
