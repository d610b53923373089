"""A run's training curves as a matplotlib Figure: the losses against steps and tokens, and the learning rate; or
several runs' curves in one Figure, against the tokens each trained on, to compare them.

The Figure is made without pyplot, so nothing is shown or kept open: a notebook displays it, and flaxlm-plot
writes it as a PNG.
"""

import os

from matplotlib import ticker
from matplotlib.figure import Figure

from flaxlm.configs.errors import UserError
from flaxlm.data import files
from flaxlm.train import metrics, workdir as workdir_lib


def loss_figure(records: list[dict], tokens_per_step: int, title: str) -> Figure:
  """Returns a Figure of training and validation loss over steps (tokens on the top axis), with the learning rate below,
  and, for a run that scored multiple-choice tasks (train.eval_tasks), their centered accuracy between them.

  `records` are metrics.jsonl's records; `tokens_per_step` is batch_size x max_length, the tokens one step trains on.
  """
  centered = sorted({key for r in records for key in r if key.endswith(CENTERED)})
  figure = Figure(figsize=(8, 8 if centered else 6), layout='constrained')
  axes = figure.subplots(2 + bool(centered), 1, sharex=True, height_ratios=(3, 2, 1) if centered else (3, 1))
  loss_ax, rate_ax = axes[0], axes[-1]
  if centered:
    draw_task_scores(axes[1], records, centered)
  evals = [r for r in records if 'val_loss' in r]
  loss_ax.plot([r['step'] for r in records], [r['loss'] for r in records], label='training loss')
  loss_ax.plot([r['step'] for r in evals], [r['val_loss'] for r in evals], 'o-', label='validation loss')
  loss_ax.set_ylabel('loss (nats per token)')
  loss_ax.legend()
  loss_ax.grid(alpha=0.3)
  tokens_ax = loss_ax.secondary_xaxis('top', functions=(lambda s: s * tokens_per_step, lambda t: t / tokens_per_step))
  tokens_ax.set_xlabel(f'tokens ({tokens_per_step:,} a step)')
  tokens_ax.xaxis.set_major_formatter(ticker.EngFormatter())
  rate_ax.plot([r['step'] for r in records], [r['learning_rate'] for r in records], color='tab:green')
  rate_ax.set_ylabel('learning rate')
  rate_ax.set_xlabel('step')
  rate_ax.grid(alpha=0.3)
  figure.suptitle(title)
  return figure


def draw_task_scores(ax, records: list[dict], keys: list[str]) -> None:
  """Draws each 'TASK/centered' score of `keys` over the steps it was scored at."""
  for key in keys:
    scored = [r for r in records if key in r]
    ax.plot([r['step'] for r in scored], [r[key] for r in scored], 'o-', label=key.removesuffix(CENTERED))
  ax.axhline(0, color='gray', linewidth=0.8)
  ax.set_ylabel('centered accuracy\n(0: chance, 1: all right)')
  ax.legend()
  ax.grid(alpha=0.3)


CENTERED = '/centered'  # The metrics.jsonl key suffix of a multiple-choice task's score above chance.
PLOTTED = ('loss', 'learning_rate')  # What every record must have: training records all do.


def read_run(workdir: str | os.PathLike) -> tuple[list[dict], int, str]:
  """Returns (the metrics records, the tokens a step trains on, the folder's name) of the run in `workdir`; raises
  UserError if it has logged nothing, or a record lacks what is plotted."""
  config = workdir_lib.load_config(workdir)
  records = metrics.read_metrics(workdir)
  if not records:
    raise UserError(f'{workdir} has no metrics.jsonl records yet: plot a run that has logged a step.')
  for record in records:
    missing = [name for name in PLOTTED if name not in record]
    if missing:
      raise UserError(f'{workdir}/metrics.jsonl has no "{missing[0]}" at step {record["step"]}: plot a run '
                      'flaxlm-train logged.')
  return records, config.train.batch_size * config.model.max_length, files.resolve(workdir).name


def run_figure(workdir: str | os.PathLike) -> Figure:
  """Returns `loss_figure` of the run in `workdir`, titled with its name (`read_run`'s errors)."""
  return loss_figure(*read_run(workdir))


def runs_figure(workdirs: list[str | os.PathLike]) -> Figure:
  """Returns the runs in `workdirs` compared in one Figure: above, each run's validation loss (and, faint, its
  training loss) against the tokens it has trained on; below, its learning rate. Each run has one color, and the
  legend names it by its folder (`read_run`'s errors)."""
  figure = Figure(figsize=(9, 6), layout='constrained')
  loss_ax, rate_ax = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
  for i, workdir in enumerate(workdirs):
    records, tokens_per_step, name = read_run(workdir)
    color, tokens = f'C{i}', lambda rs: [r['step'] * tokens_per_step for r in rs]
    evals = [r for r in records if 'val_loss' in r]
    loss_ax.plot(tokens(records), [r['loss'] for r in records], color=color, alpha=0.3, linewidth=0.8)
    loss_ax.plot(tokens(evals), [r['val_loss'] for r in evals], 'o-', color=color, label=name)
    rate_ax.plot(tokens(records), [r['learning_rate'] for r in records], color=color)
  loss_ax.set_ylabel('validation loss (training: faint)')
  loss_ax.legend()
  rate_ax.set_ylabel('learning rate')
  rate_ax.set_xlabel('tokens')
  rate_ax.xaxis.set_major_formatter(ticker.EngFormatter())
  for ax in (loss_ax, rate_ax):
    ax.grid(alpha=0.3)
  figure.suptitle(f'{len(workdirs)} runs')
  return figure
