"""`flaxlm-export --workdir=DIR --output=PATH [--dtype=bfloat16]`: write a run's parameters alone, to sample from.

  flaxlm-export --workdir=/tmp/run --output=/tmp/run_export --dtype=bfloat16
  flaxlm-sample --params=/tmp/run_export --prompt="ROMEO:"
"""

import dataclasses

from absl import flags

from flaxlm.model.transformer import count_params
from flaxlm.train import workdir as workdir_lib
from flaxlm.train.commands import cli
from flaxlm.train.use import export, pretrained

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a training run (its latest checkpoint is exported).')
OUTPUT = flags.DEFINE_string('output', None, 'Directory to create for the export; it must not exist yet.')
DTYPE = flags.DEFINE_string('dtype', 'float32', 'What the params are stored in: float32, or bfloat16 (half the size).')


def export_run() -> None:
  """Writes the params of --workdir's latest checkpoint, its config and tokenizer, as a new directory --output."""
  workdir = cli.required(WORKDIR, 'pass the --workdir of a run.')
  output = cli.required(OUTPUT, 'pass --output=PATH, a directory to create.')
  export.check_writable(output, DTYPE.value)  # Before the restore, which may take minutes for a large model.
  with export.signals_stop(output):
    model, params, tokenizer = pretrained.load(workdir, 'float32')  # Full precision, cast once to --dtype when written.
    config = workdir_lib.load_config(workdir)
    plain = dataclasses.replace(model.config, dtype=config.model.dtype)  # A LoRA run's merged; its compute dtype.
    path = export.write(output, params, workdir_lib.with_model(config, plain), tokenizer, DTYPE.value)
  print(f'wrote {path}: {count_params(params):,} parameters in {DTYPE.value}')


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-export."""
  cli.run(export_run, argv)
