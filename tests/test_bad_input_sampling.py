"""Bad input to flaxlm-sample and flaxlm-score: one stderr line naming the fix and a non-zero exit, checked before
the model is loaded wherever the check does not need the model."""

import concurrent.futures
import pathlib

import pytest

from conftest import command, make_corpus
from test_cli import assert_one_line_error, run
from test_loop import tiny_config
from flaxlm.train import loop
from flaxlm.train.use import pretrained


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> pathlib.Path:
  """A tiny character-level run of 10 steps in `run/`, and `norun/`, an empty directory that holds no run."""
  root = tmp_path_factory.mktemp('bad_input')
  loop.train(tiny_config(make_corpus(root / 'corpus.txt'), 10), str(root / 'run'))
  (root / 'norun').mkdir()
  return root


def assert_each_refused(cases: list[tuple[str, tuple[str, ...], str]]) -> None:
  """Runs each (command, flags, fragment) and checks it failed with one stderr line containing the fragment."""
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Each run spends seconds importing JAX: overlap them.
    results = list(pool.map(lambda case: run(command(case[0]), *case[1]), cases))
  for result, (_, _, fragment) in zip(results, cases):
    assert_one_line_error(result, fragment)


def test_bad_sampling_flags_are_refused_before_the_model_is_loaded(trained):
  """The directory holds no run: each error below is the flag's, so it was raised before loading was tried."""
  mistakes = {
      '--temperature=nan': '--temperature=nan must be finite and must not be negative',
      '--temperature=inf': '--temperature=inf must be finite',
      '--top_p=nan': '--top_p=nan must be in (0, 1]',
      '--top_p=inf': '--top_p=inf must be in (0, 1]',
      '--top_k=-1': '--top_k=-1 must not be negative',
      '--show_probs=-2': '--show_probs=-2 must not be negative',
      '--max_new_tokens=99999999999': '--max_new_tokens=99999999999 must be between 1 and 1,000,000',
      '--max_new_tokens=1000000000': '--max_new_tokens=1000000000 must be between 1 and 1,000,000',
      '--max_new_tokens=0': '--max_new_tokens=0 must be between 1 and 1,000,000',
      '--num_samples=99999999999': '--num_samples=99999999999 must be between 1 and 1,000',
      '--seed=99999999999999999999999': 'pass a seed between -2**63 and 2**63 - 1',
  }
  norun = f'--workdir={trained / "norun"}'
  assert_each_refused([('flaxlm-sample', (norun, '--prompt=the', flag), fragment)
                       for flag, fragment in mistakes.items()])
  assert list((trained / 'norun').iterdir()) == []


def test_more_tokens_than_the_vocabulary_are_refused_with_its_size(trained):
  vocab = pretrained.load(trained / 'run')[0].config.vocab_size
  run_dir = f'--workdir={trained / "run"}'
  assert_each_refused([
      ('flaxlm-sample', (run_dir, '--prompt=the', f'--top_k={vocab + 1}'),
       f'--top_k={vocab + 1} is more than the model\'s vocabulary of {vocab} tokens: pass at most {vocab}.'),
      ('flaxlm-sample', (run_dir, '--prompt=the', '--show_probs=100000'),
       f'--show_probs=100000 is more than the model\'s vocabulary of {vocab} tokens'),
  ])
  # The default top_k (40) on this smaller vocabulary keeps every token; the vocabulary size is allowed.
  assert vocab < 40
  default = run(command('flaxlm-sample'), run_dir, '--prompt=the', '--max_new_tokens=3')
  assert default.returncode == 0 and default.stdout.startswith('the'), default.stderr
  whole = run(command('flaxlm-sample'), run_dir, '--prompt=the', '--max_new_tokens=3', f'--top_k={vocab}',
              f'--show_probs={vocab}')
  assert whole.returncode == 0, whole.stderr
  rows = [line for line in whole.stdout.splitlines() if ' drew ' in line]
  assert len(rows) == 3 and all(row.count('%') == vocab for row in rows)


def test_bad_texts_to_score_are_refused(trained):
  (trained / 'latin1.txt').write_bytes('caf\xe9 au lait'.encode('latin-1'))
  (trained / 'empty.txt').write_text('')
  norun, run_dir = f'--workdir={trained / "norun"}', f'--workdir={trained / "run"}'
  assert_each_refused([  # Refused before loading (norun), except the one token: it takes the tokenizer to count.
      ('flaxlm-score', (norun, '--text='), 'the text is empty: give at least 2 tokens'),
      ('flaxlm-score', (norun, f'--text_file={trained / "empty.txt"}'), 'the text is empty'),
      ('flaxlm-score', (norun, f'--text_file={trained}'), f'--text_file={trained} is a directory: pass the path'),
      ('flaxlm-score', (norun, f'--text_file={trained / "latin1.txt"}'), 'latin1.txt is not UTF-8 text'),
      ('flaxlm-score', (run_dir, '--text=k'), 'the text is 1 token(s) long: give at least 2'),
  ])


def test_model_values_out_of_range_are_refused_before_training(trained):
  mistakes = {  # Each is a number the model would silently train with, or fail on with a traceback.
      'dropout=1.5': 'model.dropout=1.5 must be in [0, 1)',
      'norm_eps=0': 'model.norm_eps=0.0 must be a positive finite number',
      'rope_theta=-1': 'model.rope_theta=-1.0 must be a positive finite number',
      'mlp_width=-1': 'model.mlp_width=-1 must not be negative',
      'vocab_size=-3': 'model.vocab_size=-3 must not be negative',
  }
  workdir = trained / 'refused'
  assert_each_refused([('flaxlm-train', ('--config=tiny', f'--workdir={workdir}', f'--config.data.path='
                                         f'{trained / "corpus.txt"}', f'--config.model.{override}'), fragment)
                       for override, fragment in mistakes.items()])
  assert not workdir.exists()
