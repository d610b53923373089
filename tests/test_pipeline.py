"""Tests of data/pipeline.py: packing loses no token, targets shift by one, shards, seeds and exact restore."""

import collections

import numpy as np
import pytest

from flaxlm.data import pipeline

EOS, PAD = 1, 0


def documents(count: int = 7, seed: int = 0) -> list[np.ndarray]:
  """Returns `count` documents of random lengths and random tokens 2..49 (0 and 1 are PAD and EOS)."""
  rng = np.random.default_rng(seed)
  return [rng.integers(2, 50, rng.integers(5, 40)).astype(np.int32) for _ in range(count)]


def packed(length: int = 8, count: int = 7) -> pipeline.PackedExamples:
  """Returns the packed examples of `documents(count)`."""
  return pipeline.PackedExamples(pipeline.TokenStream.from_documents(documents(count), EOS), length, PAD)


def test_packing_loses_and_duplicates_no_token_over_an_epoch():
  examples = packed()
  epoch = examples.gather(np.arange(len(examples)))
  real_targets = epoch['targets'][epoch['weights'] == 1]
  stream = np.concatenate([np.append(doc, EOS) for doc in documents()])
  assert collections.Counter(real_targets.tolist()) + collections.Counter([int(stream[0])]) == \
      collections.Counter(stream.tolist())
  np.testing.assert_array_equal(np.concatenate([[epoch['inputs'][0, 0]], real_targets]), stream)
  padding = (epoch['weights'] == 0).sum()
  assert padding < examples.length and examples.padding_fraction() == pytest.approx(padding / epoch['weights'].size)


def test_targets_are_inputs_shifted_by_one():
  epoch = packed().gather(np.arange(5))
  np.testing.assert_array_equal(epoch['inputs'][:, 1:], epoch['targets'][:, :-1])


def test_segments_and_positions_restart_at_each_document():
  examples = packed(length=200, count=3)
  example = examples.gather(np.array([0]))
  lengths = [len(doc) + 1 for doc in documents(3)]
  assert sum(lengths) < 200  # one example holds all three documents, then padding.
  np.testing.assert_array_equal(example['segment_ids'][0][:sum(lengths)], np.repeat(np.arange(3), lengths))
  np.testing.assert_array_equal(example['positions'][0][:sum(lengths)],
                                np.concatenate([np.arange(n) for n in lengths]))
  assert (example['segment_ids'][0][sum(lengths):] == -1).all()


def test_positions_count_from_the_window_when_a_document_began_before_it():
  examples = packed(length=8, count=2)
  epoch = examples.gather(np.arange(len(examples)))
  assert epoch['positions'].max() < examples.length
  first_length = len(documents(2)[0]) + 1  # the first document and its EOS.
  second = epoch['positions'][1]  # window 1 starts inside the first document (longer than 8 tokens).
  assert first_length > 8 and second[0] == 0
  np.testing.assert_array_equal(second[:min(8, first_length - 8)], np.arange(min(8, first_length - 8)))


def batches(iterator, count: int) -> list[np.ndarray]:
  """Returns the inputs of the next `count` batches."""
  return [next(iterator)['inputs'] for _ in range(count)]


def test_a_restored_iterator_yields_the_same_next_100_batches_across_epochs():
  examples = packed()  # about 25 examples: 100 batches of 4 cross many epoch boundaries.
  assert len(examples) * 3 < 400
  original = pipeline.train_iterator(examples, 4, seed=3, threads=0)
  batches(original, 9)
  state = original.get_state()
  expected = batches(original, 100)
  restored = pipeline.train_iterator(examples, 4, seed=3, threads=0)
  restored.set_state(state)
  for a, b in zip(expected, batches(restored, 100)):
    np.testing.assert_array_equal(a, b)


def test_each_epoch_sees_every_example_once_in_a_seeded_order():
  examples = packed()
  n = len(examples)
  first = pipeline.train_iterator(examples, 1, seed=5, threads=0)
  two_epochs = [tuple(b[0]) for b in batches(first, 2 * n)]
  every = {tuple(x) for x in examples.gather(np.arange(n))['inputs']}
  assert set(two_epochs[:n]) == every and set(two_epochs[n:]) == every
  assert two_epochs[:n] != two_epochs[n:]  # reshuffled each epoch.
  same = [tuple(b[0]) for b in batches(pipeline.train_iterator(examples, 1, seed=5, threads=0), n)]
  other = [tuple(b[0]) for b in batches(pipeline.train_iterator(examples, 1, seed=6, threads=0), n)]
  assert same == two_epochs[:n] and other != same


def test_processes_read_their_own_rows_of_the_same_global_batches():
  examples = packed(count=12)
  whole = pipeline.train_iterator(examples, 4, seed=1, threads=0)
  halves = [pipeline.train_iterator(examples, 4, seed=1, threads=0, rows=np.asarray(rows)) for rows in ([0, 1], [2, 3])]
  for _ in range(4):  # past the end of the first epoch (3 batches).
    parts = [next(half) for half in halves]
    np.testing.assert_array_equal(np.concatenate([p['inputs'] for p in parts]), next(whole)['inputs'])
  eval_parts = [pipeline.eval_batches(examples, 4, 2, np.asarray(rows)) for rows in ([0, 1], [2, 3])]
  for first, second, full in zip(*eval_parts, pipeline.eval_batches(examples, 4, 2)):
    np.testing.assert_array_equal(np.concatenate([first['targets'], second['targets']]), full['targets'])


def test_validation_batches_are_fixed_and_finite():
  examples = packed()
  first, again = pipeline.eval_batches(examples, 4, 3), pipeline.eval_batches(examples, 4, 3)
  assert len(first) == 3
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert len(pipeline.eval_batches(examples, 4, 1000)) == len(examples) // 4


def masked_epoch(docs: list[np.ndarray], trained: list[np.ndarray] | None) -> pipeline.Example:
  """Returns one epoch of the length-8 examples of `docs`, whose tokens `trained` marks carry loss."""
  examples = pipeline.PackedExamples(pipeline.TokenStream.from_documents(docs, EOS, trained), 8, PAD)
  return examples.gather(np.arange(len(examples)))


def test_changing_a_prompt_tokens_target_changes_no_loss_term():
  docs = documents(count=9)
  trained = [np.arange(len(doc)) >= len(doc) // 2 for doc in docs]  # the first half of each is its prompt.
  epoch = masked_epoch(docs, trained)
  stream_trained = np.concatenate([np.append(mask, True) for mask in trained])  # each EOS is trained.
  weights = epoch['weights'].ravel()
  np.testing.assert_array_equal(weights[:len(stream_trained) - 1], stream_trained[1:])  # target j is token j + 1.
  assert not weights[len(stream_trained) - 1:].any()  # padding.
  altered = masked_epoch([np.where(mask, doc, 49 - doc) for doc, mask in zip(docs, trained)], trained)
  assert (altered['targets'] != epoch['targets']).any()  # every prompt token changed ...
  np.testing.assert_array_equal(altered['weights'], epoch['weights'])  # ... and no weighted target did.
  np.testing.assert_array_equal(altered['targets'] * altered['weights'], epoch['targets'] * epoch['weights'])


def test_a_stream_without_masks_trains_every_real_target():
  assert pipeline.TokenStream.from_documents(documents(), EOS).trained is None
  all_trained = [np.ones(len(doc), bool) for doc in documents()]
  np.testing.assert_array_equal(masked_epoch(documents(), all_trained)['weights'],
                                masked_epoch(documents(), None)['weights'])
