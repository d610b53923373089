"""`flaxlm-info --config=FILE [--config.KEY=VALUE ...]`: a model's size, training FLOPs and memory, before a run.

  flaxlm-info --config=llama2_7b
  flaxlm-info --config=shakespeare_char --config.model.vocab_size=65
  flaxlm-info --config=llama_1b --compile_for=v5e-8
  flaxlm-info --config=llama_1b --compile_for=v5e-8 --decode --quantize=int8 --decode_batch=8

Nothing is allocated: the parameter shapes come from `jax.eval_shape`, so a 7B model is counted on a laptop.
With --compile_for=SLICE (the `tpu` extra installed; no TPU needed) the train step, or with --decode the decode
step, is compiled by XLA:TPU for that slice and its memory per device is printed; a step that does not fit exits
non-zero with one line naming the excess and the keys to change (train/plan/tpu_compile.py).
"""

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from flaxlm.configs.errors import UserError
from flaxlm.model import flops, quantize
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import count_params, param_shapes, shapes_model
from flaxlm.train import memory, optimizer, sharding, state
from flaxlm.train.commands import cli
from flaxlm.train.plan import estimate

CONFIG = config_flags.DEFINE_config_file('config', None, 'A preset (e.g. llama2_7b) or a config file.', lock_config=True)
COMPILE_FOR = flags.DEFINE_string('compile_for', None, 'A TPU slice (v5e-8, v5p-16, v6e-8, v4-8, ...): compile the '
                                  'step for it and print its memory per device.')
DECODE = flags.DEFINE_bool('decode', False, 'With --compile_for: compile the decode step (one new token for '
                           '--decode_batch sequences with a full key/value cache) instead of the train step.')
QUANTIZE = flags.DEFINE_enum('quantize', 'none', quantize.MODES, 'With --decode: hold the weights as int8 or int4, as '
                              'flaxlm-sample --quantize does.')
DECODE_BATCH = flags.DEFINE_integer('decode_batch', 1, 'With --decode: the sequences decoded together.')


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
  shapes = param_shapes(c)
  params = count_params(shapes)
  per_token = flops.training_flops_per_token(c)
  tokens = config.train.batch_size * c.max_length
  return [
      f'{"model":<32}{estimate.describe(c)}',
      f'{"parameters":<32}{params:>16,}',
      *([f'{"  active per token":<32}{params - flops.inactive_params(c):>16,}'] if c.num_experts else []),
      f'{"  in matmuls":<32}{flops.matmul_params(c):>16,}',
      f'{"training FLOPs per token":<32}{per_token:>16,.0f}',
      f'{"training FLOPs per step":<32}{per_token * tokens:>16.3e}  ({config.train.batch_size:,} x '
      f'{c.max_length:,} tokens)',
      *(lora_lines(config, c) if c.lora.rank else memory.training_lines(
          params, parameter_shards(config.mesh), optimizer_state(config, c)[1:])),
      'weights for sampling (flaxlm-sample --quantize):',
      *memory.memory_table(shapes),
  ]


def optimizer_state(config: ml_collections.ConfigDict, c: ModelConfig) -> tuple[state.TrainState, str, int]:
  """Returns the train state's shapes (nothing allocated), and the name and bytes of its optimizer's state: AdamW's
  two moments, Muon's one for the matrices, Adafactor's factored ones, Lion's one."""
  tx = optimizer.make_optimizer(config.train)
  abstract = state.abstract_state(shapes_model(c), tx, sharding.single_device_mesh(), config.model.lora_base)
  return abstract, f'{config.train.optimizer} state (float32)', memory.memory_bytes(abstract.opt_state)


def lora_lines(config: ml_collections.ConfigDict, c: ModelConfig) -> list[str]:
  """Returns the lines of a LoRA fine-tune's memory, from the train state's shapes: the frozen base as
  model.lora_base holds it, and the adapters with their gradients and optimizer state (float32), in GiB."""
  abstract, state_name, state_bytes = optimizer_state(config, c)
  trained, total = count_params(abstract.params), count_params(quantize.integers(state.model_params(abstract)))
  sizes = {f'frozen base ({config.model.lora_base})': memory.memory_bytes(abstract.frozen),
           'adapters (float32)': memory.memory_bytes(abstract.params),
           'gradients (float32)': memory.memory_bytes(abstract.params), state_name: state_bytes}
  shards = parameter_shards(config.mesh)
  lines = [f'{"LoRA: trained parameters":<32}{trained:>16,}  ({trained / total:.2%}: rank {c.lora.rank} on '
           f'{c.lora.targets})', f'{"memory (GiB)":<32}{"total":>16}' + (f'{"per device":>14}' if shards else '')]
  for name, size in {**sizes, 'training total': sum(sizes.values())}.items():
    lines.append(f'  {name:<30}{size / 2 ** 30:>16,.3f}' + (f'{size / 2 ** 30 / shards:>14,.3f}' if shards else ''))
  lines.append('  activations come on top: they grow with the batch, the context and model.remat')
  return lines


def check_flags() -> None:
  """Raises UserError for a flag that describes a step to compile without the flag that compiles it."""
  if (QUANTIZE.value != 'none' or DECODE_BATCH.value != 1) and not DECODE.value:
    raise UserError('--quantize and --decode_batch describe the decode step: add --decode (and --compile_for=SLICE).')
  if DECODE.value and not COMPILE_FOR.value:
    raise UserError('--decode describes a step to compile for a TPU slice: add --compile_for=SLICE.')
  if DECODE_BATCH.value <= 0:
    raise UserError(f'--decode_batch={DECODE_BATCH.value} must be positive: the sequences decoded together.')


def info() -> None:
  """Prints the model's size, FLOPs and memory table for --config; with --compile_for, the compiled step's memory."""
  config = cli.config(CONFIG)
  check_flags()
  jax.config.update('jax_platforms', 'cpu')  # Nothing is allocated: no accelerator is started, nor libtpu loaded.
  if COMPILE_FOR.value:
    from flaxlm.train.plan import tpu_compile  # Only here: it imports the training step, which counting needs not.
    tpu_compile.prepare_environment(COMPILE_FOR.value)  # Before report() starts JAX's backends.
  print('\n'.join(report(config)), flush=True)
  if COMPILE_FOR.value:
    if DECODE.value:
      lines = tpu_compile.decode_report(config, COMPILE_FOR.value, QUANTIZE.value, DECODE_BATCH.value)
    else:
      lines = tpu_compile.train_report(config, COMPILE_FOR.value)
    print('\n'.join(lines))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-info."""
  cli.run(info, argv)
