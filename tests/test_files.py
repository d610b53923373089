"""Tests of data/files.py and the commands that write files: nothing a user has is replaced or written through."""

import hashlib
import json
import pathlib
import shutil

import pytest

from conftest import command, make_corpus
from test_cli import assert_one_line_error, run, train_args
from flaxlm.configs.errors import UserError
from flaxlm.data import files
from flaxlm.train import metrics


def digest(folder: pathlib.Path) -> dict[str, str]:
  """Returns the SHA-256 of every file below `folder`, by relative path."""
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(folder.rglob('*')) if p.is_file()}


def test_replace_is_atomic_and_replaces_a_symlink_not_its_target(tmp_path):
  target = tmp_path / 'elsewhere.json'
  target.write_text('theirs')
  (tmp_path / 'tokenizer.json').symlink_to(target)
  files.replace(tmp_path / 'tokenizer.json', 'ours')
  assert target.read_text() == 'theirs' and not (tmp_path / 'tokenizer.json').is_symlink()
  assert (tmp_path / 'tokenizer.json').read_text() == 'ours'
  assert sorted(p.name for p in tmp_path.iterdir()) == ['elsewhere.json', 'tokenizer.json']  # No partial left.


def test_an_output_that_exists_is_refused_unless_overwritten(tmp_path):
  existing = tmp_path / 'out.png'
  existing.write_bytes(b'mine')
  with pytest.raises(UserError, match='already exists: pass a new --output path, or add --overwrite'):
    files.write_output(existing, b'new', 'output', overwrite=False)
  assert existing.read_bytes() == b'mine'
  files.write_output(existing, b'new', 'output', overwrite=True)
  assert existing.read_bytes() == b'new'
  with pytest.raises(UserError, match='is not a directory'):
    files.write_output(tmp_path / 'missing' / 'out.png', b'new', 'output', overwrite=False)
  with pytest.raises(UserError, match='is a directory'):
    files.write_output(tmp_path, b'new', 'output', overwrite=True)


def test_a_symlink_to_nothing_is_refused_as_an_output_even_with_overwrite(tmp_path):
  (tmp_path / 'out.png').symlink_to(tmp_path / 'gone' / 'out.png')
  for overwrite in (False, True):
    with pytest.raises(UserError, match=f'--output={tmp_path / "out.png"} is a symlink to {tmp_path / "gone"}/out.png, '
                       'which does not exist: remove the link, or pass another path.'):
      files.write_output(tmp_path / 'out.png', b'new', 'output', overwrite)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['out.png'] and (tmp_path / 'out.png').is_symlink()


def test_the_tokenizer_never_overwrites_its_input_or_another_file(corpus, tmp_path):
  before = digest(tmp_path)
  for output, extra, fragment in [(corpus, (), 'already exists'), (corpus, ('--overwrite',), 'one of the --input')]:
    result = run(command('flaxlm-tokenizer'), 'train', f'--input={corpus}', '--vocab_size=300', f'--output={output}',
                 *extra)
    assert_one_line_error(result, fragment)
  assert digest(tmp_path) == before


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory) -> pathlib.Path:
  """A short tiny run (10 steps, a metrics line every step)."""
  root = tmp_path_factory.mktemp('trained')
  result = run(command('flaxlm-train'), *train_args(make_corpus(root / 'corpus.txt'), root / 'run',
                                                    '--config.train.log_every=1'))
  assert result.returncode == 0, result.stderr
  return root / 'run'


def test_plot_refuses_to_overwrite_a_file_it_did_not_make(trained_run):
  before = digest(trained_run)
  assert_one_line_error(run(command('flaxlm-plot'), f'--workdir={trained_run}',
                            f'--output={trained_run / "metrics.jsonl"}'), 'is part of the run')
  assert digest(trained_run) == before
  for _ in range(2):  # Its own default file, WORKDIR/loss.png, is redrawn.
    drawn = run(command('flaxlm-plot'), f'--workdir={trained_run}')
    assert drawn.returncode == 0, drawn.stderr


def test_a_partial_metrics_line_is_dropped_on_resume_and_never_glued(trained_run, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained_run, workdir)
  with (workdir / 'metrics.jsonl').open('a') as f:
    f.write('{"step": 11, "loss": 2.')  # What a kill in the middle of a write leaves.
  assert [r['step'] for r in metrics.read_metrics(workdir)] == list(range(1, 11))
  resumed = run(command('flaxlm-train'), *train_args(trained_run.parent / 'corpus.txt', workdir,
                                                     '--config.train.log_every=1', '--config.train.steps=14'))
  assert resumed.returncode == 0, resumed.stderr
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(line)['step'] for line in lines] == list(range(1, 15))  # Every line whole, none repeated.


@pytest.mark.parametrize('text, fragment', [
    ('x = 1\n', 'defines no get_config()'),
    ('def get_config():\n  return 5\n', 'returned int, not an ml_collections.ConfigDict'),
    ('def get_config():\n  raise ValueError("boom")\n', 'failed to run (ValueError: boom)'),
    ('def get_config(:\n', 'failed to run (SyntaxError'),
], ids=['no_get_config', 'wrong_type', 'raises', 'syntax'])
def test_a_config_file_that_does_not_give_a_config_gets_one_line(tmp_path, text, fragment):
  path = tmp_path / 'mine.py'
  path.write_text(text)
  assert_one_line_error(run(command('flaxlm-train'), f'--config={path}', f'--workdir={tmp_path / "w"}'), fragment)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.py']
