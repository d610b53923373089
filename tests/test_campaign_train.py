"""The bad-input campaign (tests/campaign.py) against flaxlm-train: configs, overrides, data, workdirs, checkpoints,
and the one writer a workdir has at a time."""

import json
import os
import pathlib
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from campaign import Case, assert_refused, run_campaign, shared_sandbox
from flaxlm.data import lock, prepare

NEW = ('flaxlm-train', '--config=tiny', '--workdir={case}/new', '--config.data.path={corpus}',
       '--config.train.steps=10', '--config.mesh.cpu_devices=1')
RESUME = ('flaxlm-train', '--config=tiny', '--workdir={case}/run', '--config.data.path={corpus}',
          '--config.train.steps=10', '--config.train.checkpoint_every=5', '--config.mesh.cpu_devices=1')


def new(id: str, kind: str, fragment: str, *overrides: str, **options) -> Case:
  """A case training a new tiny run with `overrides` (flags appended to the command)."""
  return Case(id, kind, (*NEW, *overrides), fragment, **options)


def write(name: str, text: str | bytes):
  """Returns a setup writing `text` to the case's file `name`."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    (case / name).write_bytes(text.encode() if isinstance(text, str) else text)
  return setup


def run_copy(change=None):
  """Returns a setup copying the finished run to the case's folder as `run`, then applying `change(run)`."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    shutil.copytree(paths['run'], case / 'run')
    if change:
      change(case / 'run')
  return setup


def store_of(change=None, tokenizer: str = 'char'):
  """Returns a setup preparing the sandbox's corpus into the case's `store` (held out: 20%), then `change(store)`."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    prepare.prepare(paths['corpus'], str(case / 'store'), tokenizer, prepare.Settings(val_fraction=0.2))
    if change:
      change(case / 'store')
  return setup


def checkpoint_files(run: pathlib.Path, part: str) -> list[pathlib.Path]:
  """Returns every file of every checkpoint's `part` (state, data or config) in `run`."""
  return [p for p in (run / 'checkpoints').glob(f'*/{part}/**/*') if p.is_file()]


def garble_all(part: str, data: bytes = b'{"garbled'):
  """Returns a change overwriting every file of every checkpoint's `part`."""
  def change(run: pathlib.Path) -> None:
    for path in checkpoint_files(run, part):
      path.write_bytes(data)
  return change


def locked(folder: str = 'run', **fields):
  """Returns a setup writing a live writer's lock into the case's `folder` (made if new): a fresh record of this
  process with `fields` changed (another host's, or process 1's, which always runs here)."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    (case / folder).mkdir(exist_ok=True)
    (case / folder / lock.LOCK).write_text(json.dumps({**lock.new_record(), **fields}))
  return setup


def read_only(run: pathlib.Path) -> None:
  """Takes write permission from the run's folder and everything in it."""
  for path in [run, *run.rglob('*')]:
    path.chmod(path.stat().st_mode & ~0o222)


CASES = [
    # Configs and overrides.
    Case('unknown_preset', 'message', ('flaxlm-train', '--config=nope', '--workdir={case}/new'), 'shakespeare_char'),
    Case('missing_config_file', 'message', ('flaxlm-train', '--config={case}/missing.py', '--workdir={case}/new'),
         'missing.py'),
    Case('config_without_get_config', 'message', ('flaxlm-train', '--config={case}/c.py', '--workdir={case}/new'),
         'get_config', setup=write('c.py', 'x = 1\n')),
    Case('config_returning_a_dict', 'message', ('flaxlm-train', '--config={case}/c.py', '--workdir={case}/new'),
         'ConfigDict', setup=write('c.py', 'def get_config():\n  return {"model": {}}\n')),
    Case('config_with_a_syntax_error', 'message', ('flaxlm-train', '--config={case}/c.py', '--workdir={case}/new'),
         'c.py', setup=write('c.py', 'def get_config(:\n')),
    Case('config_that_raises', 'traceback', ('flaxlm-train', '--config={case}/c.py', '--workdir={case}/new'),
         'ZeroDivisionError', setup=write('c.py', 'def get_config():\n  return 1 / 0\n')),
    Case('config_is_a_directory', 'traceback', ('flaxlm-train', '--config={case}', '--workdir={case}/new'),
         'is a directory'),
    Case('config_is_json', 'message', ('flaxlm-train', '--config={run}/config.json', '--workdir={case}/new'),
         'not a Python file'),
    Case('config_flag_empty', 'message', ('flaxlm-train', '--config=', '--workdir={case}/new'), 'preset'),
    Case('workdir_flag_empty', 'message', ('flaxlm-train', '--config=tiny', '--workdir='), '--workdir is required'),
    new('unknown_override_key', 'message', 'no_such_key', '--config.model.no_such_key=3'),
    new('unknown_section', 'message', 'nosection', '--config.nosection.width=3'),
    new('override_of_the_wrong_type', 'traceback', 'width', '--config.model.width=wide'),
    new('float_for_an_integer', 'accepted', 'steps', '--config.train.steps=2.5'),
    Case('no_workdir', 'message', ('flaxlm-train', '--config=tiny'), '--workdir is required'),
    Case('no_config', 'message', ('flaxlm-train', '--workdir={case}/new'), '--config is required'),
    new('positional_argument', 'message', 'unexpected argument', 'extra'),
    new('unknown_flag', 'message', 'nope', '--nope=1'),
    new('misspelt_flag', 'message', 'workdirr', '--workdirr=/tmp/x'),
    # Values out of range.
    new('dropout_above_one', 'accepted', 'model.dropout', '--config.model.dropout=1.5'),
    new('dropout_of_one', 'accepted', 'model.dropout', '--config.model.dropout=1.0'),
    new('negative_dropout', 'accepted', 'model.dropout', '--config.model.dropout=-0.1'),
    new('zero_width', 'traceback', 'model.width', '--config.model.width=0'),
    new('negative_layers', 'traceback', 'model.num_layers', '--config.model.num_layers=-2'),
    new('heads_not_dividing_width', 'message', 'does not divide model.width', '--config.model.num_heads=3'),
    new('kv_heads_not_dividing_heads', 'message', 'does not divide model.num_heads', '--config.model.num_kv_heads=3'),
    new('vocabulary_below_the_tokenizer', 'message', 'smaller than the tokenizer', '--config.model.vocab_size=5'),
    new('state_larger_than_memory', 'hang', 'the train state needs', '--config.model.width=200000'),
    new('context_of_zero', 'traceback', 'model.max_length', '--config.model.max_length=0'),
    new('context_beyond_int32', 'traceback', 'model.max_length', '--config.model.max_length=3000000000'),
    new('zero_steps', 'message', 'train.steps', '--config.train.steps=0'),
    new('zero_batch', 'message', 'train.batch_size', '--config.train.batch_size=0'),
    new('microbatches_not_dividing_the_batch', 'traceback', 'microbatches', '--config.train.microbatches=3'),
    new('zero_log_every', 'message', 'train.log_every', '--config.train.log_every=0'),
    new('zero_checkpoints_kept', 'message', 'train.keep_checkpoints', '--config.train.keep_checkpoints=0'),
    new('negative_learning_rate', 'accepted', 'train.learning_rate', '--config.train.learning_rate=-0.1'),
    new('nan_learning_rate', 'accepted', 'train.learning_rate', '--config.train.learning_rate=nan'),
    new('beta_of_one', 'accepted', 'train.beta2', '--config.train.beta2=1.0'),
    new('negative_grad_clip', 'accepted', 'train.grad_clip', '--config.train.grad_clip=-1'),
    new('negative_warmup', 'accepted', 'train.warmup_steps', '--config.train.warmup_steps=-5'),
    new('unknown_nonfinite_policy', 'message', 'train.nonfinite', '--config.train.nonfinite=ignore'),
    new('unknown_norm', 'message', 'model.norm', '--config.model.norm=batchnorm'),
    new('unknown_positions', 'message', 'model.positions', '--config.model.positions=alibi'),
    new('unknown_dtype', 'message', 'model.dtype', '--config.model.dtype=float7'),
    new('unknown_attention', 'message', 'model.attention', '--config.model.attention=flash'),
    new('unknown_remat', 'message', 'model.remat', '--config.model.remat=some'),
    new('unknown_lora_target', 'message', 'lora', '--config.model.lora_rank=4', '--config.train.init_from={run}',
        '--config.model.lora_targets=query,elbow'),
    new('lora_without_init_from', 'message', 'train.init_from', '--config.model.lora_rank=4'),
    new('init_from_nowhere', 'message', 'init_from', '--config.train.init_from={case}/missing'),
    new('init_from_a_hugging_face_folder', 'message', 'convert it first with flaxlm-convert --from_hf',
        '--config.train.init_from={hf_llama}'),
    new('mesh_larger_than_the_devices', 'message', 'mesh', '--config.mesh.fsdp=3'),
    new('negative_cpu_devices', 'message', 'mesh.cpu_devices', '--config.mesh.cpu_devices=-2'),
    new('zero_fsdp_axis', 'message', 'mesh', '--config.mesh.fsdp=0'),
    new('negative_tensor_axis', 'message', 'mesh.tensor', '--config.mesh.tensor=-3'),
    new('process_id_without_processes', 'message', 'num_processes', '--process_id=1'),
    new('process_id_out_of_range', 'message', 'process_id', '--num_processes=2', '--process_id=5',
        '--coordinator_address=127.0.0.1:1'),
    # Data.
    new('data_missing', 'message', 'no file matches', '--config.data.path={case}/missing.txt'),
    new('data_is_a_directory', 'traceback', 'is a directory', '--config.data.path={case}'),
    new('data_empty', 'message', 'empty', '--config.data.path={case}/empty.txt', setup=write('empty.txt', '')),
    new('data_not_utf8', 'traceback', 'UTF-8', '--config.data.path={case}/latin.txt',
        setup=write('latin.txt', 'caf\xe9 '.encode('latin-1') * 2000)),
    new('data_too_short_for_a_batch', 'message', 'fewer than one batch', '--config.data.path={case}/short.txt',
        '--config.data.val_fraction=0.5', '--config.train.batch_size=128',  # Two pieces of text: one a split.
        setup=write('short.txt', 'to be or not to be\n' * 110)),
    new('jsonl_without_the_field', 'message', '--config.data.text_field', '--config.data.path={jsonl}',
        '--config.data.text_field=body'),
    new('jsonl_garbled', 'traceback', 'bad.jsonl', '--config.data.path={case}/bad.jsonl',
        setup=write('bad.jsonl', '{"text": "a"}\n{"text": \n')),
    new('parquet_without_the_field', 'message', "has no column 'text'", '--config.data.path={case}/t.parquet',
        setup=lambda case, paths: pq.write_table(pa.table({'content': ['a b c']}), case / 't.parquet')),
    new('store_incomplete', 'message', 'is incomplete', '--config.data.path={case}/store',
        setup=store_of(lambda store: (store / 'manifest.json').unlink())),
    new('store_manifest_garbled', 'message', 'is damaged', '--config.data.path={case}/store',
        setup=store_of(lambda store: (store / 'manifest.json').write_text('{"version": '))),
    new('store_of_another_tokenizer_than_init_from', 'message', "another tokenizer than train.init_from",
        '--config.data.path={case}/store', '--config.train.init_from={run}', setup=store_of(tokenizer='byte')),
    new('store_of_another_tokenizer_than_named', 'message', 'another tokenizer than data.tokenizer=byte',
        '--config.data.path={case}/store', '--config.data.tokenizer=byte', setup=store_of()),
    new('unknown_data_format', 'message', 'data.format', '--config.data.format=parquet'),
    new('examples_that_are_text', 'message', 'one JSON object per line', '--config.data.format=examples'),
    new('unknown_tokenizer', 'message', 'data.tokenizer', '--config.data.tokenizer=wordpiece'),
    new('sentencepiece_model_garbled', 'traceback', 'm.model', '--config.data.tokenizer={case}/m.model',
        setup=write('m.model', b'\x00not a model')),
    new('val_fraction_of_one', 'accepted', 'data.val_fraction', '--config.data.val_fraction=1.0'),
    new('negative_val_fraction', 'accepted', 'data.val_fraction', '--config.data.val_fraction=-0.5'),
    new('negative_read_threads', 'accepted', 'data.read_threads', '--config.data.read_threads=-1'),
    new('tfds_offline', 'hang', 'tfds', '--config.data.path=tfds:no_such_dataset_xyz',
        '--config.data.tfds_dir={case}/tfds'),
    # Workdirs.
    Case('workdir_is_a_file', 'traceback', (*NEW[:2], '--workdir={corpus}', *NEW[3:]), 'is a file'),
    Case('workdir_read_only', 'traceback', RESUME, 'not writable', setup=run_copy(read_only)),
    Case('config_json_garbled', 'traceback', RESUME, 'config.json is not valid JSON',
         setup=run_copy(lambda run: (run / 'config.json').write_text('{"model": {"width": 3'))),
    Case('config_json_a_list', 'traceback', RESUME, 'config.json',
         setup=run_copy(lambda run: (run / 'config.json').write_text('[1, 2]'))),
    Case('config_json_a_directory', 'traceback', RESUME, 'config.json',
         setup=run_copy(lambda run: ((run / 'config.json').unlink(), (run / 'config.json').mkdir()))),
    Case('resumed_with_another_width', 'message', (*RESUME, '--config.model.width=64'), 'model.width',
         setup=run_copy()),
    Case('resumed_with_another_batch_size', 'accepted', (*RESUME, '--config.train.batch_size=4'),
         "train.batch_size: 8 there, 4 here", setup=run_copy()),
    Case('resumed_with_another_seed', 'accepted', (*RESUME, '--config.train.seed=3'), "train.seed: 0 there, 3 here",
         setup=run_copy()),
    Case('resumed_on_another_text', 'accepted', (*RESUME[:3], '--config.data.path={jsonl}', *RESUME[4:]),
         'data.path', setup=run_copy()),
    Case('resumed_on_another_store', 'message', (*RESUME[:3], '--config.data.path={case}/store', *RESUME[4:]),
         'data.store_digest', setup=lambda case, paths: (run_copy()(case, paths), store_of()(case, paths))),
    Case('resumed_with_another_tokenizer', 'message', (*RESUME, '--config.data.tokenizer=byte'), 'tokenizer',
         setup=run_copy()),
    Case('tokenizer_json_garbled', 'traceback', RESUME, 'tokenizer.json',
         setup=run_copy(lambda run: (run / 'tokenizer.json').write_text('{"kind": '))),
    Case('metrics_is_a_directory', 'traceback', RESUME, 'metrics.jsonl',
         setup=run_copy(lambda run: ((run / 'metrics.jsonl').unlink(), (run / 'metrics.jsonl').mkdir()))),
    # One writer: a live writer's lock refuses a second before anything is read or written.
    Case('resume_while_another_host_writes', 'damage', RESUME, 'is being written by process 4321 on another-host',
         setup=lambda case, paths: (run_copy()(case, paths), locked(host='another-host', pid=4321)(case, paths))),
    Case('resume_while_a_process_here_writes', 'damage', RESUME, 'is being written by process 1 on',
         setup=lambda case, paths: (run_copy()(case, paths), locked(pid=1)(case, paths))),
    Case('take_over_from_a_process_here', 'damage', (*RESUME, '--take_over'), 'which runs on this host: stop it',
         setup=lambda case, paths: (run_copy()(case, paths), locked(pid=1)(case, paths))),
    Case('new_run_while_another_host_starts_it', 'damage', NEW, 'is being written by process 4321 on another-host',
         setup=locked('new', host='another-host', pid=4321)),
    Case('lock_is_a_folder', 'accepted', RESUME, 'is not a lock file flaxlm wrote',
         setup=lambda case, paths: (run_copy()(case, paths), (case / 'run' / lock.LOCK).mkdir())),
    Case('workdir_is_a_dangling_symlink', 'traceback', (*NEW[:2], '--workdir={case}/link', *NEW[3:]),
         'is a symlink to nothing', setup=lambda case, paths: (case / 'link').symlink_to(case / 'nowhere')),
    Case('workdir_inside_a_file', 'traceback', (*NEW[:2], '--workdir={corpus}/run', *NEW[3:]), 'cannot create'),
    Case('prepare_while_another_host_writes', 'damage',
         ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store', '--tokenizer=char'),
         'is being written by process 4321 on another-host', setup=locked('store', host='another-host', pid=4321)),
    Case('prepare_taking_over_from_a_process_here', 'damage',
         ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store', '--tokenizer=char', '--take_over'),
         'which runs on this host: stop it', setup=locked('store', pid=1)),
    new('train_on_a_store_being_prepared', 'message', 'is being prepared by process 4321 on another-host',
        '--config.data.path={case}/store',
        setup=lambda case, paths: (locked('store', host='another-host', pid=4321)(case, paths),
                                   (case / 'store' / prepare.store.PLAN).write_text('{}'))),
    # The cache of prepared stores: a run that does not start leaves no entry; one that cannot write it says so.
    new('refused_run_leaves_its_cached_store', 'damage', 'fewer than one batch', '--config.train.batch_size=4096',
        env=(('FLAXLM_CACHE', '{case}/cache'),)),
    new('cache_is_a_file', 'traceback', 'cannot create $FLAXLM_CACHE', env=(('FLAXLM_CACHE', '{corpus}'),)),
    new('cache_is_a_dangling_symlink', 'traceback', 'cannot create $FLAXLM_CACHE',
        env=(('FLAXLM_CACHE', '{case}/link'),), setup=lambda case, paths: (case / 'link').symlink_to(case / 'nowhere')),
    # Checkpoints: every one damaged, so none restores and nothing may be moved.
    Case('every_state_truncated', 'damage', RESUME, 'no checkpoint',
         setup=run_copy(lambda run: [p.write_bytes(p.read_bytes()[:50]) for p in checkpoint_files(run, 'state')])),
    Case('every_data_state_garbled', 'traceback', RESUME, 'no checkpoint', setup=run_copy(garble_all('data'))),
    Case('every_data_state_wrong', 'traceback', RESUME, 'no checkpoint',
         setup=run_copy(garble_all('data', json.dumps({'position': 'x'}).encode()))),
    Case('checkpoints_is_a_file', 'traceback', RESUME, 'checkpoints',
         setup=run_copy(lambda run: (shutil.rmtree(run / 'checkpoints'), (run / 'checkpoints').write_text('')))),
]


@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
  """Every case's result, from one campaign run in its own copy of the session's sandbox."""
  root = tmp_path_factory.mktemp('campaign_train')
  return run_campaign(CASES, root, shared_sandbox(root))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_training_input_is_refused_with_one_line_and_no_damage(results, case):
  if case.id == 'workdir_read_only' and os.geteuid() == 0:
    pytest.skip('root writes to read-only folders')
  assert_refused(case, results[case.id])
