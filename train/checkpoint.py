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


def save(manager: ocp.CheckpointManager, state: TrainState) -> None:
  """Starts saving `state` under its step number; the device-to-host copy finishes before this returns."""
  manager.save(int(state.step), args=ocp.args.StandardSave(state))


def restore_latest(manager: ocp.CheckpointManager, abstract: TrainState) -> TrainState | None:
  """Returns the latest saved state laid out as `abstract`'s shardings, or None if there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))
