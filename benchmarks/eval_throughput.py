"""Prints the requests per second of flaxlm's lm-evaluation-harness backend against the harness's own `hf` backend
(transformers on torch), on the same model, task and CPU in one run, and the programs flaxlm compiled for the task.

  python benchmarks/eval_throughput.py --hf_python=/tmp/evalvenv/bin/python
  python benchmarks/eval_throughput.py --config=shakespeare_char --limit=500 --hf_python=/tmp/evalvenv/bin/python

The model has --config's shape (default: GPT-2 124M's, 12 layers of width 768, context 1,024), random weights
(speed does not depend on them) and --tokenizer's ids (default: the byte-level BPE of the GPT-2 fixture in
tests/fixtures/lm_eval, 385 ids); it is written as a flaxlm export and, with `flaxlm-convert --to_hf`, as a Hugging
Face folder, both float32. The task is the shipped shakespeare_word_order (its first --limit documents, four
continuations each), written out as a local JSONL task so that both backends read the same documents; both run it
with batch size --batch_size. Each time is of `simple_evaluate` alone, the model already loaded; flaxlm's first pass
includes compiling its programs (shown apart), its second pass is timed warm. --hf_python is a Python with torch,
transformers, accelerate and lm-eval==0.4.13 (see tests/fixtures/make_eval_fixtures.py for the install); without it
only flaxlm's side runs.
"""

import json
import pathlib
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
from absl import flags
from ml_collections import config_flags

from flaxlm.data import tokenizer as tokenizer_lib, word_order
from flaxlm.model import sampling, scoring
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import state as state_lib
from flaxlm.train.commands import cli
from flaxlm.train.use import convert, evaluate, export, harness, pretrained

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = config_flags.DEFINE_config_file('config', str(REPO / 'configs' / 'gpt2_124m.py'), 'The model\'s shape.',
                                         lock_config=True)
TOKENIZER = flags.DEFINE_string('tokenizer', str(REPO / 'tests' / 'fixtures' / 'lm_eval' / 'gpt2'),
                                'A Hugging Face model folder or tokenizer.json whose ids the model takes.')
LIMIT = flags.DEFINE_integer('limit', 100, 'Documents of the task scored (each four requests).')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Requests per batch, on both sides.')
HF_PYTHON = flags.DEFINE_string('hf_python', None, 'A Python with torch, transformers and lm-eval, for the hf side.')

TASK_YAML = '''task: word_order_local
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list: [{{metric: acc}}]
'''
HF_SIDE = '''
import json, os, sys, time
os.environ.update(HF_DATASETS_OFFLINE='1', HF_HUB_OFFLINE='1', DISABLE_MULTIPROC='1')
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
model, tasks, limit, batch = sys.argv[1:5]
lm = HFLM(pretrained=model, dtype='float32', device='cpu', batch_size=int(batch))
manager = TaskManager(include_defaults=False, include_path=tasks)
start = time.perf_counter()
out = lm_eval.simple_evaluate(model=lm, tasks=['word_order_local'], task_manager=manager, limit=int(limit),
                              bootstrap_iters=0)
print(json.dumps({'seconds': time.perf_counter() - start, 'acc': out['results']['word_order_local']['acc,none']}))
'''


def write_task(folder: pathlib.Path) -> None:
  """Writes the shipped task's documents and a task YAML reading them into `folder`."""
  data = folder / 'word_order.jsonl'
  data.write_text(''.join(json.dumps(doc) + '\n' for doc in word_order.documents()))
  (folder / 'word_order_local.yaml').write_text(TASK_YAML.format(data=data))


def write_models(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
  """Writes a random float32 model of --config's shape and --tokenizer's ids as an export and as a Hugging Face
  folder; returns both paths."""
  config, tokenizer = CONFIG.value, tokenizer_lib.from_path(TOKENIZER.value)
  config.model.dtype, config.model.vocab_size = 'float32', tokenizer.vocab_size
  model = Transformer(ModelConfig.from_config(config.model, tokenizer.vocab_size))
  params = jax.jit(lambda rng: nn.unbox(state_lib.boxed_params(model, rng)))(jax.random.key(0))
  export.write(folder / 'export', params, config, tokenizer, 'float32')
  convert.to_hf(str(folder / 'hf'), str(folder / 'export'), '10GB')
  return folder / 'export', folder / 'hf'


def flaxlm_side(path: pathlib.Path, tasks: pathlib.Path) -> None:
  """Prints flaxlm's requests per second, cold (compiling) and warm, and its compilations for the task."""
  model, params, tokenizer = pretrained.load(path, 'float32')
  lm = harness.FlaxLM(model, params, tokenizer, BATCH_SIZE.value)
  manager = evaluate.task_manager(['word_order_local'], str(tasks))
  requests = 4 * LIMIT.value
  compiled = scoring.window_scores._cache_size()
  for label in ('first pass, compiling', 'second pass'):
    start = time.perf_counter()
    results = evaluate.evaluate(lm, ['word_order_local'], manager, limit=LIMIT.value)
    seconds = time.perf_counter() - start
    print(f'flaxlm ({label}): {requests / seconds:,.1f} requests/s ({requests} in {seconds:.1f} s), acc '
          f'{results["results"]["word_order_local"]["acc,none"]:.4f}')
  print(f'flaxlm compiled the scoring program {scoring.window_scores._cache_size() - compiled} time(s) for the task '
        f'({sampling.decode_chunk._cache_size()} decoding programs: none for a multiple-choice task)')


def hf_side(path: pathlib.Path, tasks: pathlib.Path) -> None:
  """Prints the hf backend's requests per second, run by --hf_python."""
  run = subprocess.run([HF_PYTHON.value, '-c', HF_SIDE, str(path), str(tasks), str(LIMIT.value),
                        str(BATCH_SIZE.value)], capture_output=True, text=True, check=False)
  if run.returncode:
    sys.exit(f'the hf side failed:\n{run.stderr[-3000:]}')
  result = json.loads(run.stdout.strip().splitlines()[-1])
  requests = 4 * LIMIT.value
  print(f'lm-eval hf backend: {requests / result["seconds"]:,.1f} requests/s ({requests} in {result["seconds"]:.1f} '
        f's), acc {result["acc"]:.4f}')


def main() -> None:
  """Writes the model and task, then times each side."""
  with tempfile.TemporaryDirectory() as root:
    root = pathlib.Path(root)
    (root / 'tasks').mkdir()
    write_task(root / 'tasks')
    export_path, hf_path = write_models(root)
    print(f'model: {CONFIG.value.model.num_layers} layers of width {CONFIG.value.model.width}, context '
          f'{CONFIG.value.model.max_length}, vocabulary {CONFIG.value.model.vocab_size}; task: {LIMIT.value} '
          f'documents x 4 continuations; batch {BATCH_SIZE.value}; jax {jax.__version__} on '
          f'{jax.devices()[0].device_kind}')
    flaxlm_side(export_path, root / 'tasks')
    if HF_PYTHON.value:
      hf_side(hf_path, root / 'tasks')


if __name__ == '__main__':
  cli.run(main)
