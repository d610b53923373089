"""Experiment trackers: where a run's metrics go besides metrics.jsonl (`train.trackers`).

- `tensorboard`: TensorBoard events under WORKDIR/tensorboard, written by tensorboardX.
- `wandb`: a Weights & Biases run (the `wandb` extra) in project `train.wandb_project`, named after the workdir's
  folder, with the resolved config. Its id is kept in WORKDIR/wandb_run_id, so a resumed run continues the same W&B
  run. WANDB_MODE=offline records it locally (under WANDB_DIR), for `wandb sync` later.

Each tracker is imported by the runs that use it alone.
"""

import importlib.util
import os
from typing import Protocol

import ml_collections

from flaxlm.configs.errors import UserError
from flaxlm.data import files

WANDB_ID_FILE = 'wandb_run_id'  # The W&B run id of a workdir's run (one of train/workdir.py's FILES).


class Tracker(Protocol):
  """Where metrics go: `write` once per logged step, `close` at the end of the run."""

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Records `metrics` for `step`."""

  def close(self) -> None:
    """Flushes what was written and ends the tracker's run."""


def names(c: ml_collections.ConfigDict) -> list[str]:
  """Returns the trackers the `train` section `c` turns on ('tensorboard,wandb': both)."""
  return c.trackers.split(',')


def check(c: ml_collections.ConfigDict) -> None:
  """Raises UserError if a tracker that the `train` section `c` turns on is not installed."""
  if 'wandb' in names(c) and importlib.util.find_spec('wandb') is None:
    raise UserError(f'train.trackers={c.trackers} needs the wandb extra: pip install \'flaxlm[wandb]\' (or pip '
                    'install wandb), or set --config.train.trackers=tensorboard.')


class TensorBoard:
  """TensorBoard events under WORKDIR/tensorboard; on Cloud Storage written through google-cloud-storage (each flush
  uploads the file whole)."""

  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    import tensorboardX  # Here, not at the top: the commands that only read metrics need not pay its import.
    self.writer = tensorboardX.SummaryWriter(str(files.to_path(workdir) / 'tensorboard'))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Adds each metric as a scalar at `step`."""
    for name, value in metrics.items():
      self.writer.add_scalar(name, value, step)

  def close(self) -> None:
    """Flushes the events to their file."""
    self.writer.close()


class WandB:
  """A Weights & Biases run: the resolved config once, every metric at its step; quiet on the terminal."""

  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    import wandb
    kept = files.to_path(workdir) / WANDB_ID_FILE
    try:
      self.run = wandb.init(project=config.train.wandb_project, name=files.absolute(workdir).name,
                            id=kept.read_text().strip() if files.exists(kept) else None, resume='allow',
                            reinit='create_new', config=config.to_dict(),
                            settings=wandb.Settings(quiet=True, console='off'))
    except wandb.Error as e:
      raise UserError(f'wandb could not start its run ({type(e).__name__}: {str(e).partition("\n")[0]}): run `wandb '
                      'login`, or set WANDB_MODE=offline to record it locally.') from None
    files.update(kept, self.run.id + '\n')  # A resume then continues this run.

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Logs `metrics` at `step` (W&B ignores a step below the last it has: steps a resume repeats online)."""
    self.run.log(metrics, step=step)

  def close(self) -> None:
    """Finishes the run: offline, its files are complete; online, uploaded."""
    self.run.finish()


TRACKERS: dict[str, type[Tracker]] = {'tensorboard': TensorBoard, 'wandb': WandB}


def open_trackers(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> list[Tracker]:
  """Returns the trackers that `config.train.trackers` turns on, opened for the run in `workdir`; if one fails to
  open, those opened before it are closed."""
  opened = []
  try:
    for name in names(config.train):
      opened.append(TRACKERS[name](workdir, config))
  except BaseException:
    for tracker in opened:
      tracker.close()
    raise
  return opened
