"""Tests of data/tokenizer.py: the char, byte and SentencePiece tokenizers, saving and loading them."""

import json
import pathlib
import random
import shutil

import ml_collections
import numpy as np
import pytest

from flaxlm.configs.errors import UserError
from flaxlm.data import examples, prepare, store, tokenizer as tokenizer_lib
from flaxlm.train import workdir as workdir_lib
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


HF_FOLDER = pathlib.Path(__file__).parent / 'fixtures' / 'hf_tokenizer'
HF_REFERENCE = json.loads((HF_FOLDER / 'reference.json').read_text())


@pytest.fixture(scope='module')
def hf() -> tokenizer_lib.HFTokenizer:
  """The fixture's byte-level BPE tokenizer.json, with its tokenizer_config.json and generation_config.json."""
  return tokenizer_lib.from_hf_folder(HF_FOLDER)


def test_a_tokenizer_json_encodes_as_transformers_and_decodes_back_exactly(hf):
  assert isinstance(hf, tokenizer_lib.HFTokenizer) and hf.vocab_size == 357
  assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.add_bos) == (0, 4, 5, True)
  assert hf.eos_ids == (4, 1)  # The config's <|eot_id|>, then generation_config.json's other id.
  for entry in HF_REFERENCE['texts']:
    ids = tokenizer_lib.model_ids(hf, entry['text'])
    assert ids.dtype == np.int32 and ids.tolist() == entry['ids']  # BOS first, as transformers adds it.
    assert hf.decode(hf.encode(entry['text'])) == entry['text']
  assert hf.piece(hf.encode(' river')[0]).startswith('Ġ')  # Byte-level BPE's space.


@pytest.mark.parametrize('name', ['tokenizer.json', 'tokenizer.model'])
def test_a_sentencepiece_style_tokenizer_json_and_its_model_encode_as_transformers(name):
  folder = HF_FOLDER.with_name('hf_sentencepiece')  # transformers' tokenizer.json of a SentencePiece model.
  tokenizer = tokenizer_lib.load(folder / name)
  assert type(tokenizer) is {'tokenizer.json': tokenizer_lib.HFTokenizer,
                             'tokenizer.model': tokenizer_lib.SentencePieceTokenizer}[name]
  assert tokenizer.add_bos and tokenizer.eos_ids == (2,)  # BOS by the tokenizer.json's post-processor; Llama's rule.
  for entry in json.loads((folder / 'reference.json').read_text())['texts']:
    assert tokenizer_lib.model_ids(tokenizer, entry['text']).tolist() == entry['ids']
    assert tokenizer.decode(tokenizer.encode(entry['text'])) == entry['text']


def test_bos_follows_the_config_else_the_tokenizer_s_own_post_processor(tmp_path, hf):
  folder = tmp_path / 'hf'
  shutil.copytree(HF_FOLDER, folder)
  config = json.loads((folder / 'tokenizer_config.json').read_text())
  (folder / 'tokenizer_config.json').write_text(json.dumps({**config, 'add_bos_token': False}))
  assert not tokenizer_lib.load(folder / 'tokenizer.json').add_bos
  del config['add_bos_token']
  (folder / 'tokenizer_config.json').write_text(json.dumps(config))
  assert tokenizer_lib.load(folder / 'tokenizer.json').add_bos  # Its post-processor puts BOS first, as Llama 3's.
  (folder / 'tokenizer_config.json').unlink()
  bare = tokenizer_lib.load(folder / 'tokenizer.json')  # No config: no special tokens named, nothing added.
  assert (bare.bos_id, bare.eos_ids, bare.add_bos, bare.chat_template) == (None, (), False, None)
  assert bare.encode('the river').tolist() == hf.encode('the river').tolist()


def test_a_tokenizer_json_saves_every_file_and_loads_back_the_same(tmp_path, hf):
  path = tokenizer_lib.save(hf, tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['generation_config.json', 'tokenizer.json',
                                                         'tokenizer_config.json']
  config = json.loads((tmp_path / 'tokenizer_config.json').read_text())
  assert config['chat_template'] == hf.chat_template and config['add_bos_token'] is True
  assert (config['bos_token'], config['eos_token'], config['tokenizer_class']) == ('<|begin_of_text|>', '<|eot_id|>',
                                                                                  'PreTrainedTokenizerFast')
  for loaded in (tokenizer_lib.load(path), tokenizer_lib.from_path(tmp_path), tokenizer_lib.for_corpus(str(path), '')):
    assert tokenizer_lib.files_of(loaded) == tokenizer_lib.files_of(hf) and loaded.eos_ids == hf.eos_ids
    assert loaded.encode(TRICKY).tolist() == hf.encode(TRICKY).tolist()


def test_a_sentencepiece_model_in_a_hugging_face_folder_adds_bos(tmp_path):
  sentencepiece = tokenizer_lib.train_sentencepiece(generated_corpus(), 300)
  assert not sentencepiece.add_bos and tokenizer_lib.files_of(sentencepiece) == {
      'tokenizer.model': sentencepiece.serialized()}  # flaxlm's own: unchanged, one file.
  tokenizer_lib.save(sentencepiece, tmp_path)
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'tokenizer_class': 'LlamaTokenizer'}))
  llama = tokenizer_lib.from_hf_folder(tmp_path)  # As Llama 2, TinyLlama and Gemma expect, unless it says otherwise.
  assert isinstance(llama, tokenizer_lib.SentencePieceTokenizer) and llama.add_bos
  assert tokenizer_lib.model_ids(llama, 'the river').tolist() == [1, *sentencepiece.encode('the river')]
  (tmp_path / 'tokenizer_config.json').write_text(json.dumps({'add_bos_token': False}))
  assert not tokenizer_lib.from_hf_folder(tmp_path).add_bos


@pytest.mark.parametrize('files, message', [
    ({}, 'is a directory with neither a tokenizer.json nor a tokenizer.model'),
    ({'tokenizer.json': '{"model": {"type": "BPE", "vocab": 5}}'}, 'is not a tokenizer.json the tokenizers library'),
    ({'tokenizer.json': '{"version": "1.0"}'}, 'is not a flaxlm tokenizer .* nor a Hugging Face tokenizer.json'),
    ({'tokenizer.json': None, 'tokenizer_config.json': '{"eos_token": "<|nope|>"}'},
     "names the special token '<|nope|>', which its tokenizer.json does not have"),
    ({'tokenizer.json': None, 'tokenizer_config.json': '[1]'}, 'the tokenizer_config.json beside .* is not a JSON'),
])
def test_a_folder_without_a_usable_tokenizer_is_refused_in_one_line(tmp_path, files, message):
  for name, text in files.items():
    (tmp_path / name).write_text((HF_FOLDER / name).read_text() if text is None else text)
  with pytest.raises(UserError, match=message) as error:
    tokenizer_lib.from_hf_folder(tmp_path)
  assert '\n' not in str(error.value)


def test_store_documents_and_examples_begin_with_bos_where_the_tokenizer_adds_it(tmp_path, hf):
  (tmp_path / 'docs.jsonl').write_text(''.join(json.dumps({'text': t}) + '\n' for t in ('the river', 'over stone')))
  prepared = prepare.prepare(str(tmp_path / 'docs.jsonl'), str(tmp_path / 'store'), hf,
                             prepare.Settings(val_fraction=0.5), workers=0)
  assert tokenizer_lib.files_of(prepared.tokenizer) == tokenizer_lib.files_of(hf)  # Its special tokens kept.
  streams = [prepared.split(name).window(0, len(prepared.split(name)))[0] for name in store.SPLITS]
  expected = [[hf.bos_id, *hf.encode(text), hf.eos_id] for text in ('the river', 'over stone')]
  assert sorted(s.tolist() for s in streams) == sorted(expected)
  (tmp_path / 'a.jsonl').write_text(json.dumps({'prompt': 'Q:', 'response': ' the river'}) + '\n')
  ids_N, trained_N = examples.tokenize(examples.read(tmp_path / 'a.jsonl')[0], hf)
  assert ids_N.tolist() == [hf.bos_id, *hf.encode('Q:'), *hf.encode(' the river'), hf.eos_id]
  assert not trained_N[0] and trained_N[-1]


def test_a_workdir_keeps_a_tokenizer_json_with_its_specials(tmp_path, hf):
  config = ml_collections.ConfigDict({'model': {'vocab_size': 0}, 'train': {}, 'data': {}})
  workdir_lib.write_run_files(tmp_path, config, hf)
  assert tokenizer_lib.files_of(workdir_lib.load_tokenizer(tmp_path)) == tokenizer_lib.files_of(hf)
  workdir_lib.check_usable(tmp_path)


def test_an_older_folder_names_its_special_tokens_in_special_tokens_map_json(tmp_path):
  shutil.copy(HF_FOLDER / 'tokenizer.json', tmp_path)
  (tmp_path / 'special_tokens_map.json').write_text(json.dumps({'bos_token': {'content': '<|begin_of_text|>'},
                                                                'eos_token': '<|end_of_text|>'}))
  tokenizer = tokenizer_lib.from_hf_folder(tmp_path)
  assert (tokenizer.bos_id, tokenizer.eos_ids, tokenizer.add_bos) == (0, (1,), True)


@pytest.mark.parametrize('name, changes, message', [  # A side file's changes, and what the error says.
    ('generation_config.json', {'eos_token_id': 357}, r'generation_config.json beside .* has eos_token_id 357, '
     r"outside the tokenizer's 357 ids \(0 to 356\)"),
    ('generation_config.json', {'eos_token_id': [1, -4]}, 'has eos_token_id -4, outside'),
    ('generation_config.json', {'eos_token_id': '1'}, "has eos_token_id='1', which is not an id or a list of ids"),
    ('generation_config.json', {'eos_token_id': [1, True]}, r'eos_token_id=\[1, True\], which is not an id'),
    ('tokenizer_config.json', {'add_bos_token': 'yes'}, "add_bos_token='yes', which is not true or false"),
    ('tokenizer_config.json', {'chat_template': 5}, 'chat_template=5, which is not a Jinja template'),
    ('tokenizer_config.json', {'chat_template': [{'name': 'default'}]}, r"chat_template=\[\{'name': 'default'\}\]"),
    ('tokenizer_config.json', {'bos_token': 0}, 'bos_token=0, which is not the token\'s text'),
    ('tokenizer_config.json', {'eos_token': {'text': '<|eot_id|>'}}, "eos_token={'text': '<|eot_id|>'}, which is"),
    ('special_tokens_map.json', {'pad_token': ['<|eot_id|>']}, r"special_tokens_map.json beside .* has pad_token=\["),
])
def test_a_side_file_value_of_the_wrong_kind_or_range_is_refused_naming_the_file_and_key(tmp_path, name, changes,
                                                                                        message):
  shutil.copytree(HF_FOLDER, tmp_path / 'hf')
  side = tmp_path / 'hf' / name
  side.write_text(json.dumps({**(json.loads(side.read_text()) if side.exists() else {}), **changes}))
  with pytest.raises(UserError, match=message) as error:
    tokenizer_lib.from_hf_folder(tmp_path / 'hf')
  assert '\n' not in str(error.value) and 'restore the file that came with the tokenizer' in str(error.value)


def test_a_list_of_named_chat_templates_gives_the_default_one(tmp_path):
  shutil.copytree(HF_FOLDER, tmp_path / 'hf')
  config = tmp_path / 'hf' / 'tokenizer_config.json'
  templates = [{'name': 'tool_use', 'template': 'tools'}, {'name': 'default', 'template': 'chat'}]
  config.write_text(json.dumps({**json.loads(config.read_text()), 'chat_template': templates}))
  assert tokenizer_lib.from_hf_folder(tmp_path / 'hf').chat_template == 'chat'
