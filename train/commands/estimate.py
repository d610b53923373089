"""`flaxlm-estimate`: the FLOPs, device-hours, days and memory of a training run, before it starts.

  flaxlm-estimate --params=175e9 --tokens=300e9 --device=a100 --chips=1024 --mfu=0.4
  flaxlm-estimate --config=llama_1b --dataset_tokens=100e9 --epochs=3 --device=tpu-v5e --chips=256 \
      --workdir=/tmp/llama_1b
  flaxlm-estimate --params=175e9 --tokens=300e9          # FLOPs and memory only: no device given
  flaxlm-estimate --presets_table

The model is a parameter count (--params) or a config file (--config, whose shape adds the attention FLOPs); the
MFU is given (--mfu) or taken from what a run measured (--workdir). Nothing is allocated.
"""

from absl import flags
from ml_collections import config_flags

from flaxlm.configs.errors import UserError
from flaxlm.model import flops
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import count_params, param_shapes
from flaxlm.train import memory
from flaxlm.train.commands import cli
from flaxlm.train.plan import estimate

PARAMS = flags.DEFINE_float('params', None, 'The parameter count N, e.g. 175e9 (or --config).')
CONFIG = config_flags.DEFINE_config_file('config', None, 'A preset (e.g. llama_1b) or config file: its exact N and '
                                         'attention FLOPs (or --params).', lock_config=True)
TOKENS = flags.DEFINE_float('tokens', None, 'Training tokens D, e.g. 300e9 (or --dataset_tokens).')
DATASET_TOKENS = flags.DEFINE_float('dataset_tokens', None, 'Tokens in the dataset, read --epochs times (or --tokens).')
EPOCHS = flags.DEFINE_float('epochs', 1.0, 'Passes over --dataset_tokens.')
DEVICE = flags.DEFINE_string('device', None, f'The chip, for the time: one of {", ".join(estimate.DEVICES)}; '
                              'without it, only the FLOPs and memory are printed.')
CHIPS = flags.DEFINE_integer('chips', 1, 'How many chips train together.')
MFU = flags.DEFINE_float('mfu', None, 'The fraction of peak FLOP/s the run uses, e.g. 0.4 (or --workdir).')
WORKDIR = flags.DEFINE_string('workdir', None, 'A run whose measured MFU to use: the median of its metrics.jsonl '
                              'mfu records after the first (or --mfu).')
PRESETS_TABLE = flags.DEFINE_bool('presets_table', False,
                                  'Print the table of the presets (docs/estimating.md) and stop.')


def exactly_one(first: flags.FlagHolder, second: flags.FlagHolder) -> None:
  """Raises UserError unless exactly one of the two flags was given."""
  if (first.value is None) == (second.value is None):
    raise UserError(f'pass exactly one of --{first.name} and --{second.name}.')


def model() -> tuple[float, ModelConfig | None]:
  """Returns N and, with --config, the model's shape (None with --params)."""
  exactly_one(PARAMS, CONFIG)
  if PARAMS.value is not None:
    return estimate.check_positive('params', PARAMS.value), None
  shape = estimate.model_config(cli.config(CONFIG))
  return count_params(param_shapes(shape)), shape


def tokens() -> float:
  """Returns D: --tokens, or --dataset_tokens x --epochs."""
  exactly_one(TOKENS, DATASET_TOKENS)
  if TOKENS.value is not None:
    if EPOCHS.present:
      raise UserError('--epochs multiplies --dataset_tokens; --tokens is already the total: pass one of the two.')
    return estimate.check_positive('tokens', TOKENS.value)
  dataset = estimate.check_positive('dataset_tokens', DATASET_TOKENS.value)
  return dataset * estimate.check_positive('epochs', EPOCHS.value)


def mfu() -> tuple[float, str]:
  """Returns the MFU and where it came from: --mfu, or the run in --workdir."""
  exactly_one(MFU, WORKDIR)
  if MFU.value is not None:
    return estimate.check_mfu(MFU.value), '--mfu'
  return estimate.measured_mfu(WORKDIR.value), f'measured in {WORKDIR.value}'


def flops_lines(params: float, shape: ModelConfig | None, total_tokens: float) -> tuple[float, list[str]]:
  """Returns the FLOPs the time is computed from, and the lines that count them: 6ND (N a sparse model's active
  parameters), attention, their total."""
  six_nd = estimate.six_nd(params - (flops.inactive_params(shape) if shape else 0), total_tokens)
  lines = ['training FLOPs', f'  {"6ND":<30}{six_nd:>16.3e}']
  if shape is None:
    return six_nd, lines + [f'  {"attention matmuls":<30}{"unknown":>16}  (they grow with the layers, width and '
                            'context: pass --config); the time below is from 6ND']
  total = estimate.model_flops(shape, total_tokens)
  return total, lines + [
      f'  {"attention matmuls":<30}{estimate.attention_flops(shape, total_tokens):>16.3e}  (6 x context x heads x '
      'head size x layers per token)',
      f'  {"6 x matmul weights + attention":<30}{total:>16.3e}  (as MFU is counted; the time below is from this)',
  ]


def report() -> list[str]:
  """Returns the lines flaxlm-estimate prints for the flags given: FLOPs and memory, and with --device the time."""
  params, shape = model()
  total_tokens = tokens()
  total, counted = flops_lines(params, shape, total_tokens)
  head = [
      f'{"model":<32}' + (estimate.describe(shape) if shape else 'a parameter count (--params): shape unknown'),
      f'{"parameters N":<32}{params:>16,.0f}',
      *([f'{"  active per token":<32}{params - flops.inactive_params(shape):>16,.0f}'] if shape and shape.num_experts
        else []),
      f'{"training tokens D":<32}{total_tokens:>16.3e}',
      *counted,
  ]
  if DEVICE.value is None:
    if CHIPS.present or MFU.value is not None or WORKDIR.value is not None:
      raise UserError('--chips, --mfu and --workdir time the run on a device: pass --device too, one of '
                      f'{", ".join(estimate.DEVICES)}.')
    return head + [f'{"time":<32}{"pass --device":>16}  (and --chips, --mfu) for device-hours and days',
                   *memory.training_lines(int(params), None), ADAMW_NOTE]
  return head + time_lines(total) + [
      *memory.training_lines(int(params), CHIPS.value), ADAMW_NOTE,
      f'  per device: split evenly over the {CHIPS.value:,} chips, as FSDP splits it; data parallelism keeps the '
      'total on every chip',
  ]


ADAMW_NOTE = '  assumed: AdamW in float32, 16 bytes per parameter (weights 4, gradients 4, moments 8)'


def time_lines(total: float) -> list[str]:
  """Returns the lines of the chips, the MFU, and the device-hours and days `total` FLOPs take on them."""
  device = DEVICE.value
  peak, chips = estimate.device_peak(device), estimate.check_positive('chips', CHIPS.value)
  utilization, source = mfu()
  return [
      f'{"chips":<32}{chips:>16,}  x {device}, {peak / 1e12:,.0f} TFLOP/s peak (bfloat16) each',
      f'{"MFU":<32}{utilization:>16.1%}  ({source})',
      f'{"device-hours":<32}{estimate.device_hours(total, peak, utilization):>16.4g}',
      f'{"wall-clock days":<32}{estimate.wall_clock_days(total, peak, utilization, chips):>16.4g}',
  ]


def presets_table() -> list[str]:
  """Returns the table of the presets (docs/estimating.md); raises UserError if a flag of a single estimate was
  given too."""
  given = [f'--{flag.name}' for flag in (PARAMS, CONFIG, TOKENS, DATASET_TOKENS, EPOCHS, DEVICE, CHIPS, MFU, WORKDIR)
           if flag.present]
  if given:
    raise UserError(f'--presets_table prints a fixed table (1e12 tokens at 40% MFU) and takes no other flag: drop '
                    f'{", ".join(given)}, or drop --presets_table for an estimate of your own.')
  return estimate.presets_table()


def print_estimate() -> None:
  """Prints the estimate for the flags given, or with --presets_table the table of the presets."""
  print('\n'.join(presets_table() if PRESETS_TABLE.value else report()))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-estimate."""
  cli.run(print_estimate, argv)
