"""Tests of train/workdir.py through flaxlm-train: a workdir's files are checked, and a resume rewrites none."""

import os
import pathlib
import shutil

import pytest

from conftest import command, make_corpus
from test_cli import assert_one_line_error, run, train_args
from test_files import digest
from flaxlm.configs.errors import UserError
from flaxlm.train import workdir as workdir_lib


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """A finished 10-step tiny run, and its corpus."""
  root = tmp_path_factory.mktemp('trained')
  corpus = make_corpus(root / 'corpus.txt')
  result = run(command('flaxlm-train'), *train_args(corpus, root / 'run'))
  assert result.returncode == 0, result.stderr
  return root / 'run', corpus


def test_a_finished_run_started_again_rewrites_no_file(trained):
  workdir, corpus = trained
  before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir() if p.is_file()}
  again = run(command('flaxlm-train'), *train_args(corpus, workdir))
  assert again.returncode == 0, again.stderr
  after = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir() if p.is_file()}
  assert {k: after[k] for k in ('config.json', 'tokenizer.json')} == {k: before[k] for k in ('config.json',
                                                                                            'tokenizer.json')}


def test_a_garbled_config_json_gets_one_line_and_stays_as_it_is(trained, tmp_path):
  workdir, corpus = trained
  copy = tmp_path / 'run'
  copy.mkdir()
  (copy / 'tokenizer.json').write_bytes((workdir / 'tokenizer.json').read_bytes())
  (copy / 'config.json').write_text('{"model": {"width": 3')
  before = digest(copy)
  for result in (run(command('flaxlm-train'), *train_args(corpus, copy)),
                 run(command('flaxlm-sample'), f'--workdir={copy}', '--prompt=a')):
    assert_one_line_error(result, 'config.json is not valid JSON')
  assert digest(copy) == before


@pytest.mark.parametrize('make, overrides, fragment', [
    (lambda root, corpus: (root / 'file').write_text('x') and root / 'file', (), 'is a file: pass a directory'),
    (lambda root, corpus: root / 'new', ('--config.model.vocab_size=5',),
     'model.vocab_size=5 is smaller than the tokenizer'),
    (lambda root, corpus: root / 'new', (), 'is a directory: pass its files'),
    (lambda root, corpus: root / 'new', ('--config.model.width=200000',), 'the train state needs 9,835.5 GiB'),
], ids=['workdir_is_a_file', 'vocabulary_too_small', 'data_is_a_directory', 'state_larger_than_memory'])
def test_bad_run_settings_get_one_line_before_anything_is_written(trained, tmp_path, make, overrides, fragment):
  _, corpus = trained
  workdir = make(tmp_path, corpus)
  data = tmp_path if fragment.startswith('is a directory') else corpus
  before = digest(tmp_path)
  assert_one_line_error(run(command('flaxlm-train'), *train_args(data, workdir, *overrides)), fragment)
  assert digest(tmp_path) == before and not (tmp_path / 'new').exists()


def test_a_workdir_this_process_cannot_write_is_refused_before_the_run(tmp_path, monkeypatch):
  # The campaign's read-only case cannot fail for root, who writes anywhere: here the permission check says no.
  monkeypatch.setattr(os, 'access', lambda path, mode: False)
  with pytest.raises(UserError, match='is not writable: give yourself write permission'):
    workdir_lib.check_usable(tmp_path)


@pytest.mark.parametrize('name, make, kind', [('metrics.jsonl', pathlib.Path.mkdir, 'a file'),
                                              ('checkpoints', pathlib.Path.touch, 'a folder')])
def test_a_workdir_entry_of_the_wrong_kind_is_refused_before_the_run(tmp_path, name, make, kind):
  make(tmp_path / name)
  with pytest.raises(UserError, match=f'{name} should be {kind}: move it out'):
    workdir_lib.check_usable(tmp_path)


def test_a_resume_may_change_how_the_model_is_computed_and_says_so(trained, tmp_path):
  workdir, corpus = trained
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  resumed = run(command('flaxlm-train'), *train_args(corpus, copy, '--config.model.remat=full',
                                                     '--config.train.microbatches=2', '--config.train.steps=12'))
  assert resumed.returncode == 0, resumed.stderr
  assert "resuming with model.remat: 'none' there, 'full' here" in resumed.stdout
  assert 'resuming with train.microbatches: 1 there, 2 here' in resumed.stdout
  assert 'resuming at step 10 of 12' in resumed.stdout
