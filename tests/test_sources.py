"""Tests of data/sources.py: local text and JSONL corpora, globs, and the errors that name the bad line."""

import json

import pytest

from configs.errors import UserError
from data import sources


def test_text_files_and_globs_yield_their_non_empty_lines(tmp_path):
  (tmp_path / 'a.txt').write_text('first line\n\nsecond line\n')
  (tmp_path / 'b.txt').write_text('third\n')
  assert list(sources.lines(str(tmp_path / '*.txt'))) == ['first line', 'second line', 'third']
  assert list(sources.lines(f'{tmp_path}/b.txt,{tmp_path}/a.txt'))[0] == 'third'


def test_jsonl_yields_the_named_field(tmp_path):
  path = tmp_path / 'docs.jsonl'
  path.write_text(json.dumps({'body': 'one\ntwo'}) + '\n\n' + json.dumps({'body': 'three'}) + '\n')
  assert list(sources.lines(str(path), field='body')) == ['one', 'two', 'three']


@pytest.mark.parametrize('content, message', [
    ('{"text": "ok"}\n{"other": "x"}\n', r'docs.jsonl:2 has no text field \'text\''),
    ('{"text": "ok"}\n{"text": "ok"}\nnot json\n', r'docs.jsonl:3 is not valid JSON'),
])
def test_bad_jsonl_lines_are_named_by_number(tmp_path, content, message):
  path = tmp_path / 'docs.jsonl'
  path.write_text(content)
  with pytest.raises(UserError, match=message):
    list(sources.lines(str(path)))


def test_missing_and_non_utf8_files_are_refused(tmp_path):
  with pytest.raises(UserError, match='no file matches'):
    list(sources.lines(str(tmp_path / 'nothing*.txt')))
  (tmp_path / 'latin1.txt').write_bytes('caf\xe9'.encode('latin-1'))
  with pytest.raises(UserError, match='is not UTF-8'):
    list(sources.lines(str(tmp_path / 'latin1.txt')))
