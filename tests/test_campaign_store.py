"""The bad-input campaign (tests/campaign.py) against the token store: damaged shards and manifests, refused by a run
before it writes anything (the cheap checks) and found by flaxlm-data verify (every byte); and the inputs of
flaxlm-data prepare that used to pass or fail late: garbled plans, empty splits, non-text Parquet columns, truncated
zstd files.

A case's kind is what the same command did before the store proved its integrity: a damaged store that a run took
is 'damage' (it wrote its workdir, then failed) or 'accepted' (it trained); a prepare that wrote a store of bad input
is 'accepted'. Verify is new: its cases were 'message' (flaxlm-data named its commands), whatever their damage did to
a run."""

import json
import os
import pathlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from campaign import Case, assert_refused, run_campaign
from conftest import make_corpus
from test_campaign_train import write
from flaxlm.data import prepare, store as store_lib

TRAIN = ('flaxlm-train', '--config=tiny', '--workdir={case}/new', '--config.data.path={case}/store',
         '--config.train.steps=10', '--config.mesh.cpu_devices=1')
VERIFY = ('flaxlm-data', 'verify', '{case}/store')
PREPARE = ('flaxlm-data', 'prepare', '--output={case}/store', '--tokenizer=char')
SHARD = store_lib.shard_name('train', 0)


def copied(change):
  """Returns a setup copying the sandbox's store to the case's `store`, then applying `change(store)`."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    shutil.copytree(paths['store'], case / 'store')
    change(case / 'store')
  return setup


def edited(change):
  """Returns a change of a store's manifest: `change(manifest)` edits its JSON in place."""
  def edit(store: pathlib.Path) -> None:
    manifest = json.loads((store / 'manifest.json').read_text())
    change(manifest)
    (store / 'manifest.json').write_text(json.dumps(manifest))
  return edit


def train_shard(change):
  """Returns an edit applying `change(entry)` to the manifest entry of the train split's first shard."""
  return edited(lambda manifest: change(manifest['splits']['train']['shards'][0]))


def both_counts(key: str, delta: int):
  """Returns an edit moving a count of the train split and of its shard by `delta`: consistent, as a hand would."""
  def change(manifest: dict) -> None:
    manifest['splits']['train'][key] += delta
    manifest['splits']['train']['shards'][0][key] += delta
  return edited(change)


def swap_splits(manifest: dict) -> None:
  """Lists each split's shards under the other."""
  splits = manifest['splits']
  splits['train'], splits['validation'] = splits['validation'], splits['train']


def zero(store: pathlib.Path) -> None:
  """Overwrites the train shard with zeros, its size unchanged."""
  (store / SHARD).write_bytes(bytes((store / SHARD).stat().st_size))


def append(store: pathlib.Path) -> None:
  """Appends a byte to the train shard."""
  with (store / SHARD).open('ab') as f:
    f.write(b'\0')


def into_folder(store: pathlib.Path) -> None:
  """Makes the train shard a folder."""
  (store / SHARD).unlink()
  (store / SHARD).mkdir()


def stopped(change=None):
  """Returns a setup copying the sandbox's store to the case's `store` as a stopped preparation (no manifest), then
  applying `change(store)`."""
  return copied(lambda store: ((store / 'manifest.json').unlink(), change and change(store)))


def parquet(values: list):
  """Returns a setup writing the case's t.parquet, whose column 'text' holds `values`."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    pq.write_table(pa.table({'text': values}), case / 't.parquet')
  return setup


def truncated_zstd(name: str, text: str):
  """Returns a setup writing the case's `name`: `text` compressed with zstd, its last 8 bytes cut off."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    (case / name).write_bytes(zstandard.compress(text.encode())[:-8])
  return setup


def jsonl(count: int) -> str:
  """Returns `count` JSONL records of a few words each."""
  return ''.join(json.dumps({'text': f'document {i} of a few words'}) + '\n' for i in range(count))


# Damage a run's cheap checks see (the manifest, each shard's size): (id, kind, fragment, change), refused by
# flaxlm-train before it writes anything and by verify alike.
SEEN = [
    ('shard_deleted', 'damage', f'its shard {SHARD} is missing', lambda store: (store / SHARD).unlink()),
    ('shard_truncated', 'damage', 'is 65536 bytes, not the 131072', lambda store: os.truncate(store / SHARD, 65536)),
    ('shard_appended_to', 'damage', 'is 131073 bytes, not the 131072', append),
    ('shard_a_folder', 'damage', f'its shard {SHARD} is missing', into_folder),
    ('manifest_counts_of_a_shard', 'accepted', "the train split's tokens (12699) are not its shards' sum",
     train_shard(lambda shard: shard.update(tokens=12000))),
    ('manifest_records', 'accepted', 'counts disagree (12699 tokens in 2 records',
     train_shard(lambda shard: shard.update(records=2))),
    ('manifest_documents_negative', 'accepted', "documents is -1, not a non-negative int",
     train_shard(lambda shard: shard.update(documents=-1))),
    ('manifest_tokens_a_float', 'accepted', 'tokens is 12699.5',
     train_shard(lambda shard: shard.update(tokens=12699.5))),
    ('manifest_bytes', 'accepted', 'not the 131000 its manifest records',
     train_shard(lambda shard: shard.update(bytes=131000))),
    ('manifest_dtype', 'damage', "dtype 'uint32' is not uint16", edited(lambda m: m.update(dtype='uint32'))),
    ('manifest_dtype_unknown', 'traceback', "dtype 'int7' is not uint16", edited(lambda m: m.update(dtype='int7'))),
    ('manifest_vocab_size', 'damage', "vocab_size 70000 is not its tokenizer's 35",
     edited(lambda m: (m.update(dtype='uint32'), m['tokenizer'].update(vocab_size=70000)))),
    ('manifest_chunk_tokens', 'accepted', 'chunk_tokens 1024 is not 16384',
     edited(lambda m: m.update(chunk_tokens=1024))),
    ('manifest_split_missing', 'traceback', "splits are ['train']", edited(lambda m: m['splits'].pop('validation'))),
    ('manifest_splits_swapped', 'accepted', "train shard 'validation-00000.array_record' is not named",
     edited(swap_splits)),
    ('manifest_shard_outside', 'damage', "'../train-00000.array_record' is not named",
     train_shard(lambda shard: shard.update(file='../' + SHARD))),
    ('manifest_shard_listed_twice', 'accepted', 'lists a shard twice',
     edited(lambda m: m['splits']['train'].update(shards=m['splits']['train']['shards'] * 2, tokens=25398,
                                                  documents=6))),
    ('manifest_shard_not_an_object', 'traceback', "a train shard's file is missing",
     edited(lambda m: m['splits']['train'].update(shards=[SHARD]))),
    ('manifest_validation_empty', 'message', 'its validation split is empty',
     edited(lambda m: m['splits'].update(validation={'tokens': 0, 'documents': 0, 'shards': []}))),
    ('manifest_version_1', 'accepted', 'made by an older flaxlm (store version 1',
     edited(lambda m: m.update(version=1))),
    ('manifest_version_a_string', 'message', "version is '2', not a non-negative int",
     edited(lambda m: m.update(version='2'))),
    ('manifest_a_list', 'message', 'version is missing', lambda store: (store / 'manifest.json').write_text('[]')),
    ('tokenizer_edited', 'message', 'tokenizer file does not match the manifest',
     lambda store: (store / 'tokenizer.json').write_text('{"kind": "byte"}')),
]
# Damage seen by reading a shard: by a run at its first read of it, before it writes anything (the records do not
# read, or do not hold the tokens the manifest counts), and by verify: (id, kind, run's fragment, verify's, change).
READ = [
    ('shard_zeroed', 'damage', 'cannot be read (Corrupted Riegeli', 'has another SHA-256 than the manifest records',
     zero),
    ('shard_replaced_by_another', 'damage', 'holds 2724 tokens, not the 12699 its manifest counts',
     'has another SHA-256 than the manifest records',
     lambda store: shutil.copyfile(store / store_lib.shard_name('validation', 0), store / SHARD)),
    ('manifest_tokens_consistently', 'accepted', 'holds 12699 tokens, not the 12698 its manifest counts',
     'holds 12699 tokens, 3 documents, 1 records, where the manifest records 12698 tokens', both_counts('tokens', -1)),
]
# Damage only verify finds, where a run reads the right tokens: (id, fragment, change).
UNSEEN = [
    ('manifest_sha256', 'has another SHA-256 than the manifest records',
     train_shard(lambda shard: shard.update(sha256='0' * 64))),
    ('manifest_documents_consistently', 'holds 12699 tokens, 3 documents, 1 records, where the manifest '
     'records 12699 tokens, 2 documents', both_counts('documents', -1)),
]

CASES = [
    *(Case(f'train_on_{id}', kind, TRAIN, fragment, setup=copied(change)) for id, kind, fragment, change in SEEN),
    *(Case(f'train_on_{id}', kind, TRAIN, fragment, setup=copied(change)) for id, kind, fragment, _, change in READ),
    *(Case(f'verify_{id}', 'message', VERIFY, fragment, setup=copied(change)) for id, fragment, change in [
        *((id, fragment, change) for id, _, fragment, change in SEEN),
        *((id, fragment, change) for id, _, _, fragment, change in READ), *UNSEEN]),
    Case('verify_without_a_store', 'message', ('flaxlm-data', 'verify'), 'name one token store'),
    Case('verify_a_missing_path', 'message', ('flaxlm-data', 'verify', '{case}/nowhere'), 'nowhere does not exist'),
    Case('verify_a_folder_of_other_files', 'message', ('flaxlm-data', 'verify', '{case}'), 'is not a token store',
         setup=write('notes.txt', 'hello')),
    Case('verify_a_stopped_store', 'message', VERIFY, 'is incomplete', setup=stopped()),
    # flaxlm-data prepare's inputs.
    Case('prepare_over_a_garbled_plan', 'traceback', (*PREPARE, '{corpus}', '--val_fraction=0.2'),
         'plan.json is not a plan flaxlm wrote',
         setup=stopped(lambda store: (store / 'plan.json').write_text('{"ver'))),
    Case('prepare_over_a_plan_that_is_a_list', 'message', (*PREPARE, '{corpus}', '--val_fraction=0.2'),
         'plan.json is not a plan flaxlm wrote', setup=stopped(lambda store: (store / 'plan.json').write_text('[2]'))),
    Case('prepare_over_an_older_store', 'accepted', (*PREPARE, '{corpus}', '--val_fraction=0.2'),
         'holds a token store of another flaxlm (store version 1',
         setup=stopped(lambda store: (store / 'plan.json').write_text(
             (store / 'plan.json').read_text().replace('"version": 2', '"version": 1')))),
    Case('prepare_over_a_store_with_its_tokenizer_garbled', 'message', (*PREPARE, '{corpus}', '--val_fraction=0.2'),
         'tokenizer.json is not valid JSON', setup=stopped(lambda store: (store / 'tokenizer.json').write_text('{'))),
    Case('prepare_a_text_too_short_to_hold_out', 'accepted', (*PREPARE, '{case}/short.txt'),
         'leaves the validation split empty: --val_fraction=0.1',
         setup=write('short.txt', 'to be or not to be\n' * 20)),
    Case('prepare_nine_documents_at_a_tenth', 'accepted', (*PREPARE, '{case}/t.jsonl'),
         'leaves the validation split empty', setup=write('t.jsonl', jsonl(9))),
    Case('train_on_a_text_too_short_to_hold_out', 'message', (*TRAIN[:3], '--config.data.path={case}/short.txt',
                                                              *TRAIN[4:]),
         '--config.data.val_fraction', setup=write('short.txt', 'to be or not to be\n' * 20)),
    Case('prepare_parquet_of_integers', 'damage', (*PREPARE, '{case}/t.parquet'), "column 'text' holds int64",
         setup=parquet([1, 2, 3])),
    Case('prepare_parquet_of_lists', 'accepted', (*PREPARE, '{case}/t.parquet'), "column 'text' holds list<",
         setup=parquet([['a', 'b'], ['c']])),
    Case('prepare_parquet_of_structs', 'message', (*PREPARE, '{case}/t.parquet'), "column 'text' holds struct",
         setup=parquet([{'body': 'a'}, {'body': 'b'}])),
    Case('train_on_parquet_of_integers', 'traceback', (*TRAIN[:3], '--config.data.path={case}/t.parquet', *TRAIN[4:]),
         "column 'text' holds int64", setup=parquet([1, 2, 3])),
    Case('prepare_truncated_jsonl_zst', 'accepted', (*PREPARE, '{case}/t.jsonl.zst'),
         'is not a complete compressed file', setup=truncated_zstd('t.jsonl.zst', jsonl(400))),
    Case('prepare_truncated_txt_zst', 'accepted', (*PREPARE, '{case}/t.txt.zst'), 'is not a complete compressed file',
         setup=truncated_zstd('t.txt.zst', 'to be or not to be\n' * 2000)),
    Case('train_on_truncated_txt_zst', 'message', (*TRAIN[:3], '--config.data.path={case}/t.txt.zst', *TRAIN[4:]),
         'is not a complete compressed file', setup=truncated_zstd('t.txt.zst', 'to be or not to be\n' * 2000)),
]


def sandbox(root: pathlib.Path) -> dict[str, str]:
  """Makes what the cases use below `root` and returns their paths by name: `corpus` (a text) and `store` (its
  token store, char tokens, 20% held out: one shard a split, of one record)."""
  corpus = make_corpus(root / 'corpus.txt')
  prepare.prepare(str(corpus), str(root / 'store'), 'char', prepare.Settings(val_fraction=0.2))
  return {'corpus': str(corpus), 'store': str(root / 'store')}


@pytest.fixture(scope='module')
def paths(tmp_path_factory) -> dict[str, str]:
  """The sandbox's paths, `root` included."""
  root = tmp_path_factory.mktemp('campaign_store')
  return {'root': str(root), **sandbox(root)}


@pytest.fixture(scope='module')
def results(paths) -> dict:
  """Every case's result, from one campaign run in the sandbox."""
  return run_campaign(CASES, pathlib.Path(paths['root']), {k: v for k, v in paths.items() if k != 'root'})


def test_the_store_the_cases_damage_verifies(paths):
  assert store_lib.verify(paths['store']).manifest['splits']['train']['tokens'] == 12699


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_a_damaged_store_or_bad_input_is_refused_with_one_line_and_no_damage(results, case):
  assert_refused(case, results[case.id])
