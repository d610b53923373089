"""Orbax checkpoints of a run in `WORKDIR/checkpoints/`: saved in the background, kept by policy, restored safely.

A checkpoint holds the train state (params, optimizer state, step; the dropout key is derived from the seed
and the step; never LoRA's frozen base, read again from train.init_from), the data iterator's state and the run's
config. Orbax writes each one to a temporary directory and renames it into place when complete, so a save interrupted by a crash never counts. The
workdir keeps the latest `train.keep_checkpoints` plus the one with the best validation loss. A
checkpoint whose files are damaged is moved to `WORKDIR/corrupt_checkpoints/` (never deleted) once an
earlier one has restored; a lack of memory or a failed read of storage is retried, never taken for damage. With
several processes, process 0's list of checkpoints is every process's, and each restore's outcome is agreed by all.
A model read for use (sampling, export, fine-tuning) restores its params alone (`restore_params`): the optimizer
moments are never read. Paths are `etils.epath` paths, so a workdir may be a `gs://` URL.
"""

import enum
import errno
import itertools
import logging
import re
import sys
import time
import warnings
from typing import Any, Callable

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from flaxlm.configs.errors import UserError
from flaxlm.train import preemption, state as state_lib
from flaxlm.train.state import TrainState

CORRUPT_DIR = 'corrupt_checkpoints'
SHAPE_MISMATCH = 'is not compatible with the stored shape'  # How Orbax refuses arrays of another shape.
RETRY_DELAYS = (1.0, 2.0, 4.0)  # Seconds before each new try of a checkpoint that failed to read for a passing cause.
# What a passing failure raises: a lack of memory or of file handles, or storage that did not answer in time
# (TensorStore and XLA name these by status code; an EIO from a network file system is a failed read, not damage).
TRANSIENT_TYPES = (MemoryError, ConnectionError, TimeoutError, BlockingIOError, InterruptedError)
TRANSIENT_ERRNOS = (errno.ENOMEM, errno.EIO, errno.EBUSY, errno.EMFILE, errno.ENFILE, errno.ENOBUFS)
TRANSIENT_MESSAGE = re.compile(r'\b(RESOURCE_EXHAUSTED|UNAVAILABLE|DEADLINE_EXCEEDED|ABORTED)\b'
                               r'|(?i:out of memory|cannot allocate memory|too many open files|timed out)')
Restored = tuple[Any, dict]  # (the train state, or the params alone; the data iterator's state)
Reader = Callable[[ocp.CheckpointManager, int, Any], Restored]  # restore, or restore_params.


class Outcome(enum.IntEnum):
  """What one try of restoring a checkpoint gave; the processes agree on the largest any of them got."""
  RESTORED = 0
  TRANSIENT = 1  # A lack of memory or a failed read: try again, never take it for damage.
  DAMAGED = 2  # Its files do not read, or the caller's check refused what they hold.
  OTHER_MODEL = 3  # Whole arrays of another shape: the config is wrong, not the checkpoint.


def absolute(path: epath.PathLike) -> epath.Path:
  """Returns `path` as an epath.Path, made absolute if it is local (a gs:// URL is absolute already)."""
  path = epath.Path(path)
  return path if path.is_absolute() else path.absolute()


def directory(workdir: epath.PathLike) -> epath.Path:
  """Returns where `workdir`'s checkpoints live."""
  return absolute(workdir) / 'checkpoints'


def checkpoint_manager(workdir: epath.PathLike, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Returns the manager of `workdir`'s checkpoints: the latest `keep` plus the lowest val_loss are kept."""
  if read_only:  # Each process reads alone, skipping Orbax's barriers: one that failed to read would skip them too,
    # leaving the others waiting there. restore_latest agrees on the outcome instead.
    alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(), active_processes={jax.process_index()})
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                           multiprocessing_options=alone)
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
  args = ocp.args.Composite(state=ocp.args.StandardSave(state_lib.checkpointed(state)),
                            data=ocp.args.JsonSave(data_state), config=ocp.args.JsonSave(config.to_dict()))
  manager.save(int(state.step), args=args, metrics=None if val_loss is None else {'val_loss': val_loss})


def restore(manager: ocp.CheckpointManager, step: int, abstract: TrainState) -> Restored:
  """Returns checkpoint `step`'s train state, laid out as `abstract`'s shardings (its frozen part None: not saved),
  and its data iterator state."""
  saved = state_lib.checkpointed(abstract)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(saved),
                                                           data=ocp.args.JsonRestore()))
  return TrainState(**restored.state), restored.data


def restore_params(manager: ocp.CheckpointManager, step: int, abstract_params: Any) -> Restored:
  """Returns checkpoint `step`'s params alone, laid out as `abstract_params` says (shapes, the dtype they are cast to,
  shardings), and no data iterator state.

  Orbax's partial restore reads only the arrays named: the optimizer moments (twice the params, for AdamW) are
  neither read nor allocated.
  """
  item = {'params': abstract_params}  # TrainState's field, as the checkpoint holds it.
  args = ocp.args.PyTreeRestore(item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                                partial_restore=True)
  return manager.restore(step, args=ocp.args.Composite(state=args)).state['params'], {}


def restore_latest(workdir: epath.PathLike, abstract: Any, move_failures: bool = True,
                   check: Callable[[Restored], None] | None = None, read: Reader | None = None) -> Restored | None:
  """Returns the newest checkpoint that restores (state, data state), or None if `workdir` has none.

  `read(manager, step, abstract)` restores one checkpoint: `restore` (the default: the whole train state, `abstract`,
  and the data state) or `restore_params` (the params alone, `abstract` their shapes, for a model read for use).

  `check(restored)`, if given, is part of restoring: a checkpoint for which it raises (a data iterator state the
  pipeline cannot take, say) counts as damaged like one whose files do not read.

  Newer checkpoints that are damaged are reported on stderr by name and (with `move_failures`, as training does before
  it saves again) moved aside; if none restores, raises UserError and moves nothing, so a run never silently starts
  afresh. A checkpoint that keeps failing for a passing cause (memory, storage) raises UserError, moving nothing.
  Every process restores the same step: process 0's list is tried in order, and a step counts as restored only where
  it restored on every process.
  """
  if not process_0s([directory(workdir).is_dir()])[0]:
    return None
  if move_failures:
    set_aside_unfinished(workdir)
  quiet_abandoned_reads()
  manager = checkpoint_manager(workdir, 1, read_only=True)
  failures = []
  try:
    for step in process_0s(sorted(manager.all_steps(), reverse=True)):
      outcome, result = restore_agreed(manager, step, abstract, check, read or restore)
      if outcome is Outcome.RESTORED:
        report_failures(workdir, failures, move_failures)
        return result
      if outcome is Outcome.OTHER_MODEL:
        raise UserError(f'checkpoint {directory(workdir) / str(step)} holds another model than {workdir}/config.json '
                        f'describes ({result}): restore config.json from the config saved with it '
                        f'(checkpoints/{step}/config/metadata), or train in a new --workdir.')
      failures.append((step, result))
  finally:
    manager.close()
  if failures:
    raise UserError(f'no checkpoint in {directory(workdir)} restores (step {failures[0][0]}: {failures[0][1]}): '
                    'move the damaged ones out of it, or train in a new --workdir.')
  return None


def restore_agreed(manager: ocp.CheckpointManager, step: int, abstract: Any, check: Callable[[Restored], None] | None,
                   read: Reader) -> tuple[Outcome, Restored | str]:
  """Returns the outcome of restoring checkpoint `step` that every process agrees on, with the restored checkpoint
  (RESTORED) or why it failed; retries passing failures, then raises UserError naming the step, having moved nothing."""
  for delay in (*RETRY_DELAYS, None):
    outcome, result = try_restore(manager, step, abstract, check, read)
    agreed = worst_on_any_process(outcome)
    reason = result if outcome is not Outcome.RESTORED else 'it failed on another process'
    if agreed is not Outcome.TRANSIENT:
      return agreed, result if agreed is Outcome.RESTORED else reason
    if delay is None:
      raise UserError(f'checkpoint {manager.directory / str(step)} failed to read {len(RETRY_DELAYS) + 1} times '
                      f'({reason}), for a cause other than damage (memory, storage): nothing was moved; rerun the same '
                      'command (with more memory free if it ran out).')
    if outcome is Outcome.TRANSIENT:
      print(f'checkpoint {manager.directory / str(step)} failed to read ({reason}): trying again in {delay:g} s.',
            file=sys.stderr, flush=True)
    time.sleep(delay)


def try_restore(manager: ocp.CheckpointManager, step: int, abstract: Any, check: Callable[[Restored], None] | None,
                read: Reader) -> tuple[Outcome, Restored | str]:
  """Returns this process's outcome of restoring checkpoint `step` once, with the restored checkpoint or why it failed
  (the error itself is not kept: its traceback would hold on to the arrays it was reading)."""
  try:
    restored = read(manager, step, abstract)
    if check:
      check(restored)
    return Outcome.RESTORED, restored
  except Exception as e:  # Orbax and TensorStore raise many kinds for damaged files.
    preemption.check_interrupted()  # A read cut short by Ctrl-C or SIGTERM says nothing of the checkpoint.
    return classify(e), first_line(e)


def classify(error: Exception) -> Outcome:
  """Returns what a failed restore's `error` says about the checkpoint."""
  if SHAPE_MISMATCH in str(error):
    return Outcome.OTHER_MODEL
  return Outcome.TRANSIENT if is_transient(error) else Outcome.DAMAGED


def is_transient(error: BaseException | None, depth: int = 0) -> bool:
  """Returns whether `error`, or one it was raised from or while handling, is a passing failure (a lack of memory, a
  read of storage that failed) rather than what reading damaged files raises."""
  if error is None or depth > 8:
    return False
  if (isinstance(error, TRANSIENT_TYPES) or (isinstance(error, OSError) and error.errno in TRANSIENT_ERRNOS)
      or TRANSIENT_MESSAGE.search(str(error))):
    return True
  inner = error.exceptions if isinstance(error, BaseExceptionGroup) else ()
  return any(is_transient(e, depth + 1) for e in (*inner, error.__cause__, error.__context__))


def worst_on_any_process(outcome: Outcome) -> Outcome:
  """Returns the largest outcome any process got (each calls this with its own), so that all act alike."""
  if jax.process_count() == 1:
    return outcome
  return Outcome(int(np.max(multihost_utils.process_allgather(np.int32(outcome)))))


def process_0s(values: list[int]) -> list[int]:
  """Returns process 0's `values` on every process (each process may list the files at another moment)."""
  if jax.process_count() == 1:
    return values
  count = int(multihost_utils.broadcast_one_to_all(np.int32(len(values))))
  mine = np.asarray(values if jax.process_index() == 0 else [0] * count, np.int32)
  return [int(v) for v in multihost_utils.broadcast_one_to_all(mine)] if count else []


def saved_steps(workdir: epath.PathLike) -> list[int]:
  """Returns the steps of `workdir`'s complete checkpoints, oldest first (Orbax names one by its step only once the
  save is whole)."""
  folder = directory(workdir)
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def set_aside_unfinished(workdir: epath.PathLike) -> None:
  """Moves the temporary folders of saves that never finished (a kill during a save leaves one, which Orbax ignores
  forever) to WORKDIR/corrupt_checkpoints/, naming each on stderr: once, since it is then gone."""
  leftovers = sorted(directory(workdir).glob('*.orbax-checkpoint-tmp*'))
  if jax.process_count() > 1:  # Every host has looked before the first moves anything.
    multihost_utils.sync_global_devices('flaxlm: looked for unfinished saves')
  if leftovers and jax.process_index() == 0:
    corrupt = absolute(workdir) / CORRUPT_DIR
    corrupt.mkdir(exist_ok=True)
    for source in leftovers:
      target = unused_path(corrupt / source.name)
      source.rename(target)
      print(f'{source} is a save that never finished (stopped during it): moved to {target}.', file=sys.stderr,
            flush=True)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('flaxlm: unfinished saves set aside')


def unused_path(path: epath.Path) -> epath.Path:
  """Returns `path`, or if it exists the first of PATH-2, PATH-3, ... that does not (a step damaged twice)."""
  return next(p for p in (path.with_name(f'{path.name}-{n}') if n > 1 else path for n in itertools.count(1))
              if not p.exists())


def first_line(error: Exception) -> str:
  """Returns the first line of an exception's message (its type's name if it has none)."""
  text = str(error).strip().split('. See full TensorStore details')[0]  # The rest is a spec dump of the array,
  text = text.split('. Truncating/padding is disabled')[0]  # or advice on Orbax's API, not to a user.
  return text.splitlines()[0] if text else type(error).__name__


def report_failures(workdir: epath.PathLike, failures: list[tuple[int, str]], move: bool) -> None:
  """Reports on stderr each checkpoint that failed to restore, moving it to WORKDIR/corrupt_checkpoints/ if `move`."""
  for step, reason in failures:
    source = directory(workdir) / str(step)
    target = unused_path(absolute(workdir) / CORRUPT_DIR / str(step))
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
