"""`flaxlm-eval --workdir=DIR --tasks=NAMES`: score a model on lm-evaluation-harness tasks, offline.

  flaxlm-eval --workdir=/tmp/run --tasks=shakespeare_word_order
  flaxlm-eval --params=/tmp/base,/tmp/tuned --tasks=my_task --include_path=my_tasks/ --output=scores.json
  flaxlm-eval --workdir=/tmp/lora_run --base --tasks=arc_easy --limit=200 --num_fewshot=5

Prints the harness's table and, for multiple-choice tasks, the score above chance (centered accuracy) and its mean
over them; several models (--workdir and --params take comma-separated lists; --base adds each run's
train.init_from) are scored on the same requests and printed side by side. Tasks are the harness's (their data must
be local: nothing is downloaded), the YAML files of --include_path or given by path, and `shakespeare_word_order`,
shipped with flaxlm. Every process of a multi-host job runs the same requests on the global mesh; process 0 alone
prints and writes --output.
"""

import math

import jax
from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data import files
from flaxlm.model import quantize
from flaxlm.train import distributed, workdir as workdir_lib
from flaxlm.train.commands import cli

WORKDIR = flags.DEFINE_string('workdir', None, 'Training runs to score (their latest checkpoints), comma-separated.')
PARAMS = flags.DEFINE_string('params', None, 'Exports or converted models to score, comma-separated.')
BASE = flags.DEFINE_bool('base', False, 'Also score the model each --workdir run was fine-tuned from (its '
                         'train.init_from), beside it.')
TASKS = flags.DEFINE_string('tasks', None, 'Task, group or tag names, or task YAML paths, comma-separated.')
INCLUDE_PATH = flags.DEFINE_string('include_path', None, 'A folder of your own task YAML files.')
LIST_TASKS = flags.DEFINE_bool('list_tasks', False, 'Print the names of every task there is, and exit.')
NUM_FEWSHOT = flags.DEFINE_integer('num_fewshot', None, 'Examples shown before each question; default: the task\'s.')
LIMIT = flags.DEFINE_float('limit', None, 'Score only the first N documents of each task (below 1: that fraction).')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Requests the model runs at once.')
OUTPUT = flags.DEFINE_string('output', None, 'Where to write the results JSON (refused if it exists, unless '
                             '--overwrite).')
OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')
LOG_SAMPLES = flags.DEFINE_bool('log_samples', False, 'Add every document\'s requests and answers to --output.')
DTYPE = flags.DEFINE_string('dtype', None, 'What the model computes in: float32 or bfloat16; default: the model\'s own.')
QUANTIZE = flags.DEFINE_enum('quantize', 'none', quantize.MODES, 'Hold the weights as int8 or int4 (weight-only).')
join_hosts = distributed.define_flags(__name__)


def check_flags() -> None:
  """Raises UserError for flag values that cannot work, before anything is loaded."""
  if LIMIT.value is not None and not (0 < LIMIT.value < math.inf):
    raise UserError(f'--limit={LIMIT.value} must be above 0: a number of documents per task, or below 1 a fraction '
                    'of them.')
  if LIMIT.value is not None and LIMIT.value > 1 and LIMIT.value != int(LIMIT.value):
    raise UserError(f'--limit={LIMIT.value} is neither a whole number of documents nor a fraction below 1.')
  if BATCH_SIZE.value < 1:
    raise UserError(f'--batch_size={BATCH_SIZE.value} must be at least 1.')
  if NUM_FEWSHOT.value is not None and NUM_FEWSHOT.value < 0:
    raise UserError(f'--num_fewshot={NUM_FEWSHOT.value} must not be negative: 0 asks each question alone.')
  if LOG_SAMPLES.value and not OUTPUT.value:
    raise UserError('--log_samples adds the samples to the results file: pass --output=FILE too.')
  if OUTPUT.value:
    if not OVERWRITE.value:
      files.check_new(OUTPUT.value, 'output')
    elif files.to_path(OUTPUT.value).is_dir():
      raise UserError(f'{OUTPUT.value} is a directory: pass a file path as --output.')
    files.check_parent(OUTPUT.value, 'output')


def model_paths() -> list[str]:
  """Returns the models to score, in order: each --workdir run (preceded, with --base, by its train.init_from), then
  each --params; raises UserError if there are none, or --base finds a run that was not fine-tuned."""
  runs = [p for p in (WORKDIR.value or '').split(',') if p]
  paths = []
  for run in runs:
    if BASE.value:
      base = workdir_lib.load_config(run).train.init_from
      if not base:
        raise UserError(f'--base: {run} was not fine-tuned (its train.init_from is empty): leave --base out, or pass '
                        'the base model with --params.')
      paths.append(base)
    paths.append(run)
  paths += [p for p in (PARAMS.value or '').split(',') if p]
  if not paths:
    raise UserError('pass the models to score: --workdir=RUN[,RUN...] (training runs) and/or --params=DIR[,DIR...] '
                    '(exports or converted models).')
  if BASE.value and not runs:
    raise UserError('--base adds the base of each --workdir run: pass --workdir too.')
  return list(dict.fromkeys(paths))


def run_eval() -> None:
  """Scores every model on the tasks; prints each one's table, then the centered accuracies side by side."""
  from flaxlm.train.use import evaluate  # Here: it refuses in one line where lm-evaluation-harness is not installed.
  if LIST_TASKS.value:
    print('\n'.join(evaluate.list_tasks(INCLUDE_PATH.value)))
    return
  check_flags()
  names = evaluate.task_names(cli.required(TASKS, 'pass --tasks=NAME[,NAME...] (shakespeare_word_order is shipped).'))
  paths = model_paths()
  join_hosts()
  manager = evaluate.task_manager(names, INCLUDE_PATH.value)
  evaluate.load_tasks(names, manager)  # A task that cannot run is refused before a model is loaded.
  lead = jax.process_index() == 0
  limit = None if LIMIT.value is None else int(LIMIT.value) if LIMIT.value >= 1 else LIMIT.value
  results = {}
  for path in paths:
    results[path] = evaluate.score_model(path, names, manager, DTYPE.value, QUANTIZE.value, BATCH_SIZE.value,
                                         NUM_FEWSHOT.value, limit, LOG_SAMPLES.value)
    if lead:
      print(f'{path}\n{evaluate.table(results[path])}', flush=True)
  if lead and any(r['centered'] for r in results.values()):
    print('\n'.join(evaluate.side_by_side(results)))
  if lead and OUTPUT.value:
    text = evaluate.to_json({'models': results})
    print(f'wrote {files.write_output(OUTPUT.value, text, "output", OVERWRITE.value)}')


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-eval."""
  cli.run(run_eval, argv)
