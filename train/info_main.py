"""`flaxlm-info --config=FILE [--config.KEY=VALUE ...]`: a model's size, training FLOPs and memory, before a run.

  flaxlm-info --config=configs/llama2_7b.py
  flaxlm-info --config=configs/shakespeare_char.py --config.model.vocab_size=65

Nothing is allocated: the parameter shapes come from `jax.eval_shape`, so a 7B model is counted on a laptop.
"""

import pathlib

import ml_collections
from ml_collections import config_flags

from configs.errors import UserError
from data import tokenizer as tokenizer_lib
from model import flops, quantize
from model.transformer import ModelConfig, count_params, param_shapes
from train import cli

CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/llama2_7b.py.', lock_config=True)


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """Returns V: model.vocab_size if set, else the size of the tokenizer data.tokenizer names."""
  kind = config.data.tokenizer
  if config.model.vocab_size:
    return config.model.vocab_size
  if kind == 'char':
    raise UserError('data.tokenizer=char takes its vocabulary from the training text: '
                    'pass --config.model.vocab_size=N (the number of distinct characters).')
  if kind != 'byte' and not pathlib.Path(kind).is_file():
    raise UserError(f'data.tokenizer={kind} does not exist yet: pass --config.model.vocab_size=N, or train it '
                    'with flaxlm-tokenizer train.')
  return tokenizer_lib.for_corpus(kind, '').vocab_size


def memory_bytes(params: int) -> dict[str, int]:
  """Returns the bytes of float32 weights, gradients, AdamW's two moments, their total, and bfloat16 weights."""
  weights = 4 * params
  return {'weights (float32)': weights, 'gradients (float32)': weights, 'AdamW moments (2 x float32)': 2 * weights,
          'training total': 4 * weights, 'weights (bfloat16, inference)': weights // 2}


def parameter_shards(mesh: ml_collections.ConfigDict) -> int | None:
  """Returns the devices each parameter is split over (mesh.fsdp x mesh.tensor); None if one is -1 (all left)."""
  if mesh.fsdp > 0 and mesh.tensor > 0:
    return mesh.fsdp * mesh.tensor
  return None


def memory_lines(params: int, shards: int | None) -> list[str]:
  """Returns the memory table's lines, in GiB (MiB below 1 GiB): the total, and per device if the split is known."""
  sizes = memory_bytes(params)
  unit, scale = ('GiB', 2 ** 30) if sizes['training total'] >= 2 ** 30 else ('MiB', 2 ** 20)
  lines = [f'{f"memory ({unit})":<32}{"total":>16}' + (f'{"per device":>14}' if shards else '')]
  for name, size in sizes.items():
    lines.append(f'  {name:<30}{size / scale:>16,.2f}' + (f'{size / scale / shards:>14,.2f}' if shards else ''))
  if shards is None:
    lines.append('  per device: divide by mesh.fsdp x mesh.tensor, the devices each parameter is split over')
  lines.append('  activations come on top: they grow with the batch, the context and model.remat')
  return lines


def report(config: ml_collections.ConfigDict) -> list[str]:
  """Returns the lines flaxlm-info prints for `config`."""
  c = ModelConfig.from_config(config.model, vocab_size(config))
  shapes = param_shapes(c)
  params = count_params(shapes)
  per_token = flops.training_flops_per_token(c)
  tokens = config.train.batch_size * c.max_length
  return [
      f'{"model":<32}{c.num_layers} layers, width {c.width:,}, {c.num_heads} heads ({c.num_kv_heads} key/value), '
      f'vocabulary {c.vocab_size:,}, context {c.max_length:,}',
      f'{"parameters":<32}{params:>16,}',
      f'{"  in matmuls":<32}{flops.matmul_params(c):>16,}',
      f'{"training FLOPs per token":<32}{per_token:>16,.0f}',
      f'{"training FLOPs per step":<32}{per_token * tokens:>16.3e}  ({config.train.batch_size:,} x '
      f'{c.max_length:,} tokens)',
      *memory_lines(params, parameter_shards(config.mesh)),
      'weights for sampling (flaxlm-sample --quantize):',
      *quantize.memory_table(shapes),
  ]


def info() -> None:
  """Prints the model's size, FLOPs and memory table for --config."""
  print('\n'.join(report(cli.config(CONFIG))))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-info."""
  cli.run(info, argv)
