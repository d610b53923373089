"""The bad-input campaign (tests/campaign.py) against the commands that use a trained model or convert one:
flaxlm-sample, flaxlm-score, flaxlm-export and flaxlm-convert. Their runs, exports and HF folders are read, never
changed: a damaged checkpoint is named, not moved."""

import json
import os
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.numpy

from campaign import Case, assert_refused, run_campaign, shared_sandbox
from test_campaign_train import garble_all, write

SAMPLE = ('flaxlm-sample', '--workdir={run}', '--prompt=the')
SAMPLE_COPY = ('flaxlm-sample', '--workdir={case}/run', '--prompt=the')
SCORE = ('flaxlm-score', '--workdir={run}', '--text=the queen')
EXPORT = ('flaxlm-export', '--workdir={run}', '--output={case}/out')
FROM_HF = ('flaxlm-convert', '--from_hf={case}/hf_llama', '--output={case}/out')
TO_HF = ('flaxlm-convert', '--to_hf={case}/hf', '--params={export}')


def sample(id: str, kind: str, fragment: str, *flags: str, **options) -> Case:
  """A case sampling from the finished run with `flags` appended."""
  return Case(id, kind, (*SAMPLE, *flags), fragment, **options)


def prompt_file(id: str, kind: str, fragment: str, path: str, **options) -> Case:
  """A case sampling from the finished run with the prompt read from `path`."""
  return Case(id, kind, (*SAMPLE[:2], f'--prompt_file={path}'), fragment, **options)


def copied(name: str, change=None):
  """Returns a setup copying the sandbox's `name` (run, export, hf_llama) into the case's folder, then applying
  `change(the copy)`: damage is done to copies only."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    shutil.copytree(paths[name], case / name)
    if change:
      change(case / name)
  return setup


def truncate(path: pathlib.Path) -> None:
  """Cuts every file below `path` to its first 50 bytes."""
  for file in [p for p in path.rglob('*') if p.is_file()]:
    file.write_bytes(file.read_bytes()[:50])


def truncate_arrays(path: pathlib.Path) -> None:
  """Cuts the array data of every Orbax checkpoint below `path` (its metadata stays whole, so reading starts)."""
  for file in path.rglob('ocdbt.process_*/d/*'):
    file.write_bytes(file.read_bytes()[:40])


def edit_json(name: str, change):
  """Returns a change replacing the JSON file `name` of a folder with `change(its contents)`."""
  def edit(folder: pathlib.Path) -> None:
    (folder / name).write_text(json.dumps(change(json.loads((folder / name).read_text()))))
  return edit


def hf_copy(config: dict | bytes | None = None, tensors=None, raw: bytes | None = None, change=None):
  """Returns a setup copying the Llama fixture to the case's folder, with its config.json changed by `config` (a
  dict of changes, or bytes), its tensors replaced by `tensors(old ones)`, its weights file by `raw` bytes, or
  `change(folder)` applied."""
  def damage(folder: pathlib.Path) -> None:
    if isinstance(config, bytes):
      (folder / 'config.json').write_bytes(config)
    elif config is not None:
      edit_json('config.json', lambda old: {**old, **config})(folder)
    if tensors is not None:
      safetensors.numpy.save_file(tensors(safetensors.numpy.load_file(folder / 'model.safetensors')),
                                  folder / 'model.safetensors')
    if raw is not None:
      (folder / 'model.safetensors').write_bytes(raw)
    if change:
      change(folder)
  return copied('hf_llama', damage)


def wider(folder: pathlib.Path) -> None:
  """Doubles the model width in the config.json of a run or export, so it no longer describes its params."""
  edit_json('config.json', lambda c: {**c, 'model': {**c['model'], 'width': 2 * c['model']['width']}})(folder)


def fifo(name: str):
  """Returns a setup making a named pipe `name` in the case's folder: reading it waits for a writer forever."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    os.mkfifo(case / name)
  return setup


CASES = [
    # flaxlm-sample: where the model comes from.
    Case('sample_workdir_missing', 'message', ('flaxlm-sample', '--workdir={case}/missing', '--prompt=the'),
         'does not exist'),
    Case('sample_workdir_is_a_file', 'message', ('flaxlm-sample', '--workdir={corpus}', '--prompt=the'),
         'is not a folder'),
    Case('sample_params_is_the_tokenizer', 'message', ('flaxlm-sample', '--params={tokenizer}', '--prompt=the'),
         'is not a folder'),
    Case('sample_workdir_empty', 'message', ('flaxlm-sample', '--workdir={case}', '--prompt=the'),
         'holds no flaxlm run'),
    Case('sample_params_an_hf_folder', 'message', ('flaxlm-sample', '--params={hf_llama}', '--prompt=the'),
         'convert it first with flaxlm-convert --from_hf='),
    Case('sample_config_json_garbled', 'message', SAMPLE_COPY, 'config.json is not valid JSON',
         setup=copied('run', lambda run: (run / 'config.json').write_text('{"model": {"width": 3'))),
    Case('sample_config_json_missing', 'message', SAMPLE_COPY, 'no config.json',
         setup=copied('run', lambda run: (run / 'config.json').unlink())),
    Case('sample_config_json_wrong_types', 'traceback', SAMPLE_COPY, 'has a model section flaxlm cannot read',
         setup=copied('run', edit_json('config.json', lambda c: {**c, 'model': {**c['model'], 'width': 'wide'}}))),
    Case('sample_config_json_train_not_a_section', 'traceback', SAMPLE_COPY, 'train section is 5, not a JSON object',
         setup=copied('run', edit_json('config.json', lambda c: {**c, 'train': 5}))),
    Case('sample_tokenizer_json_garbled', 'message', SAMPLE_COPY, 'tokenizer.json',
         setup=copied('run', lambda run: (run / 'tokenizer.json').write_text('{"kind": '))),
    Case('sample_tokenizer_json_missing', 'message', SAMPLE_COPY, 'has no tokenizer',
         setup=copied('run', lambda run: (run / 'tokenizer.json').unlink())),
    Case('sample_tokenizer_chars_not_a_list', 'traceback', SAMPLE_COPY, 'tokenizer.json',
         setup=copied('run', lambda run: (run / 'tokenizer.json').write_text('{"kind": "char", "chars": 5}'))),
    Case('sample_tokenizer_larger_than_the_model', 'accepted', SAMPLE_COPY, 'more than the model\'s vocabulary of 35',
         setup=copied('run', edit_json('tokenizer.json', lambda t: {**t, 'chars': t['chars'] + list('ABCDFGHK')}))),
    # flaxlm-sample: checkpoints every one of which is damaged (reading commands name them and move nothing).
    Case('sample_every_state_truncated', 'damage', SAMPLE_COPY, 'no checkpoint',
         setup=copied('run', lambda run: [truncate(p) for p in (run / 'checkpoints').glob('*/state')])),
    Case('sample_every_state_garbled', 'message', SAMPLE_COPY, 'no checkpoint',
         setup=copied('run', garble_all('state'))),
    Case('sample_every_state_array_data_truncated', 'traceback', SAMPLE_COPY, 'no checkpoint',
         setup=copied('run', truncate_arrays)),
    Case('sample_every_checkpoint_emptied', 'message', SAMPLE_COPY, 'no checkpoint',
         setup=copied('run', lambda run: [shutil.rmtree(p) for p in (run / 'checkpoints').glob('*/state')])),
    Case('sample_checkpoints_is_a_file', 'message', SAMPLE_COPY, 'is not a folder: restore',
         setup=copied('run', lambda run: (shutil.rmtree(run / 'checkpoints'), (run / 'checkpoints').write_text('')))),
    Case('sample_config_json_of_another_width', 'message', SAMPLE_COPY, 'holds another model than',
         setup=copied('run', wider)),
    Case('sample_export_params_truncated', 'traceback', ('flaxlm-sample', '--params={case}/export', '--prompt=the'),
         'do not restore', setup=copied('export', lambda e: truncate(e / 'params'))),
    Case('sample_export_arrays_truncated', 'traceback', ('flaxlm-sample', '--params={case}/export', '--prompt=the'),
         'do not restore', setup=copied('export', truncate_arrays)),
    Case('sample_export_params_missing', 'message', ('flaxlm-sample', '--params={case}/export', '--prompt=the'),
         'nor the params/ of an export', setup=copied('export', lambda e: shutil.rmtree(e / 'params'))),
    # flaxlm-sample: settings out of range.
    sample('sample_negative_temperature', 'message', '--temperature=-1', '--temperature=-1'),
    sample('sample_top_p_of_zero', 'message', '--top_p=0.0 must be in (0, 1]', '--top_p=0'),
    sample('sample_top_p_above_one', 'message', '--top_p=1.5 must be in (0, 1]', '--top_p=1.5'),
    Case('sample_top_k_over_the_vocabulary', 'message', ('flaxlm-sample', '--params={export}', '--top_k=36'),
         'vocabulary of 35 tokens'),
    sample('sample_negative_max_new_tokens', 'message', '--max_new_tokens=-5 must be between 1', '--max_new_tokens=-5'),
    sample('sample_max_new_tokens_trillion', 'message', 'must be between 1 and 1,000,000',
           f'--max_new_tokens={10**12}'),
    sample('sample_zero_samples', 'message', '--num_samples=0 must be between 1', '--num_samples=0'),
    sample('sample_seed_below_64_bits', 'traceback', 'does not fit in 64 bits', f'--seed={-2**63 - 1}'),
    sample('sample_unknown_quantize', 'message', 'int3', '--quantize=int3'),
    sample('sample_prompt_outside_the_alphabet', 'message', 'not in the tokenizer', '--prompt=Zürich'),
    sample('sample_prompt_longer_than_the_context', 'message', 'longer than the model\'s context',
           '--prompt=' + 'a' * 40),
    sample('sample_empty_prompt', 'message', 'the prompt is empty', '--prompt='),
    prompt_file('sample_prompt_file_missing', 'message', 'does not exist', '{case}/missing.txt'),
    prompt_file('sample_prompt_file_a_directory', 'message', 'is a directory', '{case}'),
    prompt_file('sample_prompt_file_not_utf8', 'message', 'is not UTF-8 text: save it as UTF-8',
                '{case}/latin.txt', setup=write('latin.txt', 'caf\xe9'.encode('latin-1'))),
    prompt_file('sample_prompt_file_empty', 'message', 'the prompt is empty', '{case}/empty.txt',
                setup=write('empty.txt', '')),
    prompt_file('sample_prompt_file_a_pipe', 'hang', 'not a regular file', '{case}/pipe',
                setup=fifo('pipe'), timeout=20),
    prompt_file('sample_prompt_file_a_device', 'hang', 'not a regular file', '/dev/zero', timeout=20),
    sample('sample_prompt_and_prompt_file', 'accepted', 'not both', '--prompt_file={corpus}'),
    # flaxlm-score.
    Case('score_no_text', 'message', ('flaxlm-score', '--workdir={run}'), 'pass exactly one of --text'),
    Case('score_text_and_text_file', 'message', (*SCORE, '--text_file={corpus}'), 'pass exactly one of --text'),
    Case('score_text_file_missing', 'message', ('flaxlm-score', '--workdir={run}', '--text_file={case}/missing.txt'),
         'does not exist'),
    Case('score_text_file_a_pipe', 'hang', ('flaxlm-score', '--workdir={run}', '--text_file={case}/pipe'),
         'not a regular file', setup=fifo('pipe'), timeout=20),
    Case('score_text_file_a_device', 'hang', ('flaxlm-score', '--workdir={run}', '--text_file=/dev/zero'),
         'not a regular file', timeout=20),
    Case('score_text_outside_the_alphabet', 'message', ('flaxlm-score', '--workdir={run}', '--text=Zürich'),
         'not in the tokenizer'),
    Case('score_one_token', 'message', ('flaxlm-score', '--workdir={run}', '--text=t'), 'at least 2'),
    Case('score_workdir_missing', 'message', ('flaxlm-score', '--workdir={case}/missing', '--text=the'),
         'does not exist'),
    Case('score_no_model', 'message', ('flaxlm-score', '--text=the'), 'pass exactly one of --workdir'),
    Case('score_every_state_garbled', 'damage', ('flaxlm-score', '--workdir={case}/run', '--text=the'),
         'no checkpoint', setup=copied('run', garble_all('state'))),
    Case('score_export_params_truncated', 'traceback', ('flaxlm-score', '--params={case}/export', '--text=the'),
         'do not restore', setup=copied('export', lambda e: truncate(e / 'params'))),
    Case('score_export_of_another_width', 'accepted', ('flaxlm-score', '--params={case}/export', '--text=the'),
         'its config.json is not the one', setup=copied('export', wider)),
    # flaxlm-export.
    Case('export_no_workdir', 'message', ('flaxlm-export', '--output={case}/out'), '--workdir is required'),
    Case('export_no_output', 'message', ('flaxlm-export', '--workdir={run}'), '--output is required'),
    Case('export_empty_output', 'damage', ('flaxlm-export', '--workdir={run}', '--output='), '--output is required'),
    Case('export_output_exists', 'message', ('flaxlm-export', '--workdir={run}', '--output={export}'),
         'already exists'),
    Case('export_output_is_a_file', 'message', ('flaxlm-export', '--workdir={run}', '--output={corpus}'),
         'already exists'),
    Case('export_output_is_the_workdir', 'message', ('flaxlm-export', '--workdir={run}', '--output={run}'),
         'already exists'),
    Case('export_output_in_a_missing_folder', 'message',
         ('flaxlm-export', '--workdir={run}', '--output={case}/a/b/out'), 'which is not a directory'),
    Case('export_output_in_the_runs_checkpoints', 'damage',
         ('flaxlm-export', '--workdir={case}/run', '--output={case}/run/checkpoints/20'), 'is inside',
         setup=copied('run')),
    Case('export_output_in_an_unwritable_folder', 'traceback',  # Not even root may make a folder in /proc.
         ('flaxlm-export', '--workdir={run}', '--output=/proc/flaxlm_export'), 'could not write /proc/flaxlm_export'),
    Case('export_unknown_dtype', 'message', (*EXPORT, '--dtype=int8'), '--dtype=int8 is not one of'),
    Case('export_workdir_is_a_file', 'message', ('flaxlm-export', '--workdir={corpus}', '--output={case}/out'),
         'is not a folder'),
    Case('export_workdir_an_hf_folder', 'message', ('flaxlm-export', '--workdir={hf_gpt2}', '--output={case}/out'),
         'convert it first with flaxlm-convert --from_hf='),
    Case('export_workdir_missing', 'message', ('flaxlm-export', '--workdir={case}/missing', '--output={case}/out'),
         'does not exist'),
    Case('export_every_state_truncated', 'damage', ('flaxlm-export', '--workdir={case}/run',
                                                     '--output={case}/out'), 'no checkpoint',
         setup=copied('run', lambda run: [truncate(p) for p in (run / 'checkpoints').glob('*/state')])),
    Case('export_every_state_array_data_truncated', 'traceback', ('flaxlm-export', '--workdir={case}/run',
                                                                 '--output={case}/out'), 'no checkpoint',
         setup=copied('run', truncate_arrays)),
    Case('export_of_a_truncated_export', 'traceback', ('flaxlm-export', '--workdir={case}/export',
                                                      '--output={case}/out'), 'do not restore',
         setup=copied('export', lambda e: truncate(e / 'params'))),
    # flaxlm-convert, Hugging Face to flaxlm.
    Case('convert_hf_folder_missing', 'message', ('flaxlm-convert', '--from_hf={case}/missing', '--output={case}/out'),
         'does not exist'),
    Case('convert_hf_folder_is_a_file', 'message',
         ('flaxlm-convert', '--from_hf={hf_llama}/model.safetensors', '--output={case}/out'), 'is not a folder'),
    Case('convert_no_output', 'message', ('flaxlm-convert', '--from_hf={hf_llama}'), '--output is required'),
    Case('convert_empty_output', 'damage', ('flaxlm-convert', '--from_hf={hf_llama}', '--output='),
         '--output is required'),
    Case('convert_output_exists', 'message', ('flaxlm-convert', '--from_hf={hf_llama}', '--output={export}'),
         'already exists'),
    Case('convert_output_in_a_missing_folder', 'message',
         ('flaxlm-convert', '--from_hf={hf_llama}', '--output={case}/a/out'), 'which is not a directory'),
    Case('convert_unknown_dtype', 'message', ('flaxlm-convert', '--from_hf={hf_llama}', '--output={case}/out',
                                              '--dtype=float8'), '--dtype=float8 is not one of'),
    Case('convert_config_garbled', 'message', FROM_HF, 'does not read as JSON', setup=hf_copy(config=b'{"model')),
    Case('convert_config_a_list', 'message', FROM_HF, 'holds a JSON list', setup=hf_copy(config=b'[]')),
    Case('convert_heads_not_a_number', 'message', FROM_HF, 'num_attention_heads=\'4\'',
         setup=hf_copy(config={'num_attention_heads': '4'})),
    Case('convert_heads_not_dividing_the_width', 'message', FROM_HF,
         'num_attention_heads=3, which does not divide hidden_size=64',
         setup=hf_copy(config={'num_attention_heads': 3, 'head_dim': None})),
    Case('convert_kv_heads_not_dividing_the_heads', 'message', FROM_HF,
         'num_key_value_heads=3, which does not divide num_attention_heads=4',
         setup=hf_copy(config={'num_key_value_heads': 3})),
    Case('convert_unknown_model_type', 'message', FROM_HF, "model_type='falcon'",
         setup=hf_copy(config={'model_type': 'falcon'})),
    Case('convert_safetensors_truncated', 'message', FROM_HF, 'does not read as safetensors',
         setup=hf_copy(raw=b'\x10\x00\x00\x00\x00\x00\x00\x00{"a":')),
    Case('convert_safetensors_random', 'message', FROM_HF, 'cut short or damaged',
         setup=hf_copy(raw=np.random.default_rng(1).bytes(2000))),
    Case('convert_safetensors_a_pipe', 'hang', FROM_HF, 'is not a regular file', timeout=20,
         setup=hf_copy(change=lambda hf: ((hf / 'model.safetensors').unlink(), os.mkfifo(hf / 'model.safetensors')))),
    Case('convert_safetensors_a_directory', 'message', FROM_HF, 'is not a regular file',
         setup=hf_copy(change=lambda hf: ((hf / 'model.safetensors').unlink(), (hf / 'model.safetensors').mkdir()))),
    Case('convert_tensor_of_the_wrong_shape', 'message', FROM_HF, 'model.norm.weight is (3,), not (64,)',
         setup=hf_copy(tensors=lambda t: {**t, 'model.norm.weight': np.ones(3, np.float32)})),
    Case('convert_tensor_nan', 'message', FROM_HF, 'holds NaN',
         setup=hf_copy(tensors=lambda t: {**t, 'lm_head.weight': np.full_like(t['lm_head.weight'], np.nan)})),
    Case('convert_tensor_of_integers', 'message', FROM_HF, 'holds int64',
         setup=hf_copy(tensors=lambda t: {**t, 'model.norm.weight': np.ones(64, np.int64)})),
    Case('convert_extra_tensor', 'message', FROM_HF, 'model.vision.weight',
         setup=hf_copy(tensors=lambda t: {**t, 'model.vision.weight': np.ones(2, np.float32)})),
    Case('convert_tokenizer_missing', 'message', ('flaxlm-convert', '--from_hf={hf_llama}', '--output={case}/out',
                                                  '--tokenizer={case}/t.model'), 't.model is not a file'),
    Case('convert_tokenizer_a_flaxlm_char_one', 'accepted',
         ('flaxlm-convert', '--from_hf={hf_llama}', '--output={case}/out', '--tokenizer={tokenizer}'),
         'not a SentencePiece model'),
    Case('convert_gpt2_without_a_tokenizer', 'message', ('flaxlm-convert', '--from_hf={hf_gpt2}',
                                                         '--output={case}/out'), '--tokenizer=FILE.model'),
    # flaxlm-convert, flaxlm to Hugging Face.
    Case('convert_to_hf_exists', 'message', ('flaxlm-convert', '--to_hf={hf_llama}', '--params={export}'),
         'already exists'),
    Case('convert_to_hf_empty', 'message', ('flaxlm-convert', '--to_hf=', '--params={export}'),
         'pass exactly one of --from_hf'),
    Case('convert_to_hf_from_a_run', 'message', ('flaxlm-convert', '--to_hf={case}/hf', '--params={run}'),
         'export it first with flaxlm-export --workdir='),
    Case('convert_to_hf_params_missing', 'message', ('flaxlm-convert', '--to_hf={case}/hf'), '--params is required'),
    Case('convert_to_hf_params_truncated', 'traceback', ('flaxlm-convert', '--to_hf={case}/hf',
                                                         '--params={case}/export'), 'do not restore',
         setup=copied('export', lambda e: truncate(e / 'params'))),
    Case('convert_to_hf_with_a_dtype', 'accepted', (*TO_HF, '--dtype=bfloat16'), '--dtype is used only with --from_hf'),
    Case('convert_to_hf_with_an_output', 'accepted', (*TO_HF, '--output={case}/out'),
         '--output is used only with --from_hf'),
    Case('convert_from_hf_with_params', 'accepted', ('flaxlm-convert', '--from_hf={hf_llama}', '--output={case}/out',
                                                     '--params={export}'), '--params is used only with --to_hf'),
    Case('convert_to_hf_in_the_runs_checkpoints', 'damage', ('flaxlm-convert', '--to_hf={case}/run/checkpoints/30',
                                                             '--params={export}'), 'is inside', setup=copied('run')),
    Case('convert_to_hf_in_an_unwritable_folder', 'traceback',
         ('flaxlm-convert', '--to_hf=/proc/flaxlm_hf', '--params={export}'), 'could not write /proc/flaxlm_hf'),
    Case('convert_from_and_to_hf', 'message', ('flaxlm-convert', '--from_hf={hf_llama}', '--to_hf={case}/hf'),
         'pass exactly one of --from_hf'),
]


@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
  """Every case's result, from one campaign run in its own copy of the session's sandbox."""
  root = tmp_path_factory.mktemp('campaign_use')
  return run_campaign(CASES, root, shared_sandbox(root))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_to_use_a_model_is_refused_with_one_line_and_no_damage(results, case):
  assert_refused(case, results[case.id])
