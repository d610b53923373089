"""The token store: a corpus tokenized once into ArrayRecord shards of token ids, which training reads by index.

A store is a directory:
  manifest.json              written last: a store without one is incomplete (its preparation stopped or runs);
                             it records each shard's counts (tokens, documents, records), size and SHA-256
  tokenizer.json or .model   the tokenizer whose ids the shards hold
  plan.json                  the inputs and settings it was prepared from (a resumed preparation must match)
  train-00000.array_record   each split's tokens, group by group; a group's shard of a split may be absent
  validation-00000.array_record
  group-00000.json           what a group of the input wrote, once its shards are whole (a resume skips it)
  .flaxlm-lock.json          while a preparation writes it: the lock of its one writer (data/lock.py)

A split is one stream of tokens: documents one after another, each followed by EOS where the tokenizer has
one. A shard's records hold CHUNK consecutive tokens each (its last record fewer), preceded by the offsets of
the tokens in the record that begin a document: record = uint32 count n, n uint32 offsets, the tokens. Token
ids are uint16 where the vocabulary fits, else uint32. Reading a window costs one or two records however large
the store is; only the manifest (a few numbers per shard) is held in memory.

A store proves its integrity at two costs. `open_store` checks the manifest's every field and each shard's size on
disk (a stat per shard), so a store that is incomplete, truncated, from an older flaxlm or hand-edited is refused
before a run writes anything, and the reader checks each record it reads holds the tokens the manifest counts (a
shard replaced by another of its size is refused at its first read); `verify` (`flaxlm-data verify`) reads every
shard: its SHA-256, then every record's counts and token ids.

Shape key: L tokens of a window.
"""

import dataclasses
import hashlib
import json
import os
import re
import tempfile

import numpy as np
from array_record.python import array_record_data_source, array_record_module
from etils import epath

from flaxlm.configs.errors import UserError
from flaxlm.data import files, lock, tokenizer as tokenizer_lib

MANIFEST, PLAN = 'manifest.json', 'plan.json'
SPLITS = ('train', 'validation')
CHUNK = 16_384  # Tokens per record: a window reads one or two, and the reader's index stays small.
VERSION = 2  # 2: the manifest records each shard's size and SHA-256.
COUNTS = ('tokens', 'documents', 'records', 'bytes')  # A shard's counts in its manifest entry.
DAMAGED = ('prepare it again into a new directory with `flaxlm-data prepare`, or run `flaxlm-data verify {path}` to '
           'see its damage.')


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
    """Writes what remains, renames the shard into place and returns its manifest entry: counts, size and SHA-256
    (no file if it holds no token: size 0, no SHA-256)."""
    self.flush(whole_records_only=False)
    entry = {'file': self.path.name, 'tokens': self.tokens, 'documents': self.documents, 'records': self.records,
             'bytes': 0, 'sha256': ''}
    if self.writer is not None:
      self.writer.close()
      entry['bytes'] = os.path.getsize(self.partial)
      if not files.is_cloud(self.path):
        # ArrayRecord writes the file itself, unseen: it is hashed once written, while it is in the page cache.
        entry['sha256'] = file_digest(self.partial)
        self.partial.replace(self.path)  # A shard a stopped preparation left is written anew.
      else:
        entry['sha256'] = upload(self.partial, self.path)
        self.partial.unlink()
    return entry


def upload(local: epath.Path, remote: epath.Path) -> str:
  """Copies the file `local` to `remote` and returns its SHA-256, computed on the way."""
  sha256 = hashlib.sha256()
  with local.open('rb') as source, remote.open('wb') as target:
    while block := source.read(2**24):
      sha256.update(block)
      target.write(block)
  return sha256.hexdigest()


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

  def spans(self, start: int, stop: int) -> list[tuple[int, int, int, int]]:
    """Returns (record key, first, last, the record's tokens) of each record slice that together hold tokens
    [start, stop)."""
    spans = []
    while start < stop:
      shard = int(np.searchsorted(self.token_starts, start, side='right')) - 1
      local, end = start - int(self.token_starts[shard]), int(self.token_starts[shard + 1])
      first = local % CHUNK
      take = min(stop - start, CHUNK - first, end - start)
      length = min(CHUNK, end - (start - first))  # CHUNK, but in a shard's last record.
      spans.append((int(self.record_starts[shard]) + local // CHUNK, first, first + take, length))
      start += take
    return spans

  def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Returns tokens [start, stop) as int32, whether each begins a document, and None (every token is trained)."""
    spans = self.spans(start, min(stop, len(self)))
    records = [self.read(key) for key, *_ in spans]  # One at a time: __getitems__ starts threads per call.
    tokens, begins = [], []
    for record, (key, first, last, length) in zip(records, spans):
      ids, offsets = decode_record(record, self.dtype)
      if len(ids) != length:  # The shard is not the one its manifest counted (replaced, or the counts edited).
        raise UserError(f'record {key} of {self.shard_of(key)} holds {len(ids)} tokens, not the {length} its '
                        'manifest counts: the store is damaged; run `flaxlm-data verify` on it.')
      starts = np.zeros(last - first, bool)
      starts[offsets[(offsets >= first) & (offsets < last)] - first] = True
      tokens.append(ids[first:last])
      begins.append(starts)
    if not spans:
      return np.zeros(0, np.int32), np.zeros(0, bool), None
    return np.concatenate(tokens).astype(np.int32), np.concatenate(begins), None

  def shard_of(self, key: int) -> str:
    """Returns the path of the shard that holds record `key`."""
    return self.paths[int(np.searchsorted(self.record_starts, key, side='right')) - 1]

  def read(self, key: int) -> bytes:
    """Returns record `key`; raises UserError naming its shard if the shard cannot be read (changed since written)."""
    try:
      return self.source[key]
    except (RuntimeError, IndexError, OSError) as e:
      raise UserError(f'{self.shard_of(key)} cannot be read ({str(e).splitlines()[0]}): the store is damaged; run '
                      '`flaxlm-data verify` on it.') from None


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


def file_digest(path: epath.Path | str) -> str:
  """Returns the SHA-256 of the file at `path` in hex, read a block at a time."""
  with epath.Path(path).open('rb') as f:
    return hashlib.file_digest(f, 'sha256').hexdigest()


def field(entry: object, key: str, kind: type, where: str) -> object:
  """Returns `entry[key]`; raises ValueError naming `where` unless `entry` is a dict holding a `kind` there (an int
  that is not negative, not a bool)."""
  value = entry.get(key) if isinstance(entry, dict) else None
  if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
    raise ValueError(f'{where}{key} is {"missing" if value is None else repr(value)[:40]}, not a'
                     f'{" non-negative int" if kind is int else " " + kind.__name__}')
  return value


def check_shard(split: str, shard: object) -> str:
  """Returns a manifest shard entry's file name; raises ValueError saying what is wrong with the entry."""
  name = field(shard, 'file', str, f'a {split} shard\'s ')
  if not re.fullmatch(rf'{split}-\d{{5}}\.array_record', name):
    raise ValueError(f'its {split} shard {name!r} is not named {split}-NNNNN.array_record')
  tokens, documents, records, _ = (field(shard, key, int, f'shard {name}\'s ') for key in COUNTS)
  if records != -(-tokens // CHUNK) or documents > tokens:
    raise ValueError(f'shard {name}\'s counts disagree ({tokens} tokens in {records} records of {CHUNK}, '
                     f'{documents} documents)')
  if not re.fullmatch('[0-9a-f]{64}', str(field(shard, 'sha256', str, f'shard {name}\'s '))):
    raise ValueError(f'shard {name}\'s sha256 is not a SHA-256')
  return name


def check_split(name: str, split: object) -> list[str]:
  """Returns the file names of a manifest split's shards; raises ValueError saying what is wrong with the split."""
  shards = field(split, 'shards', list, f'the {name} split\'s ')
  names = [check_shard(name, shard) for shard in shards]
  for key in ('tokens', 'documents'):
    total = field(split, key, int, f'the {name} split\'s ')
    if total != sum(shard[key] for shard in shards):
      raise ValueError(f'the {name} split\'s {key} ({total}) are not its shards\' sum')
  if not split['tokens']:
    raise ValueError(f'its {name} split is empty')
  return names


def check_manifest(manifest: object, vocab_size: int) -> None:
  """Raises ValueError saying what is wrong if `manifest` is not the manifest of a store whose tokenizer has
  `vocab_size` ids: every field present, of its type and range, and every count consistent."""
  stated = field(field(manifest, 'tokenizer', dict, ''), 'vocab_size', int, 'the tokenizer\'s ')
  if stated != vocab_size:
    raise ValueError(f'its vocab_size {stated} is not its tokenizer\'s {vocab_size}')
  if field(manifest, 'dtype', str, '') != dtype_for(vocab_size).name:
    raise ValueError(f'its dtype {manifest["dtype"]!r} is not {dtype_for(vocab_size).name}, the ids of a '
                     f'{vocab_size}-token vocabulary')
  if field(manifest, 'chunk_tokens', int, '') != CHUNK:
    raise ValueError(f'its chunk_tokens {manifest["chunk_tokens"]} is not {CHUNK}')
  splits = field(manifest, 'splits', dict, '')
  if sorted(splits) != sorted(SPLITS):
    raise ValueError(f'its splits are {sorted(splits)}, not {" and ".join(SPLITS)}')
  names = [name for split in SPLITS for name in check_split(split, splits[split])]
  if len(set(names)) != len(names):
    raise ValueError('it lists a shard twice')


def check_sizes(folder: epath.Path, manifest: dict) -> None:
  """Raises ValueError naming the first shard that is missing or not of the size the manifest records."""
  for split in SPLITS:
    for shard in manifest['splits'][split]['shards']:
      path = folder / shard['file']
      if not path.is_file():
        raise ValueError(f'its shard {shard["file"]} is missing')
      if path.stat().length != shard['bytes']:
        raise ValueError(f'its shard {shard["file"]} is {path.stat().length} bytes, not the {shard["bytes"]} its '
                         'manifest records')


def check_version(manifest: object, path: str) -> None:
  """Raises UserError if the manifest is of a store an older (or newer) flaxlm wrote."""
  version = manifest.get('version') if isinstance(manifest, dict) else None
  if type(version) is int and version != VERSION:  # Not a bool: field() refuses those.
    raise UserError(f'token store {path} was made by {"an older" if version < VERSION else "a newer"} flaxlm (store '
                    f'version {version}, this one reads {VERSION}): prepare it again with `flaxlm-data prepare` into '
                    'a new directory (the same command, another --output).')


def manifest_tokenizer(folder: epath.Path, manifest: object) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer the manifest names; raises ValueError if its file is not the one the manifest hashes."""
  entry = field(manifest, 'tokenizer', dict, '')
  name = field(entry, 'file', str, 'the tokenizer\'s ')
  if '/' in name or name.startswith('.') or not (folder / name).is_file():
    raise ValueError(f'its tokenizer file {name!r} is not in the store')
  if digest((folder / name).read_bytes()) != entry.get('sha256'):
    raise ValueError('its tokenizer file does not match the manifest')
  return tokenizer_lib.load(folder / name)


def open_store(path: str) -> Store:
  """Returns the complete store at `path`; raises UserError if it is incomplete, not a store this flaxlm wrote, or
  its manifest or the sizes of its shards are not as written (the cheap checks: no shard is read)."""
  folder = epath.Path(path)
  if not (folder / MANIFEST).exists():
    done = len(list(folder.glob('group-*.json')))
    writer = lock.read(folder / lock.LOCK)
    if not lock.is_stale(writer):
      raise UserError(f'token store {path} is being prepared by {lock.describe(writer)} ({done} input group(s) '
                      'finished): wait for it to finish, then run again.')
    raise UserError(f'token store {path} is incomplete (no {MANIFEST}; {done} input group(s) finished): run the same '
                    '`flaxlm-data prepare` command again to finish it.')
  data = (folder / MANIFEST).read_bytes()
  try:
    manifest = json.loads(data)
    check_version(manifest, path)
    field(manifest, 'version', int, '')
    tokenizer = manifest_tokenizer(folder, manifest)
    check_manifest(manifest, tokenizer.vocab_size)
    check_sizes(folder, manifest)
  except ValueError as e:
    raise UserError(f'token store {path} is damaged ({e}): {DAMAGED.format(path=path)}') from None
  return Store(folder, manifest, digest(data), tokenizer)


def record_counts(path: epath.Path, dtype: np.dtype, vocab_size: int) -> dict:
  """Returns what a shard's records hold: its counts (tokens, documents, records), read record by record; raises
  ValueError at a record that is not as the writer makes them (CHUNK tokens but the last, ordered document starts,
  ids below `vocab_size`)."""
  reader = array_record_module.ArrayRecordReader(str(path))
  counts = {'tokens': 0, 'documents': 0, 'records': reader.num_records()}
  for start in range(0, counts['records'], 64):
    for key, record in enumerate(reader.read(start, min(start + 64, counts['records'])), start):
      ids, begins = decode_record(record, dtype)
      if (len(ids) != CHUNK and key < counts['records'] - 1) or np.any(np.diff(begins.astype(np.int64)) <= 0) or (
          len(begins) and begins[-1] >= len(ids)):
        raise ValueError(f'its record {key} is not one flaxlm writes ({len(ids)} tokens, {len(begins)} starts)')
      if len(ids) and int(ids.max()) >= vocab_size:
        raise ValueError(f'its record {key} holds id {int(ids.max())}, beyond the {vocab_size}-token vocabulary')
      counts['tokens'] += len(ids)
      counts['documents'] += len(begins)
  reader.close()
  return counts


def shard_damage(path: epath.Path, shard: dict, dtype: np.dtype, vocab_size: int) -> str:
  """Returns what is wrong with a shard the manifest lists ('' if nothing): its SHA-256, then what its records hold."""
  if file_digest(path) != shard['sha256']:
    return 'has another SHA-256 than the manifest records: its bytes changed after it was written'
  try:
    counts = record_counts(path, dtype, vocab_size)
  except (ValueError, RuntimeError, IndexError) as e:  # RuntimeError: ArrayRecord's for a file it cannot parse.
    return f'cannot be read as written ({str(e).splitlines()[0]})'
  stated = {key: shard[key] for key in counts}
  told = lambda c: ', '.join(f'{c[key]} {key}' for key in c)
  return '' if counts == stated else f'holds {told(counts)}, where the manifest records {told(stated)}'


def verify(path: str) -> Store:
  """Returns the store at `path` once all of it is proven as written: `open_store`'s checks, then each shard's
  SHA-256, then every record read (its counts, and its token ids below the vocabulary size); raises UserError
  naming the first shard damaged and how."""
  opened = open_store(path)
  for split in SPLITS:
    for shard in opened.manifest['splits'][split]['shards']:
      damage = shard_damage(opened.path / shard['file'], shard, np.dtype(opened.manifest['dtype']),
                            opened.tokenizer.vocab_size)
      if damage:
        raise UserError(f'token store {path} is damaged: its shard {shard["file"]} {damage}: prepare it again into '
                        'a new directory with `flaxlm-data prepare`.')
  return opened
