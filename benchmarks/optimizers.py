"""Compares optimizers and schedules as a researcher would, on the shipped corpus with the shakespeare_char model and
the same batches: a small sweep of AdamW's learning rate and of Muon's, then WSD against cosine at AdamW's best rate.
Prints a table row per run and writes the best runs' curves into one figure (flaxlm-plot's comparison).

  python benchmarks/optimizers.py --output=/tmp/optimizers               # the preset's 2000 steps a run
  python benchmarks/optimizers.py --output=/tmp/optimizers --steps=500
"""

import contextlib
import io
import pathlib
import time

from absl import flags
from matplotlib.backends.backend_agg import FigureCanvasAgg

from flaxlm import configs
from flaxlm.train import loop, metrics, plot
from flaxlm.train.commands import cli

OUTPUT = flags.DEFINE_string('output', None, 'New directory for the runs and the figure.')
STEPS = flags.DEFINE_integer('steps', 2000, "Training steps of each run (the preset's 2000).")

# Each optimizer's swept key and values: AdamW's around the preset's 1e-3, Muon's around its usual 0.02 (its AdamW
# part, for the embedding, head and norms, keeps the preset's 1e-3).
SWEEPS = {'adamw': ('learning_rate', (5e-4, 1e-3, 2e-3, 4e-3)), 'muon': ('muon_learning_rate', (0.01, 0.02, 0.04))}


def train(workdir: pathlib.Path, **train_keys) -> tuple[list[dict], float]:
  """Trains shakespeare_char for --steps with `train_keys` set in `workdir`; returns its metrics and seconds."""
  config = configs.load('shakespeare_char')
  config.train.update(steps=STEPS.value, eval_every=STEPS.value // 4, **train_keys)
  start = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()):  # The runs' own lines: see metrics.jsonl in their workdirs.
    loop.train(config, str(workdir))
  return metrics.read_metrics(workdir), time.perf_counter() - start


def final_val_loss(records: list[dict]) -> float:
  """Returns the last validation loss of a run's records."""
  return [r['val_loss'] for r in records if 'val_loss' in r][-1]


def report(name: str, keys: dict, records: list[dict], seconds: float) -> None:
  """Prints a table row: the run, its settings, its validation loss at each evaluation, its seconds."""
  losses = ', '.join(f'{r["val_loss"]:.4f}' for r in records if 'val_loss' in r)
  settings = ', '.join(f'{k}={v}' for k, v in keys.items())
  print(f'| {name} | {settings} | {losses} | {seconds:.0f} |', flush=True)


def main() -> None:
  """Runs the sweeps and the schedule comparison, printing a row per run, then writes comparison.png."""
  output = pathlib.Path(OUTPUT.value)
  print('| run | settings | validation loss at each quarter | seconds |')
  print('| --- | --- | --- | --- |')
  best = {}
  for optimizer, (key, values) in SWEEPS.items():
    for value in values:
      name, keys = f'{optimizer}_{value:g}', {'optimizer': optimizer, key: value}
      records, seconds = train(output / name, **keys)
      report(name, keys, records, seconds)
      best = best if best.get(optimizer, (None, float('inf')))[1] <= final_val_loss(records) else {
          **best, optimizer: (name, final_val_loss(records), keys)}
  adamw_name, _, adamw_keys = best['adamw']
  keys = {**adamw_keys, 'schedule': 'wsd'}
  records, seconds = train(output / f'{adamw_name}_wsd', **keys)
  report(f'{adamw_name}_wsd', keys, records, seconds)
  runs = [output / best['adamw'][0], output / best['muon'][0], output / f'{adamw_name}_wsd']
  FigureCanvasAgg(plot.runs_figure(runs)).print_png(output / 'comparison.png')
  print(f'best: {", ".join(f"{k} {v[0]} ({v[1]:.4f})" for k, v in best.items())}; wrote {output / "comparison.png"}')


if __name__ == '__main__':
  cli.run(main)
