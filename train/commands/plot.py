"""`flaxlm-plot --workdir=DIR[,DIR...] [--output=PATH]`: a PNG of a run's loss curves and learning rate, or of
several runs' side by side.

  flaxlm-plot --workdir=/tmp/run                        # writes /tmp/run/loss.png
  flaxlm-plot --workdir=/tmp/run --output=/tmp/run.png
  flaxlm-plot --workdir=/tmp/adamw,/tmp/muon --output=/tmp/adamw_muon.png   # compares the runs
"""

import io

from absl import flags
from matplotlib.backends.backend_agg import FigureCanvasAgg

from flaxlm.configs.errors import UserError
from flaxlm.data import files
from flaxlm.train import plot, workdir as workdir_lib
from flaxlm.train.commands import cli

WORKDIR = flags.DEFINE_list('workdir', None, 'Directory of a training run (its metrics.jsonl and config.json), or '
                            'several, comma-separated, to compare their curves in one figure.')
OUTPUT = flags.DEFINE_string('output', None, 'Where to write the PNG, a new file; default WORKDIR/loss.png, which '
                              'each plot of the run redraws (required for several runs).')
OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists.')


def check_output(output: files.Path, workdir: files.Path) -> None:
  """Raises UserError if --output is one of the run's files or folders, or inside one: --overwrite would replace it."""
  resolved = files.resolve(output)
  for name in (*workdir_lib.FILES, *workdir_lib.FOLDERS):
    entry = files.resolve(workdir / name)
    if resolved == entry or entry in resolved.parents:
      raise UserError(f'--output={output} is part of the run in --workdir ({name}): write the PNG to a new path.')


def write_plot() -> None:
  """Draws the run (or runs) in --workdir with Agg (no display needed) into --output, and prints where it went."""
  workdirs = [files.to_path(w) for w in cli.required(WORKDIR, 'pass the --workdir of a training run.')]
  own = OUTPUT.value is None  # The default, WORKDIR/loss.png, is this command's own file: redrawn each time.
  if own and len(workdirs) > 1:
    raise UserError(f'--workdir names {len(workdirs)} runs: pass --output, a new PNG path for their comparison.')
  output = workdirs[0] / 'loss.png' if own else files.to_path(OUTPUT.value)
  for workdir in workdirs:
    check_output(output, workdir)
  figure = plot.run_figure(workdirs[0]) if len(workdirs) == 1 else plot.runs_figure(workdirs)
  png = io.BytesIO()
  FigureCanvasAgg(figure).print_png(png)
  files.write_output(output, png.getvalue(), 'output', own or OVERWRITE.value)
  print(f'wrote {output}')


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-plot."""
  cli.run(write_plot, argv)
