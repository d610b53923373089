"""Local corpora: plain text files, globs of them, and JSONL files with a named text field."""

import glob
import json
import pathlib
from typing import Iterator

from configs.errors import UserError


def expand(patterns: str) -> list[pathlib.Path]:
  """Returns the files matched by comma-separated paths or globs; raises UserError if one matches nothing."""
  paths = []
  for pattern in filter(None, (p.strip() for p in patterns.split(','))):
    matches = sorted(glob.glob(pattern)) or ([pattern] if pathlib.Path(pattern).is_file() else [])
    if not matches:
      raise UserError(f'no file matches {pattern}: check the path or glob.')
    paths += [pathlib.Path(m) for m in matches]
  if not paths:
    raise UserError('no input given: pass one or more files, comma-separated (globs allowed).')
  return paths


def jsonl_documents(path: pathlib.Path, field: str) -> Iterator[str]:
  """Yields the `field` of each JSON object in a JSONL file; raises UserError naming a bad line's number."""
  with path.open(encoding='utf-8') as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f'{path}:{number} is not valid JSON ({e.msg}): fix or remove that line.') from None
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise UserError(f'{path}:{number} has no text field {field!r}: set the field name with --jsonl_field.')
      yield record[field]


def documents(path: pathlib.Path, field: str) -> Iterator[str]:
  """Yields a file's documents: each JSONL record's text, or the whole of a plain text file."""
  try:
    if path.suffix == '.jsonl':
      yield from jsonl_documents(path, field)
    else:
      yield path.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text ({e.reason} at byte {e.start}): convert it to UTF-8.') from None


def lines(patterns: str, field: str = 'text') -> Iterator[str]:
  """Yields the non-empty lines of every document in the files matched by `patterns`."""
  for path in expand(patterns):
    for document in documents(path, field):
      yield from (line for line in document.splitlines() if line.strip())
