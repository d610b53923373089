"""Tokenizers: text in, integer ids out, and back. Four kinds behind one interface.

- `CharTokenizer`: one id per distinct character of the training text (nanoGPT's Shakespeare); JSON.
- `ByteTokenizer`: the UTF-8 bytes, after three special ids (pad 0, bos 1, eos 2); any text, no training.
- `SentencePieceTokenizer`: BPE or unigram pieces learned from a corpus, with byte fallback so no text is
  ever unknown; saved as SentencePiece's own model proto.
- `HFTokenizer`: a Hugging Face `tokenizer.json` (the `tokenizers` library): byte-level BPE as GPT-2, Llama 3
  and Qwen ship, or SentencePiece-style as Llama 2 and Mistral do.

Every kind has `encode`, `decode`, `vocab_size`, `bos_id`, `eos_id`, `pad_id`, `serialized` (the bytes of
its file, which also identify it) and `filename` (the name it is saved under in a workdir). A checkpoint's
special tokens come from the files beside its tokenizer (`Specials`): `add_bos` (BOS goes before every text the
model reads: `model_ids`), `eos_ids` (every id that ends a sample; generation_config.json may list several) and
`chat_template` (Jinja, data/chat.py). flaxlm's own kinds add no BOS and have no template.
"""

import dataclasses
import io
import itertools
import json
import os
import re
from typing import Iterable, Protocol

import numpy as np
import sentencepiece as spm
import tokenizers

from flaxlm.configs.errors import UserError
from flaxlm.data import files


class Tokenizer(Protocol):
  """What the rest of flaxlm needs from a tokenizer."""
  vocab_size: int
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  add_bos: bool
  eos_ids: tuple[int, ...]
  chat_template: str | None
  filename: str

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`."""

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    """Returns the text of a sequence of ids; with `skip_special`, special tokens (BOS, EOS, ...) write no text."""

  def piece(self, token: int) -> str:
    """Returns what one id stands for, as a person would read it."""

  def serialized(self) -> bytes:
    """Returns the bytes of the tokenizer's file."""


class CharTokenizer:
  """Maps each character of a fixed alphabet to its index in that (sorted) alphabet; no special tokens."""
  filename = 'tokenizer.json'
  bos_id = eos_id = pad_id = chat_template = None
  add_bos, eos_ids = False, ()

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

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    """Returns the text of a sequence of ids (there are no special ids)."""
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
  add_bos, eos_ids, chat_template = False, (2,), None
  offset = 3
  vocab_size = 256 + offset

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of the UTF-8 bytes of `text`."""
    return np.frombuffer(text.encode('utf-8'), dtype=np.uint8).astype(np.int32) + self.offset

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    """Returns the text of the byte ids, always skipping special ids; invalid UTF-8 becomes U+FFFD."""
    data = bytes(int(i) - self.offset for i in ids if int(i) >= self.offset)
    return data.decode('utf-8', errors='replace')

  def piece(self, token: int) -> str:
    """Returns '<pad>', '<bos>', '<eos>', or the byte as <0xNN>."""
    names = {self.pad_id: '<pad>', self.bos_id: '<bos>', self.eos_id: '<eos>'}
    return names.get(int(token), f'<0x{int(token) - self.offset:02X}>')

  def serialized(self) -> bytes:
    """Returns the tokenizer's JSON description."""
    return json.dumps({'kind': 'byte'}).encode()


@dataclasses.dataclass(frozen=True)
class Specials:
  """What a checkpoint's tokenizer_config.json (and generation_config.json) say about its special tokens.

  `config` is the tokenizer_config.json as read (kept, so that a saved copy still names its tokenizer_class);
  `add_bos` None leaves it to the tokenizer; `eos_ids` are generation_config.json's eos_token_id(s).
  """
  config: dict = dataclasses.field(default_factory=dict)
  add_bos: bool | None = None
  eos_ids: tuple[int, ...] = ()
  chat_template: str | None = None

  def token(self, name: str) -> str | None:
    """Returns the text of special token `name` ('bos_token'), which the config gives as text or as a dict."""
    value = self.config.get(name)
    return value.get('content') if isinstance(value, dict) else value if isinstance(value, str) else None


def eos_ids_of(eos_id: int | None, more: tuple[int, ...]) -> tuple[int, ...]:
  """Returns the ids that end a sample: the tokenizer's EOS, then the others, each once."""
  return tuple(dict.fromkeys(([] if eos_id is None else [eos_id]) + list(more)))


class SentencePieceTokenizer:
  """A trained SentencePiece model (BPE or unigram); BOS added where its Hugging Face folder says so (the default
  there, as Llama 2 and Gemma expect), never for flaxlm's own."""
  filename = 'tokenizer.model'

  def __init__(self, model_proto: bytes, specials: Specials | None = None):
    self.proto = model_proto
    self.processor = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.processor.vocab_size()
    self.bos_id, self.eos_id, self.pad_id = (special_id(self.processor.bos_id()), special_id(self.processor.eos_id()),
                                             special_id(self.processor.pad_id()))
    self.specials = specials
    self.add_bos = specials is not None and specials.add_bos is not False and self.bos_id is not None
    self.eos_ids = eos_ids_of(self.eos_id, specials.eos_ids if specials else ())
    self.chat_template = specials.chat_template if specials else None

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text`."""
    return np.asarray(self.processor.encode(text), dtype=np.int32)

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    """Returns the text of a sequence of ids; SentencePiece's control ids (BOS, EOS) always write no text."""
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


class HFTokenizer:
  """A Hugging Face tokenizer.json, with the special tokens of the tokenizer_config.json beside it.

  `encode` is the text's own ids (added tokens such as '<|eot_id|>' written in the text become their ids, as in
  transformers); BOS is added by `model_ids` where `add_bos`: the config's add_bos_token, else whether the
  tokenizer's post-processor puts BOS first (as Llama 3's does).
  """
  filename = 'tokenizer.json'

  def __init__(self, data: bytes, specials: Specials = Specials()):
    self.data, self.specials = data, specials
    self.tokenizer = tokenizers.Tokenizer.from_str(data.decode('utf-8'))
    self.vocab_size = self.tokenizer.get_vocab_size(with_added_tokens=True)
    self.bos_id, self.eos_id, self.pad_id = (self.token_id(specials.token(name))
                                             for name in ('bos_token', 'eos_token', 'pad_token'))
    self.add_bos = self.bos_id is not None and (self.adds_bos() if specials.add_bos is None else specials.add_bos)
    self.eos_ids = eos_ids_of(self.eos_id, specials.eos_ids)
    self.chat_template = specials.chat_template

  def token_id(self, token: str | None) -> int | None:
    """Returns the id of a special token's text, None for None; raises UserError if the vocabulary lacks it."""
    if token is None:
      return None
    token_id = self.tokenizer.token_to_id(token)
    if token_id is None:
      raise UserError(f'tokenizer_config.json names the special token {token!r}, which its tokenizer.json does not '
                      'have: pass the tokenizer_config.json that came with that tokenizer.json.')
    return token_id

  def adds_bos(self) -> bool:
    """Returns whether the tokenizer's own post-processor puts BOS before a text."""
    return self.tokenizer.encode('a', add_special_tokens=True).ids[:1] == [self.bos_id] != self.encode('a')[:1].tolist()

  def encode(self, text: str) -> np.ndarray:
    """Returns the int32 ids of `text` (no BOS or EOS added)."""
    return np.asarray(self.tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
    """Returns the text of a sequence of ids, special tokens included unless `skip_special`."""
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special)

  def piece(self, token: int) -> str:
    """Returns the vocabulary entry of `token` (byte-level BPE shows a space as 'Ġ')."""
    return self.tokenizer.id_to_token(int(token))

  def serialized(self) -> bytes:
    """Returns the tokenizer.json."""
    return self.data


def bos(tokenizer: Tokenizer) -> np.ndarray:
  """Returns the int32 ids put before every text the model reads: [BOS] where the tokenizer adds it, else none."""
  return np.asarray([tokenizer.bos_id] if tokenizer.add_bos else [], np.int32)


def model_ids(tokenizer: Tokenizer, text: str) -> np.ndarray:
  """Returns the int32 ids the model reads for `text`: `bos`, then the text's ids.

  How training documents and examples, prompts to sample and texts to score all become ids (a conversation in a
  chat template is the exception: its template writes BOS itself, data/chat.py).
  """
  return np.concatenate([bos(tokenizer), tokenizer.encode(text)])


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


CONFIG, GENERATION, TEMPLATE = 'tokenizer_config.json', 'generation_config.json', 'chat_template.jinja'
SPECIAL_MAP = 'special_tokens_map.json'  # Older folders name bos/eos/pad here rather than in tokenizer_config.json.
SIDE_FILES = (CONFIG, SPECIAL_MAP, GENERATION, TEMPLATE)  # Read beside a tokenizer file: a checkpoint's specials.


def load(path: str | os.PathLike) -> Tokenizer:
  """Returns the tokenizer saved at `path`: a SentencePiece .model file, a Hugging Face tokenizer.json, or a
  char/byte JSON file; with the special tokens of the tokenizer_config.json (and generation_config.json) beside it."""
  folder = files.to_path(path).parent
  data = read_file(path)
  side = {name: (folder / name).read_bytes() for name in SIDE_FILES if (folder / name).is_file()}
  return parse(data, side, path)


def parse(data: bytes, side: dict[str, bytes], path: str | os.PathLike) -> Tokenizer:
  """Returns the tokenizer whose file holds `data`, the side files (by name) giving its special tokens."""
  try:
    spec = json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    if files.to_path(path).suffix == '.json':
      raise UserError(f'{path} is not valid JSON ({e}): restore it, or pass a tokenizer file flaxlm wrote.') from None
    return check_eos_ids(load_sentencepiece(data, path, specials_of(side, path)), path)
  if isinstance(spec, dict) and 'model' in spec:
    return check_eos_ids(load_hf(data, specials_of(side, path) or Specials(), path), path)
  return from_json(spec, path)


def from_saved(saved: dict[str, bytes]) -> Tokenizer:
  """Returns the tokenizer `files_of` gave these files (by name) for."""
  main = next(name for name in saved if name not in SIDE_FILES)
  return parse(saved[main], {name: data for name, data in saved.items() if name in SIDE_FILES}, main)


def json_object(data: bytes, name: str, path: str | os.PathLike) -> dict:
  """Returns side file `name`'s JSON object; raises UserError naming it if it is not one."""
  try:
    value = json.loads(data)
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    value = e
  if not isinstance(value, dict):
    raise UserError(f'the {name} beside {path} is not a JSON object ({value}): restore it, or remove it.')
  return value


def specials_of(side: dict[str, bytes], path: str | os.PathLike) -> Specials | None:
  """Returns the special tokens the side files say, None without a tokenizer_config.json or special_tokens_map.json
  (a tokenizer of flaxlm's own); a chat_template.jinja file is the template, as in transformers' newer folders.
  Raises UserError naming the file and key of a value of the wrong kind (an id that is text, a flag that is "yes")."""
  if CONFIG not in side and SPECIAL_MAP not in side:
    return None
  named = checked_tokens(json_object(side[SPECIAL_MAP], SPECIAL_MAP, path) if SPECIAL_MAP in side else {},
                         SPECIAL_MAP, path)
  config = checked_tokens(json_object(side.get(CONFIG, b'{}'), CONFIG, path), CONFIG, path)
  config.update({key: named[key] for key in SPECIAL_TOKENS if key in named and key not in config})
  generation = json_object(side[GENERATION], GENERATION, path) if GENERATION in side else {}
  eos = side_value(generation, 'eos_token_id', (GENERATION, path), (int, list), IDS)
  eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
  if not all(type(i) is int for i in eos):
    raise malformed((GENERATION, path), 'eos_token_id', eos, IDS)
  add_bos = side_value(config, 'add_bos_token', (CONFIG, path), (bool,), 'true or false')
  return Specials(config, add_bos, tuple(eos), chat_template(config, side.get(TEMPLATE), path))


SPECIAL_TOKENS = ('bos_token', 'eos_token', 'pad_token')  # the special tokens flaxlm reads from the side files
IDS = 'an id or a list of ids'  # what generation_config.json's eos_token_id may be
TOKEN = 'the token\'s text, or an object with its text as "content"'  # what a special token's entry may be
TEMPLATES = 'a Jinja template, or a list of {"name": text, "template": text}'  # what chat_template may be


def malformed(where: tuple[str, str | os.PathLike], key: str, value: object, what: str) -> UserError:
  """Returns the error for a side file's `key` holding `value`, which is not `what`; `where` is (the side file's
  name, the tokenizer file beside it)."""
  shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + '...'
  return UserError(f'the {where[0]} beside {where[1]} has {key}={shown}, which is not {what}: restore the file that '
                   'came with the tokenizer, or remove the key.')


def side_value(content: dict, key: str, where: tuple[str, str | os.PathLike], kinds: tuple[type, ...],
               what: str) -> object:
  """Returns `key` of a side file's `content` (None if absent or null); raises UserError naming the file and key
  unless it is an instance of `kinds` (a bool only where `kinds` holds bool), `what` saying which values fit."""
  value = content.get(key)
  if value is None or isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool)):
    return value
  raise malformed(where, key, value, what)


def checked_tokens(content: dict, name: str, path: str | os.PathLike) -> dict:
  """Returns side file `name`'s `content`; raises UserError unless each special token in it is text, or an object
  whose "content" is text (transformers' AddedToken)."""
  for key in SPECIAL_TOKENS:
    token = side_value(content, key, (name, path), (str, dict), TOKEN)
    if isinstance(token, dict) and not isinstance(token.get('content'), str):
      raise malformed((name, path), key, token, TOKEN)
  return content


def chat_template(config: dict, jinja: bytes | None, path: str | os.PathLike) -> str | None:
  """Returns the chat template: the chat_template.jinja file's (`jinja`), else the tokenizer_config.json's text, or
  the one named "default" of its list of {"name", "template"}; raises UserError if one is malformed."""
  if jinja is not None:
    try:
      return jinja.decode('utf-8')
    except UnicodeDecodeError:
      raise UserError(f'the {TEMPLATE} beside {path} is not UTF-8 text: restore it, or remove it.') from None
  template = side_value(config, 'chat_template', (CONFIG, path), (str, list), TEMPLATES)
  if not isinstance(template, list):
    return template
  if not all(isinstance(t, dict) and isinstance(t.get('name'), str) and isinstance(t.get('template'), str)
             for t in template):
    raise malformed((CONFIG, path), 'chat_template', template, TEMPLATES)
  return next((t['template'] for t in template if t['name'] == 'default'), None)


def check_eos_ids(tokenizer: Tokenizer, path: str | os.PathLike) -> Tokenizer:
  """Returns `tokenizer`; raises UserError naming generation_config.json if an id it ends samples with is not one of
  its vocabulary's."""
  outside = [i for i in tokenizer.eos_ids if not 0 <= i < tokenizer.vocab_size]
  if outside:
    raise UserError(f'the {GENERATION} beside {path} has eos_token_id {outside[0]}, outside the tokenizer\'s '
                    f'{tokenizer.vocab_size:,} ids (0 to {tokenizer.vocab_size - 1:,}): restore the file that came '
                    'with the tokenizer, or remove it.')
  return tokenizer


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
  raise UserError(f'{path} is not a flaxlm tokenizer (expected {{"kind": "byte"}} or {{"kind": "char", "chars": [each '
                  'character once]}), nor a Hugging Face tokenizer.json (it has no "model"): restore it, or pass a '
                  'tokenizer file flaxlm wrote or the tokenizer.json of a Hugging Face model.')


def load_hf(data: bytes, specials: Specials, path: str | os.PathLike) -> HFTokenizer:
  """Returns the Hugging Face tokenizer.json in `data`; raises UserError if the tokenizers library cannot read it."""
  try:
    return HFTokenizer(data, specials)
  except UserError:
    raise
  except Exception as e:  # The tokenizers library raises a bare Exception for a malformed file.
    raise UserError(f'{path} is not a tokenizer.json the tokenizers library can read ({str(e).splitlines()[0]}): '
                    'pass the tokenizer.json of a Hugging Face model.') from None


def load_sentencepiece(data: bytes, path: str | os.PathLike,
                      specials: Specials | None = None) -> SentencePieceTokenizer:
  """Returns the SentencePiece model in `data`; raises UserError if it is not one."""
  try:
    return SentencePieceTokenizer(data, specials)
  except RuntimeError:
    raise UserError(f'{path} is not a SentencePiece model, nor a flaxlm tokenizer JSON file: pass the .model file '
                    '`flaxlm-tokenizer train` wrote.') from None


def from_hf_folder(directory: str | os.PathLike) -> Tokenizer:
  """Returns a Hugging Face model folder's tokenizer: its tokenizer.json, else its SentencePiece tokenizer.model,
  with the special tokens and chat template of its tokenizer_config.json and generation_config.json."""
  folder = files.to_path(directory)
  for name in (HFTokenizer.filename, SentencePieceTokenizer.filename):
    if (folder / name).is_file():
      return load(folder / name)
  raise UserError(f'{directory} is a directory with neither a tokenizer.json nor a tokenizer.model: pass a tokenizer '
                  'file, or copy the tokenizer files of the model (from its Hugging Face repository) into it.')


def hf_config(tokenizer: Tokenizer) -> dict:
  """Returns the tokenizer_config.json transformers reads for a checkpoint's tokenizer: the one it came with, with
  flaxlm's special tokens, BOS setting and chat template."""
  name = lambda token_id: None if token_id is None else tokenizer.piece(token_id)
  config = {**tokenizer.specials.config, 'bos_token': name(tokenizer.bos_id), 'eos_token': name(tokenizer.eos_id),
            'pad_token': name(tokenizer.pad_id), 'add_bos_token': tokenizer.add_bos, 'add_eos_token': False}
  config.pop('chat_template', None)
  if tokenizer.chat_template is not None:
    config['chat_template'] = tokenizer.chat_template
  if isinstance(tokenizer, HFTokenizer):
    config.setdefault('tokenizer_class', 'PreTrainedTokenizerFast')
  return config


def files_of(tokenizer: Tokenizer) -> dict[str, bytes]:
  """Returns every file the tokenizer is saved as, by name: its own file, and for a checkpoint's tokenizer the
  tokenizer_config.json transformers reads, with a generation_config.json where several ids end a sample."""
  saved = {tokenizer.filename: tokenizer.serialized()}
  if getattr(tokenizer, 'specials', None) is None:
    return saved
  saved[CONFIG] = json.dumps(hf_config(tokenizer), indent=2, ensure_ascii=False).encode()
  if tokenizer.eos_ids[1:]:
    saved[GENERATION] = json.dumps({'bos_token_id': tokenizer.bos_id, 'eos_token_id': list(tokenizer.eos_ids)},
                                   indent=2).encode()
  return saved


def save(tokenizer: Tokenizer, directory: str | os.PathLike) -> files.Path:
  """Writes every file of the tokenizer (`files_of`) into `directory`, each atomically and only if it changes (a
  resumed run rewrites nothing), and returns the path of its own file."""
  for name, data in files_of(tokenizer).items():
    files.update(files.to_path(directory) / name, data)
  return files.to_path(directory) / tokenizer.filename


def for_corpus(kind: str, text: str) -> Tokenizer:
  """Returns the tokenizer a config names: 'char' (built from `text`), 'byte', a tokenizer file (a SentencePiece
  .model, a tokenizer.json) or a Hugging Face model folder."""
  if kind == 'char':
    return CharTokenizer.from_text(text)
  if kind == 'byte':
    return ByteTokenizer()
  if not files.to_path(kind).exists():
    raise UserError(f'data.tokenizer={kind!r} is neither char, byte nor a tokenizer file that exists, nor a model '
                    'folder: set --config.data.tokenizer (a .model file comes from `flaxlm-tokenizer train`; a '
                    'tokenizer.json or a model folder from Hugging Face).')
  return from_path(kind)


def from_path(path: str | os.PathLike) -> Tokenizer:
  """Returns the tokenizer of a file (`load`) or of a Hugging Face model folder (`from_hf_folder`)."""
  return from_hf_folder(path) if files.to_path(path).is_dir() else load(path)
