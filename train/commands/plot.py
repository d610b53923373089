"""`flaxlm-plot --workdir=DIR [--output=PATH]`: a PNG of a run's loss curves and learning rate.

  flaxlm-plot --workdir=/tmp/run                        # writes /tmp/run/loss.png
  flaxlm-plot --workdir=/tmp/run --output=/tmp/run.png
"""

import pathlib

from absl import flags
from matplotlib.backends.backend_agg import FigureCanvasAgg

from flaxlm.configs.errors import UserError
from flaxlm.train import plot
from flaxlm.train.commands import cli

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a training run (its metrics.jsonl and config.json).')
OUTPUT = flags.DEFINE_string('output', None, 'Where to write the PNG; default WORKDIR/loss.png.')


def write_plot() -> None:
  """Draws the run in --workdir with Agg (no display needed) into --output, and prints where it went."""
  workdir = pathlib.Path(cli.required(WORKDIR, 'pass the --workdir of a training run.'))
  output = pathlib.Path(OUTPUT.value or workdir / 'loss.png')
  figure = plot.run_figure(workdir)
  try:
    FigureCanvasAgg(figure).print_png(output)
  except OSError as e:
    raise UserError(f'cannot write --output={output} ({e.strerror}): pass a path in a directory that exists.') from None
  print(f'wrote {output}')


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-plot."""
  cli.run(write_plot, argv)
