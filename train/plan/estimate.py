"""What a training run costs before it starts: its FLOPs, the time they take on given chips, and its memory.

Every weight of a model costs about 6 FLOPs per training token: 2 in the forward pass (a multiply and an add) and 4
in the backward pass (the gradients of the activation and of the weight). A model of N parameters trained on D
tokens therefore spends C = 6ND FLOPs. Chips do a fraction of their peak usefully, the MFU (model FLOPs
utilization), so C takes

  device-seconds = C / (peak FLOP/s x MFU),    wall-clock seconds = device-seconds / chips.

Given the model's shape, C is counted as flaxlm measures MFU (model/flops.py): 6 FLOPs per token for each weight
that takes part in a matmul, plus the attention matmuls, which grow with the context length. A run's measured MFU
then predicts its time exactly.

Memory under AdamW, all float32: weights 4 bytes, gradients 4 bytes and the two moments 8 bytes, 16 bytes per
parameter; activations come on top.
"""

import dataclasses
import math
import os
import pathlib
import statistics

import ml_collections

from flaxlm import configs
from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.model import flops, gguf
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import count_params, param_shapes
from flaxlm.train import memory, metrics
from flaxlm.train.plan import hardware

DEVICES = {  # --device names, and the device kind JAX reports for each (hardware.py keys its table on those).
    'tpu-v4': 'TPU v4',
    'tpu-v5e': 'TPU v5 lite',
    'tpu-v5p': 'TPU v5',
    'tpu-v6e': 'TPU v6 lite',
    'a100': 'NVIDIA A100',
    'h100': 'NVIDIA H100',
    'h100-pcie': 'NVIDIA H100 PCIe',
    'h200': 'NVIDIA H200',
}
PRESETS = ('tiny', 'shakespeare_char', 'lm1b', 'gpt2_124m', 'llama_1b', 'llama2_7b')
# Presets whose tokenizer is made from the data have no vocabulary size until then: tiny Shakespeare's 65 characters,
# and the 32,000 pieces configs/lm1b.py tells flaxlm-tokenizer to train.
PRESET_VOCAB = {'tiny': 65, 'shakespeare_char': 65, 'lm1b': 32_000}
TABLE_TOKENS, TABLE_MFU, TABLE_SLICES = 1e12, 0.4, (('tpu-v5e', 256), ('h100', 8))
TABLE_GGUF_TYPES = ('f16', 'q8_0', 'q4_0')
INT32_SIZES = ('vocab_size', 'max_length')  # Token ids and positions are int32: these sizes must fit one.


def vocab_size(config: ml_collections.ConfigDict) -> int:
  """Returns V: model.vocab_size if set, else the size of the tokenizer data.tokenizer names."""
  kind = config.data.tokenizer
  if config.model.vocab_size:
    return config.model.vocab_size
  if kind == 'char':
    raise UserError('data.tokenizer=char takes its vocabulary from the training text: '
                    'pass --config.model.vocab_size=N (the number of distinct characters).')
  if kind != 'byte' and not os.path.lexists(kind):
    raise UserError(f'data.tokenizer={kind} does not exist yet: pass --config.model.vocab_size=N, or train it '
                    'with flaxlm-tokenizer train.')
  return (tokenizer_lib.ByteTokenizer() if kind == 'byte' else tokenizer_lib.load(kind)).vocab_size


def model_config(config: ml_collections.ConfigDict) -> ModelConfig:
  """Returns the model shape of a config, its vocabulary size resolved as `vocab_size` does; raises UserError if a
  value of the config is outside its rule (configs/base.py) or the model cannot be built."""
  base.check(config)
  model = ModelConfig.from_config(config.model, vocab_size(config))
  for key in INT32_SIZES:
    if getattr(model, key) >= 2 ** 31:
      raise UserError(f'model.{key}={getattr(model, key)} is beyond the int32 ids and positions of the model (at most '
                      f'{2 ** 31 - 1:,}): set --config.model.{key}.')
  return model


def describe(c: ModelConfig) -> str:
  """Returns the model's shape in words: layers, width, heads, experts, vocabulary and context."""
  experts = f', {c.num_experts} experts ({c.experts_per_token} a token)' if c.num_experts else ''
  return (f'{c.num_layers} layers, width {c.width:,}, {c.num_heads} heads ({c.num_kv_heads} key/value){experts}, '
          f'vocabulary {c.vocab_size:,}, context {c.max_length:,}')


def six_nd(params: float, tokens: float) -> float:
  """Returns 6ND, the training FLOPs of `params` parameters on `tokens` tokens (attention left out)."""
  return 6.0 * params * tokens


def attention_flops(c: ModelConfig, tokens: float) -> float:
  """Returns the FLOPs of the attention matmuls (QK^T and AV, forward and backward) over `tokens` tokens."""
  return flops.attention_flops_per_token(c) * tokens


def model_flops(c: ModelConfig, tokens: float) -> float:
  """Returns the training FLOPs of `tokens` tokens as MFU counts them: 6 x matmul weights, plus attention."""
  return flops.training_flops_per_token(c) * tokens


def device_peak(device: str) -> float:
  """Returns one chip's peak dense bfloat16 FLOP/s; `device` is a DEVICES name or a JAX device kind."""
  peak = hardware.peak_flops_per_second(DEVICES.get(device.strip().lower(), device))
  if peak is None:
    raise UserError(f'unknown --device={device}: pass one of {", ".join(DEVICES)}.')
  return peak


def device_hours(total_flops: float, peak: float, mfu: float) -> float:
  """Returns the chip-hours `total_flops` take on chips of `peak` FLOP/s that do a fraction `mfu` of it usefully."""
  return total_flops / (peak * mfu) / 3600


def wall_clock_days(total_flops: float, peak: float, mfu: float, chips: int) -> float:
  """Returns the days `total_flops` take on `chips` chips working together."""
  return device_hours(total_flops, peak, mfu) / chips / 24


def check_positive(name: str, value: float) -> float:
  """Returns `value`; raises UserError naming --`name` unless it is a positive finite number."""
  if not 0 < value < math.inf:  # NaN fails too.
    raise UserError(f'--{name}={value:g} must be positive and finite.')
  return value


def check_mfu(mfu: float) -> float:
  """Returns `mfu`; raises UserError unless it is a fraction of the peak in (0, 1]."""
  if not 0 < mfu <= 1:
    raise UserError(f'--mfu={mfu:g} must be in (0, 1]: the fraction of the peak training uses, e.g. 0.4 for 40%.')
  return mfu


def measured_mfu(workdir: str | pathlib.Path) -> float:
  """Returns the median MFU a run logged in its metrics.jsonl, the first record (warming up) left out."""
  if os.path.lexists(workdir) and not pathlib.Path(workdir).is_dir():
    raise UserError(f'--workdir={workdir} is not a directory: pass the --workdir of a training run, or --mfu=0.4.')
  records = metrics.read_metrics(workdir)
  if not records:
    raise UserError(f'{workdir} has no metrics.jsonl to take the MFU from: pass the --workdir of a training run '
                    'that has logged a step, or --mfu=0.4.')
  values = [r['mfu'] for r in records if 'mfu' in r]
  if not values:
    raise UserError(f'{workdir}/metrics.jsonl has no mfu records (MFU is logged only on the chips of '
                    'train/plan/hardware.py, never on a CPU): pass --mfu=0.4.')
  median = statistics.median(values[1:] or values)
  if not 0 < median <= 1:  # NaN fails too.
    raise UserError(f'{workdir}/metrics.jsonl gives a median MFU of {median:g}, outside (0, 1]: flaxlm-train did not '
                    'log it; pass --mfu=0.4.')
  return median


@dataclasses.dataclass(frozen=True)
class Preset:
  """A preset's model shape, exact parameter count and weight memory per storage type (memory.mode_bytes)."""
  name: str
  model: ModelConfig
  params: int
  weight_bytes: dict[str, int]


def load_preset(name: str) -> Preset:
  """Returns the preset configs/NAME.py counted from its shapes alone (nothing is allocated)."""
  config = configs.load(name)
  config.model.vocab_size = config.model.vocab_size or PRESET_VOCAB[name]
  model = model_config(config)
  shapes = param_shapes(model)
  return Preset(name, model, count_params(shapes), memory.mode_bytes(shapes))


def format_bytes(size: int) -> str:
  """Returns a byte count with three significant digits in the largest binary unit below it: '12.6 GiB'."""
  units = ('B', 'KiB', 'MiB', 'GiB', 'TiB')
  power = max([p for p in range(len(units)) if size >= 1024 ** p], default=0)
  return f'{size / 1024 ** power:.3g} {units[power]}'


def presets_table(presets: tuple[str, ...] = PRESETS) -> list[str]:
  """Returns the Markdown table of docs/estimating.md: each preset's parameters, weight memory, GGUF file sizes and
  days to train on 1T tokens."""
  slices = [(device_peak(device), chips) for device, chips in TABLE_SLICES]
  header = ['preset', 'parameters', 'float32', 'bfloat16', 'int8', 'int4',
            *[f'GGUF {gguf_type}' for gguf_type in TABLE_GGUF_TYPES],
            *[f'days on {chips} x {device}' for device, chips in TABLE_SLICES]]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + ' --- |' * len(header)]
  for preset in map(load_preset, presets):
    total = model_flops(preset.model, TABLE_TOKENS)
    days = [f'{wall_clock_days(total, peak, TABLE_MFU, chips):.3g}' for peak, chips in slices]
    files = [format_bytes(gguf.file_bytes(preset.model, gguf_type)) for gguf_type in TABLE_GGUF_TYPES]
    cells = [f'`{preset.name}`', f'{preset.params:,}', *map(format_bytes, preset.weight_bytes.values()), *files, *days]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines
