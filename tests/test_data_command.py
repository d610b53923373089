"""Tests of flaxlm-data as a user runs it: check's report (counts, every malformed line, the exit status), verify's
summary, and prepare stopped by a signal."""

import json
import os
import pathlib
import signal
import time

import pytest

import commands
from conftest import command, make_corpus
from test_cli import assert_one_line_error, run
from flaxlm.data import prepare, store


def test_check_reports_lengths_empties_duplicates_and_every_malformed_line(tmp_path):
  pair = {'prompt': 'Q: 2+2?\nA:', 'response': ' 4'}  # 10 + 2 bytes and EOS: 13 tokens, T + 1 for T = 12.
  chat = {'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]}
  empty = {'prompt': 'x', 'response': ''}  # 2 tokens with EOS.
  lines = [json.dumps(pair), json.dumps(chat), 'not json', json.dumps(pair), json.dumps(empty), '{"prompt": "y"}']
  path = tmp_path / 'data.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  result = run(command('flaxlm-data'), 'check', str(path), '--tokenizer=byte', '--max_length=12')
  assert result.returncode == 1 and result.stderr.strip() == \
      f'flaxlm-data: error: 2 malformed line(s) in {path}: fix or remove them (listed above).'
  assert result.stdout.splitlines() == [
      'examples: 4',
      'tokens per example: min 2, median 13, p90 33, max 33',  # the chat: '<|user|>\nHi\n<|assistant|>\nHello\n', EOS.
      'truncated at max_length=12 (over 13 tokens): 1',
      'empty prompts: 0',
      'empty responses: 1 (line 5)',
      'duplicates: 1 (line 4 repeats line 1)',
      'malformed lines: 2',
      f'  {path}:3 is not valid JSON (Expecting value): a .jsonl file holds one JSON object per line; fix or remove '
      'that line.',
      f'  {path}:6 is not an example: give it string fields "prompt" and "response", or "messages", a non-empty list '
      'of {"role": one of system, user, assistant, "content": string}.',
  ]


def test_a_clean_file_passes_with_a_hugging_face_folders_tokenizer(tmp_path):
  path = tmp_path / 'data.jsonl'
  path.write_text(''.join(json.dumps({'prompt': f'p{i}', 'response': f'r{i}'}) + '\n' for i in range(3)))
  folder = pathlib.Path(__file__).parent / 'fixtures' / 'hf_tokenizer'
  result = run(command('flaxlm-data'), 'check', str(path), f'--tokenizer={folder}', '--max_length=8')
  assert result.returncode == 0, result.stderr
  assert 'examples: 3' in result.stdout and 'malformed lines: 0' in result.stdout


def test_defaults_are_a_training_runs_and_bad_settings_are_refused(tmp_path):
  path = tmp_path / 'data.jsonl'
  path.write_text(json.dumps({'prompt': 'p' * 70, 'response': 'r'}) + '\n')  # 70 + 1 chars and EOS: over T + 1 = 65.
  result = run(command('flaxlm-data'), 'check', str(path))
  assert result.returncode == 0, result.stderr
  assert 'truncated at max_length=64 (over 65 tokens): 1' in result.stdout
  assert_one_line_error(run(command('flaxlm-data'), 'check', str(path), '--max_length=0'), '--max_length=0 must be')
  (tmp_path / 'empty.jsonl').write_text('')
  assert_one_line_error(run(command('flaxlm-data'), 'check', str(tmp_path / 'empty.jsonl')), 'holds no example')


def test_verify_prints_the_splits_of_a_whole_store(corpus, tmp_path):
  prepare.prepare(str(corpus), str(tmp_path / 'store'), 'char', prepare.Settings(val_fraction=0.2))
  result = run(command('flaxlm-data'), 'verify', str(tmp_path / 'store'))
  assert result.returncode == 0, result.stderr
  assert result.stdout.splitlines() == [
      'train: 12,699 tokens, 3 documents, 1 shards', 'validation: 2,724 tokens, 3 documents, 1 shards',
      f'token store {tmp_path / "store"} is verified: every shard\'s SHA-256, records, counts and token ids (below 35) '
      'are as its manifest records.']


@pytest.fixture(scope='module')
def big_corpus(tmp_path_factory) -> pathlib.Path:
  """A text of about 4 MB: five groups of input at --group_mb=1, each a second or so of a worker's time."""
  return make_corpus(tmp_path_factory.mktemp('big') / 'big.txt', num_words=800_000)


def prepare_args(corpus: pathlib.Path, output: pathlib.Path) -> list[str]:
  """Returns the command line of a prepare of `corpus` into `output` by two workers, a group a megabyte."""
  return [command('flaxlm-data'), 'prepare', str(corpus), f'--output={output}', '--tokenizer=byte', '--workers=2',
          '--group_mb=1']


STOPS = {'sigterm_to_the_main_process': lambda process: process.send_signal(signal.SIGTERM),
         'ctrl_c_to_the_process_group': lambda process: os.killpg(process.pid, signal.SIGINT)}


@pytest.mark.parametrize('stop', STOPS)
def test_a_signal_stops_prepare_within_seconds_keeping_its_finished_groups(big_corpus, tmp_path, stop):
  output = tmp_path / 'store'
  process = commands.start(*prepare_args(big_corpus, output))
  deadline = time.monotonic() + 120
  while not list(output.glob('group-*.json')):  # Once the first group is finished.
    assert process.poll() is None and time.monotonic() < deadline, process.output()
    time.sleep(0.01)
  start = time.monotonic()
  STOPS[stop](process)
  assert process.wait(timeout=60) == 130 and time.monotonic() - start < 10
  groups = len(json.loads((output / store.PLAN).read_text())['groups'])
  kept = sorted(int(path.stem.split('-')[1]) for path in output.glob('group-*.json'))
  assert 0 < len(kept) < groups
  assert process.output()[1] == (f'flaxlm-data: error: interrupted: {len(kept)} of {groups} input groups prepared and '
                                 f'kept in {output}: run the same command to finish.\n')
  assert {path.name for path in output.iterdir()} == {  # No partial shard, nor a shard of an unfinished group.
      store.PLAN, 'tokenizer.json', *(store.group_name(i) for i in kept),
      *(store.shard_name(split, i) for split in store.SPLITS for i in kept)}
  if stop == 'sigterm_to_the_main_process':  # The same command finishes it.
    finished = run(*prepare_args(big_corpus, output))
    assert finished.returncode == 0, finished.stderr
    assert finished.stdout.startswith(f'{len(kept)} of {groups} input groups already prepared; preparing '
                                      f'{groups - len(kept)} with 2 worker processes\n')
    assert store.verify(str(output)).manifest['splits']['train']['shards'][-1]['file'] == store.shard_name(
        'train', groups - 1)
