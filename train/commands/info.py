"""`flaxlm-info --config=FILE [--config.KEY=VALUE ...]`: a model's size, training FLOPs and memory, before a run.

  flaxlm-info --config=llama2_7b
  flaxlm-info --config=shakespeare_char --config.model.vocab_size=65

Nothing is allocated: the parameter shapes come from `jax.eval_shape`, so a 7B model is counted on a laptop.
"""

import ml_collections
from ml_collections import config_flags

from flaxlm.configs.errors import UserError
from flaxlm.model import flops, quantize
from flaxlm.model.transformer import count_params, param_shapes
from flaxlm.train import estimate, sharding
from flaxlm.train.commands import cli

CONFIG = config_flags.DEFINE_config_file('config', None, 'A preset (e.g. llama2_7b) or a config file.', lock_config=True)


def parameter_shards(mesh: ml_collections.ConfigDict) -> int | None:
  """Returns the devices each parameter is split over (mesh.fsdp x mesh.tensor); None if one is -1 (all left).

  Raises UserError for an axis that is neither positive nor -1, or for more than one -1, as training would.
  """
  for axis in sharding.MESH_AXES:
    if mesh[axis] == 0 or mesh[axis] < -1:
      raise UserError(f'mesh.{axis}={mesh[axis]} must be positive, or -1 for the devices the other axes leave: set '
                      f'--config.mesh.{axis}.')
  free = [f'mesh.{axis}' for axis in sharding.MESH_AXES if mesh[axis] == -1]
  if len(free) > 1:
    raise UserError(f'{" and ".join(free)} are -1: at most one axis takes the devices the others leave; set the '
                    'others\' sizes.')
  if mesh.fsdp > 0 and mesh.tensor > 0:
    return mesh.fsdp * mesh.tensor
  return None


def report(config: ml_collections.ConfigDict) -> list[str]:
  """Returns the lines flaxlm-info prints for `config`."""
  c = estimate.model_config(config)
  if config.train.batch_size <= 0:
    raise UserError(f'train.batch_size={config.train.batch_size} must be positive: set --config.train.batch_size.')
  shapes = param_shapes(c)
  params = count_params(shapes)
  per_token = flops.training_flops_per_token(c)
  tokens = config.train.batch_size * c.max_length
  return [
      f'{"model":<32}{estimate.describe(c)}',
      f'{"parameters":<32}{params:>16,}',
      f'{"  in matmuls":<32}{flops.matmul_params(c):>16,}',
      f'{"training FLOPs per token":<32}{per_token:>16,.0f}',
      f'{"training FLOPs per step":<32}{per_token * tokens:>16.3e}  ({config.train.batch_size:,} x '
      f'{c.max_length:,} tokens)',
      *estimate.memory_lines(params, parameter_shards(config.mesh)),
      'weights for sampling (flaxlm-sample --quantize):',
      *quantize.memory_table(shapes),
  ]


def info() -> None:
  """Prints the model's size, FLOPs and memory table for --config."""
  print('\n'.join(report(cli.config(CONFIG))))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-info."""
  cli.run(info, argv)
