"""Tests of train/plot.py and flaxlm-plot: the figure's curves and labels, the PNG written, and a run with no metrics."""

import json
import struct
import sys

import pytest
from absl import flags

from conftest import command
from flaxlm.configs import tiny
from flaxlm.configs.errors import UserError
from test_cli import run
from flaxlm.train import plot
from flaxlm.train.commands import plot as plot_command

TOKENS_PER_STEP = 8 * 16  # tiny: batch_size x max_length.


def write_run(workdir, records: list[dict]) -> None:
  """Writes a tiny run's config.json and `records` as its metrics.jsonl, as a training run leaves them."""
  workdir.mkdir()
  (workdir / 'config.json').write_text(tiny.get_config().to_json())
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


@pytest.fixture
def workdir(tmp_path):
  """A run of 20 steps logged every 5, evaluated every 10."""
  records = [{'step': s, 'loss': 4.0 - 0.1 * s, 'learning_rate': 1e-4 * s} for s in (5, 10, 15, 20)]
  for r in records[1::2]:
    r['val_loss'] = r['loss'] + 0.2
  write_run(tmp_path / 'my_run', records)
  return tmp_path / 'my_run'


def png_size(path) -> tuple[int, int]:
  """Returns (width, height) from a PNG's header; fails unless the file starts with the PNG signature."""
  data = path.read_bytes()
  assert data[:8] == b'\x89PNG\r\n\x1a\n' and data[12:16] == b'IHDR'
  return struct.unpack('>II', data[16:24])


def test_the_figure_has_both_losses_the_tokens_and_the_learning_rate(workdir):
  figure = plot.run_figure(workdir)
  loss_ax, rate_ax = figure.axes[:2]
  assert figure.get_suptitle() == 'my_run'
  lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss_ax.get_lines()}
  assert lines['training loss'] == ([5, 10, 15, 20], pytest.approx([3.5, 3.0, 2.5, 2.0]))
  assert lines['validation loss'] == ([10, 20], pytest.approx([3.2, 2.2]))
  assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ['training loss', 'validation loss']
  assert loss_ax.get_ylabel().startswith('loss') and rate_ax.get_xlabel() == 'step'
  assert rate_ax.get_ylabel() == 'learning rate' and list(rate_ax.get_lines()[0].get_ydata()) == pytest.approx(
      [5e-4, 1e-3, 1.5e-3, 2e-3])
  tokens_ax = loss_ax.child_axes[0]  # The secondary x axis: steps x batch_size x max_length.
  assert tokens_ax.get_xlabel() == f'tokens ({TOKENS_PER_STEP} a step)'
  figure.draw_without_rendering()  # Lays out the secondary axis's limits from the steps'.
  assert tokens_ax.get_xlim() == pytest.approx([x * TOKENS_PER_STEP for x in loss_ax.get_xlim()])


def test_a_run_without_metrics_is_refused(tmp_path):
  write_run(tmp_path / 'new', [])
  with pytest.raises(UserError, match='no metrics.jsonl records'):
    plot.run_figure(tmp_path / 'new')


def test_the_installed_command_writes_a_png(workdir):
  result = run(command('flaxlm-plot'), f'--workdir={workdir}')
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == f'wrote {workdir / "loss.png"}'
  width, height = png_size(workdir / 'loss.png')
  assert 600 <= width <= 2000 and 400 <= height <= 1500 and (workdir / 'loss.png').stat().st_size > 10_000


@pytest.mark.parametrize('make_run, fragment', [
    (lambda path: write_run(path, []), 'no metrics.jsonl records'),
    (lambda path: path.mkdir(), 'holds no flaxlm run (no config.json)'),
], ids=['no_metrics', 'no_run'])
def test_bad_input_gets_one_line_and_a_nonzero_exit(monkeypatch, capsys, tmp_path, make_run, fragment):
  make_run(tmp_path / 'run')
  code, out, err = plot_main(monkeypatch, capsys, f'--workdir={tmp_path / "run"}')
  assert code != 0 and out == '' and len(err.strip().splitlines()) == 1 and fragment in err
  assert not (tmp_path / 'run' / 'loss.png').exists()


def test_several_runs_are_drawn_in_one_figure_against_tokens_and_need_an_output(monkeypatch, capsys, workdir, tmp_path):
  write_run(tmp_path / 'other', [{'step': s, 'loss': 3.0, 'learning_rate': 1e-3, 'val_loss': 3.1} for s in (10, 20)])
  figure = plot.runs_figure([workdir, tmp_path / 'other'])
  loss_ax, rate_ax = figure.axes
  validation = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in loss_ax.get_lines()
                if not line.get_label().startswith('_')}  # The training curves are unlabeled.
  assert validation == {'my_run': ([10 * TOKENS_PER_STEP, 20 * TOKENS_PER_STEP], pytest.approx([3.2, 2.2])),
                        'other': ([10 * TOKENS_PER_STEP, 20 * TOKENS_PER_STEP], pytest.approx([3.1, 3.1]))}
  assert len(loss_ax.get_lines()) == 4 and len(rate_ax.get_lines()) == 2 and rate_ax.get_xlabel() == 'tokens'
  runs = f'--workdir={workdir},{tmp_path / "other"}'
  code, out, err = plot_main(monkeypatch, capsys, runs)
  assert code == 1 and err.strip().endswith('--workdir names 2 runs: pass --output, a new PNG path for their '
                                            'comparison.')
  code, out, err = plot_main(monkeypatch, capsys, runs, f'--output={tmp_path / "c.png"}')
  assert code == 0 and out.strip() == f'wrote {tmp_path / "c.png"}', err
  assert png_size(tmp_path / 'c.png')[0] >= 600 and not (workdir / 'loss.png').exists()


def plot_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
  """Runs flaxlm-plot's main in this process with `args`; returns (exit code, stdout, stderr)."""
  argv = ['flaxlm-plot', *args]
  monkeypatch.setattr(sys, 'argv', argv)
  flags.FLAGS.unparse_flags()  # Forget the previous test's flags.
  try:
    plot_command.main(argv)
    code = 0
  except SystemExit as exit:
    code = exit.code
  out, err = capsys.readouterr()
  return code, out, err
