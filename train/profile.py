"""Profiler traces of a window of training steps: `train.profile_steps` steps from `train.profile_start` (numbered
from 1, as metrics.jsonl numbers them), traced by jax.profiler into WORKDIR/tensorboard/plugins/profile/<run>/,
where TensorBoard's profile tab (the xprof plugin) and Perfetto (its perfetto_trace.json.gz) read them.

Only process 0 traces, and only a run that dispatches the window's first step: one resumed past it traces nothing.
"""

import os

import jax
import ml_collections

from flaxlm.configs.errors import UserError
from flaxlm.data import files


def last_step(c: ml_collections.ConfigDict) -> int:
  """Returns the number of the last step traced for the `train` section `c` (below profile_start when none is)."""
  return c.profile_start + c.profile_steps - 1


def check(c: ml_collections.ConfigDict) -> None:
  """Raises UserError if the `train` section `c` traces steps past its last, `train.steps`."""
  if c.profile_steps and last_step(c) > c.steps:
    raise UserError(f'train.profile_start={c.profile_start} and train.profile_steps={c.profile_steps} trace up to '
                    f'step {last_step(c)}, past train.steps={c.steps}: lower --config.train.profile_start or '
                    '--config.train.profile_steps (0 traces nothing).')


class Window:
  """The traced window of one run: `before(step)`, called before each step is dispatched, starts the trace at the
  window's first step; once `stops_after(step)` the caller waits for that step and calls `close()`, which also stops a
  trace cut short (a preemption, an error)."""

  def __init__(self, c: ml_collections.ConfigDict, workdir: str | os.PathLike):
    self.first, self.last = c.profile_start, last_step(c)
    self.on = c.profile_steps > 0 and jax.process_index() == 0
    self.folder = str(files.to_path(workdir) / 'tensorboard')
    self.tracing = False

  def before(self, step: int) -> None:
    """Starts the trace if `step` (numbered from 1), about to be dispatched, is the window's first."""
    if self.on and step == self.first:
      jax.profiler.start_trace(self.folder, create_perfetto_trace=True)
      self.tracing = True

  def stops_after(self, step: int) -> bool:
    """Returns whether the trace ends with `step`, the window's last."""
    return self.tracing and step == self.last

  def close(self) -> None:
    """Stops the trace, if one is running, and writes its files."""
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()
