"""Tests of data/: the character tokenizer, the text file reader and split, and next-token batches."""

import numpy as np
import pytest

from configs.errors import UserError
from data import batches, text
from data.tokenizer import CharTokenizer


def test_tokenizer_round_trips_text_and_saves_as_json(tmp_path):
  tokenizer = CharTokenizer.from_text('hello world\n')
  assert tokenizer.vocab_size == len(set('hello world\n'))
  ids = tokenizer.encode('world hello')
  assert ids.dtype == np.int32
  assert tokenizer.decode(ids) == 'world hello'
  tokenizer.save(tmp_path / 'tok.json')
  assert '"kind": "char"' in (tmp_path / 'tok.json').read_text()
  assert CharTokenizer.load(tmp_path / 'tok.json').chars == tokenizer.chars


def test_tokenizer_names_characters_outside_its_alphabet():
  with pytest.raises(UserError, match=r"\['z'\]"):
    CharTokenizer.from_text('abc').encode('abz')


@pytest.mark.parametrize('content, message', [(None, 'does not exist'), ('', 'is empty'), ('  \n', 'is empty')])
def test_missing_or_empty_files_are_refused(tmp_path, content, message):
  path = tmp_path / 'data.txt'
  if content is not None:
    path.write_text(content)
  with pytest.raises(UserError, match=message):
    text.read_text(str(path))


def test_split_holds_out_the_end_of_the_text():
  tokens = np.arange(100)
  train, val = text.split_tokens(tokens, 0.1, 5)
  np.testing.assert_array_equal(np.concatenate([train, val]), tokens)
  assert len(val) == 10
  with pytest.raises(UserError, match='too few'):
    text.split_tokens(tokens, 0.1, 20)


def test_targets_are_inputs_shifted_by_one():
  tokens = np.arange(1000, dtype=np.int32)
  batch = batches.train_batch(tokens, step=3, batch_size=8, length=16, seed=0)
  assert batch['inputs'].shape == batch['targets'].shape == (8, 16)
  np.testing.assert_array_equal(batch['targets'], batch['inputs'] + 1)  # token i is followed by i + 1.


def test_a_training_batch_depends_only_on_seed_and_step():
  tokens = np.arange(1000, dtype=np.int32)
  a = batches.train_batch(tokens, 5, 4, 16, seed=1)
  np.testing.assert_array_equal(a['inputs'], batches.train_batch(tokens, 5, 4, 16, seed=1)['inputs'])
  assert not np.array_equal(a['inputs'], batches.train_batch(tokens, 6, 4, 16, seed=1)['inputs'])
  assert not np.array_equal(a['inputs'], batches.train_batch(tokens, 5, 4, 16, seed=2)['inputs'])


def test_validation_batches_are_fixed_and_cover_the_split():
  tokens = np.arange(500, dtype=np.int32)
  first = batches.eval_batches(tokens, 3, 4, 16)
  second = batches.eval_batches(tokens, 3, 4, 16)
  assert len(first) == 3
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert first[0]['inputs'][0, 0] == 0 and first[-1]['targets'][-1, -1] == 499
