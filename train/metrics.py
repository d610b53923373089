"""Where a run's numbers go: `WORKDIR/metrics.jsonl`, the trackers of `train.trackers` (train/trackers.py:
TensorBoard, Weights & Biases) and one terminal line per log step.

On Cloud Storage, which has no appends, metrics.jsonl is rewritten whole from the lines held at each log step (a
few hundred bytes a record).
"""

import json
import os

import jax
import ml_collections

from flaxlm.configs.errors import UserError
from flaxlm.data import files
from flaxlm.train import trackers


class MetricsLog:
  """Appends metrics to the workdir's JSONL file and sends them to the trackers of `config.train.trackers`; only
  process 0 writes."""

  def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict):
    self.active = jax.process_index() == 0
    if self.active:
      self.trackers = trackers.open_trackers(workdir, config)
      self.file = files.appender(files.to_path(workdir) / 'metrics.jsonl')

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """Records `metrics` for `step` and prints them as one line; the JSONL line is on disk before it is printed."""
    if not self.active:
      return
    self.file.write(json.dumps({'step': step, **metrics}) + '\n')
    self.file.flush()  # A run killed after printing a step keeps that step's record.
    for tracker in self.trackers:
      tracker.write(step, metrics)
    print(format_line(step, metrics), flush=True)

  def close(self) -> None:
    """Closes the JSONL file and the trackers."""
    if self.active:
      self.file.close()
      for tracker in self.trackers:
        tracker.close()


def format_line(step: int, metrics: dict[str, float]) -> str:
  """Returns a terminal line such as 'step 250 | loss 2.0134 | val_loss 2.0561 | learning_rate 9.6e-04'."""
  parts = [f'step {step}']
  for name, value in metrics.items():
    if 'per_second' in name:
      parts.append(f'{name} {value:,.0f}')
    elif name == 'mfu':
      parts.append(f'mfu {value:.1%}')
    else:
      parts.append(f'{name} {value:.4g}')
  return ' | '.join(parts)


def decoded(line: str) -> dict | None:
  """Returns the record on a metrics line (a JSON object of numbers with an integer "step"), or None if it is none."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError:
    return None
  if not isinstance(record, dict) or type(record.get('step')) is not int or not all(
      type(value) in (int, float) for value in record.values()):
    return None
  return record


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """Returns the records of a workdir's metrics.jsonl, oldest first (empty if there is none).

  A last line without its newline (a run killed while appending it) is left out; raises UserError for any other
  line that is not a record, or a metrics.jsonl that is not a file that can be read.
  """
  path = files.to_path(workdir) / 'metrics.jsonl'
  if not files.exists(path):
    return []
  if not path.is_file():
    raise UserError(f'{path} is not a file: move it out of the run, or pass the --workdir of another run.')
  try:
    lines = path.read_bytes().decode(errors='replace').split('\n')
  except OSError as e:
    raise UserError(f'{path} cannot be read ({e.strerror}): check its permissions.') from None
  records = []
  for number, line in enumerate(lines, 1):
    record = decoded(line)
    if record is not None:
      records.append(record)
    elif line.strip() and number < len(lines):
      raise UserError(f'{path}:{number} is not a metrics record (a JSON object of numbers with an integer "step"): '
                      'remove that line.')
  return records


def drop_after(workdir: str | os.PathLike, step: int) -> None:
  """Rewrites metrics.jsonl (atomically) to its whole records up to `step`, the checkpoint a resumed run starts from:
  records logged after it would repeat, and a line cut short by a kill would glue onto the next one appended."""
  path = files.to_path(workdir) / 'metrics.jsonl'
  content = ''.join(json.dumps(r) + '\n' for r in read_metrics(workdir) if r['step'] <= step)
  if (path.read_bytes().decode(errors='replace') if path.exists() else '') != content:
    files.replace(path, content)
