"""The input pipeline: a token stream cut into fixed-length next-token examples, shuffled and batched by Grain.

A stream is documents one after another, each followed by EOS where the tokenizer has one: a token store's split
(data/store.py), read from disk, or fine-tuning examples held in memory (`TokenStream`). Example i is the window
stream[iT : iT + T + 1]: inputs are its first T tokens, targets its last T, so every token after the first is a
target exactly once per epoch; the last window is padded, and its padding carries zero loss weight, as does every
target the stream marks untrained (a fine-tuning prompt's tokens). Segment ids and positions (counted from the
document's start, or from the window's where the document began earlier) let attention stay inside a document.
Grain shuffles the examples anew each epoch and batches them; each JAX process reads its own rows of every global
batch. The iterator state (one index) is saved in checkpoints, so a restored iterator continues exactly.

Shape key: B global batch, T sequence length, L tokens of a window (T + 1).
"""

import dataclasses
from typing import Protocol

import grain
import numpy as np

Example = dict[str, np.ndarray]


class Stream(Protocol):
  """A token stream read a window at a time."""

  def __len__(self) -> int:
    """Returns the number of tokens."""

  def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Returns tokens [start, stop) (fewer at the end) as int32, whether each begins a document, and whether each
    is trained (None: all are)."""


@dataclasses.dataclass(frozen=True)
class TokenStream:
  """Documents as one int32 stream held in memory, with the tokens that begin a document marked.

  `trained` marks the tokens whose prediction carries loss (None: all of them, as in pre-training).
  """
  tokens: np.ndarray
  begins: np.ndarray
  trained: np.ndarray | None = None

  @classmethod
  def from_documents(cls, documents: list[np.ndarray], eos_id: int | None,
                     trained: list[np.ndarray] | None = None) -> 'TokenStream':
    """Returns the concatenation of `documents`, each followed by `eos_id` unless it is None.

    `trained` (optional) holds each document's bool mask of the tokens that carry loss; an appended EOS does.
    """
    eos = [] if eos_id is None else [np.asarray([eos_id], np.int32)]
    parts = [np.concatenate([doc.astype(np.int32), *eos]) for doc in documents]
    begins = np.zeros(sum(map(len, parts)), bool)
    begins[np.cumsum([0] + [len(part) for part in parts[:-1]])] = True
    masks = None if trained is None else np.concatenate([np.append(mask, [True] * len(eos)).astype(bool)
                                                         for mask in trained])
    return cls(np.concatenate(parts), begins, masks)

  def __len__(self) -> int:
    return len(self.tokens)

  def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Returns tokens [start, stop), whether each begins a document, and whether each is trained."""
    return (self.tokens[start:stop], self.begins[start:stop],
            None if self.trained is None else self.trained[start:stop])


def pad_window(window: tuple, length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns a window's tokens, begins and trained marks padded to `length`, the padding untrained."""
  tokens_L, begins_L, trained_L = window
  trained_L = np.ones(len(tokens_L), bool) if trained_L is None else trained_L
  pad = length - len(tokens_L)
  if not pad:
    return tokens_L, begins_L, trained_L
  return (np.pad(tokens_L, (0, pad), constant_values=pad_id), np.pad(begins_L, (0, pad)),
          np.pad(trained_L, (0, pad)))


def segments_and_positions(begins_BxT: np.ndarray, valid_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Returns each input's segment id (-1 for padding) and position: counted from the last document start at or
  before it in the window, or from the window's start."""
  starts_BxT = begins_BxT.copy()
  starts_BxT[:, 0] = True
  segments_BxT = np.cumsum(starts_BxT, axis=1) - 1
  index_BxT = np.broadcast_to(np.arange(begins_BxT.shape[1]), begins_BxT.shape)
  positions_BxT = index_BxT - np.maximum.accumulate(np.where(starts_BxT, index_BxT, 0), axis=1)
  return (np.where(valid_BxT, segments_BxT, -1).astype(np.int32),
          np.where(valid_BxT, positions_BxT, 0).astype(np.int32))


@dataclasses.dataclass(frozen=True)
class PackedExamples:
  """The stream's fixed-length next-token examples, read a batch of indices at a time."""
  stream: Stream
  length: int
  pad_id: int

  def __len__(self) -> int:
    return -(-(len(self.stream) - 1) // self.length)  # ceil: the last, partial window is padded.

  def gather(self, indices_B: np.ndarray) -> Example:
    """Returns the examples at `indices_B`: inputs, targets, segment_ids, positions and loss weights (B x T).

    A target's weight is 1 where it is a real token the stream marks trained, else 0.
    """
    windows = [pad_window(self.stream.window(int(i) * self.length, (int(i) + 1) * self.length + 1),
                          self.length + 1, self.pad_id) for i in np.asarray(indices_B)]
    tokens_BxL, begins_BxL, trained_BxL = (np.stack(parts) for parts in zip(*windows))
    offsets_BxL = np.asarray(indices_B)[:, None] * self.length + np.arange(self.length + 1)
    valid_BxL = offsets_BxL < len(self.stream)
    segments_BxT, positions_BxT = segments_and_positions(begins_BxL[:, :-1], valid_BxL[:, :-1])
    return {'inputs': tokens_BxL[:, :-1].astype(np.int32), 'targets': tokens_BxL[:, 1:].astype(np.int32),
            'segment_ids': segments_BxT, 'positions': positions_BxT,
            'weights': (valid_BxL & trained_BxL)[:, 1:].astype(np.float32)}

  def padding_fraction(self) -> float:
    """Returns the fraction of target slots per epoch that are padding."""
    return 1 - (len(self.stream) - 1) / (len(self) * self.length)


def train_dataset(examples: PackedExamples, batch_size: int, seed: int, rows: np.ndarray) -> grain.MapDataset:
  """Returns the infinite stream of this process's `rows` of each global batch, reshuffled each epoch.

  Every process draws the same global batches from `seed`, so what a step trains on does not depend on
  how many processes (hosts) share the work.
  """
  batches = grain.MapDataset.range(len(examples)).shuffle(seed=seed).repeat(None).batch(batch_size, drop_remainder=True)
  return batches.map(lambda indices_B: examples.gather(indices_B[rows]))


def train_iterator(examples: PackedExamples, batch_size: int, seed: int, threads: int,
                   rows: np.ndarray | None = None) -> grain.DatasetIterator:
  """Returns an iterator over `train_dataset` (with `get_state`/`set_state`), reading with `threads` threads.

  `rows` are the rows of each global batch this process reads (default: all). 0 threads reads in the caller's
  thread: fastest on a 2-core machine, where a thread competes with the training step; hosts with many
  cores can read ahead with more.
  """
  rows = np.arange(batch_size) if rows is None else rows
  options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * threads, 1))
  return iter(train_dataset(examples, batch_size, seed, rows).to_iter_dataset(options))


def eval_batches(examples: PackedExamples, batch_size: int, max_batches: int,
                 rows: np.ndarray | None = None) -> list[Example]:
  """Returns this process's `rows` (default: all) of the first `max_batches` batches in order, the same every time."""
  rows = np.arange(batch_size) if rows is None else rows
  batches = grain.MapDataset.range(len(examples)).batch(batch_size, drop_remainder=True)
  return [examples.gather(batches[i][rows]) for i in range(min(max_batches, len(batches)))]
