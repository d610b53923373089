"""Tests of data/batches.py: next-token batches from a token array."""

import numpy as np

from data import batches


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
