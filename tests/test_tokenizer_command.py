"""Tests of flaxlm-tokenizer as a user runs it: train, encode, count, and its one-line errors."""

import json
import pathlib

from conftest import command
from test_cli import assert_one_line_error, run


def test_train_encode_and_count(corpus, tmp_path):
  model = tmp_path / 'tok.model'
  trained = run(command('flaxlm-tokenizer'), 'train', f'--input={corpus}', '--vocab_size=300', f'--output={model}')
  assert trained.returncode == 0, trained.stderr
  assert 'wrote' in trained.stdout and model.stat().st_size > 0

  encoded = run(command('flaxlm-tokenizer'), 'encode', f'--tokenizer={model}', '--text=the king')
  pieces = [line.split()[1] for line in encoded.stdout.splitlines()]
  assert ''.join(pieces).replace('▁', ' ').strip() == 'the king'

  counted = run(command('flaxlm-tokenizer'), 'count', f'--tokenizer={model}', f'--input={corpus}')
  tokens, characters = (int(counted.stdout.split()[i].replace(',', '')) for i in (0, 3))
  assert characters == len(corpus.read_text()) and tokens < characters


def test_train_from_a_jsonl_field(tmp_path):
  data = tmp_path / 'docs.jsonl'
  data.write_text(''.join(json.dumps({'body': f'document {i} about rivers and stones'}) + '\n' for i in range(300)))
  model = tmp_path / 'tok.model'
  result = run(command('flaxlm-tokenizer'), 'train', f'--input={data}', '--jsonl_field=body', '--vocab_size=320',
               f'--output={model}')
  assert result.returncode == 0, result.stderr
  assert model.exists()


def test_bad_input_gets_one_line_and_leaves_no_model(corpus, tmp_path):
  model = tmp_path / 'tok.model'
  too_big = run(command('flaxlm-tokenizer'), 'train', f'--input={corpus}', '--vocab_size=100000', f'--output={model}')
  assert_one_line_error(too_big, '--vocab_size=100000 is more than this text can fill')
  missing = run(command('flaxlm-tokenizer'), 'train', f'--input={tmp_path}/none.txt', f'--output={model}')
  assert_one_line_error(missing, 'no file matches')
  assert not model.exists() and not model.with_name('tok.model.tmp').exists()
  assert_one_line_error(run(command('flaxlm-tokenizer'), 'frobnicate'), 'name one command')


def test_encode_and_count_with_a_hugging_face_folder(tmp_path):
  folder = pathlib.Path(__file__).parent / 'fixtures' / 'hf_tokenizer'
  [entry] = [e for e in json.loads((folder / 'reference.json').read_text())['texts'] if e['text'].startswith('the')]
  encoded = run(command('flaxlm-tokenizer'), 'encode', f'--tokenizer={folder}', f'--text={entry["text"]}')
  assert encoded.returncode == 0, encoded.stderr
  rows = [line.split(maxsplit=1) for line in encoded.stdout.splitlines()]
  assert [int(row[0]) for row in rows] == entry['ids']
  assert rows[0][1] == '<|begin_of_text|>'  # BOS first: what the model reads.
  counted = run(command('flaxlm-tokenizer'), 'count', f'--tokenizer={folder / "tokenizer.json"}', '--text=the river')
  assert counted.stdout.startswith('2 tokens for 9 characters'), counted.stderr
  (tmp_path / 'tokenizer.json').write_text('{"model": {"type": "BPE", "vocab": 5}}')
  broken = run(command('flaxlm-tokenizer'), 'encode', f'--tokenizer={tmp_path}', '--text=x')
  assert_one_line_error(broken, 'is not a tokenizer.json the tokenizers library can read')
