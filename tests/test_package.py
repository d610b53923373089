"""Tests of flaxlm as installed: one import name, the shipped corpus, and presets by name, from any folder."""

import json
import subprocess
import sys

import commands
from conftest import command
from test_cli import assert_one_line_error
from flaxlm import configs
from flaxlm.data import sources


def run_in(folder, *args: str) -> subprocess.CompletedProcess:
  """Runs a command with `folder` as the working directory (not the repository), as a user would."""
  return commands.run(*args, cwd=folder)


def test_the_folders_import_as_flaxlm_subpackages_only(tmp_path):
  probe = ('import importlib.util as u; '
           'print([u.find_spec(n) is None for n in ("model", "data", "train", "configs")], '
           '[u.find_spec("flaxlm." + n) is None for n in ("model", "data", "train", "configs")])')
  assert run_in(tmp_path, sys.executable, '-c', probe).stdout.split('] [') == ['[True, True, True, True',
                                                                               'False, False, False, False]\n']


def test_the_shipped_corpus_is_tiny_shakespeare():
  text = sources.read_text('flaxlm:tinyshakespeare')
  assert len(text) == 1_115_394 and len(set(text)) == 65 and text.startswith('First Citizen:\nBefore we proceed')


def test_shakespeare_char_trains_on_the_shipped_corpus_and_samples_from_any_folder(tmp_path):
  workdir = tmp_path / 'run'
  trained = run_in(tmp_path, command('flaxlm-train'), '--config=shakespeare_char', f'--workdir={workdir}',
                   '--config.train.steps=2', '--config.train.eval_every=2', '--config.train.eval_batches=2')
  assert trained.returncode == 0, trained.stderr
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['data']['path'] == 'flaxlm:tinyshakespeare' and saved['model']['vocab_size'] == 65
  sampled = run_in(tmp_path, command('flaxlm-sample'), f'--workdir={workdir}', '--prompt=ROMEO:',
                   '--max_new_tokens=30')
  assert sampled.returncode == 0, sampled.stderr
  assert sampled.stdout.startswith('ROMEO:') and len(sampled.stdout.rstrip('\n')) == len('ROMEO:') + 30


def test_config_takes_a_preset_name_or_a_users_file(tmp_path):
  assert configs.config_file('tiny') == str(configs.FOLDER / 'tiny.py')
  own = tmp_path / 'mine.py'
  own.write_text('from flaxlm.configs import tiny\n\n\ndef get_config():\n  config = tiny.get_config()\n'
                 '  config.model.num_layers = 3\n  return config\n')
  assert configs.config_file(str(own)) == str(own)
  info = run_in(tmp_path, command('flaxlm-info'), f'--config={own}', '--config.model.vocab_size=65')
  assert info.returncode == 0 and '3 layers' in info.stdout, info.stderr


def test_unknown_presets_and_missing_config_files_get_one_line(tmp_path):
  unknown = run_in(tmp_path, command('flaxlm-train'), '--config=shakespeare', f'--workdir={tmp_path / "w"}')
  assert_one_line_error(unknown, "there is no preset 'shakespeare': pass one of finetune_shakespeare, gemma3_12b")
  missing = run_in(tmp_path, command('flaxlm-info'), '--config=nowhere/mine.py')
  assert_one_line_error(missing, 'config file nowhere/mine.py does not exist')
  assert not (tmp_path / 'w').exists()
