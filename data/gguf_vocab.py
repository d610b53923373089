"""A tokenizer as a GGUF file's vocabulary (its `tokenizer.ggml.*` keys), so that llama.cpp gives a text the ids
flaxlm gives it, and chats with the model's own template.

- A SentencePiece model: llama.cpp's `llama` vocabulary, each piece with its score and type (normal, unknown,
  control, unused, byte), as llama.cpp's converter writes a tokenizer.model.
- A tokenizer.json of SentencePiece's kind (BPE with byte fallback, '▁' for spaces: Llama 2, Mistral, Gemma): the
  same `llama` vocabulary, each merged piece scored by its merge's rank, so that llama.cpp, which merges the pair of
  highest score first, merges in the order transformers does (llama.cpp's converter scores every piece -1000, and
  llama.cpp then merges left to right).
- A byte-level BPE tokenizer.json (GPT-2, Llama 3, Qwen): llama.cpp's `gpt2` vocabulary, its merges, and the name
  llama.cpp knows its pre-tokenizer by (`PRE_TOKENIZERS`, from the split pattern).
- flaxlm's byte and char tokenizers: a `gpt2` vocabulary too. Its tokens are the characters byte-level BPE writes for
  each byte (or each character's bytes, merged back into the character), so llama.cpp's ids are flaxlm's for every
  text the tokenizer takes (a char tokenizer refuses characters outside its alphabet; llama.cpp drops them).
Ids the tokenizer lacks, up to the model's vocabulary, are unused pads `[PADi]`, as the converter writes them; a
tokenizer.json's ids past the model's vocabulary (which no embedding row holds) are left out.
"""

import functools
import json
import re
from typing import Any

import gguf

from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib

T = gguf.TokenType
# The split patterns of byte-level BPE tokenizers, by the pre-tokenizer name llama.cpp gives each (llama-vocab.cpp).
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
               r"\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_TOKENIZERS = {LLAMA3_SPLIT: 'llama-bpe', QWEN2_SPLIT: 'qwen2'}
SPACE = '\u2581'  # SentencePiece's '▁'
NO_OP_MERGE = '0 0'  # llama.cpp requires merges; "00" is no token of a byte vocabulary, so this one merges nothing


@functools.cache
def byte_chars() -> dict[int, str]:
  """Returns the character byte-level BPE writes for each byte (GPT-2's bytes_to_unicode): printable Latin-1 bytes
  stand for themselves, the others for characters from U+0100 on."""
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def byte_level(text: str) -> str:
  """Returns `text` as byte-level BPE writes it: a character per UTF-8 byte."""
  chars = byte_chars()
  return ''.join(chars[b] for b in text.encode('utf-8'))


def padded(tokens: list[str], kinds: list[int], scores: list[float] | None, vocab_size: int) -> None:
  """Appends the unused pads `[PADi]` that fill the vocabulary up to `vocab_size` ids (in place)."""
  for i in range(len(tokens), vocab_size):
    tokens.append(f'[PAD{i}]')
    kinds.append(T.UNUSED)
    if scores is not None:
      scores.append(-10000.0)


def adds_space(tokenizer: tokenizer_lib.Tokenizer) -> bool:
  """Returns whether a SentencePiece-kind tokenizer puts '▁' before a text's first word (its dummy prefix)."""
  first = tokenizer.encode('a')[:1]
  return bool(len(first)) and tokenizer.piece(int(first[0])).startswith(SPACE)


def sentencepiece_vocab(tokenizer: tokenizer_lib.SentencePieceTokenizer, vocab_size: int) -> dict[str, Any]:
  """Returns the `llama` vocabulary of a SentencePiece model: pieces, scores and types."""
  p = tokenizer.processor
  kind = lambda i: (T.UNKNOWN if p.is_unknown(i) else T.CONTROL if p.is_control(i) else T.UNUSED if p.is_unused(i)
                    else T.BYTE if p.is_byte(i) else T.NORMAL)
  tokens = [p.id_to_piece(i) for i in range(p.vocab_size())]
  scores = [float(p.get_score(i)) for i in range(p.vocab_size())]
  kinds = [kind(i) for i in range(p.vocab_size())]
  padded(tokens, kinds, scores, vocab_size)
  return dict(model='llama', pre='default', tokens=tokens, scores=scores, kinds=kinds, merges=None,
              add_space_prefix=adds_space(tokenizer))


def hf_vocab(tokenizer: tokenizer_lib.HFTokenizer, vocab_size: int) -> dict[str, Any]:
  """Returns the vocabulary of a tokenizer.json: `llama` for SentencePiece's kind, `gpt2` for byte-level BPE; raises
  UserError for another kind (WordPiece, Unigram), which flaxlm does not write."""
  spec = json.loads(tokenizer.data)
  model = spec.get('model') or {}
  if model.get('type') != 'BPE':
    raise UserError(f'the tokenizer.json is a {model.get("type")} tokenizer, and flaxlm writes GGUF vocabularies of '
                    'BPE tokenizers (byte-level, or SentencePiece\'s kind) only: export with --format=flaxlm, or '
                    'convert the tokenizer with llama.cpp\'s converter.')
  added = {token['id']: token for token in spec.get('added_tokens', [])}
  by_id = {i: token for token, i in model['vocab'].items()}
  by_id.update({i: token['content'] for i, token in added.items()})
  tokens = [by_id.get(i, f'[PAD{i}]') for i in range(vocab_size)]
  kinds = [T.UNUSED if i not in by_id else (T.CONTROL if added[i].get('special') else T.USER_DEFINED) if i in added
           else T.NORMAL for i in range(vocab_size)]
  pairs = [pair if isinstance(pair, list) else pair.split(' ', 1) for pair in model.get('merges', [])]
  if model.get('byte_fallback'):
    kinds = [T.BYTE if re.fullmatch(r'<0x[0-9A-F]{2}>', token) and kind == T.NORMAL else
             T.UNKNOWN if token == model.get('unk_token') else kind for token, kind in zip(tokens, kinds)]
    rank = {''.join(pair): r for r, pair in reversed(list(enumerate(pairs)))}  # a piece's first merge
    scores = [-float(rank[token]) if token in rank else 0.0 if kind != T.UNUSED else -10000.0
              for token, kind in zip(tokens, kinds)]
    return dict(model='llama', pre='default', tokens=tokens, scores=scores, kinds=kinds, merges=None,
                add_space_prefix=adds_space(tokenizer))
  # gguf's merges are 'left right'; a space inside a part is written as byte-level BPE writes it, as gguf-py does.
  merges = [' '.join(part.replace(' ', byte_chars()[ord(' ')]) for part in pair) for pair in pairs]
  return dict(model='gpt2', pre=pre_tokenizer(spec), tokens=tokens, scores=None, kinds=kinds,
              merges=merges or [NO_OP_MERGE], add_space_prefix=None)


def pre_tokenizer(spec: dict) -> str:
  """Returns llama.cpp's name for a byte-level tokenizer.json's pre-tokenizer: 'gpt-2' for ByteLevel's own split,
  else the name of its Split pattern; raises UserError for one llama.cpp does not know."""
  steps = spec.get('pre_tokenizer') or {}
  steps = steps.get('pretokenizers', [steps]) if steps.get('type') == 'Sequence' else [steps]
  if any(step.get('type') == 'ByteLevel' and step.get('use_regex', True) for step in steps):
    return 'gpt-2'
  patterns = [(step.get('pattern') or {}).get('Regex') for step in steps if step.get('type') == 'Split']
  for pattern in patterns:
    if pattern in PRE_TOKENIZERS:
      return PRE_TOKENIZERS[pattern]
  raise UserError(f'the tokenizer.json splits text with {patterns[0] if patterns else "no pattern"!r}, which is none '
                  f'of the pre-tokenizers flaxlm names for llama.cpp ({", ".join(PRE_TOKENIZERS.values())}, gpt-2): '
                  'convert the model with llama.cpp\'s own converter, which knows more.')


def byte_vocab(tokenizer: tokenizer_lib.ByteTokenizer, vocab_size: int) -> dict[str, Any]:
  """Returns the `gpt2` vocabulary of flaxlm's byte tokenizer: its three special ids, then a token per byte."""
  tokens = ['<pad>', '<bos>', '<eos>'] + [byte_chars()[b] for b in range(256)]
  kinds = [T.CONTROL] * tokenizer.offset + [T.NORMAL] * 256
  padded(tokens, kinds, None, vocab_size)
  return dict(model='gpt2', pre='gpt-2', tokens=tokens, scores=None, kinds=kinds, merges=[NO_OP_MERGE],
              add_space_prefix=None)


def char_vocab(tokenizer: tokenizer_lib.CharTokenizer, vocab_size: int) -> dict[str, Any]:
  """Returns the `gpt2` vocabulary of flaxlm's char tokenizer: a token per character, in byte-level form, and the
  merges that join a character's bytes back into it."""
  tokens = [byte_level(ch) for ch in tokenizer.chars]
  merges = list(dict.fromkeys(f'{token[:i]} {token[i]}' for token in tokens for i in range(1, len(token))))
  kinds = [T.NORMAL] * len(tokens)
  padded(tokens, kinds, None, vocab_size)
  return dict(model='gpt2', pre='gpt-2', tokens=tokens, scores=None, kinds=kinds, merges=merges or [NO_OP_MERGE],
              add_space_prefix=None)


def vocabulary(tokenizer: tokenizer_lib.Tokenizer, vocab_size: int) -> dict[str, Any]:
  """Returns the GGUF vocabulary of `tokenizer` for a model of `vocab_size` ids: model, pre, tokens, scores, kinds,
  merges and add_space_prefix (None where the kind has none)."""
  if isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
    return sentencepiece_vocab(tokenizer, vocab_size)
  if isinstance(tokenizer, tokenizer_lib.HFTokenizer):
    return hf_vocab(tokenizer, vocab_size)
  if isinstance(tokenizer, tokenizer_lib.ByteTokenizer):
    return byte_vocab(tokenizer, vocab_size)
  return char_vocab(tokenizer, vocab_size)


def notes(vocab: dict[str, Any]) -> list[str]:
  """Returns what a user of a GGUF file of the vocabulary `vocab` (`vocabulary`'s) should know: a SentencePiece
  vocabulary without byte pieces, at whose first character outside its pieces llama.cpp stops (it falls back to
  byte pieces)."""
  if vocab['model'] == 'llama' and T.BYTE not in vocab['kinds']:
    return ['note: the tokenizer has no byte pieces (<0x00>..<0xFF>), and llama.cpp stops at the first character '
            'that is not one of its pieces: give it text of those characters only, or train the tokenizer with '
            'byte fallback (flaxlm-tokenizer does).']
  return []


def end_of_turn(tokenizer: tokenizer_lib.Tokenizer) -> int | None:
  """Returns the id that ends a chat turn where it is not EOS (the first of the other ids that end a sample)."""
  return next((i for i in tokenizer.eos_ids if i != tokenizer.eos_id), None)


def unknown_id(tokenizer: tokenizer_lib.Tokenizer) -> int | None:
  """Returns the id of the unknown token: a SentencePiece model's, or the one a tokenizer_config.json names."""
  if isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
    return tokenizer_lib.special_id(tokenizer.processor.unk_id())
  if isinstance(tokenizer, tokenizer_lib.HFTokenizer):
    return tokenizer.token_id(tokenizer.specials.token('unk_token'))
  return None


def add_vocabulary(writer: gguf.GGUFWriter, tokenizer: tokenizer_lib.Tokenizer, vocab_size: int) -> None:
  """Adds `tokenizer`'s vocabulary, special ids, whether BOS is added and its chat template to `writer`'s keys."""
  vocab = vocabulary(tokenizer, vocab_size)
  writer.add_tokenizer_model(vocab['model'])
  writer.add_tokenizer_pre(vocab['pre'])
  writer.add_token_list(vocab['tokens'])
  if vocab['scores'] is not None:
    writer.add_token_scores(vocab['scores'])
  writer.add_token_types([int(kind) for kind in vocab['kinds']])
  if vocab['merges'] is not None:
    writer.add_token_merges(vocab['merges'])
  if vocab['add_space_prefix'] is not None:
    writer.add_add_space_prefix(vocab['add_space_prefix'])
  specials = dict(bos=tokenizer.bos_id, eos=tokenizer.eos_id, eot=end_of_turn(tokenizer), pad=tokenizer.pad_id,
                  unk=unknown_id(tokenizer))
  for name, token_id in specials.items():
    if token_id is not None:
      getattr(writer, f'add_{name}_token_id')(int(token_id))
  writer.add_add_bos_token(bool(tokenizer.add_bos))
  writer.add_add_eos_token(False)
  if tokenizer.chat_template:
    writer.add_chat_template(tokenizer.chat_template)
