"""Prints what logging and evaluation add to the wall time of the Shakespeare recipe on this machine.

  python benchmarks/wall_time.py --steps=2000 --repeats=2

Each repeat runs `flaxlm-train --config=shakespeare_char` twice, one run after the other: with the defaults (a
metrics line every 10 steps, an evaluation every 250) and with logging and evaluation off (one line and one
evaluation, at the last step). Alternating the two kinds (A B A B) spreads the load of a shared machine over both.
The evaluations' own compute (the validation batches run alone, compiled) is timed apart; the defaults' extra
evaluations may cost that much and no more. The target: defaults <= 1.05 x (off + those evaluations' compute).
"""

import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import flags

from flaxlm.configs import shakespeare_char
from flaxlm.data import pipeline
from flaxlm.train import loop, sharding, state as state_lib
from flaxlm.train.commands import cli

STEPS = flags.DEFINE_integer('steps', 2000, 'Training steps of each run.')
REPEATS = flags.DEFINE_integer('repeats', 2, 'Pairs of runs (defaults, then off).')


def cpu_seconds() -> float:
  """Returns the CPU time (user and system, all threads) of this process's finished children."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def run_seconds(steps: int, *overrides: str) -> tuple[float, float]:
  """Returns the wall time and the CPU time of one `flaxlm-train` run of the recipe for `steps`, in a fresh workdir.

  On a shared machine the CPU time varies less than the wall time: it counts work done, not waits for a core.
  """
  argv = [sys.executable, '-m', 'flaxlm.train', '--config=shakespeare_char', f'--workdir={tempfile.mkdtemp()}',
          f'--config.train.steps={steps}', *overrides]
  start, cpu = time.perf_counter(), cpu_seconds()
  subprocess.run(argv, check=True, capture_output=True)
  return time.perf_counter() - start, cpu_seconds() - cpu


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
  batches = [sharding.global_batch(b, setup.mesh)
             for b in pipeline.eval_batches(setup.val_examples, c.batch_size, c.eval_batches,
                                            sharding.process_rows(setup.mesh, c.batch_size))]
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
  runs = {'defaults': [], 'off': []}
  for repeat in range(REPEATS.value):
    runs['defaults'].append(run_seconds(steps))
    runs['off'].append(run_seconds(steps, *off))
    print(f'repeat {repeat}: ' + ', '.join(f'{kind} {seconds[-1][0]:.1f} s (CPU {seconds[-1][1]:.1f} s)'
                                           for kind, seconds in runs.items()), flush=True)
  extra = evaluations(steps, default_every) - 1
  evaluation = evaluation_seconds()
  print(f'one evaluation computes in {evaluation:.2f} s; the defaults make {extra} more than the run with them off')
  for i, name in enumerate(('wall', 'CPU')):
    defaults, plain = (statistics.mean(s[i] for s in runs[kind]) for kind in ('defaults', 'off'))
    allowed = plain + extra * evaluation
    print(f'{steps} steps, {name} time, mean of {REPEATS.value}: defaults {defaults:.1f} s, off {plain:.1f} s '
          f'({defaults / plain - 1:+.1%}), off + evaluation compute {allowed:.1f} s: ratio {defaults / allowed:.3f} '
          '(target <= 1.05)')


if __name__ == '__main__':
  cli.run(benchmark)
