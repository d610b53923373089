"""Orbax checkpoints of a run in `WORKDIR/checkpoints/`: saved in the background, kept by policy, restored safely.

A checkpoint holds the train state (params, optimizer state, step; the dropout key is derived from the seed
and the step), the data iterator's state and the run's config. Orbax writes each one to a temporary
directory and renames it into place when complete, so a save interrupted by a crash never counts. The
workdir keeps the latest `train.keep_checkpoints` plus the one with the best validation loss. A
checkpoint that fails to restore is moved to `WORKDIR/corrupt_checkpoints/` (never deleted) once an
earlier one has restored.
"""

import itertools
import logging
import os
import pathlib
import sys
import warnings
from typing import Callable

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from flaxlm.configs.errors import UserError
from flaxlm.train.state import TrainState

CORRUPT_DIR = 'corrupt_checkpoints'
SHAPE_MISMATCH = 'is not compatible with the stored shape'  # How Orbax refuses arrays of another shape.


def directory(workdir: str | pathlib.Path) -> pathlib.Path:
  """Returns where `workdir`'s checkpoints live."""
  return pathlib.Path(workdir).absolute() / 'checkpoints'


def checkpoint_manager(workdir: str | pathlib.Path, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Returns the manager of `workdir`'s checkpoints: the latest `keep` plus the lowest val_loss are kept."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    best = policies.BestN(get_metric_fn=lambda metrics: metrics['val_loss'], reverse=True, n=1,
                          keep_checkpoints_without_metrics=False)
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=True,
        preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(n=keep), best]))
  return ocp.CheckpointManager(directory(workdir), options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict, config: ml_collections.ConfigDict,
         val_loss: float | None = None) -> None:
  """Starts saving the train state, the data iterator's state and the config under the step number.

  The device-to-host copy finishes before this returns, so the caller may donate `state` at once. `val_loss`,
  when the step was evaluated, ranks the checkpoint for the keep-the-best policy.
  """
  args = ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
                            config=ocp.args.JsonSave(config.to_dict()))
  manager.save(int(state.step), args=args, metrics=None if val_loss is None else {'val_loss': val_loss})


def restore(manager: ocp.CheckpointManager, step: int, abstract: TrainState) -> tuple[TrainState, dict]:
  """Returns checkpoint `step`'s train state, laid out as `abstract`'s shardings, and its data iterator state."""
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           data=ocp.args.JsonRestore()))
  return restored.state, restored.data


def restore_latest(workdir: str | pathlib.Path, abstract: TrainState, move_failures: bool = True,
                   check: Callable[[tuple[TrainState, dict]], None] | None = None) -> tuple[TrainState, dict] | None:
  """Returns the newest checkpoint that restores (state, data state), or None if `workdir` has none.

  `check(restored)`, if given, is part of restoring: a checkpoint for which it raises (a data iterator state the
  pipeline cannot take, say) counts as damaged like one whose files do not read.

  Newer checkpoints that fail are reported on stderr by name and (with `move_failures`, as training does before
  it saves again) moved aside; if none restores, raises UserError and moves nothing, so a run never silently
  starts afresh.
  """
  if not directory(workdir).is_dir():
    return None
  if move_failures:
    set_aside_unfinished(workdir)
  quiet_abandoned_reads()
  manager = checkpoint_manager(workdir, 1, read_only=True)
  failures = []
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        restored = restore(manager, step, abstract)
        if check:
          check(restored)
      except Exception as e:  # Orbax and TensorStore raise many kinds for damaged files.
        if SHAPE_MISMATCH in str(e):  # Whole arrays of another model: the config is wrong, not the checkpoint.
          raise UserError(f'checkpoint {directory(workdir) / str(step)} holds another model than {workdir}/config.json '
                          f'describes ({first_line(e)}): restore config.json from the config saved with it '
                          f'(checkpoints/{step}/config/metadata), or train in a new --workdir.') from None
        failures.append((step, first_line(e)))
        continue
      report_failures(workdir, failures, move_failures)
      return restored
  finally:
    manager.close()
  if failures:
    raise UserError(f'no checkpoint in {directory(workdir)} restores (step {failures[0][0]}: {failures[0][1]}): '
                    'move the damaged ones out of it, or train in a new --workdir.')
  return None


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
  """Returns the steps of `workdir`'s complete checkpoints, oldest first (Orbax names one by its step only once the
  save is whole)."""
  folder = directory(workdir)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def set_aside_unfinished(workdir: str | pathlib.Path) -> None:
  """Moves the temporary folders of saves that never finished (a kill during a save leaves one, which Orbax ignores
  forever) to WORKDIR/corrupt_checkpoints/, naming each on stderr: once, since it is then gone."""
  leftovers = sorted(directory(workdir).glob('*.orbax-checkpoint-tmp*'))
  if jax.process_count() > 1:  # Every host has looked before the first moves anything.
    multihost_utils.sync_global_devices('flaxlm: looked for unfinished saves')
  if leftovers and jax.process_index() == 0:
    corrupt = pathlib.Path(workdir).absolute() / CORRUPT_DIR
    corrupt.mkdir(exist_ok=True)
    for source in leftovers:
      target = unused_path(corrupt / source.name)
      source.rename(target)
      print(f'{source} is a save that never finished (stopped during it): moved to {target}.', file=sys.stderr,
            flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('flaxlm: unfinished saves set aside')


def unused_path(path: pathlib.Path) -> pathlib.Path:
  """Returns `path`, or if it exists the first of PATH-2, PATH-3, ... that does not (a step damaged twice)."""
  return next(p for p in (path.with_name(f'{path.name}-{n}') if n > 1 else path for n in itertools.count(1))
              if not os.path.lexists(p))


def first_line(error: Exception) -> str:
  """Returns the first line of an exception's message (its type's name if it has none)."""
  text = str(error).strip().split('. See full TensorStore details')[0]  # The rest is a spec dump of the array,
  text = text.split('. Truncating/padding is disabled')[0]  # or advice on Orbax's API, not to a user.
  return text.splitlines()[0] if text else type(error).__name__


def report_failures(workdir: str | pathlib.Path, failures: list[tuple[int, str]], move: bool) -> None:
  """Reports on stderr each checkpoint that failed to restore, moving it to WORKDIR/corrupt_checkpoints/ if `move`."""
  for step, reason in failures:
    source = directory(workdir) / str(step)
    target = unused_path(pathlib.Path(workdir).absolute() / CORRUPT_DIR / str(step))
    if jax.process_index() == 0:
      if move:
        target.parent.mkdir(exist_ok=True)
        source.rename(target)
      print(f'checkpoint {source} does not restore ({reason}){f": moved to {target}" if move else ""}; '
            'using the one before.', file=sys.stderr, flush=True)
  if move and failures and jax.process_count() > 1:
    multihost_utils.sync_global_devices('flaxlm: damaged checkpoints set aside')


def quiet_abandoned_reads() -> None:
  """Keeps the reads a failed Orbax restore abandons from printing its failure again, as tracebacks on stderr.

  Orbax stops at the first array that fails to read and closes its event loop; the reads still in flight then fail
  in TensorStore's threads (scheduling on the closed loop) and in their coroutines' finalizers, and asyncio logs
  their tasks and gathering futures, whose exception nobody retrieved, some after the command's own error line.
  Only those reports are silenced (installed once per process; any other reaches the hook there was). flaxlm has
  no asyncio code of its own: Orbax's is the only work that can be abandoned so.
  """
  if getattr(sys.unraisablehook, 'quiets_orbax', False):
    return
  previous = sys.unraisablehook

  def on_unraisable(unraisable) -> None:
    closed = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == 'Event loop is closed'
    if not closed and 'orbax' not in getattr(getattr(unraisable.object, 'cr_code', None), 'co_filename', ''):
      previous(unraisable)

  on_unraisable.quiets_orbax = True
  sys.unraisablehook = on_unraisable
  logging.getLogger('asyncio').addFilter(lambda record: 'exception was never retrieved' not in record.getMessage())
  warnings.filterwarnings('ignore', "coroutine '.*' was never awaited", RuntimeWarning)
