"""Trains shakespeare_char and its sparse twin shakespeare_moe (8 experts, 2 a token: the same parameters active per
token, four times the MLP weights) on the same tokens, and prints each one's validation loss, then the sparse model's
share of tokens per expert in each layer on the validation batches (1/8 each when perfectly balanced).

  python benchmarks/moe_vs_dense.py --output=/tmp/moe_vs_dense            # the presets' 2000 steps
  python benchmarks/moe_vs_dense.py --output=/tmp/moe_vs_dense --steps=500
"""

import contextlib
import io
import pathlib
import time

import jax
import numpy as np
from absl import flags

from flaxlm import configs
from flaxlm.model import flops
from flaxlm.model.transformer import Transformer, count_params, unstack
from flaxlm.train import loop, metrics, state as state_lib
from flaxlm.train.commands import cli

OUTPUT = flags.DEFINE_string('output', None, 'New directory for the two runs.')
STEPS = flags.DEFINE_integer('steps', 2000, 'Training steps of each run (the presets\' 2000).')


def train(name: str, workdir: pathlib.Path):
  """Trains preset `name` for --steps in `workdir`; returns (the run's setup, its final state, its metrics records,
  the seconds it took)."""
  config = configs.load(name)
  config.train.steps = STEPS.value
  config.train.eval_every = STEPS.value // 4
  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()):  # The runs' own lines: see metrics.jsonl in their workdirs.
    state = loop.train(config, str(workdir))
  seconds = time.perf_counter() - start
  return loop.prepare(config, str(workdir)), state, metrics.read_metrics(workdir), seconds


def tokens_per_expert(setup: loop.Setup, params) -> np.ndarray:
  """Returns L x E: the share of each sparse layer's token copies each expert took over the run's validation batches."""
  model = setup.model
  counts = 0
  for batch in loop.validation_batches(setup):
    _, sown = model.apply({'params': params}, batch['inputs'], batch['positions'], batch['segment_ids'],
                          method=Transformer.hidden, mutable=['intermediates'])
    layers = unstack(sown['intermediates']['stack'], model.config)
    counts = counts + np.stack([np.asarray(layer['moe']['tokens_per_expert'][0]) for layer in layers])
  return counts / counts.sum(axis=1, keepdims=True)


def main() -> None:
  """Prints a table row per run, then the sparse run's load per layer."""
  output = pathlib.Path(OUTPUT.value)
  print('| preset | parameters | active per token | validation loss at each quarter | seconds |')
  print('| --- | --- | --- | --- | --- |')
  for name in ('shakespeare_char', 'shakespeare_moe'):
    setup, state, records, seconds = train(name, output / name)
    params = jax.device_get(state_lib.model_params(state))
    losses = ', '.join(f'{r["val_loss"]:.4f}' for r in records if 'val_loss' in r)
    total = count_params(params)
    print(f'| {name} | {total:,} | {total - flops.inactive_params(setup.model.config):,} | {losses} | '
          f'{seconds:.0f} |', flush=True)
  for i, row in enumerate(tokens_per_expert(setup, params)):
    print(f'layer {i}: ' + ' '.join(f'{share:.3f}' for share in row) + f'  (the most loaded {row.max() * len(row):.2f}'
          ' x an even share)')


if __name__ == '__main__':
  cli.run(main)
