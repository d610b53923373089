"""Tests of data/prepare.py and data/store.py: a corpus becomes a token store that holds every token once, in
order, split evenly, the same however it was made (workers, a stop and resume), read back exactly by index; a
resume trusts only intact groups, and a failure leaves only what a rerun can finish. (Damaged stores and refused
inputs, as the commands meet them: tests/test_campaign_store.py.)"""

import gzip
import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from etils import epath

from flaxlm.configs.errors import UserError
from flaxlm.data import pipeline, prepare, sources, store, tokenizer as tokenizer_lib
from test_sources import FlaxlmTestText  # Registers the local TFDS dataset.

BYTES = tokenizer_lib.ByteTokenizer()


def documents(count: int = 40, seed: int = 0) -> list[str]:
  """Returns `count` short documents of seeded random words, one to three lines each."""
  rng = np.random.default_rng(seed)
  words = 'alpha beta gamma delta epsilon zeta eta theta'.split()
  return ['\n'.join(' '.join(rng.choice(words, rng.integers(2, 9))) for _ in range(rng.integers(1, 4)))
          for _ in range(count)]


def write_jsonl(path, texts: list[str], field: str = 'text'):
  """Writes `texts` as JSONL records under `field` and returns the path."""
  path.write_text(''.join(json.dumps({field: text, 'id': i}) + '\n' for i, text in enumerate(texts)))
  return path


def three_groups(tmp_path):
  """Returns a JSONL corpus and the group size that cuts it into three groups."""
  corpus = write_jsonl(tmp_path / 'a.jsonl', documents(400))
  return corpus, -(-corpus.stat().st_size // 3)


def split_texts(prepared: store.Store, name: str) -> list[str]:
  """Returns the documents of a split of a byte-tokenized store, cut at its EOS ids."""
  split = prepared.split(name)
  tokens, _, _ = split.window(0, len(split))
  return [BYTES.decode(part) for part in np.split(tokens, np.flatnonzero(tokens == BYTES.eos_id) + 1) if len(part)]


def test_jsonl_documents_are_split_evenly_each_once_with_its_eos(tmp_path):
  texts = documents(40)
  prepared = prepare.prepare(str(write_jsonl(tmp_path / 'a.jsonl', texts)), str(tmp_path / 'store'), 'byte',
                             prepare.Settings(val_fraction=0.1))
  train, validation = split_texts(prepared, 'train'), split_texts(prepared, 'validation')
  assert validation == [texts[9], texts[19], texts[29], texts[39]]  # every tenth, evenly spread.
  assert train == [t for i, t in enumerate(texts) if i % 10 != 9]
  splits = prepared.manifest['splits']
  assert splits['train']['documents'] == 36 and splits['validation']['documents'] == 4
  assert splits['train']['tokens'] + splits['validation']['tokens'] == sum(len(t.encode()) + 1 for t in texts)
  assert prepared.manifest['dtype'] == 'uint16' and prepared.tokenizer.serialized() == BYTES.serialized()
  for shard in splits['train']['shards'] + splits['validation']['shards']:  # Each shard's size and SHA-256.
    data = (tmp_path / 'store' / shard['file']).read_bytes()
    assert (shard['bytes'], shard['sha256']) == (len(data), hashlib.sha256(data).hexdigest())


def test_a_long_text_is_cut_at_lines_into_pieces_held_out_evenly(tmp_path):
  text = ''.join(f'line {i} of a long text\n' for i in range(3000))
  (tmp_path / 'a.txt').write_text(text)
  prepared = prepare.prepare(str(tmp_path / 'a.txt'), str(tmp_path / 'store'), 'char', prepare.Settings())
  chars = prepared.tokenizer
  train, validation = (prepared.split(name) for name in store.SPLITS)
  train_text, val_text = (chars.decode(split.window(0, len(split))[0]) for split in (train, validation))
  assert sorted((train_text + val_text).splitlines()) == sorted(text.splitlines())  # every line once, none cut.
  assert 0.08 < len(val_text) / len(text) < 0.12
  assert val_text.splitlines()[0] + '\n' in text[:len(text) // 5]  # evenly spread: pieces from early on are held
  assert val_text.splitlines()[-1] + '\n' in text[len(text) * 4 // 5:]  # out, and from the end.


@pytest.mark.parametrize('compress', [gzip.compress, zstandard.compress], ids=['gz', 'zst'])
def test_compressed_jsonl_gives_the_store_plain_jsonl_gives(tmp_path, compress):
  plain = write_jsonl(tmp_path / 'a.jsonl', documents(30))
  packed = tmp_path / f'b.jsonl.{"gz" if compress is gzip.compress else "zst"}'
  packed.write_bytes(compress(plain.read_bytes()))
  stores = [prepare.prepare(str(path), str(tmp_path / f'store-{path.name}'), 'byte', prepare.Settings())
            for path in (plain, packed)]
  assert stores[0].manifest['splits'] == stores[1].manifest['splits']
  assert split_texts(stores[0], 'train') == split_texts(stores[1], 'train')


def test_parquet_rows_are_documents_and_a_missing_column_is_named(tmp_path):
  texts = documents(25)
  pq.write_table(pa.table({'content': texts}), tmp_path / 'a.parquet', row_group_size=7)
  prepared = prepare.prepare(str(tmp_path / 'a.parquet'), str(tmp_path / 'store'), 'byte',
                             prepare.Settings(text_field='content'))
  assert sorted(split_texts(prepared, 'train') + split_texts(prepared, 'validation')) == sorted(texts)
  with pytest.raises(UserError, match="has no column 'text' \\(it has \\['content'\\]\\)"):
    prepare.prepare(str(tmp_path / 'a.parquet'), str(tmp_path / 'other'), 'byte', prepare.Settings())
  assert not (tmp_path / 'other').exists()


def test_a_jsonl_file_without_the_text_field_is_refused_before_anything_is_written(tmp_path):
  path = write_jsonl(tmp_path / 'a.jsonl', documents(5), field='body')
  with pytest.raises(UserError, match=r"a.jsonl:1 has no text field 'text'"):
    prepare.prepare(str(path), str(tmp_path / 'store'), 'byte', prepare.Settings())
  assert not (tmp_path / 'store').exists()


def test_workers_and_a_stopped_preparation_give_the_same_store(tmp_path):
  corpus, small_groups = three_groups(tmp_path)
  settings = prepare.Settings()
  alone = prepare.prepare(str(corpus), str(tmp_path / 'alone'), 'byte', settings, workers=0, group_bytes=small_groups)
  assert len(alone.manifest['splits']['train']['shards']) == 3
  pooled = prepare.prepare(str(corpus), str(tmp_path / 'pooled'), 'byte', settings, workers=2,
                           group_bytes=small_groups)
  assert pooled.digest == alone.digest
  for shard in alone.manifest['splits']['train']['shards']:
    assert (tmp_path / 'pooled' / shard['file']).read_bytes() == (tmp_path / 'alone' / shard['file']).read_bytes()
  # A stop after the first group: its record and shards stay, the rest and the manifest are not there yet.
  stopped = tmp_path / 'stopped'
  prepare.prepare(str(corpus), str(stopped), 'byte', settings, workers=0, group_bytes=small_groups)
  for path in [stopped / store.MANIFEST, stopped / store.group_name(1), stopped / store.group_name(2),
               stopped / store.shard_name('train', 2)]:
    path.unlink()
  with pytest.raises(UserError, match='is incomplete .* 1 input group\\(s\\) finished.* run the same'):
    store.open_store(str(stopped))
  finished = prepare.prepare(str(corpus), str(stopped), 'byte', settings, workers=0, group_bytes=small_groups)
  assert finished.digest == alone.digest
  with pytest.raises(UserError, match='holds a token store of other inputs or settings'):
    prepare.prepare(str(corpus), str(stopped), 'byte', prepare.Settings(val_fraction=0.2), group_bytes=small_groups)


def test_windows_read_across_records_and_shards_equal_the_stream_in_memory(tmp_path, monkeypatch):
  corpus = write_jsonl(tmp_path / 'a.jsonl', documents(60))
  make = lambda name: prepare.prepare(str(corpus), str(tmp_path / name), 'byte', prepare.Settings(val_fraction=0.5),
                                      group_bytes=corpus.stat().st_size // 4).split('train')
  whole = make('whole')  # Each shard in one record: read whole, the stream as it was written.
  tokens, begins, _ = whole.window(0, len(whole))
  memory = pipeline.TokenStream(tokens, begins)
  assert begins.sum() == (tokens == BYTES.eos_id).sum() > 25  # about half the documents, each begun and ended.
  monkeypatch.setattr(store, 'CHUNK', 7)  # Many records, so that windows cross them.
  split = make('small_records')
  assert len(split.paths) == 4 and len(split) == len(memory) and split.records_S.sum() > len(split) / 7
  rng = np.random.default_rng(0)
  for start in rng.integers(0, len(memory), 50):
    got, want = split.window(int(start), int(start) + 30), memory.window(int(start), int(start) + 30)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
  on_disk, in_memory = (pipeline.PackedExamples(stream, 16, 0) for stream in (split, memory))
  indices = np.arange(len(in_memory))
  for key, value in in_memory.gather(indices).items():  # One reader for both: the same examples.
    np.testing.assert_array_equal(on_disk.gather(indices)[key], value, err_msg=key)


def test_a_tfds_dataset_brings_its_own_split(tmp_path, monkeypatch):
  monkeypatch.setattr(sources, 'check_online', lambda name: None)  # This dataset needs no download.
  prepared = prepare.prepare(f'tfds:{FlaxlmTestText.name}', str(tmp_path / 'store'), 'byte',
                             prepare.Settings(tfds_dir=str(tmp_path)))
  assert sorted(split_texts(prepared, 'train')) == sorted(f'document {i}: ünïcode 😀' for i in range(12))
  assert len(split_texts(prepared, 'validation')) == 3  # no validation split: the test split is held out.
  with pytest.raises(UserError, match="has no field 'body'"):
    prepare.prepare(f'tfds:{FlaxlmTestText.name}', str(tmp_path / 'other'), 'byte',
                    prepare.Settings(text_field='body', tfds_dir=str(tmp_path)))


def test_an_unknown_tfds_name_and_an_offline_download_are_refused(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="TFDS has no dataset 'no_such_dataset_xyz'"):
    prepare.prepare('tfds:no_such_dataset_xyz', str(tmp_path / 'store'), 'byte', prepare.Settings())

  def unreachable(*args, **kwargs):
    raise OSError('network is unreachable')
  monkeypatch.setattr(sources.socket, 'create_connection', unreachable)
  with pytest.raises(UserError, match='offline: .* point --config.data.path at local text'):
    prepare.prepare(f'tfds:{FlaxlmTestText.name}', str(tmp_path / 'store'), 'byte',
                    prepare.Settings(tfds_dir=str(tmp_path / 'empty')))
  assert not (tmp_path / 'store').exists()


@pytest.mark.parametrize('content, message', [('', 'is empty'), ('  \n\n', 'leaves the validation split empty')])
def test_an_empty_corpus_is_refused(tmp_path, content, message):
  (tmp_path / 'empty.txt').write_text(content)  # Whitespace is text, one piece of it: nothing to hold out.
  with pytest.raises(UserError, match=message):
    prepare.prepare(str(tmp_path / 'empty.txt'), str(tmp_path / 'store'), 'byte', prepare.Settings())
  assert not (tmp_path / 'store').exists()


def test_a_rerun_prepares_again_the_groups_whose_record_or_shards_are_damaged(tmp_path):
  corpus, group_bytes = three_groups(tmp_path)
  make = lambda name, **kw: prepare.prepare(str(corpus), str(tmp_path / name), 'byte', prepare.Settings(), workers=0,
                                            group_bytes=group_bytes, **kw)
  whole, folder = make('whole'), epath.Path(tmp_path / 'whole')
  plan = json.loads((folder / store.PLAN).read_text())
  (folder / store.MANIFEST).unlink()
  (folder / store.group_name(0)).write_text('{"group": ')  # Garbled.
  shard = folder / store.shard_name('train', 1)
  shard.write_bytes(bytes(shard.stat().length))  # Zeroed: the size is right, the SHA-256 is not.
  assert prepare.trusted(folder, 2, plan['groups'][2]) and not prepare.trusted(folder, 2, plan['groups'][1])
  lines = []
  assert make('whole', report=lines.append).digest == whole.digest
  assert lines == ['1 of 3 input groups already prepared; preparing 2 with no worker processes (2 of them again: '
                   'their record or shards were damaged)']


def test_a_stop_keeps_the_finished_groups_and_a_rerun_finishes_them(tmp_path, monkeypatch):
  corpus, group_bytes = three_groups(tmp_path)
  make = lambda name: prepare.prepare(str(corpus), str(tmp_path / name), 'byte', prepare.Settings(), workers=0,
                                      group_bytes=group_bytes)
  whole = make('whole')
  write_group = prepare.write_group

  def stopped_at(stop: int):
    def write(output, index, *args):
      if index == stop:  # Ctrl-C while group `stop` is being written.
        (tmp_path / output / f'.{store.shard_name("train", index)}.partial').write_bytes(b'half')
        raise KeyboardInterrupt
      return write_group(output, index, *args)
    return write
  monkeypatch.setattr(prepare, 'write_group', stopped_at(0))
  with pytest.raises(KeyboardInterrupt, match='stopped before any of the 3 input groups was prepared: .* removed'):
    make('stopped')
  assert not (tmp_path / 'stopped').exists()
  monkeypatch.setattr(prepare, 'write_group', stopped_at(2))
  with pytest.raises(KeyboardInterrupt, match='2 of 3 input groups prepared and kept in .*stopped: run the same'):
    make('stopped')
  kept = {store.PLAN, 'tokenizer.json', *(store.group_name(i) for i in range(2)),
          *(store.shard_name(split, i) for split in store.SPLITS for i in range(2))}
  assert {path.name for path in (tmp_path / 'stopped').iterdir()} == kept
  monkeypatch.setattr(prepare, 'write_group', write_group)
  assert make('stopped').digest == whole.digest


def test_a_malformed_line_found_late_leaves_nothing_new_and_a_resumed_store_its_finished_groups(tmp_path):
  corpus, group_bytes = three_groups(tmp_path)
  make = lambda name, tokenizer: prepare.prepare(str(corpus), str(tmp_path / name), tokenizer, prepare.Settings(),
                                                 workers=0, group_bytes=group_bytes)
  make('store', 'byte')
  folder = tmp_path / 'store'
  for path in (folder / store.MANIFEST, folder / store.group_name(2), *folder.glob('*-00002.array_record')):
    path.unlink()
  lines = corpus.read_text().splitlines(keepends=True)
  lines[-2] = '{' + lines[-2][1:].replace('"', "'", 1)  # In the last group, of the same size: the plan still holds.
  corpus.write_text(''.join(lines))
  before = sorted(path.name for path in folder.iterdir())
  with pytest.raises(UserError, match=r'a.jsonl \(the line at byte .*\) is not valid JSON'):
    make('store', 'byte')
  assert sorted(path.name for path in folder.iterdir()) == before
  with pytest.raises(UserError, match='is not valid JSON'):  # Found making the char tokenizer, plan.json written.
    make('new', 'char')
  assert not (tmp_path / 'new').exists()


def test_the_cache_path_changes_with_the_store_version(tmp_path, monkeypatch):
  path = tmp_path / 'a.txt'
  path.write_text('some text\n')
  current = prepare.cache_path(prepare.make_plan(str(path), prepare.Settings(), 'byte', prepare.GROUP_BYTES))
  monkeypatch.setattr(store, 'VERSION', store.VERSION - 1)
  assert prepare.cache_path(prepare.make_plan(str(path), prepare.Settings(), 'byte', prepare.GROUP_BYTES)) != current


def test_a_reader_refuses_a_shard_that_holds_other_than_its_manifest_says(tmp_path):
  corpus, _ = three_groups(tmp_path)
  prepared = prepare.prepare(str(corpus), str(tmp_path / 'store'), 'byte', prepare.Settings())
  split = prepared.split('train')
  longer = store.Split(split.paths, split.tokens_S + 5, split.records_S, split.dtype)  # Counts more than written.
  with pytest.raises(UserError, match='record 1 of .*train-00000.array_record holds 4130 tokens, not the 4135 its'):
    longer.window(len(split) - 2, len(split) + 2)
  (tmp_path / 'store' / store.shard_name('train', 0)).write_bytes(bytes(split.tokens_S[0] * 4))
  with pytest.raises(UserError, match='train-00000.array_record cannot be read .* run `flaxlm-data verify`'):
    prepared.split('train').window(0, 10)
