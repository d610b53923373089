"""Tests of the command-line tools as a user runs them: flaxlm-train, python -m flaxlm.train and flaxlm-sample."""

import concurrent.futures
import subprocess
import sys

import pytest

import commands
from conftest import REPO, command


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs a command from the repository root and returns its completed process (text output)."""
  return commands.run(*args, cwd=REPO, timeout=timeout)


def train_args(corpus, workdir, *overrides: str) -> list[str]:
  """Returns flaxlm-train's arguments for a short tiny run."""
  return ['--config=tiny', f'--workdir={workdir}', f'--config.data.path={corpus}',
          '--config.train.steps=10', *overrides]


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
  """Checks the command failed with a single stderr line (no traceback) containing `fragment`."""
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert fragment in lines[0]


@pytest.mark.parametrize('overrides, fragment', [
    (['--config.data.path=/nonexistent/text.txt'], 'no file matches'),
    (['--config.model.no_such_key=3'], 'no_such_key'),
    (['--config.model.num_heads=3'], 'does not divide model.width'),
    (['--config.model.num_kv_heads=3'], 'does not divide model.num_heads'),
    (['--config.mesh.cpu_devices=2', '--config.mesh.data=3'], 'does not fit 2 devices'),
    (['--config.mesh.cpu_devices=2', '--config.train.batch_size=7'], 'batch_size=7 does not split'),
    (['--config.mesh.cpu_devices=2', '--config.mesh.tensor=2', '--config.model.vocab_size=36',
      '--config.model.num_kv_heads=1'], 'make model.num_kv_heads a multiple of 2'),
    (['--config.model.attention=cudnn'], "model.attention='cudnn' needs an NVIDIA GPU, and this platform (cpu) has: xla"),
    (['--config.data.format=csv'], "data.format='csv' is not one of ('text', 'examples')"),
    (['--config.train.init_from=/nonexistent'], 'train.init_from: /nonexistent does not exist'),
    (['--config.model.layer_pattern=local*5,global', '--config.model.window=32'],
     'model.window=32 is longer than the context, model.max_length=16'),
    (['--config.mesh.cpu_devices=2', '--config.mesh.expert=2', '--config.model.num_experts=3'],
     'experts dimension (3) does not split over mesh axes expert (2 devices): make model.num_experts a multiple of 2'),
    (['--config.model.num_experts=4', '--config.model.experts_per_token=6'],
     'model.experts_per_token=6 is above model.num_experts=4'),
])
def test_bad_input_gets_one_line_and_writes_nothing(corpus, tmp_path, overrides, fragment):
  workdir = tmp_path / 'run'
  assert_one_line_error(run(command('flaxlm-train'), *train_args(corpus, workdir, *overrides)), fragment)
  assert not workdir.exists()


def test_an_empty_data_file_is_refused_through_python_dash_m(tmp_path):
  empty = tmp_path / 'empty.txt'
  empty.write_text('')
  workdir = tmp_path / 'run'
  assert_one_line_error(run(sys.executable, '-m', 'flaxlm.train', *train_args(empty, workdir)), 'is empty')
  assert not workdir.exists()


def test_a_corpus_shorter_than_a_batch_of_sequences_is_refused(tmp_path):
  short = tmp_path / 'short.txt'
  short.write_text('only a few words here\n' * 100)  # Three pieces of text, one held out.
  result = run(command('flaxlm-train'), *train_args(short, tmp_path / 'run', '--config.data.val_fraction=0.5',
                                                    '--config.train.batch_size=128'))
  assert_one_line_error(result, 'fewer than one batch')
  assert not (tmp_path / 'run').exists()


def test_train_then_sample(corpus, tmp_path):
  workdir = tmp_path / 'run'
  trained = run(command('flaxlm-train'), *train_args(corpus, workdir))
  assert trained.returncode == 0, trained.stderr
  assert 'step 10 |' in trained.stdout and 'parameters' in trained.stdout

  sample = lambda *flags: run(command('flaxlm-sample'), f'--workdir={workdir}', '--prompt=ROMEO:',
                              '--max_new_tokens=40', *flags)
  first, again = sample('--seed=3'), sample('--seed=3')
  assert first.returncode == 0, first.stderr
  assert first.stdout.startswith('ROMEO:') and len(first.stdout.rstrip('\n')) >= len('ROMEO:') + 30
  assert first.stdout == again.stdout

  greedy = [sample('--temperature=0', '--max_new_tokens=20', f'--quantize={mode}') for mode in ('none', 'int8')]
  assert greedy[0].returncode == 0 and greedy[1].returncode == 0, greedy[1].stderr
  assert greedy[0].stdout.startswith('ROMEO:') and len(greedy[1].stdout) == len(greedy[0].stdout)

  probs = sample('--show_probs=3', '--max_new_tokens=5', '--temperature=0')
  assert probs.returncode == 0, probs.stderr
  rows = [line for line in probs.stdout.splitlines() if ' drew ' in line]
  assert len(rows) == 5 and all(line.count('%') == 3 for line in rows)

  wider = run(command('flaxlm-train'), *train_args(corpus, workdir, '--config.model.width=64'))
  assert_one_line_error(wider, 'different model')
  mistakes = {'--prompt=@@@': "characters ['@'] are not in the tokenizer", '--prompt=': 'the prompt is empty',
              '--prompt=' + 'the king ' * 10: 'longer than the model\'s context of 16',
              '--top_p=0': '--top_p=0.0 must be in (0, 1]', '--temperature=-1': 'must not be negative'}
  with concurrent.futures.ThreadPoolExecutor(3) as pool:  # Independent runs: overlap their start-up.
    for result, fragment in zip(pool.map(sample, mistakes), mistakes.values()):
      assert_one_line_error(result, fragment)


def test_sampling_a_workdir_without_a_run_is_refused(tmp_path):
  result = run(command('flaxlm-sample'), f'--workdir={tmp_path}', '--prompt=a')
  assert_one_line_error(result, 'holds no flaxlm run')
  assert list(tmp_path.iterdir()) == []


def test_help_prints_the_usage_and_the_command_s_flags():
  result = run(command('flaxlm-sample'), '--help')
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('`flaxlm-sample --workdir=DIR --prompt=TEXT`')
  assert '--temperature: Below 1: safer choices' in result.stdout and '--show_probs' in result.stdout
