"""Orbax checkpoints of the train state in `WORKDIR/checkpoints/`: saved asynchronously, restored into shardings."""

import pathlib

import orbax.checkpoint as ocp

from train.state import TrainState


def checkpoint_manager(workdir: str | pathlib.Path, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  """Returns the manager of `workdir`'s checkpoints, keeping the `keep` most recent; saves run in the background."""
  if read_only:
    options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0)
  else:
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=True)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / 'checkpoints', options=options)


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: dict) -> None:
  """Starts saving the train state and the data iterator's state under the step number.

  The device-to-host copy finishes before this returns, so the caller may donate `state` at once.
  """
  manager.save(int(state.step), args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        data=ocp.args.JsonSave(data_state)))


def restore_latest(manager: ocp.CheckpointManager, abstract: TrainState) -> tuple[TrainState, dict] | None:
  """Returns the latest (train state laid out as `abstract`'s shardings, data state), or None if none."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                           data=ocp.args.JsonRestore()))
  return restored.state, restored.data
