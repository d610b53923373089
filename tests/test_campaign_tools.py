"""The bad-input campaign (tests/campaign.py) against the tools around training: flaxlm-tokenizer, flaxlm-data,
flaxlm-info, flaxlm-estimate and flaxlm-plot."""

import json
import os
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from campaign import Case, assert_refused, run_campaign, shared_sandbox
from test_campaign_train import run_copy, write
from test_plot import write_run
from flaxlm.configs.errors import UserError
from flaxlm.data import prepare
from flaxlm.train import plot
from flaxlm.train.plan import estimate

TOK_TRAIN = ('flaxlm-tokenizer', 'train', '--input={corpus}')
ESTIMATE = ('flaxlm-estimate', '--params=1e9', '--tokens=2e10', '--device=a100')
LATIN = 'caf\xe9 cr\xe8me\n'.encode('latin-1') * 50  # Not UTF-8.
GARBLED_MODEL = b'\x00\x01not a model'


def tok_train(id: str, kind: str, fragment: str, *args: str, **options) -> Case:
  """A case training a tokenizer on the sandbox's corpus with `args` (flags appended)."""
  return Case(id, kind, (*TOK_TRAIN, *args), fragment, **options)


def fifo(name: str):
  """Returns a setup making a named pipe `name` in the case's folder: reading it waits for a writer forever."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    os.mkfifo(case / name)
  return setup


def link(name: str, target: str):
  """Returns a setup making the case's `name` a symlink to the sandbox path `target` names."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    (case / name).symlink_to(paths[target])
  return setup


def records(*lines: dict | str) -> str:
  """Returns metrics.jsonl's text: a dict as its JSON line, a string as it is."""
  return ''.join((json.dumps(line) if isinstance(line, dict) else line) + '\n' for line in lines)


def metrics_text(text: str):
  """Returns a setup copying the finished run to the case's `run` and writing `text` as its metrics.jsonl."""
  return run_copy(lambda run: (run / 'metrics.jsonl').write_text(text))


def metrics_folder(run: pathlib.Path) -> None:
  """Makes the run's metrics.jsonl a folder."""
  (run / 'metrics.jsonl').unlink()
  (run / 'metrics.jsonl').mkdir()


CASES = [
    # flaxlm-tokenizer: the command line.
    Case('tok_no_subcommand', 'message', ('flaxlm-tokenizer',), 'name one command of train, encode, count'),
    Case('tok_unknown_subcommand', 'message', ('flaxlm-tokenizer', 'decode', '--tokenizer={tokenizer}'),
         'name one command of train, encode, count'),
    tok_train('tok_train_flag_of_another_subcommand', 'accepted', 'takes no --text', '--vocab_size=300',
              '--output={case}/tok.model', '--text=the king'),
    tok_train('tok_train_unknown_flag', 'message', 'character_coverage', '--vocab_size=300',
              '--output={case}/tok.model', '--character_coverage=0.5'),
    # flaxlm-tokenizer train: where the model goes.
    tok_train('tok_train_output_exists', 'damage', 'already exists', '--vocab_size=300', '--output={case}/tok.model',
              setup=write('tok.model', 'mine')),
    tok_train('tok_train_output_is_the_input', 'damage', 'one of the --input files', '--vocab_size=300',
              '--output={corpus}', '--overwrite'),
    tok_train('tok_train_output_links_to_the_input', 'damage', 'one of the --input files', '--vocab_size=300',
              '--output={case}/tok.model', '--overwrite', setup=link('tok.model', 'corpus')),
    tok_train('tok_train_output_links_elsewhere', 'damage', 'already exists', '--vocab_size=300',
              '--output={case}/tok.model', setup=link('tok.model', 'jsonl')),
    tok_train('tok_train_output_a_folder_overwritten', 'message', 'is a directory', '--vocab_size=100000',
              '--output={case}', '--overwrite'),
    tok_train('tok_train_output_in_a_missing_folder', 'message', 'which is not a directory', '--vocab_size=300',
              '--output={case}/missing/tok.model'),
    tok_train('tok_train_output_in_a_missing_folder_overwritten', 'message', 'which is not a directory',
              '--vocab_size=100000', '--output={case}/missing/tok.model', '--overwrite'),
    Case('tok_train_output_empty', 'message', ('flaxlm-tokenizer', 'train', '--input={corpus}', '--vocab_size=300',
                                               '--output='), '--output is required'),
    # flaxlm-tokenizer train: the text.
    Case('tok_train_input_missing', 'message', ('flaxlm-tokenizer', 'train', '--input={case}/none.txt',
                                                '--vocab_size=300', '--output={case}/tok.model'), 'no file matches'),
    Case('tok_train_input_empty', 'message', ('flaxlm-tokenizer', 'train', '--input={case}/empty.txt',
                                              '--vocab_size=300', '--output={case}/tok.model'), 'holds no text',
         setup=write('empty.txt', '\n\n')),
    Case('tok_train_input_a_folder', 'message', ('flaxlm-tokenizer', 'train', '--input={case}', '--vocab_size=300',
                                                 '--output={case}/tok.model'), 'is a directory'),
    Case('tok_train_input_not_utf8', 'traceback', ('flaxlm-tokenizer', 'train', '--input={case}/latin.txt',
                                                   '--vocab_size=300', '--output={case}/tok.model'), 'not UTF-8',
         setup=write('latin.txt', LATIN)),
    Case('tok_train_input_a_pipe', 'hang', ('flaxlm-tokenizer', 'train', '--input={case}/pipe.txt',
                                            '--vocab_size=300', '--output={case}/tok.model'),
         'not a regular file', setup=fifo('pipe.txt'), timeout=10),
    Case('tok_train_jsonl_without_the_field', 'message', ('flaxlm-tokenizer', 'train', '--input={jsonl}',
                                                          '--jsonl_field=body', '--vocab_size=300',
                                                          '--output={case}/tok.model'), '--jsonl_field'),
    # flaxlm-tokenizer train: the numbers.
    tok_train('tok_train_vocab_zero', 'message', '--vocab_size=0', '--vocab_size=0', '--output={case}/tok.model'),
    tok_train('tok_train_vocab_negative', 'message', '--vocab_size=-5', '--vocab_size=-5',
              '--output={case}/tok.model'),
    tok_train('tok_train_vocab_below_the_characters', 'message', 'pass --vocab_size=294 or more',
              '--vocab_size=270', '--output={case}/tok.model'),
    tok_train('tok_train_vocab_beyond_the_text', 'message', '--vocab_size=100000 is more than this text can fill',
              '--vocab_size=100000', '--output={case}/tok.model'),
    tok_train('tok_train_vocab_not_a_number', 'message', '--vocab_size=many', '--vocab_size=many',
              '--output={case}/tok.model'),
    tok_train('tok_train_unknown_model_type', 'message', 'pass --model_type=bpe or --model_type=unigram',
              '--vocab_size=300', '--model_type=word', '--output={case}/tok.model'),
    tok_train('tok_train_negative_max_sentences', 'traceback', '--max_sentences=-1', '--vocab_size=300',
              '--max_sentences=-1', '--output={case}/tok.model'),
    # flaxlm-tokenizer encode and count: the tokenizer file and the text.
    Case('tok_encode_garbled_model', 'message', ('flaxlm-tokenizer', 'encode', '--tokenizer={case}/tok.model',
                                                 '--text=the king'), 'is not a SentencePiece model',
         setup=write('tok.model', GARBLED_MODEL)),
    Case('tok_encode_garbled_json', 'message', ('flaxlm-tokenizer', 'encode', '--tokenizer={case}/tok.json',
                                                '--text=the king'), 'is not valid JSON',
         setup=write('tok.json', '{"kind": "ch')),
    Case('tok_encode_char_json_without_chars', 'traceback', ('flaxlm-tokenizer', 'encode',
                                                             '--tokenizer={case}/tok.json', '--text=the king'),
         'is not a flaxlm tokenizer', setup=write('tok.json', '{"kind": "char"}')),
    Case('tok_encode_char_json_chars_a_number', 'traceback', ('flaxlm-tokenizer', 'encode',
                                                              '--tokenizer={case}/tok.json', '--text=the king'),
         'is not a flaxlm tokenizer', setup=write('tok.json', '{"kind": "char", "chars": 5}')),
    Case('tok_encode_char_json_repeated_chars', 'accepted', ('flaxlm-tokenizer', 'encode',
                                                             '--tokenizer={case}/tok.json', '--text=ab'),
         'is not a flaxlm tokenizer', setup=write('tok.json', '{"kind": "char", "chars": ["a", "b", "a"]}')),
    Case('tok_encode_tokenizer_a_folder', 'message', ('flaxlm-tokenizer', 'encode', '--tokenizer={case}',
                                                      '--text=the king'), 'is a directory'),
    Case('tok_encode_tokenizer_missing', 'message', ('flaxlm-tokenizer', 'encode', '--tokenizer={case}/tok.model',
                                                     '--text=the king'), 'does not exist'),
    Case('tok_encode_text_and_input', 'accepted', ('flaxlm-tokenizer', 'encode', '--tokenizer={tokenizer}',
                                                   '--text=the king', '--input={corpus}'),
         '--text and --input both give'),
    Case('tok_encode_characters_outside_the_alphabet', 'message', ('flaxlm-tokenizer', 'encode',
                                                                   '--tokenizer={tokenizer}', '--text=h\xe9llo \u2603'),
         "not in the tokenizer's alphabet"),
    Case('tok_count_without_text', 'message', ('flaxlm-tokenizer', 'count', '--tokenizer={tokenizer}'),
         '--input is required'),
    Case('tok_count_input_a_pipe', 'hang', ('flaxlm-tokenizer', 'count', '--tokenizer={tokenizer}',
                                            '--input={case}/pipe.txt'), 'not a regular file',
         setup=fifo('pipe.txt'), timeout=10),
    Case('tok_count_output_flag', 'accepted', ('flaxlm-tokenizer', 'count', '--tokenizer={tokenizer}',
                                               '--input={corpus}', '--output={case}/counts.txt'), 'takes no --output'),
    # flaxlm-data.
    Case('data_no_subcommand', 'message', ('flaxlm-data',), 'name one command of prepare, check'),
    Case('data_unknown_subcommand', 'message', ('flaxlm-data', 'validate', '{case}/examples.jsonl'),
         'name one command of prepare, check'),
    Case('data_check_without_a_file', 'message', ('flaxlm-data', 'check'), 'name one file'),
    Case('data_check_missing', 'message', ('flaxlm-data', 'check', '{case}/none.jsonl'), 'No such file'),
    Case('data_check_a_folder', 'message', ('flaxlm-data', 'check', '{case}'), 'is a directory'),
    Case('data_check_a_pipe', 'hang', ('flaxlm-data', 'check', '{case}/pipe.jsonl'), 'not a regular file',
         setup=fifo('pipe.jsonl'), timeout=10),
    Case('data_check_empty', 'message', ('flaxlm-data', 'check', '{case}/e.jsonl'), 'holds no example',
         setup=write('e.jsonl', '')),
    Case('data_check_malformed', 'message', ('flaxlm-data', 'check', '{case}/e.jsonl'), '1 malformed line(s)',
         setup=write('e.jsonl', '{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": \n')),
    Case('data_check_plain_text', 'message', ('flaxlm-data', 'check', '{corpus}'), '300 malformed line(s)'),
    Case('data_check_max_length_zero', 'message', ('flaxlm-data', 'check', '{case}/e.jsonl', '--max_length=0'),
         '--max_length=0 must be positive', setup=write('e.jsonl', '{"prompt": "a", "response": "b"}\n')),
    Case('data_check_max_length_a_float', 'message', ('flaxlm-data', 'check', '{case}/e.jsonl',
                                                      '--max_length=1e3'), '--max_length=1e3',
         setup=write('e.jsonl', '{"prompt": "a", "response": "b"}\n')),
    Case('data_check_unknown_tokenizer', 'message', ('flaxlm-data', 'check', '{case}/e.jsonl',
                                                     '--tokenizer=wordpiece'), '--tokenizer=wordpiece',
         setup=write('e.jsonl', '{"prompt": "a", "response": "b"}\n')),
    Case('data_check_garbled_tokenizer', 'message', ('flaxlm-data', 'check', '{case}/e.jsonl',
                                                     '--tokenizer={case}/tok.model'), 'is not a SentencePiece model',
         setup=lambda case, paths: (write('e.jsonl', '{"prompt": "a", "response": "b"}\n')(case, paths),
                                    write('tok.model', GARBLED_MODEL)(case, paths))),
    Case('prepare_without_input', 'message', ('flaxlm-data', 'prepare', '--output={case}/store'), 'name the input'),
    Case('prepare_without_output', 'message', ('flaxlm-data', 'prepare', '{corpus}'), '--output is required'),
    Case('prepare_missing_input', 'message', ('flaxlm-data', 'prepare', '{case}/none.txt', '--output={case}/store'),
         'no file matches'),
    Case('prepare_unknown_tokenizer', 'message', ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store',
                                                  '--tokenizer=wordpiece'), '--tokenizer=wordpiece'),
    Case('prepare_val_fraction_of_one', 'message', ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store',
                                                    '--val_fraction=1'), '--val_fraction=1.0'),
    Case('prepare_zero_group_size', 'message', ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store',
                                                '--group_mb=0'), '--group_mb=0'),
    Case('prepare_negative_workers', 'message', ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store',
                                                 '--workers=-1'), '--workers=-1'),
    Case('prepare_jsonl_without_the_field', 'message', ('flaxlm-data', 'prepare', '{jsonl}', '--output={case}/store',
                                                        '--text_field=body'), "has no text field 'body'"),
    Case('prepare_jsonl_garbled_late', 'message', ('flaxlm-data', 'prepare', '{case}/t.jsonl',
                                                   '--output={case}/store'), 't.jsonl:3 is not valid JSON',
         setup=write('t.jsonl', '{"text": "a"}\n{"text": "b"}\n{"text": \n')),
    Case('prepare_parquet_without_the_field', 'message', ('flaxlm-data', 'prepare', '{case}/t.parquet',
                                                          '--output={case}/store'), "has no column 'text'",
         setup=lambda case, paths: pq.write_table(pa.table({'content': ['a b c']}), case / 't.parquet')),
    Case('prepare_not_parquet', 'message', ('flaxlm-data', 'prepare', '{case}/t.parquet', '--output={case}/store'),
         'is not a Parquet file', setup=write('t.parquet', 'not parquet')),
    Case('prepare_into_a_file', 'message', ('flaxlm-data', 'prepare', '{corpus}', '--output={corpus}'), 'is a file'),
    Case('prepare_into_a_folder_of_other_files', 'message', ('flaxlm-data', 'prepare', '{corpus}',
                                                            '--output={case}'), 'holds no token store',
         setup=write('other.txt', 'x')),
    Case('prepare_over_another_store', 'message', ('flaxlm-data', 'prepare', '{corpus}', '--output={case}/store',
                                                   '--val_fraction=0.2'), 'holds a token store of other inputs',
         setup=lambda case, paths: prepare.prepare(paths['corpus'], str(case / 'store'), 'char', prepare.Settings())),
    # flaxlm-info.
    Case('info_unknown_preset', 'message', ('flaxlm-info', '--config=llama3'), 'there is no preset'),
    Case('info_config_a_folder', 'message', ('flaxlm-info', '--config={case}'), 'is a directory'),
    Case('info_config_a_runs_json', 'message', ('flaxlm-info', '--config={run}/config.json'), 'not a Python file'),
    Case('info_config_syntax_error', 'traceback', ('flaxlm-info', '--config={case}/c.py'), 'SyntaxError',
         setup=write('c.py', 'def get_config(:\n')),
    Case('info_mesh_data_zero', 'accepted', ('flaxlm-info', '--config=gpt2_124m', '--config.mesh.data=0'),
         'mesh.data=0'),
    Case('info_mesh_data_negative', 'accepted', ('flaxlm-info', '--config=gpt2_124m', '--config.mesh.data=-5'),
         'mesh.data=-5'),
    Case('info_two_axes_take_the_rest', 'accepted', ('flaxlm-info', '--config=gpt2_124m', '--config.mesh.fsdp=-1',
                                                     '--config.mesh.tensor=-1'), 'at most one'),
    Case('info_heads_zero', 'message', ('flaxlm-info', '--config=gpt2_124m', '--config.model.num_heads=0'),
         'model.num_heads=0 must be positive'),
    Case('info_context_beyond_int32', 'traceback', ('flaxlm-info', '--config=gpt2_124m',
                                                    '--config.model.max_length=3000000000'),
         'model.max_length=3000000000'),
    Case('info_vocabulary_beyond_int32', 'traceback', ('flaxlm-info', '--config=gpt2_124m',
                                                       '--config.model.vocab_size=100000000000'),
         'model.vocab_size=100000000000'),
    Case('info_garbled_tokenizer', 'message', ('flaxlm-info', '--config=tiny',
                                               '--config.data.tokenizer={case}/t.model'),
         'is not a SentencePiece model', setup=write('t.model', GARBLED_MODEL)),
    Case('info_tokenizer_a_folder', 'message', ('flaxlm-info', '--config=tiny', '--config.data.tokenizer={case}'),
         'is a directory'),
    Case('info_positional_argument', 'message', ('flaxlm-info', '--config=tiny', 'llama2_7b'),
         'unexpected argument'),
    # flaxlm-estimate.
    Case('est_unknown_preset', 'message', ('flaxlm-estimate', '--config=gpt3', '--tokens=1e9'), 'there is no preset'),
    Case('est_unknown_device', 'message', (*ESTIMATE[:3], '--device=v100', '--mfu=0.4'), 'unknown --device=v100'),
    Case('est_zero_tokens', 'message', (ESTIMATE[0], ESTIMATE[1], '--tokens=0'), '--tokens=0 must be positive'),
    Case('est_negative_epochs', 'message', (ESTIMATE[0], ESTIMATE[1], '--dataset_tokens=1e9', '--epochs=-1'),
         '--epochs=-1 must be positive'),
    Case('est_negative_chips', 'message', (*ESTIMATE, '--chips=-8', '--mfu=0.4'), '--chips=-8 must be positive'),
    Case('est_negative_mfu', 'message', (*ESTIMATE, '--mfu=-0.4'), '--mfu=-0.4 must be in (0, 1]'),
    Case('est_tokens_and_dataset_tokens', 'message', (*ESTIMATE, '--dataset_tokens=1e9', '--mfu=0.4'),
         'pass exactly one of --tokens and --dataset_tokens'),
    Case('est_presets_table_and_workdir', 'message', ('flaxlm-estimate', '--presets_table', '--workdir={run}'),
         'drop --workdir'),
    Case('est_context_beyond_int32', 'traceback', ('flaxlm-estimate', '--config=gpt2_124m', '--tokens=1e9',
                                                   '--config.model.max_length=3000000000'),
         'model.max_length=3000000000'),
    Case('est_workdir_a_file', 'message', (*ESTIMATE, '--workdir={corpus}'), 'is not a directory'),
    Case('est_workdir_of_a_cpu_run', 'message', (*ESTIMATE, '--workdir={run}'), 'has no mfu records'),
    Case('est_metrics_garbled', 'message', (*ESTIMATE, '--workdir={case}/run'), 'is not a metrics record',
         setup=metrics_text(records('not json', '{"step": 1, "mfu": 0.3'))),
    Case('est_metrics_a_folder', 'traceback', (*ESTIMATE, '--workdir={case}/run'), 'is not a file',
         setup=run_copy(metrics_folder)),
    Case('est_metrics_a_pipe', 'hang', (*ESTIMATE, '--workdir={case}/run'), 'is not a file',
         setup=run_copy(lambda run: ((run / 'metrics.jsonl').unlink(), os.mkfifo(run / 'metrics.jsonl'))), timeout=10),
    Case('est_metrics_mfu_a_word', 'accepted', (*ESTIMATE, '--workdir={case}/run'), 'is not a metrics record',
         setup=metrics_text(records({'step': 1, 'mfu': 'high'}, {'step': 2, 'mfu': 0.3}))),
    Case('est_metrics_mfu_a_percentage', 'accepted', (*ESTIMATE, '--workdir={case}/run'), 'outside (0, 1]',
         setup=metrics_text(records({'step': 1, 'mfu': 35}, {'step': 2, 'mfu': 41}))),
    Case('est_metrics_mfu_nan', 'accepted', (*ESTIMATE, '--workdir={case}/run'), 'outside (0, 1]',
         setup=metrics_text(records('{"step": 1, "mfu": NaN}', '{"step": 2, "mfu": NaN}'))),
    # flaxlm-plot.
    Case('plot_output_exists', 'damage', ('flaxlm-plot', '--workdir={run}', '--output={case}/loss.png'),
         'already exists', setup=write('loss.png', 'mine')),
    Case('plot_output_is_the_metrics', 'damage', ('flaxlm-plot', '--workdir={case}/run',
                                                  '--output={case}/run/metrics.jsonl', '--overwrite'),
         'is part of the run', setup=run_copy()),
    Case('plot_output_is_the_config', 'damage', ('flaxlm-plot', '--workdir={case}/run',
                                                 '--output={case}/run/config.json', '--overwrite'),
         'is part of the run', setup=run_copy()),
    Case('plot_output_in_a_checkpoint', 'damage', ('flaxlm-plot', '--workdir={case}/run',
                                                   '--output={case}/run/checkpoints/10/plot.png'),
         'is part of the run', setup=run_copy()),
    Case('plot_output_in_a_missing_folder', 'message', ('flaxlm-plot', '--workdir={run}',
                                                        '--output={case}/missing/loss.png'),
         'which is not a directory'),
    Case('plot_output_a_folder_overwritten', 'damage', ('flaxlm-plot', '--workdir={run}', '--output={case}',
                                                        '--overwrite'), 'is a directory'),
    Case('plot_default_output_a_folder', 'damage', ('flaxlm-plot', '--workdir={case}/run'), 'is a directory',
         setup=run_copy(lambda run: (run / 'loss.png').mkdir())),
    Case('plot_workdir_without_metrics', 'message', ('flaxlm-plot', '--workdir={case}/run',
                                                     '--output={case}/loss.png'), 'no metrics.jsonl records',
         setup=run_copy(lambda run: (run / 'metrics.jsonl').unlink())),
    Case('plot_workdir_a_file', 'message', ('flaxlm-plot', '--workdir={corpus}', '--output={case}/loss.png'),
         'holds no flaxlm run'),
    Case('plot_metrics_garbled', 'message', ('flaxlm-plot', '--workdir={case}/run', '--output={case}/loss.png'),
         'is not a metrics record', setup=metrics_text(records('\x00\x00\x00\x00', '{"step": 5, "loss": 3.5}'))),
    Case('plot_metrics_a_folder', 'traceback', ('flaxlm-plot', '--workdir={case}/run', '--output={case}/loss.png'),
         'is not a file', setup=run_copy(metrics_folder)),
    Case('plot_metrics_without_the_rate', 'traceback', ('flaxlm-plot', '--workdir={case}/run',
                                                        '--output={case}/loss.png'), 'has no "learning_rate"',
         setup=metrics_text(records({'step': 5, 'loss': 3.5}))),
    Case('plot_metrics_loss_a_word', 'accepted', ('flaxlm-plot', '--workdir={case}/run', '--output={case}/loss.png'),
         'is not a metrics record', setup=metrics_text(records({'step': 5, 'loss': 'low', 'learning_rate': 0.1}))),
    Case('plot_config_garbled', 'message', ('flaxlm-plot', '--workdir={case}/run', '--output={case}/loss.png'),
         'config.json is not valid JSON', setup=run_copy(lambda run: (run / 'config.json').write_text('{"model": '))),
    Case('plot_unknown_metric', 'message', ('flaxlm-plot', '--workdir={run}', '--output={case}/loss.png',
                                            '--metric=perplexity'), 'Unknown command line flag'),
]
@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
  """Every case's result, from one campaign run in its own copy of the session's sandbox."""
  root = tmp_path_factory.mktemp('campaign_tools')
  return run_campaign(CASES, root, shared_sandbox(root))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_tool_input_is_refused_with_one_line_and_no_damage(results, case):
  assert_refused(case, results[case.id])


def test_a_last_metrics_line_cut_short_is_left_out_and_any_other_bad_line_refused(tmp_path):
  logged = [{'step': s, 'loss': 3.0, 'learning_rate': 1e-3, 'mfu': m} for s, m in ((5, 0.1), (10, 0.3), (15, 0.5))]
  write_run(tmp_path / 'run', logged)
  with (tmp_path / 'run' / 'metrics.jsonl').open('a') as f:
    f.write('{"step": 20, "loss": 2.')  # What a kill in the middle of a write leaves.
  assert estimate.measured_mfu(tmp_path / 'run') == 0.4
  assert list(plot.run_figure(tmp_path / 'run').axes[0].get_lines()[0].get_xdata()) == [5, 10, 15]
  with (tmp_path / 'run' / 'metrics.jsonl').open('a') as f:
    f.write('\n' + json.dumps(logged[0]) + '\n')  # The cut line is no longer the last.
  with pytest.raises(UserError, match='metrics.jsonl:4 is not a metrics record'):
    estimate.measured_mfu(tmp_path / 'run')
