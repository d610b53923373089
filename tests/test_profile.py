"""Tests of train/profile.py: a window of training steps traced by jax.profiler into the workdir's TensorBoard folder,
a trace cut short written whole, and nothing of the profiler touched when it is off."""

import collections
import contextlib
import gzip
import json
import re

import jax
import pytest

from test_loop import tiny_config
from flaxlm.configs.errors import UserError
from flaxlm.train import loop, preemption


def profiled(corpus, steps: int, start: int, count: int):
  """Returns the tiny preset on `corpus` for `steps` steps, tracing `count` from step `start`."""
  config = tiny_config(corpus, steps)
  config.train.profile_start, config.train.profile_steps = start, count
  return config


def traced_calls(workdir) -> collections.Counter:
  """Returns how often each jitted step of the run in `workdir` ran in its one trace ('train_step': 2), read from
  the Perfetto file that TensorBoard's profile plugin folder holds beside the XPlane one."""
  [run] = (workdir / 'tensorboard' / 'plugins' / 'profile').iterdir()
  assert {p.suffix for p in run.iterdir()} >= {'.pb', '.gz'}  # vm.xplane.pb (TensorBoard), perfetto_trace.json.gz.
  events = json.loads(gzip.decompress((run / 'perfetto_trace.json.gz').read_bytes()))['traceEvents']
  executions = (re.fullmatch(r'\S*Execute \(jit_(\w+)\)', str(e.get('name'))) for e in events)
  return collections.Counter(m.group(1) for m in executions if m)  # One per step, not per device ('[0] ...').


def refuse(name: str):
  """Returns a stand-in for a jax.profiler function that fails the test if it is called."""
  return lambda *args, **kwargs: pytest.fail(f'jax.profiler.{name} was called')


def stopped_at(stop: int):
  """Returns a stand-in for preemption.watch that stops the run after step `stop`, as SIGTERM does."""
  @contextlib.contextmanager
  def watch(manager):
    yield lambda step: 'SIGTERM' if step == stop else None
  return watch


def test_the_window_s_steps_are_traced_and_nothing_after(corpus, tmp_path):
  workdir = tmp_path / 'run'
  loop.train(profiled(corpus, 4, 2, 2), str(workdir))
  assert traced_calls(workdir) == {'train_step': 2}  # Steps 2 and 3; not step 4's evaluation, after the window.


def test_a_run_stopped_inside_the_window_writes_its_trace_and_a_run_not_profiling_never_touches_the_profiler(
    corpus, tmp_path, monkeypatch):
  workdir = tmp_path / 'run'
  with monkeypatch.context() as patched:
    patched.setattr(preemption, 'watch', stopped_at(2))  # The window's first step of two.
    assert int(loop.train(profiled(corpus, 4, 2, 2), str(workdir)).step) == 2
  assert traced_calls(workdir) == {'train_step': 1}
  jax.profiler.start_trace(str(tmp_path / 'again'))  # The profiler was left free.
  jax.profiler.stop_trace()
  for name in ('start_trace', 'stop_trace'):
    monkeypatch.setattr(jax.profiler, name, refuse(name))
  assert int(loop.train(profiled(corpus, 4, 1, 0), str(workdir)).step) == 4  # The resume profiles nothing.
  assert len(list((workdir / 'tensorboard' / 'plugins' / 'profile').iterdir())) == 1


def test_a_window_past_the_last_step_is_refused_in_one_line_before_anything_is_written(corpus, tmp_path):
  with pytest.raises(UserError) as refused:
    loop.train(profiled(corpus, 4, 3, 3), str(tmp_path / 'run'))
  assert str(refused.value).startswith('train.profile_start=3 and train.profile_steps=3 trace up to step 5, past '
                                       'train.steps=4: lower --config.train.profile_start')
  assert '\n' not in str(refused.value) and not (tmp_path / 'run').exists()
