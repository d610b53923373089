"""Running lm-evaluation-harness tasks on flaxlm models, offline: finding the tasks, refusing what cannot run here in
one line, scoring, and the results as flaxlm writes them.

Nothing here reaches the network: the Hugging Face hub is switched off before the harness (and its `datasets`) is
imported, so a task whose data is on the hub and not in the local cache is refused by name, with how to point it at
local files. The harness's own tasks are indexed only when a name asks for one (the index takes seconds); flaxlm's
shipped task (`shakespeare_word_order`, data/word_order.py), the tasks of `--include_path` and task YAML files are
found without it.

Multiple-choice scores are also given above chance, as nanochat's CORE averages them: centered accuracy
(acc - chance) / (1 - chance), chance being the mean of 1 / (the number of choices) over the documents scored, so 0 is
guessing and 1 is always right.
"""

import json
import logging
import os

for _key in ('HF_DATASETS_OFFLINE', 'HF_HUB_OFFLINE', 'DISABLE_MULTIPROC', 'TQDM_DISABLE'):  # Read at import.
  os.environ.setdefault(_key, '1')

from flaxlm.configs.errors import UserError  # noqa: E402

try:
  import datasets  # noqa: E402 (after the environment above)
  import lm_eval  # noqa: E402
  import lm_eval.evaluator  # noqa: E402
  import yaml  # noqa: E402
  from lm_eval.tasks import TaskManager  # noqa: E402
except ImportError:
  raise UserError('scoring tasks needs EleutherAI\'s lm-evaluation-harness, which is not installed: pip install '
                  '"flaxlm[eval]" (lm-eval==0.4.13, without torch).') from None

from flaxlm.data import files, word_order  # noqa: E402
from flaxlm.train.use import harness  # noqa: E402

SHIPPED = 'shakespeare_word_order'
BOOTSTRAP_ITERS = 1000  # resamples for the standard errors of metrics that have no closed form (perplexities).
KEPT = ('results', 'groups', 'group_subtasks', 'configs', 'versions', 'n-shot', 'higher_is_better', 'n-samples')

logging.getLogger('lm_eval').setLevel(logging.ERROR)  # Its notices (a default fewshot, a cache) bury the results.
# The results flaxlm keeps carry no commit hash; the harness would run git in the working directory for one (and git
# prints 'fatal: not a git repository' outside one).
lm_eval.evaluator.get_git_commit_hash = lambda: None


def word_order_dataset(**_) -> datasets.DatasetDict:
  """Returns the shipped task's documents as the harness loads a dataset: one test split."""
  return datasets.DatasetDict({'test': datasets.Dataset.from_list(word_order.documents())})


def shipped_task() -> dict:
  """Returns the config of the shipped task, as a task YAML would give it."""
  metric = lambda name: {'metric': name, 'aggregation': 'mean', 'higher_is_better': True}
  return {'task': SHIPPED, 'custom_dataset': word_order_dataset, 'test_split': 'test',
          'output_type': 'multiple_choice', 'doc_to_text': '{{context}}', 'doc_to_choice': '{{choices}}',
          'doc_to_target': '{{answer}}', 'target_delimiter': ' ', 'metric_list': [metric('acc'), metric('acc_norm')],
          'metadata': {'version': 1.0}}


def is_yaml(name: str) -> bool:
  """Returns whether a task name is the path of a task YAML file."""
  return name.endswith(('.yaml', '.yml'))


def task_names(tasks: str) -> list[str]:
  """Returns the comma-separated task names (or YAML paths); raises UserError if there are none."""
  names = [name.strip() for name in tasks.split(',') if name.strip()]
  if not names:
    raise UserError('no task given: pass --tasks=NAME[,NAME...] (shakespeare_word_order is shipped; list the others '
                    'with flaxlm-eval --list_tasks).')
  return names


def check_yaml(path: str) -> None:
  """Raises UserError if a task YAML file does not exist or does not parse (the harness's own tags allowed)."""
  file = files.to_path(path)
  if not file.is_file():
    raise UserError(f'task file {path} does not exist: pass the path of a task YAML, or a task name.')
  try:
    yaml.load(file.read_text(encoding='utf-8'), Loader=lenient_loader())
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    raise UserError(f'task file {path} does not parse as YAML ({str(e).splitlines()[0]}): fix it.') from None


def lenient_loader() -> type:
  """Returns a YAML loader that accepts any tag (the harness's `!function`), to check a file's syntax alone."""
  class Loader(yaml.SafeLoader):
    pass
  Loader.add_multi_constructor('', lambda loader, suffix, node: None)
  return Loader


def check_include_path(include_path: str | None) -> None:
  """Raises UserError if --include_path is given but is not a folder, or holds a YAML file that does not parse."""
  if not include_path:
    return
  folder = files.to_path(include_path)
  if not folder.is_dir():
    raise UserError(f'--include_path={include_path} is not a folder: pass the folder of your task YAML files.')
  for path in sorted(folder.rglob('*.y*ml')):
    check_yaml(str(path))


def task_manager(names: list[str], include_path: str | None) -> TaskManager:
  """Returns the harness's task manager knowing every name: --include_path's tasks alone, and the harness's own
  index only if a name is none of them; raises UserError naming a task found in neither."""
  check_include_path(include_path)
  for name in filter(is_yaml, names):
    check_yaml(name)
  wanted = [name for name in names if name != SHIPPED and not is_yaml(name)]
  manager = TaskManager(include_defaults=False, include_path=include_path or None)
  if any(name not in manager.all_tasks for name in wanted):
    manager = TaskManager(include_path=include_path or None)
  for name in wanted:
    if name not in manager.all_tasks:
      raise UserError(f'unknown task {name!r}: list the tasks with flaxlm-eval --list_tasks (with --include_path=DIR '
                      'for your own), or pass the path of a task YAML.')
  return manager


def specs(names: list[str]) -> list:
  """Returns what the harness loads for each name: the shipped task's config, else the name or path itself."""
  return [shipped_task() if name == SHIPPED else name for name in names]


def load_tasks(names: list[str], manager: TaskManager) -> None:
  """Builds each task, reading its data, so that one that cannot run is refused before any model is loaded; raises
  UserError naming the task and, for data on the Hugging Face hub, how to point it at local files."""
  for name, spec in zip(names, specs(names)):
    try:
      manager.load([spec])
    except UserError:
      raise
    except Exception as e:  # The harness and `datasets` raise many kinds; each is reported as the one line below.
      raise UserError(load_error(name, e)) from None


def load_error(name: str, error: Exception) -> str:
  """Returns the line that says why task `name` did not load."""
  reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
  offline = isinstance(error, ConnectionError) or 'offline' in reason.lower() or 'hub' in reason.lower()
  if offline:
    return (f'task {name} reads its data from the Hugging Face hub, and flaxlm-eval runs offline ({reason}): point '
            'the task at local files (in its YAML, dataset_path: json and dataset_kwargs: {data_files: {test: '
            'FILE.jsonl}}), or download the dataset into the local cache first with datasets.load_dataset.')
  if isinstance(error, FileNotFoundError):
    return f'task {name} names a data file that does not exist ({reason}): fix the path in its YAML.'
  return f'task {name} does not load ({type(error).__name__}: {reason}): fix its YAML.'


def list_tasks(include_path: str | None) -> list[str]:
  """Returns every task, group and tag name the harness knows, --include_path's and the shipped task's included."""
  check_include_path(include_path)
  return sorted({SHIPPED, *TaskManager(include_path=include_path or None).all_tasks})


def evaluate(lm: harness.FlaxLM, names: list[str], manager: TaskManager, num_fewshot: int | None = None,
             limit: float | None = None, log_samples: bool = False) -> dict:
  """Returns the harness's results of `names` on `lm`: the same on every process and on every run (no dates or
  timings), with each multiple-choice task's score above chance under 'centered', and its samples if asked."""
  out = lm_eval.simple_evaluate(model=lm, tasks=specs(names), task_manager=manager, num_fewshot=num_fewshot,
                                limit=limit, log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS)
  results = {key: out[key] for key in KEPT if key in out}
  results['centered'] = centered(out)
  if log_samples:
    results['samples'] = out['samples']
  return results


def centered(out: dict) -> dict[str, dict[str, float]]:
  """Returns, per multiple-choice task scored by acc: acc, chance and centered accuracy."""
  scores = {}
  for task, samples in out.get('samples', {}).items():
    metrics = out['results'].get(task, {})
    if out['configs'].get(task, {}).get('output_type') != 'multiple_choice' or 'acc,none' not in metrics:
      continue
    chance = sum(1 / len(s['arguments']) for s in samples) / max(len(samples), 1)
    if chance >= 1:  # Every question has one choice: there is nothing above chance to measure.
      continue
    scores[task] = {'acc': metrics['acc,none'], 'chance': chance,
                    'centered': (metrics['acc,none'] - chance) / (1 - chance)}
  return scores


def flat_scores(results: dict) -> dict[str, float]:
  """Returns every score the harness gave a task or group (not standard errors or counts), as 'TASK/METRIC', with each
  multiple-choice task's 'TASK/centered': what training logs beside its losses."""
  scores = {}
  for section in ('results', 'groups'):
    for task, metrics in results.get(section, {}).items():
      for key, value in metrics.items():
        name = key.split(',')[0]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if number and not name.endswith('_stderr') and name != 'sample_len':
          scores[f'{task}/{name}'] = float(value)
  scores.update({f'{task}/centered': s['centered'] for task, s in results['centered'].items()})
  return scores


def score_model(path: str, names: list[str], manager: TaskManager, dtype: str | None = None, quantized: str = 'none',
                batch_size: int = 16, num_fewshot: int | None = None, limit: float | None = None,
                log_samples: bool = False) -> dict:
  """Returns `evaluate`'s results for the run or export at `path`, loaded as `harness.FlaxLM.load` does."""
  return evaluate(harness.FlaxLM.load(path, dtype, quantized, batch_size), names, manager, num_fewshot, limit,
                  log_samples)


def mean_centered(results: dict) -> float | None:
  """Returns the mean centered accuracy over the multiple-choice tasks, None without any."""
  values = [s['centered'] for s in results['centered'].values()]
  return sum(values) / len(values) if values else None


def table(results: dict) -> str:
  """Returns the harness's results table (and its groups table) as it prints them."""
  text = lm_eval.utils.make_table(results)
  if results.get('groups'):
    text += '\n' + lm_eval.utils.make_table(results, 'groups')
  return text


def to_json(results: dict) -> str:
  """Returns results as JSON text, keys sorted, what JSON cannot hold written as the harness writes it."""
  return json.dumps(results, indent=1, sort_keys=True, default=lm_eval.utils.handle_non_serializable)


def side_by_side(results: dict[str, dict]) -> list[str]:
  """Returns the lines comparing models (results by model path): each multiple-choice task's centered accuracy (and
  acc) per model, then their mean."""
  names = [os.path.basename(os.path.normpath(path)) or path for path in results]
  tasks = sorted({task for r in results.values() for task in r['centered']})
  width = max(map(len, ['multiple choice', 'mean', *tasks]))
  lines = ['centered accuracy: (acc - chance) / (1 - chance); acc in parentheses',
           f'{"multiple choice":<{width}}  ' + '  '.join(f'{name:>18}' for name in names)]
  for task in tasks:
    cells = [r['centered'].get(task) for r in results.values()]
    lines.append(f'{task:<{width}}  ' + '  '.join(f'{c["centered"]:>+8.4f} ({c["acc"]:.4f})' if c else f'{"-":>18}'
                                                   for c in cells))
  means = [mean_centered(r) for r in results.values()]
  lines.append(f'{"mean":<{width}}  ' + '  '.join(f'{m:>+8.4f}{"":10}' if m is not None else f'{"-":>18}'
                                                   for m in means))
  return [line.rstrip() for line in lines]
