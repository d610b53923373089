"""The token store: a corpus tokenized once into ArrayRecord shards of token ids, which training reads by index.

A store is a directory:
  manifest.json              written last: a store without one is incomplete (its preparation stopped or runs)
  tokenizer.json or .model   the tokenizer whose ids the shards hold
  plan.json                  the inputs and settings it was prepared from (a resumed preparation must match)
  train-00000.array_record   each split's tokens, group by group; a group's shard of a split may be absent
  validation-00000.array_record
  group-00000.json           what a group of the input wrote, once its shards are whole (a resume skips it)

A split is one stream of tokens: documents one after another, each followed by EOS where the tokenizer has
one. A shard's records hold CHUNK consecutive tokens each (its last record fewer), preceded by the offsets of
the tokens in the record that begin a document: record = uint32 count n, n uint32 offsets, the tokens. Token
ids are uint16 where the vocabulary fits, else uint32. Reading a window costs one or two records however large
the store is; only the manifest (a few numbers per shard) is held in memory.

Shape key: L tokens of a window.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile

import numpy as np
from array_record.python import array_record_data_source, array_record_module
from etils import epath

from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib

MANIFEST, PLAN = 'manifest.json', 'plan.json'
SPLITS = ('train', 'validation')
CHUNK = 16_384  # Tokens per record: a window reads one or two, and the reader's index stays small.
VERSION = 1


def dtype_for(vocab_size: int) -> np.dtype:
  """Returns the narrowest unsigned integer type that holds every id of a `vocab_size` vocabulary."""
  return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def shard_name(split: str, group: int) -> str:
  """Returns the file name of `split`'s shard from input group `group`."""
  return f'{split}-{group:05d}.array_record'


def group_name(group: int) -> str:
  """Returns the file name of the record of what input group `group` wrote."""
  return f'group-{group:05d}.json'


def encode_record(tokens_L: np.ndarray, begins: np.ndarray) -> bytes:
  """Returns one record: the offsets in `tokens_L` that begin a document, then the tokens."""
  return np.uint32(len(begins)).tobytes() + begins.astype(np.uint32).tobytes() + tokens_L.tobytes()


def decode_record(record: bytes, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
  """Returns a record's tokens (as stored) and the offsets among them that begin a document."""
  count = int(np.frombuffer(record, np.uint32, 1)[0])
  begins = np.frombuffer(record, np.uint32, count, offset=4)
  return np.frombuffer(record, dtype, offset=4 * (count + 1)), begins


class ShardWriter:
  """Writes one split's tokens from one input group as records of CHUNK tokens; the file appears when closed."""

  def __init__(self, path: epath.Path, dtype: np.dtype):
    self.path, self.dtype = path, dtype
    # ArrayRecord writes local files only: a shard for Cloud Storage is written here, then copied up.
    self.partial = (path.parent / f'.{path.name}.partial' if not files.is_cloud(path)
                    else epath.Path(tempfile.gettempdir()) / f'flaxlm-{os.getpid()}-{path.name}')
    self.writer = None
    self.pending, self.begins = [], []  # Tokens not yet written (fewer than CHUNK), and their document starts.
    self.buffered = self.tokens = self.documents = self.records = 0

  def add(self, tokens_L: np.ndarray, begins_document: bool) -> None:
    """Appends tokens, the first beginning a document if `begins_document`."""
    if begins_document and len(tokens_L):
      self.begins.append(self.buffered)
      self.documents += 1
    self.pending.append(tokens_L.astype(self.dtype))
    self.buffered += len(tokens_L)
    self.tokens += len(tokens_L)
    if self.buffered >= CHUNK:
      self.flush(whole_records_only=True)

  def flush(self, whole_records_only: bool) -> None:
    """Writes the pending tokens as records of CHUNK (and, unless `whole_records_only`, the remainder)."""
    tokens = np.concatenate(self.pending) if self.pending else np.zeros(0, self.dtype)
    begins = np.asarray(self.begins, np.int64)
    written = len(tokens) // CHUNK * CHUNK if whole_records_only else len(tokens)
    for start in range(0, written, CHUNK):
      stop = min(start + CHUNK, written)
      self.write(encode_record(tokens[start:stop], begins[(begins >= start) & (begins < stop)] - start))
    self.pending, self.begins = [tokens[written:]], list(begins[begins >= written] - written)
    self.buffered = len(tokens) - written

  def write(self, record: bytes) -> None:
    """Writes one record, opening the partial file at the first."""
    if self.writer is None:
      self.writer = array_record_module.ArrayRecordWriter(str(self.partial), 'group_size:1')
    self.writer.write(record)
    self.records += 1

  def close(self) -> dict:
    """Writes what remains, renames the shard into place and returns its counts (no file if it holds no token)."""
    self.flush(whole_records_only=False)
    if self.writer is not None:
      self.writer.close()
      if not files.is_cloud(self.path):
        self.partial.replace(self.path)  # A shard a stopped preparation left is written anew.
      else:
        with self.partial.open('rb') as local, self.path.open('wb') as remote:
          shutil.copyfileobj(local, remote, 2**24)
        self.partial.unlink()
    return {'file': self.path.name, 'tokens': self.tokens, 'documents': self.documents, 'records': self.records}


@dataclasses.dataclass(frozen=True)
class Split:
  """One split of a store: its token stream, read by token index from the shards the manifest lists."""
  paths: tuple[str, ...]
  tokens_S: np.ndarray  # tokens per shard.
  records_S: np.ndarray  # records per shard.
  dtype: np.dtype

  def __post_init__(self):
    object.__setattr__(self, 'token_starts', np.concatenate([[0], np.cumsum(self.tokens_S)]))
    object.__setattr__(self, 'record_starts', np.concatenate([[0], np.cumsum(self.records_S)]))
    ranges = [f'{path}[0:{records}]' for path, records in zip(self.paths, self.records_S)]  # No file opened to count.
    object.__setattr__(self, 'source', array_record_data_source.ArrayRecordDataSource(ranges) if ranges else None)

  def __len__(self) -> int:
    return int(self.token_starts[-1])

  def spans(self, start: int, stop: int) -> list[tuple[int, int, int]]:
    """Returns (record key, first, last) of each record slice that together hold tokens [start, stop)."""
    spans = []
    while start < stop:
      shard = int(np.searchsorted(self.token_starts, start, side='right')) - 1
      local = start - int(self.token_starts[shard])
      first = local % CHUNK
      take = min(stop - start, CHUNK - first, int(self.token_starts[shard + 1]) - start)
      spans.append((int(self.record_starts[shard]) + local // CHUNK, first, first + take))
      start += take
    return spans

  def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Returns tokens [start, stop) as int32, whether each begins a document, and None (every token is trained)."""
    spans = self.spans(start, min(stop, len(self)))
    records = [self.source[key] for key, _, _ in spans]  # One at a time: __getitems__ starts threads per call.
    tokens, begins = [], []
    for record, (_, first, last) in zip(records, spans):
      ids, offsets = decode_record(record, self.dtype)
      starts = np.zeros(last - first, bool)
      starts[offsets[(offsets >= first) & (offsets < last)] - first] = True
      tokens.append(ids[first:last])
      begins.append(starts)
    if not spans:
      return np.zeros(0, np.int32), np.zeros(0, bool), None
    return np.concatenate(tokens).astype(np.int32), np.concatenate(begins), None


@dataclasses.dataclass(frozen=True)
class Store:
  """A complete store: its manifest, the digest that identifies it, and its tokenizer."""
  path: epath.Path
  manifest: dict
  digest: str
  tokenizer: tokenizer_lib.Tokenizer

  def split(self, name: str) -> Split:
    """Returns the reader of split `name` ('train' or 'validation')."""
    shards = self.manifest['splits'][name]['shards']
    return Split(tuple(str(self.path / s['file']) for s in shards), np.asarray([s['tokens'] for s in shards], np.int64),
                 np.asarray([s['records'] for s in shards], np.int64), np.dtype(self.manifest['dtype']))


def is_store(path: str) -> bool:
  """Returns whether `path` is a directory that holds a store, complete or not (it has a plan or a manifest)."""
  folder = epath.Path(path)
  return folder.is_dir() and ((folder / PLAN).exists() or (folder / MANIFEST).exists())


def digest(data: bytes) -> str:
  """Returns the SHA-256 of `data` in hex: how a store names a tokenizer and a run names its store."""
  return hashlib.sha256(data).hexdigest()


def open_store(path: str) -> Store:
  """Returns the complete store at `path`; raises UserError if it is incomplete or not a store flaxlm wrote."""
  folder = epath.Path(path)
  if not (folder / MANIFEST).exists():
    done = len(list(folder.glob('group-*.json')))
    raise UserError(f'token store {path} is incomplete (no {MANIFEST}; {done} input group(s) finished): run the same '
                    '`flaxlm-data prepare` command again to finish it.')
  data = (folder / MANIFEST).read_bytes()
  try:
    manifest = json.loads(data)
    tokenizer_file = folder / manifest['tokenizer']['file']
    if manifest['version'] != VERSION or digest(tokenizer_file.read_bytes()) != manifest['tokenizer']['sha256']:
      raise ValueError('its tokenizer file does not match the manifest')
    tokenizer = tokenizer_lib.load(tokenizer_file)
  except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
    raise UserError(f'token store {path} is damaged ({e}): prepare it again with `flaxlm-data prepare` into a new '
                    'directory.') from None
  return Store(folder, manifest, digest(data), tokenizer)
