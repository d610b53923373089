"""A character-level tokenizer: one id per distinct character of the training text, saved as JSON."""

import json
import pathlib

import numpy as np

from configs.errors import UserError


class CharTokenizer:
  """Maps each character of a fixed alphabet to its index in that (sorted) alphabet."""

  def __init__(self, chars: list[str]):
    self.chars = chars
    self.ids = {ch: i for i, ch in enumerate(chars)}

  @classmethod
  def from_text(cls, text: str) -> 'CharTokenizer':
    """Returns the tokenizer whose alphabet is the sorted set of characters in `text`."""
    return cls(sorted(set(text)))

  @classmethod
  def load(cls, path: str | pathlib.Path) -> 'CharTokenizer':
    """Returns the tokenizer saved at `path` by `save`."""
    spec = json.loads(pathlib.Path(path).read_text(encoding='utf-8'))
    if spec.get('kind') != 'char':
      raise UserError(f'{path} is not a character tokenizer: expected "kind": "char".')
    return cls(spec['chars'])

  def save(self, path: str | pathlib.Path) -> None:
    """Writes the alphabet as JSON to `path`."""
    pathlib.Path(path).write_text(json.dumps({'kind': 'char', 'chars': self.chars}), encoding='utf-8')

  @property
  def vocab_size(self) -> int:
    """Returns V, the number of distinct tokens."""
    return len(self.chars)

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`; raises UserError naming any character outside the alphabet."""
    unknown = sorted(set(text) - self.ids.keys())
    if unknown:
      raise UserError(f'characters {unknown!r} are not in the tokenizer\'s alphabet: '
                      'use only characters that occur in the training text.')
    return np.fromiter((self.ids[ch] for ch in text), dtype=np.int32, count=len(text))

  def decode(self, ids) -> str:
    """Returns the text of a sequence of ids."""
    return ''.join(self.chars[int(i)] for i in ids)
