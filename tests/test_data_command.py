"""Tests of flaxlm-data check as a user runs it: the report's counts, every malformed line, and the exit status."""

import json
import pathlib

from conftest import command
from test_cli import assert_one_line_error, run


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
