"""flaxlm-eval as a user runs it (the shipped task, several models side by side, two processes, bad inputs), and task
scores during training (train.eval_tasks)."""

import json
import os
import re

import pytest

pytest.importorskip('lm_eval')  # The `eval` extra.

import commands
from conftest import REPO, command
from test_cli import assert_one_line_error, run
from test_distributed import free_port
from test_loop import tiny_config
from flaxlm.train import loop, metrics, plot
from flaxlm.train.use import convert

FIXTURES = REPO / 'tests' / 'fixtures' / 'lm_eval'
SHIPPED = '--tasks=shakespeare_word_order'


@pytest.fixture(scope='module')
def models(tmp_path_factory) -> dict[str, str]:
  """The Llama (BOS, byte fallback) and GPT-2 fixture models of lm_eval/, converted: tokenizers that write any text."""
  root = tmp_path_factory.mktemp('models')
  for name in ('llama', 'gpt2'):
    convert.from_hf(str(FIXTURES / name), str(root / name), None, 'float32')
  return {name: str(root / name) for name in ('llama', 'gpt2')}


def results_of(path) -> dict:
  """Returns the results file's models."""
  return json.loads(path.read_text())['models']


def test_a_fine_tune_its_base_and_another_model_are_scored_side_by_side(models, corpus, tmp_path):
  tune = tiny_config(corpus, steps=2)  # Two steps of full fine-tuning on the Llama fixture.
  tune.model.max_length, tune.train.init_from = 64, models['llama']
  loop.train(tune, str(tmp_path / 'tuned'))
  output = tmp_path / 'scores.json'
  result = run(command('flaxlm-eval'), f'--workdir={tmp_path / "tuned"}', '--base', f'--params={models["gpt2"]}',
               SHIPPED, '--limit=8', f'--output={output}', '--log_samples')
  assert result.returncode == 0, result.stderr
  header = result.stdout.splitlines()[result.stdout.splitlines().index(
      'centered accuracy: (acc - chance) / (1 - chance); acc in parentheses') + 1]
  assert header.split() == ['multiple', 'choice', 'llama', 'tuned', 'gpt2']  # The base beside its fine-tune.
  scored = results_of(output)
  assert set(scored) == {models['llama'], str(tmp_path / 'tuned'), models['gpt2']}
  for results in scored.values():
    centered = results['centered']['shakespeare_word_order']
    assert centered['chance'] == 0.25 and results['results']['shakespeare_word_order']['sample_len'] == 8
    assert centered['centered'] == pytest.approx((centered['acc'] - 0.25) / 0.75)
    assert len(results['samples']['shakespeare_word_order']) == 8  # --log_samples: every document's answers.


def test_two_processes_write_the_results_file_of_one(models, tmp_path):
  # Both on the same mesh (tensor-parallel over 2 CPU devices), every request kind, the model in its own bfloat16.
  args = (command('flaxlm-eval'), f'--params={models["llama"]}', '--limit=6', '--log_samples',
          '--tasks=shakespeare_word_order,fixture_rolling,fixture_gen', f'--include_path={FIXTURES / "tasks"}')
  one = commands.run(*args, f'--output={tmp_path / "one.json"}', cwd=REPO, env={**os.environ, 'JAX_NUM_CPU_DEVICES': '2'})
  assert one.returncode == 0, one.stderr
  address = f'127.0.0.1:{free_port()}'
  processes = [commands.start(*args, f'--output={tmp_path / "two.json"}', f'--coordinator_address={address}',
                              '--num_processes=2', f'--process_id={i}', cwd=REPO) for i in (0, 1)]
  try:
    codes = [p.wait(timeout=120) for p in processes]
  finally:
    for p in processes:
      p.kill()  # Only if one is still running: the other's wait timed out.
  assert codes == [0, 0], [p.output() for p in processes]
  assert (tmp_path / 'two.json').read_text() == (tmp_path / 'one.json').read_text()


TASK = '''task: bad
dataset_path: {path}
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: {kind}
doc_to_text: "{{{{question}}}}"
doc_to_target: {target}
{extra}
metric_list: [{{metric: {metric}}}]
'''
MC = dict(kind='multiple_choice', target='0', extra='doc_to_choice: "{{choices}}"', metric='acc')
LONG_ANSWER = ' '.join(['word'] * 80)


def write_task(folder, rows: list[dict], path: str = 'json', **fields) -> None:
  """Writes a task YAML `bad.yaml` and its data `bad.jsonl` (the YAML naming it by its absolute path) in `folder`."""
  folder.mkdir()
  (folder / 'bad.jsonl').write_text(''.join(json.dumps(row) + '\n' for row in rows))
  (folder / 'bad.yaml').write_text(TASK.format(path=path, data=folder / 'bad.jsonl', **{**MC, **fields}))


@pytest.mark.parametrize('case, fragment', [
    ('unknown_task', 'unknown task'),
    ('base_of_a_run_not_fine_tuned', 'was not fine-tuned'),
    ('hub_dataset', 'reads its data from the Hugging Face hub'),
    ('unparsable_yaml', 'does not parse as YAML'),
    ('missing_data_file', 'names a data file that does not exist'),
    ('zero_limit', '--limit=0.0 must be above 0'),
    ('existing_output', 'already exists'),
    ('continuation_longer_than_the_context', 'longer than the model\'s whole context'),
    ('generation_longer_than_the_context', 'max_gen_toks=64'),
])
def test_bad_inputs_are_refused_in_one_line_writing_nothing(models, tmp_path, case, fragment):
  tasks, output = tmp_path / 'tasks', tmp_path / 'out.json'
  args = ['--tasks=bad', f'--include_path={tasks}']
  row = {'question': 'the king and', 'choices': [' queen', ' north']}
  if case == 'unknown_task':
    args = ['--tasks=no_such_task']
  elif case == 'hub_dataset':
    write_task(tasks, [row], path='no-such-user/no-such-dataset')
  elif case == 'unparsable_yaml':
    tasks.mkdir()
    (tasks / 'bad.yaml').write_text('task: bad\ndoc_to_text: [unclosed\n')
  elif case == 'missing_data_file':
    write_task(tasks, [row])
    (tasks / 'bad.jsonl').unlink()
  elif case == 'base_of_a_run_not_fine_tuned':
    args = [SHIPPED, '--base', f'--workdir={models["gpt2"]}']
  elif case == 'zero_limit':
    args = [SHIPPED, '--limit=0']
  elif case == 'existing_output':
    output.write_text('kept')
    args = [SHIPPED]
  elif case == 'continuation_longer_than_the_context':
    write_task(tasks, [{**row, 'choices': [LONG_ANSWER, ' north']}])
  else:
    write_task(tasks, [row], kind='generate_until', target='" queen"', metric='exact_match',
               extra='generation_kwargs: {until: ["\\n"], max_gen_toks: 64}')
  before = sorted(tmp_path.rglob('*'))
  result = run(command('flaxlm-eval'), f'--params={models["llama"]}', *args, f'--output={output}')
  assert_one_line_error(result, fragment)
  assert sorted(tmp_path.rglob('*')) == before
  assert case != 'existing_output' or output.read_text() == 'kept'


def test_training_scores_its_tasks_beside_the_validation_loss_and_plots_them(tmp_path):
  config = tiny_config('flaxlm:tinyshakespeare', steps=4)
  config.model.max_length = 64
  config.train.update(eval_every=2, eval_tasks='shakespeare_word_order', eval_tasks_limit=4)
  loop.train(config, str(tmp_path / 'run'))
  scored = [r for r in metrics.read_metrics(tmp_path / 'run') if 'shakespeare_word_order/centered' in r]
  assert [r['step'] for r in scored] == [2, 4] and all('val_loss' in r for r in scored)
  assert all(0 <= r['shakespeare_word_order/acc'] <= 1 for r in scored)
  assert len(plot.run_figure(tmp_path / 'run').axes) == 3  # Losses, task scores, learning rate.


@pytest.mark.parametrize('case, fragment', [
    ('missing_yaml', 'train.eval_tasks: task file'),
    ('characters_the_tokenizer_cannot_write', 'train.eval_tasks: characters'),  # A char model of another text.
])
def test_a_training_task_that_cannot_run_is_refused_before_the_workdir_is_written(corpus, tmp_path, case, fragment):
  workdir = tmp_path / 'run'
  task = tmp_path / 'missing.yaml' if case == 'missing_yaml' else 'shakespeare_word_order'
  result = run(command('flaxlm-train'), '--config=tiny', f'--workdir={workdir}', f'--config.data.path={corpus}',
               '--config.model.max_length=64', f'--config.train.eval_tasks={task}')
  assert_one_line_error(result, fragment)
  assert not workdir.exists()


def test_the_readmes_own_multiple_choice_task_runs(models, tmp_path):
  readme = (REPO / 'README.md').read_text()
  yaml = readme[readme.index('```yaml\ntask: my_task') + len('```yaml\n'):]
  (tmp_path / 'my_tasks').mkdir()
  (tmp_path / 'my_tasks' / 'my_task.yaml').write_text(yaml[:yaml.index('```')])
  questions = [{'question': 'Which planet is largest?', 'choices': ['Mars', 'Jupiter', 'Venus', 'Earth'], 'answer': 1},
               {'question': 'What is the capital of France?', 'choices': ['Paris', 'Rome', 'Oslo'], 'answer': 0}]
  (tmp_path / 'my_tasks' / 'my_task.jsonl').write_text(''.join(json.dumps(q) + '\n' for q in questions))
  result = commands.run(command('flaxlm-eval'), f'--params={models["llama"]}', '--tasks=my_task',
                        '--include_path=my_tasks/', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  acc = float(re.search(r'^my_task\s+[+-]\d\.\d{4} \((\d\.\d{4})\)$', result.stdout, re.M)[1])
  assert acc in (0.0, 0.5, 1.0) and '|my_task|' in result.stdout.replace(' ', '')  # The table, then centered scores.
