"""Tokenizers: text in, integer ids out, and back. Three kinds behind one interface.

- `CharTokenizer`: one id per distinct character of the training text (nanoGPT's Shakespeare); JSON.
- `ByteTokenizer`: the UTF-8 bytes, after three special ids (pad 0, bos 1, eos 2); any text, no training.
- `SentencePieceTokenizer`: BPE or unigram pieces learned from a corpus, with byte fallback so no text is
  ever unknown; saved as SentencePiece's own model proto.

Every kind has `encode`, `decode`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `serialized` (the bytes of
its file, which also identify it) and `filename` (the name it is saved under in a workdir).
"""

import io
import json
import pathlib
from typing import Iterable, Protocol

import numpy as np
import sentencepiece as spm

from flaxlm.configs.errors import UserError
from flaxlm.data import files


class Tokenizer(Protocol):
  """What the rest of flaxlm needs from a tokenizer."""
  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  filename: str

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`."""

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of a sequence of ids."""

  def piece(self, token: int) -> str:
    """Returns what one id stands for, as a person would read it."""

  def serialized(self) -> bytes:
    """Returns the bytes of the tokenizer's file."""


class CharTokenizer:
  """Maps each character of a fixed alphabet to its index in that (sorted) alphabet; no special tokens."""
  filename = 'tokenizer.json'
  bos_id = eos_id = pad_id = None

  def __init__(self, chars: list[str]):
    self.chars = chars
    self.ids = {ch: i for i, ch in enumerate(chars)}
    self.vocab_size = len(chars)

  @classmethod
  def from_text(cls, text: str) -> 'CharTokenizer':
    """Returns the tokenizer whose alphabet is the sorted set of characters in `text`."""
    return cls(sorted(set(text)))

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`; raises UserError naming any character outside the alphabet."""
    unknown = sorted(set(text) - self.ids.keys())
    if unknown:
      raise UserError(f'characters {unknown!r} are not in the tokenizer\'s alphabet: '
                      'use only characters that occur in the training text.')
    return np.fromiter((self.ids[ch] for ch in text), dtype=np.int32, count=len(text))

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of a sequence of ids."""
    return ''.join(self.chars[int(i)] for i in ids)

  def piece(self, token: int) -> str:
    """Returns the character of `token`."""
    return self.chars[int(token)]

  def serialized(self) -> bytes:
    """Returns the alphabet as JSON."""
    return json.dumps({'kind': 'char', 'chars': self.chars}).encode()


class ByteTokenizer:
  """The UTF-8 bytes of the text, shifted past the special ids pad 0, bos 1 and eos 2: 259 ids in all."""
  filename = 'tokenizer.json'
  pad_id, bos_id, eos_id = 0, 1, 2
  offset = 3
  vocab_size = 256 + offset

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of the UTF-8 bytes of `text`."""
    return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32) + self.offset

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of the byte ids, skipping special ids; invalid UTF-8 becomes U+FFFD."""
    data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
    return data.decode('utf-8', errors='replace')

  def piece(self, token: int) -> str:
    """Returns '<pad>', '<bos>', '<eos>', or the byte as <0xNN>."""
    names = {self.pad_id: '<pad>', self.bos_id: '<bos>', self.eos_id: '<eos>'}
    return names.get(int(token), f'<0x{int(token) - self.offset:02X}>')

  def serialized(self) -> bytes:
    """Returns the tokenizer's JSON description."""
    return json.dumps({'kind': 'byte'}).encode()


class SentencePieceTokenizer:
  """A trained SentencePiece model (BPE or unigram)."""
  filename = 'tokenizer.model'

  def __init__(self, model_proto: bytes):
    self.proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.processor.vocab_size()
    self.bos_id, self.eos_id, self.pad_id = (special_id(self.processor.bos_id()), special_id(self.processor.eos_id()),
                                             special_id(self.processor.pad_id()))

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`."""
    return np.asarray(self.processor.encode(text), dtype=np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Returns the text of a sequence of ids."""
    return self.processor.decode([int(i) for i in ids])

  def piece(self, token: int) -> str:
    """Returns the piece of `token`, '▁' standing for a space."""
    return self.processor.id_to_piece(int(token))

  def serialized(self) -> bytes:
    """Returns the model proto."""
    return self.proto


def special_id(value: int) -> int | None:
  """Returns SentencePiece's id for a special token, or None where it has none (-1)."""
  return None if value < 0 else value


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = 'bpe',
                        max_sentences: int = 1_000_000, seed_sentencepiece_size: int = 1_000_000) -> SentencePieceTokenizer:
  """Returns a SentencePiece model trained on `texts` (at most `max_sentences` of them, sampled).

  Text is kept as it is (no normalization, whitespace and newlines preserved), digits are split, and
  byte fallback maps any character outside the vocabulary to its UTF-8 bytes, so every text round-trips.
  """
  if model_type not in ('bpe', 'unigram'):
    raise UserError(f'--model_type={model_type!r} is not one of bpe, unigram.')
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, character_coverage=0.9995, normalization_rule_name='identity',
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True,
        input_sentence_size=max_sentences, shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
  except RuntimeError as e:
    reason = str(e).split('] ')[-1].strip()
    raise UserError(f'SentencePiece could not train on this corpus: {reason}') from None
  return SentencePieceTokenizer(model.getvalue())


def load(path: str | pathlib.Path) -> Tokenizer:
  """Returns the tokenizer saved at `path`: a SentencePiece .model file, or a char/byte JSON file."""
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f'tokenizer file {path} does not exist: train one with `flaxlm-tokenizer train`.')
  data = file.read_bytes()
  try:
    spec = json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError):
    return load_sentencepiece(data, path)
  kinds = {'char': lambda: CharTokenizer(spec['chars']), 'byte': ByteTokenizer}
  if not isinstance(spec, dict) or spec.get('kind') not in kinds:
    raise UserError(f'{path} is not a flaxlm tokenizer: expected "kind" to be one of {sorted(kinds)}.')
  return kinds[spec['kind']]()


def load_sentencepiece(data: bytes, path: str | pathlib.Path) -> SentencePieceTokenizer:
  """Returns the SentencePiece model in `data`; raises UserError if it is not one."""
  try:
    return SentencePieceTokenizer(data)
  except RuntimeError:
    raise UserError(f'{path} is neither a SentencePiece model nor a flaxlm tokenizer JSON file.') from None


def save(tokenizer: Tokenizer, directory: str | pathlib.Path) -> pathlib.Path:
  """Writes the tokenizer into `directory` under its kind's filename and returns the path."""
  return files.replace(pathlib.Path(directory) / tokenizer.filename, tokenizer.serialized())


def for_corpus(kind: str, text: str) -> Tokenizer:
  """Returns the tokenizer a config names: 'char' (built from `text`), 'byte', or a SentencePiece model path."""
  if kind == 'char':
    return CharTokenizer.from_text(text)
  if kind == 'byte':
    return ByteTokenizer()
  if not pathlib.Path(kind).is_file():
    raise UserError(f'data.tokenizer={kind!r} is neither char, byte nor a tokenizer file that exists: set '
                    '--config.data.tokenizer (a .model file comes from `flaxlm-tokenizer train`).')
  return load(kind)
