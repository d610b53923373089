"""Executes every notebook in notebooks/ offline, on the corpus flaxlm ships, and checks what it produced."""

import dataclasses
import os
import pathlib

import nbclient
import nbformat
import pytest
from ipykernel import kernelspec
from jupyter_client import KernelManager
from jupyter_client.kernelspec import KernelSpecManager

from flaxlm.data import sources
from flaxlm.train import metrics

REPO = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / 'notebooks').glob('*.ipynb'))
PROMPT = 'ROMEO:'


@dataclasses.dataclass
class Executed:
  """A notebook after execution, with the text it trained on and its workdir."""
  notebook: nbformat.NotebookNode
  corpus: str
  workdir: pathlib.Path


def kernel_manager(kernels_dir: pathlib.Path) -> KernelManager:
  """Returns a manager for a python3 kernel run by this interpreter, whatever kernelspecs are installed."""
  kernelspec.write_kernel_spec(kernels_dir / 'python3')  # Its argv starts with sys.executable.
  return KernelManager(kernel_name='python3', kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels_dir)]))


@pytest.fixture(scope='module')
def execute(tmp_path_factory):
  """Returns a function that executes a notebook once (later calls reuse the result)."""
  done = {}

  def run(path: pathlib.Path) -> Executed:
    if path not in done:
      tmp = tmp_path_factory.mktemp(path.stem)
      env = {**os.environ, 'FLAXLM_WORKDIR': str(tmp / 'workdir')}
      notebook = nbformat.read(path, as_version=4)
      km = kernel_manager(tmp / 'kernels')
      client = nbclient.NotebookClient(notebook, km=km, timeout=300, resources={'metadata': {'path': str(REPO)}})
      try:
        client.execute(env=env)
      finally:
        km.shutdown_kernel(now=True)  # nbclient leaves a kernel it was given running.
      done[path] = Executed(notebook, sources.read_text('flaxlm:tinyshakespeare'), tmp / 'workdir')
    return done[path]

  return run


def code_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  """Returns the notebook's code cells."""
  return [cell for cell in notebook.cells if cell.cell_type == 'code']


def stdout_of(notebook: nbformat.NotebookNode) -> list[str]:
  """Returns the printed text of each code cell."""
  return [''.join(o.text for o in cell.outputs if o.output_type == 'stream' and o.name == 'stdout')
          for cell in code_cells(notebook)]


def images_of(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  """Returns the outputs of the notebook's code cells that are PNG images (its plots)."""
  return [o for cell in code_cells(notebook) for o in cell.outputs if 'image/png' in o.get('data', {})]


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_saved_clean(path):
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert notebook.metadata.kernelspec.name == 'python3'
  assert all(not cell.outputs and cell.execution_count is None for cell in code_cells(notebook))


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_every_cell_without_error(path, execute):
  cells = code_cells(execute(path).notebook)
  assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
  assert not [o for cell in cells for o in cell.outputs if o.output_type == 'error']


@pytest.mark.parametrize('name', ['quickstart', 'training_loop', 'attention_and_sampling'])
def test_notebook_training_run_loss_falls(name, execute):
  run = execute(REPO / 'notebooks' / f'{name}.ipynb')
  records = metrics.read_metrics(run.workdir)
  assert records[0]['loss'] > records[-1]['loss']
  assert [r['step'] for r in records] == sorted({r['step'] for r in records})
  assert any('val_loss' in r for r in records)
  assert (run.workdir / 'tokenizer.json').is_file() and (run.workdir / 'checkpoints').is_dir()


def test_quickstart_plots_the_loss(execute):
  notebook = execute(REPO / 'notebooks' / 'quickstart.ipynb').notebook
  assert len(images_of(notebook)) == 1


def test_quickstart_samples_text_continuing_the_prompt(execute):
  run = execute(REPO / 'notebooks' / 'quickstart.ipynb')
  samples = [text for text in stdout_of(run.notebook) if text.startswith(PROMPT)]
  assert len(samples) == 1
  generated = samples[0][len(PROMPT):].removesuffix('\n')
  assert len(generated) == 100  # max_new_tokens characters of the corpus's alphabet.
  assert set(generated) <= set(run.corpus)


def test_training_loop_updates_by_hand_as_optax_does(execute):
  run = execute(REPO / 'notebooks' / 'training_loop.ipynb')
  printed = ''.join(stdout_of(run.notebook))
  assert '0.5 - 0.01 x 0.2 = 0.498\n' in printed
  assert 'optax.sgd: [0.498]' in printed
  assert 'SGD by hand equals optax.sgd' in printed and 'AdamW by hand matches optax.adamw' in printed
  records = metrics.read_metrics(run.workdir)
  assert f"at step {records[-1]['step']}: {records[-1]['loss']:.3f}" in printed
  assert len(images_of(run.notebook)) == 4  # the first prediction, -ln p, the loss curve, the last prediction.


def test_attention_and_sampling_draws_and_tabulates(execute):
  run = execute(REPO / 'notebooks' / 'attention_and_sampling.ipynb')
  printed = stdout_of(run.notebook)
  assert any('every row sums to 1: True' in text for text in printed)
  assert len(images_of(run.notebook)) == 3  # the attention maps, the next character, temperature and top-k.
  table = next(text for text in printed if text.startswith('weights'))
  rows = {name: (float(kib), float(perplexity)) for name, kib, perplexity in map(str.split, table.splitlines()[1:])}
  assert list(rows) == ['float32', 'int8', 'int4']
  assert rows['float32'][0] > 3 * rows['int8'][0] and rows['int8'][0] > rows['int4'][0]
  assert rows['float32'][1] < len(set(run.corpus))  # Trained: better than a uniform guess among its characters.
  assert rows['int8'][1] == pytest.approx(rows['float32'][1], rel=0.01)
  assert rows['int4'][1] == pytest.approx(rows['float32'][1], rel=0.1)
