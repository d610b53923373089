"""Prints what logging and evaluation add to the wall time of the Shakespeare recipe on this machine.

  python benchmarks/wall_time.py --steps=2000 --repeats=2

Each repeat runs `flaxlm-train --config=shakespeare_char` twice, one run after the other: with the defaults (a
metrics line every 10 steps, an evaluation every 250) and with logging and evaluation off (one line and one
evaluation, at the last step). Alternating the two kinds (A B A B) spreads the load of a shared machine over both.
The evaluations' own compute (the validation batches run alone, compiled) is timed apart; the defaults' extra
evaluations may cost that much and no more. The target: defaults <= 1.05 x (off + those evaluations' compute).

With --nanogpt_dir (a checkout of karpathy/nanoGPT whose data/shakespeare_char/prepare.py has been run) and
--nanogpt_python (an interpreter with torch), each repeat also runs nanoGPT's README recipe for a CPU, the same
model, batch, context and schedule, and the figures compare flaxlm's default run with it: wall time, and the final
validation loss of each (nanoGPT's is its estimate over eval_iters batches). No nanoGPT code is part of flaxlm.

  python benchmarks/wall_time.py --nanogpt_dir=/tmp/nanogpt --nanogpt_python=/tmp/nanogpt-venv/bin/python
"""

import json
import pathlib
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from flaxlm.configs import shakespeare_char
from flaxlm.train import loop, sharding, state as state_lib
from flaxlm.train.commands import cli

STEPS = flags.DEFINE_integer('steps', 2000, 'Training steps of each run.')
REPEATS = flags.DEFINE_integer('repeats', 2, 'Pairs of runs (defaults, then off).')
NANOGPT_DIR = flags.DEFINE_string('nanogpt_dir', None, 'A nanoGPT checkout with shakespeare_char prepared: also '
                                  'time its CPU recipe.')
NANOGPT_PYTHON = flags.DEFINE_string('nanogpt_python', sys.executable, 'The Python (with torch) that runs nanoGPT.')
NANOGPT_VAL_LOSS = re.compile(r'step (\d+): train loss [\d.]+, val loss ([\d.]+)')


def cpu_seconds() -> float:
  """Returns the CPU time (user and system, all threads) of this process's finished children."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], cwd: str | None = None) -> tuple[float, float, str]:
  """Returns the wall time, the CPU time and the stdout of running `argv` to completion.

  On a shared machine the CPU time varies less than the wall time: it counts work done, not waits for a core.
  """
  start, cpu = time.perf_counter(), cpu_seconds()
  done = subprocess.run(argv, check=True, capture_output=True, text=True, cwd=cwd)
  return time.perf_counter() - start, cpu_seconds() - cpu, done.stdout


def run_seconds(steps: int, *overrides: str) -> tuple[float, float, float]:
  """Returns the wall time, the CPU time and the last val_loss of one `flaxlm-train` run of the recipe for `steps`."""
  workdir = tempfile.mkdtemp()
  argv = [sys.executable, '-m', 'flaxlm.train', '--config=shakespeare_char', f'--workdir={workdir}',
          f'--config.train.steps={steps}', *overrides]
  wall, cpu, _ = timed(argv)
  records = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return wall, cpu, [r['val_loss'] for r in records if 'val_loss' in r][-1]


def nanogpt_seconds(steps: int) -> tuple[float, float, float]:
  """Returns the wall time, the CPU time and the last validation loss of nanoGPT's CPU recipe for `steps`."""
  argv = [NANOGPT_PYTHON.value, 'train.py', 'config/train_shakespeare_char.py', '--device=cpu', '--compile=False',
          '--eval_iters=20', '--log_interval=10', '--block_size=64', '--batch_size=12', '--n_layer=4', '--n_head=4',
          '--n_embd=128', f'--max_iters={steps}', f'--lr_decay_iters={steps}', '--dropout=0.0',
          f'--out_dir={tempfile.mkdtemp()}']
  wall, cpu, out = timed(argv, cwd=NANOGPT_DIR.value)
  return wall, cpu, float(NANOGPT_VAL_LOSS.findall(out)[-1][1])


def evaluations(steps: int, every: int) -> int:
  """Returns how many evaluations a run of `steps` makes with `train.eval_every=every` (and at its last step)."""
  return len(set(range(every, steps + 1, every)) | {steps})


def evaluation_seconds(repeats: int = 5) -> float:
  """Returns the median seconds of one evaluation of the recipe (its validation batches, compiled beforehand)."""
  config = shakespeare_char.get_config()
  sharding.configure_cpu_devices(config)
  setup = loop.prepare(config, tempfile.mkdtemp())
  c = setup.config.train
  tx, abstract, _, eval_fn = loop.build_steps(setup)
  params = state_lib.init_state(setup.model, tx, c.seed, abstract).params
  batches = loop.validation_batches(setup)
  loop.evaluate(eval_fn, params, batches)  # Compiles.
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    loop.evaluate(eval_fn, params, batches)
    seconds.append(time.perf_counter() - start)
  return statistics.median(seconds)


def benchmark() -> None:
  """Prints each run's wall time, the evaluations' compute and the ratio to the target."""
  steps, default_every = STEPS.value, shakespeare_char.get_config().train.eval_every
  off = [f'--config.train.log_every={steps}', f'--config.train.eval_every={steps}']
  kinds = {'defaults': lambda: run_seconds(steps), 'off': lambda: run_seconds(steps, *off)}
  if NANOGPT_DIR.value:
    kinds['nanoGPT'] = lambda: nanogpt_seconds(steps)
  runs = {kind: [] for kind in kinds}
  for repeat in range(REPEATS.value):
    for kind, run in kinds.items():
      runs[kind].append(run())
    print(f'repeat {repeat}: ' + ', '.join(f'{kind} {r[-1][0]:.1f} s (CPU {r[-1][1]:.1f} s, val_loss {r[-1][2]:.3f})'
                                           for kind, r in runs.items()), flush=True)
  extra = evaluations(steps, default_every) - 1
  evaluation = evaluation_seconds()
  print(f'one evaluation computes in {evaluation:.2f} s; the defaults make {extra} more than the run with them off')
  for i, name in enumerate(('wall', 'CPU')):
    defaults, plain = (statistics.mean(s[i] for s in runs[kind]) for kind in ('defaults', 'off'))
    allowed = plain + extra * evaluation
    print(f'{steps} steps, {name} time, mean of {REPEATS.value}: defaults {defaults:.1f} s, off {plain:.1f} s '
          f'({defaults / plain - 1:+.1%}), off + evaluation compute {allowed:.1f} s: ratio {defaults / allowed:.3f} '
          '(target <= 1.05)')
    if NANOGPT_DIR.value:
      nanogpt = statistics.mean(s[i] for s in runs['nanoGPT'])
      print(f'  against nanoGPT: {nanogpt:.1f} s, flaxlm\'s defaults / nanoGPT = {defaults / nanogpt:.3f}')


if __name__ == '__main__':
  cli.run(benchmark)
