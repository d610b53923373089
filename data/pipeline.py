"""The input pipeline: documents packed into fixed-length next-token examples, shuffled and batched by Grain.

All documents, each followed by EOS (where the tokenizer has one), form one token stream, tokenized
once. Example i is the window stream[iT : iT + T + 1]: inputs are its first T tokens, targets its last T,
so every token after the first is a target exactly once per epoch; the last window is padded, and its
padding carries zero loss weight, as does every target the stream marks untrained (a fine-tuning prompt's
tokens). Segment ids and positions (counted from the document's start, or from the window's where the
document began earlier) let attention stay inside a document. Grain shuffles the examples anew each epoch
and batches them; each JAX process reads its own rows of every global batch. The iterator state (one index)
is saved in checkpoints, so a restored iterator continues exactly.

Shape key: B global batch, T sequence length.
"""

import dataclasses

import grain
import numpy as np

Example = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TokenStream:
  """Documents as one int32 stream, with each token's document index and each document's first position.

  `trained` marks the tokens whose prediction carries loss (None: all of them, as in pre-training).
  """
  tokens: np.ndarray
  segments: np.ndarray
  document_starts: np.ndarray
  trained: np.ndarray | None = None

  @classmethod
  def from_documents(cls, documents: list[np.ndarray], eos_id: int | None,
                     trained: list[np.ndarray] | None = None) -> 'TokenStream':
    """Returns the concatenation of `documents`, each followed by `eos_id` unless it is None.

    `trained` (optional) holds each document's bool mask of the tokens that carry loss; an appended EOS does.
    """
    eos = [] if eos_id is None else [np.asarray([eos_id], np.int32)]
    parts = [np.concatenate([doc.astype(np.int32), *eos]) for doc in documents]
    lengths = np.asarray([len(part) for part in parts])
    segments = np.repeat(np.arange(len(parts), dtype=np.int32), lengths)
    masks = None if trained is None else np.concatenate([np.append(mask, [True] * len(eos)).astype(bool)
                                                         for mask in trained])
    return cls(np.concatenate(parts), segments, np.concatenate([[0], np.cumsum(lengths)[:-1]]), masks)

  def __len__(self) -> int:
    return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class PackedExamples:
  """The stream's fixed-length next-token examples, read a batch of indices at a time."""
  stream: TokenStream
  length: int
  pad_id: int

  def __len__(self) -> int:
    return -(-(len(self.stream) - 1) // self.length)  # ceil: the last, partial window is padded.

  def gather(self, indices_B: np.ndarray) -> Example:
    """Returns the examples at `indices_B`: inputs, targets, segment_ids, positions and loss weights (B x T).

    A target's weight is 1 where it is a real token the stream marks trained, else 0.
    """
    offsets_BxT1 = np.asarray(indices_B)[:, None] * self.length + np.arange(self.length + 1)
    valid_BxT1 = offsets_BxT1 < len(self.stream)
    clipped_BxT1 = np.minimum(offsets_BxT1, len(self.stream) - 1)
    trained_BxT1 = valid_BxT1 if self.stream.trained is None else valid_BxT1 & self.stream.trained[clipped_BxT1]
    tokens_BxT1 = np.where(valid_BxT1, self.stream.tokens[clipped_BxT1], self.pad_id).astype(np.int32)
    segments_BxT = np.where(valid_BxT1, self.stream.segments[clipped_BxT1], -1)[:, :-1].astype(np.int32)
    window_starts_Bx1 = offsets_BxT1[:, :1]
    starts_BxT = np.maximum(self.stream.document_starts[segments_BxT.clip(0)], window_starts_Bx1)
    positions_BxT = offsets_BxT1[:, :-1] - starts_BxT  # from the document's start, or the window's if later.
    return {'inputs': tokens_BxT1[:, :-1], 'targets': tokens_BxT1[:, 1:], 'segment_ids': segments_BxT,
            'positions': np.where(segments_BxT >= 0, positions_BxT, 0).astype(np.int32),
            'weights': trained_BxT1[:, 1:].astype(np.float32)}

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
