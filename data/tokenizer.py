"""Tokenizers: text in, integer ids out, and back. Three kinds behind one interface.

- `CharTokenizer`: one id per distinct character of the training text (nanoGPT's Shakespeare); JSON.
- `ByteTokenizer`: the UTF-8 bytes, after three special ids (pad 0, bos 1, eos 2); any text, no training.
- `SentencePieceTokenizer`: BPE or unigram pieces learned from a corpus, with byte fallback so no text is
  ever unknown; saved as SentencePiece's own model proto.

Every kind has `encode`, `decode`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `serialized` (the bytes of
its file, which also identify it) and `filename` (the name it is saved under in a workdir).
"""

import io
import itertools
import json
import os
import re
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


SPECIAL_AND_BYTE_TOKENS = 4 + 256  # unk, bos, eos, pad, and one token per byte for byte fallback.
VOCABULARY_LIMITS = (  # SentencePiece's own words for a --vocab_size the text cannot fill, and what to tell the user.
    (re.compile(r'Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)'),
     '--vocab_size={} is more than this text can fill: pass --vocab_size={} or less, or train on more text.'),
    (re.compile(r'Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)'),
     '--vocab_size={} leaves no room for the special, byte and character tokens of this text: pass --vocab_size={} '
     'or more.'),
)


def check_training(vocab_size: int, model_type: str, max_sentences: int) -> None:
  """Raises UserError, naming flaxlm-tokenizer's flag, if a setting of `train_sentencepiece` is out of its range."""
  if model_type not in ('bpe', 'unigram'):
    raise UserError(f'--model_type={model_type!r} is not one of bpe, unigram: pass --model_type=bpe or '
                    '--model_type=unigram.')
  if vocab_size <= SPECIAL_AND_BYTE_TOKENS:
    raise UserError(f'--vocab_size={vocab_size} leaves no room beyond the {SPECIAL_AND_BYTE_TOKENS} special and byte '
                    'tokens: pass a larger --vocab_size, e.g. 8000.')
  if max_sentences < 0:
    raise UserError(f'--max_sentences={max_sentences} must not be negative: pass a line count (0 reads every line).')


def training_error(error: RuntimeError) -> UserError:
  """Returns SentencePiece's training error as a UserError, in flaxlm-tokenizer's terms where it has them."""
  reason = str(error).split('] ')[-1].strip()
  for pattern, message in VOCABULARY_LIMITS:
    found = pattern.search(reason)
    if found:
      return UserError(message.format(*found.groups()))
  return UserError(f'SentencePiece could not train on this corpus: {reason}')


def train_sentencepiece(texts: Iterable[str], vocab_size: int, model_type: str = 'bpe',
                        max_sentences: int = 1_000_000, seed_sentencepiece_size: int = 1_000_000) -> SentencePieceTokenizer:
  """Returns a SentencePiece model trained on `texts` (at most `max_sentences` of them, sampled).

  Text is kept as it is (no normalization, whitespace and newlines preserved), digits are split, and
  byte fallback maps any character outside the vocabulary to its UTF-8 bytes, so every text round-trips.
  The settings are checked before the first text is read; raises UserError if there is no text.
  """
  check_training(vocab_size, model_type, max_sentences)
  texts = iter(texts)
  first = next(texts, None)
  if first is None:
    raise UserError('the input holds no text: pass files with some text to train on.')
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=itertools.chain([first], texts), model_writer=model, vocab_size=vocab_size,
        model_type=model_type, byte_fallback=True, character_coverage=0.9995, normalization_rule_name='identity',
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, split_digits=True,
        input_sentence_size=max_sentences, shuffle_input_sentence=True,
        seed_sentencepiece_size=seed_sentencepiece_size, unk_id=0, bos_id=1, eos_id=2, pad_id=3, minloglevel=2)
  except RuntimeError as e:
    raise training_error(e) from None
  return SentencePieceTokenizer(model.getvalue())


def load(path: str | os.PathLike) -> Tokenizer:
  """Returns the tokenizer saved at `path`: a SentencePiece .model file, or a char/byte JSON file."""
  data = read_file(path)
  try:
    spec = json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    if files.to_path(path).suffix == '.json':
      raise UserError(f'{path} is not valid JSON ({e}): restore it, or pass a tokenizer file flaxlm wrote.') from None
    return load_sentencepiece(data, path)
  return from_json(spec, path)


def read_file(path: str | os.PathLike) -> bytes:
  """Returns the bytes of the tokenizer file `path`; raises UserError if it is not a file that can be read."""
  file = files.to_path(path)
  if file.is_dir():
    raise UserError(f'tokenizer file {path} is a directory: pass the file in it ({SentencePieceTokenizer.filename} '
                    f'or {CharTokenizer.filename}).')
  if not file.is_file():
    raise UserError(f'tokenizer file {path} does not exist: train one with `flaxlm-tokenizer train`.')
  try:
    return file.read_bytes()
  except OSError as e:
    raise UserError(f'tokenizer file {path} cannot be read ({e.strerror}): check its permissions.') from None


def from_json(spec: object, path: str | os.PathLike) -> Tokenizer:
  """Returns the tokenizer a flaxlm tokenizer JSON describes; raises UserError if it describes none."""
  kind = spec.get('kind') if isinstance(spec, dict) else None
  if kind == 'byte':
    return ByteTokenizer()
  chars = spec.get('chars') if kind == 'char' else None
  if isinstance(chars, list) and all(isinstance(c, str) and len(c) == 1 for c in chars) and len(set(chars)) == len(
      chars):
    return CharTokenizer(chars)
  raise UserError(f'{path} is not a flaxlm tokenizer: expected {{"kind": "byte"}} or {{"kind": "char", "chars": '
                  '[each character once]}; restore it, or pass a tokenizer file flaxlm wrote.')


def load_sentencepiece(data: bytes, path: str | os.PathLike) -> SentencePieceTokenizer:
  """Returns the SentencePiece model in `data`; raises UserError if it is not one."""
  try:
    return SentencePieceTokenizer(data)
  except RuntimeError:
    raise UserError(f'{path} is not a SentencePiece model, nor a flaxlm tokenizer JSON file: pass the .model file '
                    '`flaxlm-tokenizer train` wrote.') from None


def save(tokenizer: Tokenizer, directory: str | os.PathLike) -> files.Path:
  """Writes the tokenizer into `directory` under its kind's filename and returns the path."""
  return files.replace(files.to_path(directory) / tokenizer.filename, tokenizer.serialized())


def for_corpus(kind: str, text: str) -> Tokenizer:
  """Returns the tokenizer a config names: 'char' (built from `text`), 'byte', or a SentencePiece model path."""
  if kind == 'char':
    return CharTokenizer.from_text(text)
  if kind == 'byte':
    return ByteTokenizer()
  if not files.to_path(kind).is_file():
    raise UserError(f'data.tokenizer={kind!r} is neither char, byte nor a tokenizer file that exists: set '
                    '--config.data.tokenizer (a .model file comes from `flaxlm-tokenizer train`).')
  return load(kind)
