"""Tests of data/sources.py: local text and JSONL corpora, globs, and the errors that name the bad line."""

import gzip
import json

import pytest
import tensorflow_datasets as tfds
import zstandard

from flaxlm.configs.errors import UserError
from flaxlm.data import sources


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


class FlaxlmTestText(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset generated locally, so the TFDS path is tested without a network."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'train': self._generate_examples(12), 'test': self._generate_examples(3)}

  def _generate_examples(self, count):
    for i in range(count):
      yield i, {'text': f'document {i}: ünïcode 😀'}


def test_tokenizer_training_lines_come_from_a_tfds_train_split(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, 'check_online', lambda name: None)
  lines = list(sources.lines('tfds:flaxlm_test_text', 'text', str(tmp_path), max_documents=4))
  assert len(lines) == 4 and all(line.startswith('document ') for line in lines)


def test_a_directory_is_refused_with_the_glob_to_use(tmp_path):
  (tmp_path / 'texts').mkdir()
  with pytest.raises(UserError, match="is a directory: pass its files, e.g. '.*texts/\\*.txt'"):
    sources.expand(str(tmp_path / 'texts'))


def test_gzip_text_is_read_and_a_truncated_gzip_is_refused(tmp_path):
  good = tmp_path / 'a.txt.gz'
  good.write_bytes(gzip.compress('hello\nworld\n'.encode()))
  assert sources.read_text(str(good)) == 'hello\nworld\n'
  (tmp_path / 'b.txt.gz').write_bytes(good.read_bytes()[:12])
  with pytest.raises(UserError, match='is not a complete compressed file'):
    sources.read_text(str(tmp_path / 'b.txt.gz'))


def test_zstd_text_is_read_across_frames_and_a_truncated_zstd_is_refused(tmp_path):
  good = tmp_path / 'a.txt.zst'
  good.write_bytes(zstandard.compress(b'hello\n') + zstandard.compress(b'world\n'))  # As zstd -T and pzstd write.
  assert sources.read_text(str(good)) == 'hello\nworld\n'
  (tmp_path / 'b.jsonl.zst').write_bytes(zstandard.compress(json.dumps({'text': 'one two'}).encode() * 50)[:-4])
  with pytest.raises(UserError, match='b.jsonl.zst is not a complete compressed file .*before its end marker'):
    list(sources.lines(str(tmp_path / 'b.jsonl.zst')))
