"""Tests of data/tokenizer.py: the char, byte and SentencePiece tokenizers, saving and loading them."""

import random

import numpy as np
import pytest

from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.data.tokenizer import ByteTokenizer, CharTokenizer

TRICKY = 'Héllo wörld,\n\tindented  twice  \n\n😀 emoji, 日本語のテキスト, naïve café 2026\n  trailing  '


def generated_corpus(num_lines: int = 400, seed: int = 0) -> list[str]:
  """Returns lines of words in several scripts, with accents, emoji and digits."""
  rng = random.Random(seed)
  words = ['the', 'river', 'runs', 'café', 'naïve', 'über', '日本', '語', 'テキスト', '😀', '🚀', 'year', '2026',
           'λόγος', 'мир', 'and', 'of', 'stone']
  return [' ' * rng.randint(0, 4) + ' '.join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(num_lines)]


@pytest.fixture(scope='module', params=['bpe', 'unigram'])
def sentencepiece(request):
  """A SentencePiece tokenizer trained on the generated corpus."""
  return tokenizer_lib.train_sentencepiece(generated_corpus(), vocab_size=320, model_type=request.param)


def test_sentencepiece_round_trips_any_text_exactly(sentencepiece):
  for text in (TRICKY, '\n'.join(generated_corpus(20, seed=1)), 'never seen: Ω ≈ ç ☃ 𝔘'):
    ids = sentencepiece.encode(text)
    assert ids.dtype == np.int32 and ids.max() < sentencepiece.vocab_size
    assert sentencepiece.decode(ids) == text


def test_sentencepiece_specials_and_pieces(sentencepiece):
  assert (sentencepiece.bos_id, sentencepiece.eos_id, sentencepiece.pad_id) == (1, 2, 3)
  assert sentencepiece.vocab_size == 320  # 256 bytes, 4 specials, 60 learned pieces.
  ids = sentencepiece.encode('the river')
  assert ''.join(sentencepiece.piece(i) for i in ids).replace('▁', ' ').strip() == 'the river'
  text = '\n'.join(generated_corpus(50, seed=2))
  assert len(sentencepiece.encode(text)) < len(text.encode()) * 0.6  # common words become whole pieces.


def test_a_vocabulary_larger_than_the_corpus_allows_is_refused_with_the_limit():
  with pytest.raises(UserError, match=r'--vocab_size=50000 is more than this text can fill: pass --vocab_size=\d+ or'):
    tokenizer_lib.train_sentencepiece(generated_corpus(), vocab_size=50_000)


def test_byte_tokenizer_round_trips_and_reserves_special_ids():
  tokenizer = ByteTokenizer()
  ids = tokenizer.encode(TRICKY)
  assert len(ids) == len(TRICKY.encode()) and ids.min() >= 3 and tokenizer.vocab_size == 259
  assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id]) == TRICKY
  assert tokenizer.piece(tokenizer.encode('A')[0]) == '<0x41>'


def test_char_tokenizer_round_trips_and_names_unknown_characters():
  tokenizer = CharTokenizer.from_text('hello world\n')
  assert tokenizer.vocab_size == len(set('hello world\n'))
  assert tokenizer.decode(tokenizer.encode('world hello')) == 'world hello'
  with pytest.raises(UserError, match=r"\['z'\]"):
    tokenizer.encode('hez')


@pytest.mark.parametrize('make', [lambda: CharTokenizer.from_text('abc\n'), ByteTokenizer,
                                  lambda: tokenizer_lib.train_sentencepiece(generated_corpus(), 300)])
def test_saved_tokenizers_load_as_the_same_tokenizer(tmp_path, make):
  tokenizer = make()
  path = tokenizer_lib.save(tokenizer, tmp_path)
  loaded = tokenizer_lib.load(path)
  assert type(loaded) is type(tokenizer) and loaded.serialized() == tokenizer.serialized()
  assert loaded.decode(loaded.encode('abc\n')) == 'abc\n'


def test_for_corpus_follows_the_config(tmp_path):
  assert isinstance(tokenizer_lib.for_corpus('char', 'xyz'), CharTokenizer)
  assert isinstance(tokenizer_lib.for_corpus('byte', 'xyz'), ByteTokenizer)
  with pytest.raises(UserError, match='neither char, byte nor a tokenizer file that exists'):
    tokenizer_lib.for_corpus(str(tmp_path / 'missing.model'), 'xyz')
  (tmp_path / 'junk.model').write_bytes(b'\x00\x01not a model')
  with pytest.raises(UserError, match='is not a SentencePiece model'):
    tokenizer_lib.load(tmp_path / 'junk.model')
