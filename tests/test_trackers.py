"""Tests of train/trackers.py: a run and its resume recorded as one Weights & Biases run (offline, read back from W&B's
own files), and the refusals of a W&B run that cannot be made."""

import json
import pathlib
import struct
import sys
from typing import Iterator

import pytest

from test_loop import tiny_config
from flaxlm.configs.errors import UserError
from flaxlm.train import loop, metrics, trackers, workdir as workdir_lib

BLOCK, HEADER, FULL, LAST = 32768, 7, 1, 4  # LevelDB's log format, which an offline run's .wandb file is written in.


def wandb_records(path: pathlib.Path) -> Iterator:
  """Yields the records (wandb.proto's Record messages) of a W&B run's .wandb file: a 7-byte file header, then blocks
  of 32 KiB holding records, each with a 7-byte header (CRC, length, type), a record split over blocks in pieces
  (types FIRST, MIDDLE, LAST). wandb 0.3x ships no reader of its own."""
  from wandb.proto import wandb_internal_pb2
  data, position, pieces = path.read_bytes(), HEADER, b''
  assert data.startswith(b':W&B')
  while position + HEADER <= len(data):
    if BLOCK - position % BLOCK < HEADER:  # A block's tail too short for a header is padding.
      position += BLOCK - position % BLOCK
      continue
    _, length, kind = struct.unpack('<IHB', data[position:position + HEADER])
    pieces += data[position + HEADER:position + HEADER + length]
    position += HEADER + length
    if kind in (FULL, LAST):
      yield wandb_internal_pb2.Record.FromString(pieces)
      pieces = b''


def offline_run(folder: pathlib.Path) -> tuple[dict, dict[int, dict]]:
  """Returns an offline W&B run folder's run (id, project, name, config) and its logged metrics by step."""
  [path] = folder.glob('run-*.wandb')
  run, steps = {}, {}
  for record in wandb_records(path):
    if record.HasField('run'):
      config = {item.key: json.loads(item.value_json) for item in record.run.config.update}
      run = {'id': record.run.run_id, 'project': record.run.project, 'name': record.run.display_name,
             'config': config}
    elif record.HasField('history'):
      values = {item.nested_key[0]: json.loads(item.value_json) for item in record.history.item}
      steps[record.history.step.num] = {k: v for k, v in values.items() if not k.startswith('_')}
  return run, steps


@pytest.fixture
def wandb_home(tmp_path, monkeypatch) -> Iterator[pathlib.Path]:
  """Points HOME and W&B's folders (runs, settings, caches) into tmp_path (yielded), with no API key; afterwards
  wandb forgets them (it reads its environment once a process, at its first run)."""
  home = tmp_path / 'home'
  home.mkdir()
  monkeypatch.delenv('WANDB_API_KEY', raising=False)
  for name in ('HOME', 'WANDB_DIR', 'WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
    monkeypatch.setenv(name, str(home))
  yield home
  import wandb
  wandb.teardown()


def test_a_run_and_its_resume_are_one_wandb_run_holding_every_logged_step(corpus, tmp_path, wandb_home, monkeypatch,
                                                                          capfd):
  monkeypatch.setenv('WANDB_MODE', 'offline')
  workdir = tmp_path / 'run'
  config = tiny_config(corpus, 2)
  config.train.log_every, config.train.trackers = 1, 'wandb'
  loop.train(config, str(workdir))
  assert not (workdir / 'tensorboard').exists()  # wandb alone.
  config.train.steps, config.train.trackers = 4, 'tensorboard,wandb'
  loop.train(config, str(workdir))  # Resumes from step 2's checkpoint.
  assert (workdir / 'tensorboard').is_dir()
  run_id = (workdir / trackers.WANDB_ID_FILE).read_text().strip()
  assert trackers.WANDB_ID_FILE in workdir_lib.FILES  # A new run that fails to start removes it.
  runs = [offline_run(folder) for folder in sorted((wandb_home / 'wandb').glob('offline-run-*'))]
  assert [run['id'] for run, _ in runs] == [run_id, run_id]
  assert all(run['project'] == 'flaxlm' and run['name'] == 'run' for run, _ in runs)
  assert [run['config']['train']['steps'] for run, _ in runs] == [2, 4]
  assert runs[1][0]['config']['model'] == json.loads((workdir / 'config.json').read_text())['model']  # Resolved.
  logged = {step: values for _, steps in runs for step, values in steps.items()}
  assert logged == {r.pop('step'): r for r in metrics.read_metrics(workdir)}  # Steps 1 to 4.
  out, err = capfd.readouterr()  # Quiet: a few lines a run on stderr (offline: where its files are).
  assert 'wandb' not in out and sum(line.startswith('wandb:') for line in err.splitlines()) <= 3 * len(runs)


def test_wandb_without_its_package_is_refused_in_one_line_before_anything_is_written(corpus, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'wandb', None)  # As if not installed: find_spec finds nothing, import fails.
  config = tiny_config(corpus)
  config.train.trackers = 'tensorboard,wandb'
  with pytest.raises(UserError) as refused:
    loop.train(config, str(tmp_path / 'run'))
  assert str(refused.value).startswith("train.trackers=tensorboard,wandb needs the wandb extra: pip install "
                                       "'flaxlm[wandb]'")
  assert '\n' not in str(refused.value) and not (tmp_path / 'run').exists()


def test_a_wandb_run_that_cannot_start_is_refused_in_one_line_and_a_new_workdir_left_empty(corpus, tmp_path,
                                                                                          wandb_home, monkeypatch):
  monkeypatch.setenv('WANDB_MODE', 'online')  # Without an API key: refused before any network call.
  config = tiny_config(corpus)
  config.train.trackers = 'tensorboard,wandb'
  with pytest.raises(UserError) as refused:
    loop.train(config, str(tmp_path / 'run'))
  assert str(refused.value).startswith('wandb could not start its run (UsageError: No API key configured')
  assert '\n' not in str(refused.value) and not (tmp_path / 'run').exists()
