"""Where text comes from: local text files, globs of them, JSONL files with a named text field, TFDS, and the
corpus flaxlm ships; and the errors of reading them, each naming the file (and line) and the fix.

- `tfds:NAME` (or `tfds:NAME/CONFIG`): a TFDS dataset, prepared as ArrayRecord and read with
  `tfds.data_source`, without TensorFlow.
- `flaxlm:tinyshakespeare`: the 1.1 MB tiny Shakespeare text (public domain) installed with flaxlm, so the
  quickstart runs offline; it reads as a local file.
- Local files, plain or compressed (`.gz`, `.zst`). data/prepare.py turns them into a token store.
"""

import contextlib
import glob
import gzip
import importlib.resources
import io
import json
import pathlib
import socket
from typing import Iterator

import zstandard

from flaxlm.configs.errors import UserError
from flaxlm.data import files

TFDS_PREFIX = 'tfds:'
TFDS_HOST = ('storage.googleapis.com', 443)  # Where TFDS fetches prepared data and most sources from.
SHIPPED_PREFIX = 'flaxlm:'
SHIPPED = {'tinyshakespeare': 'tinyshakespeare.txt.gz'}  # name: file in data/corpus/, installed as package data.


def shipped(name: str) -> pathlib.Path:
  """Returns the installed file of the corpus flaxlm ships as `name`; raises UserError naming those there are."""
  if name not in SHIPPED:
    raise UserError(f'flaxlm ships no corpus {name!r}: use one of {", ".join(SHIPPED_PREFIX + n for n in SHIPPED)}.')
  return pathlib.Path(str(importlib.resources.files('flaxlm.data') / 'corpus' / SHIPPED[name]))


def expand(patterns: str) -> list[pathlib.Path]:
  """Returns the files matched by comma-separated paths, globs or `flaxlm:NAME`; raises UserError if one matches
  nothing."""
  paths = []
  for pattern in filter(None, (p.strip() for p in patterns.split(','))):
    if pattern.startswith(SHIPPED_PREFIX):
      paths.append(shipped(pattern[len(SHIPPED_PREFIX):]))
      continue
    if pathlib.Path(pattern).is_dir():
      raise UserError(f'{pattern} is a directory: pass its files, e.g. \'{pattern.rstrip("/")}/*.txt\'.')
    matches = [m for m in sorted(glob.glob(pattern)) if not pathlib.Path(m).is_dir()] or (
        [pattern] if pathlib.Path(pattern).is_file() else [])
    if not matches:
      raise UserError(f'no file matches {pattern}: check the path or glob (it must name an existing file).')
    paths += [files.check_regular(pathlib.Path(m)) for m in matches]
  if not paths:
    raise UserError('no input given: pass one or more files, comma-separated (globs allowed).')
  return paths


def json_record(line: str, where: str) -> object:
  """Returns the JSON value of a `line`; raises UserError naming `where` it is ('FILE:LINE') if it is not JSON."""
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    raise UserError(f'{where} is not valid JSON ({e.msg}): a .jsonl file holds one JSON object per line; fix or '
                    'remove that line.') from None


class ZstdFrames(io.RawIOBase):
  """The decompressed bytes of a .zst file, frame after frame, each read to its end marker: a file that ends inside a
  frame (truncated) raises EOFError, as gzip's reader does, where zstandard's own reader would end quietly."""

  READ = 2**16  # Compressed bytes decompressed at a time: what one read may expand, so memory stays bounded.

  def __init__(self, path: str | pathlib.Path):
    self.file, self.frame, self.out = open(path, 'rb'), None, memoryview(b'')

  def readable(self) -> bool:
    """Says that the file reads."""
    return True

  def readinto(self, buffer) -> int:
    """Fills `buffer` with the next decompressed bytes; returns how many (0 at the end of the last whole frame)."""
    while not self.out:
      rest = b''
      if self.frame is not None and self.frame.eof:  # The frame ended: what follows begins the next one.
        rest, self.frame = self.frame.unused_data, None
      data = rest or self.file.read(self.READ)
      if not data:
        if self.frame is not None:
          raise EOFError('the file ends inside a zstd frame, before its end marker')
        return 0
      if self.frame is None:
        self.frame = zstandard.ZstdDecompressor().decompressobj()
      self.out = memoryview(self.frame.decompress(data))
    size = min(len(buffer), len(self.out))
    buffer[:size], self.out = self.out[:size], self.out[size:]
    return size

  def close(self) -> None:
    """Closes the compressed file."""
    self.file.close()
    super().close()


def open_binary(path: str | pathlib.Path):
  """Returns `path` opened for reading bytes, decompressed on the fly if it ends in .gz or .zst."""
  if str(path).endswith('.gz'):
    return gzip.open(path, 'rb')
  if str(path).endswith('.zst'):
    return io.BufferedReader(ZstdFrames(path))
  return open(path, 'rb')


def open_text(path: pathlib.Path):
  """Returns `path` opened as UTF-8 text, decompressed on the fly if its name ends in .gz or .zst."""
  return io.TextIOWrapper(open_binary(path), encoding='utf-8')


def jsonl_documents(path: pathlib.Path, field: str) -> Iterator[str]:
  """Yields the `field` of each JSON object in a JSONL file; raises UserError naming a bad line's number."""
  with open_text(path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      record = json_record(line, f'{path}:{number}')
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise UserError(f'{path}:{number} has no text field {field!r}: set the field name (--config.data.text_field '
                        'in flaxlm-train, --jsonl_field in flaxlm-tokenizer).')
      yield record[field]


@contextlib.contextmanager
def reading(path: pathlib.Path) -> Iterator[None]:
  """Turns the errors of reading the file `path` inside the block into UserErrors naming it and the fix."""
  try:
    yield
  except (gzip.BadGzipFile, EOFError, zstandard.ZstdError) as e:
    raise UserError(f'{path} is not a complete compressed file ({e}): decompress it, or compress it again.') from None
  except IsADirectoryError:
    raise UserError(f'{path} is a directory: pass the files in it.') from None
  except OSError as e:
    raise UserError(f'{path} cannot be read ({e.strerror or e}): check the file and its permissions.') from None
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8.') from None


def documents_of(path: pathlib.Path, field: str) -> Iterator[str]:
  """Yields a file's documents: each JSONL record's text, or the whole of a plain text file."""
  with reading(path):
    if path.name.removesuffix('.gz').removesuffix('.zst').endswith('.jsonl'):
      yield from jsonl_documents(path, field)
    else:
      with open_text(path) as f:
        yield f.read()


def read_text(path: str) -> str:
  """Returns the whole text of one local file (plain, .gz or .zst) or of a shipped corpus, `flaxlm:NAME`."""
  files = expand(path)
  if len(files) != 1:
    raise UserError(f'{path} names {len(files)} files: name one.')
  return ''.join(documents_of(files[0], 'text'))


def lines(patterns: str, field: str = 'text', tfds_dir: str | None = None, max_documents: int = 0) -> Iterator[str]:
  """Yields the non-empty lines of every document in the files matched by `patterns`, or of a TFDS train split."""
  if patterns.startswith(TFDS_PREFIX):
    name = patterns[len(TFDS_PREFIX):]
    texts = (decode_field(record, field, name) for record in
             first(prepared_builder(name, tfds_dir).as_data_source(split='train'), max_documents))
  else:
    texts = (document for path in expand(patterns) for document in documents_of(path, field))
  for document in texts:
    yield from (line for line in document.splitlines() if line.strip())


def check_online(name: str) -> None:
  """Raises UserError within seconds if TFDS could not download `name` (rather than retrying for minutes)."""
  try:
    socket.create_connection(TFDS_HOST, timeout=3).close()
  except OSError:
    raise UserError(f'TFDS dataset {name} is not prepared and this machine is offline: prepare it where there '
                    'is a network (and pass --config.data.tfds_dir), or point --config.data.path at local text '
                    'or JSONL files.') from None


def tfds_builder(name: str, data_dir: str | None):
  """Returns the ArrayRecord builder of TFDS dataset `name`; raises UserError if TFDS has no such dataset."""
  import tensorflow_datasets as tfds  # Here, not at the top: its import costs every command a fifth of a second.
  try:
    return tfds.builder(name, data_dir=data_dir or None, file_format='array_record')
  except tfds.core.registered.DatasetNotFoundError:
    raise UserError(f'TFDS has no dataset {name!r}: check the name (e.g. tfds:tiny_shakespeare, tfds:lm1b).') from None


def prepared_builder(name: str, data_dir: str | None):
  """Returns TFDS dataset `name`'s builder, prepared (downloaded here first if needed and possible)."""
  builder = tfds_builder(name, data_dir)
  if not builder.is_prepared():
    check_online(name)
    builder.download_and_prepare()
  return builder


def first(source, count: int):
  """Yields the first `count` records of a random-access source (all of them if `count` is 0)."""
  for index in range(min(count, len(source)) if count else len(source)):
    yield source[index]


def decode_field(record: dict, field: str, name: str) -> str:
  """Returns the text of `record[field]`; raises UserError if the dataset has no such field."""
  if field not in record:
    raise UserError(f'TFDS dataset {name} has no field {field!r} (it has {sorted(record)}): set '
                    '--config.data.text_field.')
  value = record[field]
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)
