"""Prints a trained run's validation loss and perplexity with its matrices in float32, int8 and int4, and their memory.

  python benchmarks/quantize_quality.py --workdir=/tmp/shakespeare_run
  python benchmarks/quantize_quality.py --workdir=/tmp/shakespeare_run --eval_batches=100 --group_sizes=128,32

The latest checkpoint is loaded, and the validation batches are built as training builds them (the run's config,
data path and tokenizer; the first --eval_batches batches, in order). Each row quantizes the matrices
(model/quantize.py), dequantizes them inside the jitted evaluation and reports the mean loss, its perplexity
exp(loss) and the perplexity's increase over float32. int4 rows name the group lengths used: a contraction axis
shorter than --group_sizes, or not a multiple of it, is one group.
"""

import jax
import numpy as np
from absl import flags

from flaxlm.data import pipeline
from flaxlm.model import quantize
from flaxlm.train import loop, memory, step as step_lib, workdir as workdir_lib
from flaxlm.train.commands import cli
from flaxlm.train.use import pretrained

WORKDIR = flags.DEFINE_string('workdir', None, 'The workdir of a training run, holding a checkpoint.')
EVAL_BATCHES = flags.DEFINE_integer('eval_batches', 0, 'Validation batches to evaluate; 0 takes the run\'s '
                                    'train.eval_batches.')
GROUP_SIZES = flags.DEFINE_list('group_sizes', ['128', '64', '32'], 'int4 group sizes to evaluate, comma-separated.')


def validation_batches(workdir: str, max_batches: int) -> list[pipeline.Example]:
  """Returns the run's first `max_batches` validation batches (0: train.eval_batches), built as training builds them."""
  config = workdir_lib.load_config(workdir)
  setup = loop.prepare(config, workdir)
  c = config.train
  return pipeline.eval_batches(setup.val_examples, c.batch_size, max_batches or c.eval_batches)


def group_lengths(qparams) -> str:
  """Returns the distinct group lengths G of the quantized matrices in `qparams`, comma-separated."""
  leaves = jax.tree.leaves(qparams, is_leaf=quantize.is_quantized)
  return ','.join(str(g) for g in sorted({x.group_size for x in leaves if quantize.is_quantized(x)}))


def rows(model, params, batches: list[pipeline.Example]) -> list[tuple[str, ...]]:
  """Returns one table row per storage mode: name, group lengths, loss, perplexity, its increase, memory (MiB)."""
  evaluate = jax.jit(lambda qparams, batch: step_lib.eval_step(quantize.dequantize(qparams), batch, model=model))
  settings = [('float32', 'none', 0), ('int8', 'int8', 0)]
  settings += [(f'int4, groups of {g}', 'int4', int(g)) for g in GROUP_SIZES.value]
  table, float_perplexity = [], None
  for name, mode, group_size in settings:
    qparams = quantize.quantize(params, mode, group_size or 128)
    loss = loop.evaluate(evaluate, qparams, batches)
    perplexity = float(np.exp(loss))
    float_perplexity = float_perplexity or perplexity
    groups = group_lengths(qparams) if mode == 'int4' else {'none': '-', 'int8': 'channel'}[mode]
    table.append((name, groups, f'{loss:.4f}', f'{perplexity:.4f}', f'{perplexity / float_perplexity - 1:+.2%}',
                  f'{memory.memory_bytes(qparams) / 2 ** 20:.3f}'))
  return table


def benchmark() -> None:
  """Prints the quality table and the memory table of --workdir's model."""
  workdir = cli.required(WORKDIR, 'pass the --workdir of a training run.')
  model, params, _ = pretrained.load(workdir)
  batches = validation_batches(workdir, EVAL_BATCHES.value)
  tokens = int(sum(batch['weights'].sum() for batch in batches))
  print(f'{workdir}: {len(batches)} validation batches, {tokens:,} target tokens; jax {jax.__version__}, '
        f'{jax.devices()[0].device_kind}')
  print(' | '.join(('weights', 'group lengths', 'val loss', 'perplexity', 'vs float32', 'memory (MiB)')))
  for row in rows(model, params, batches):
    print(' | '.join(row), flush=True)
  print('\n'.join(memory.memory_table(params)))


if __name__ == '__main__':
  cli.run(benchmark)
