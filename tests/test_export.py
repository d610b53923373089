"""Tests of train/use/export.py, train/use/pretrained.py, flaxlm-export and flaxlm-sample --params."""

import pathlib
import shutil
import signal

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from conftest import command, make_corpus
from test_cli import assert_one_line_error, run
from test_convert import stop_once_writing
from test_loop import tiny_config
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.model.transformer import count_params
from flaxlm.train import loop, workdir as workdir_lib
from flaxlm.train.use import export, pretrained


def size(path: pathlib.Path) -> int:
  """Returns the bytes of all files under `path`."""
  return sum(f.stat().st_size for f in path.rglob('*') if f.is_file())


def stored_params(path: pathlib.Path):
  """Returns the params tree exactly as the export at `path` stores it (no target: every saved leaf, its dtype)."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(path.absolute() / 'params')


def assert_trees_equal(a, b) -> None:
  """Checks two pytrees have the same structure and bitwise equal leaves of the same dtype."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> pathlib.Path:
  """A tiny run of 10 steps in `run/`, exported to `float32/` by flaxlm-export and to `bfloat16/` by export.write."""
  root = tmp_path_factory.mktemp('export')
  loop.train(tiny_config(make_corpus(root / 'corpus.txt'), 10), str(root / 'run'))
  _, params, tokenizer = pretrained.load(root / 'run')
  result = run(command('flaxlm-export'), f'--workdir={root / "run"}', f'--output={root / "float32"}')
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'wrote {root / "float32"}: {count_params(params):,} parameters in float32\n'
  export.write(root / 'bfloat16', params, workdir_lib.load_config(root / 'run'), tokenizer, 'bfloat16')
  return root


def test_a_float32_export_holds_the_latest_params_alone(trained):
  model, params, tokenizer = pretrained.load(trained / 'run')
  loaded_model, loaded, loaded_tokenizer = pretrained.load(trained / 'float32')
  assert_trees_equal(jax.device_get(loaded), jax.device_get(params))
  assert loaded_model.config == model.config and loaded_tokenizer.serialized() == tokenizer.serialized()
  assert (trained / 'float32' / 'config.json').read_text() == (trained / 'run' / 'config.json').read_text()
  assert_trees_equal(stored_params(trained / 'float32'), jax.device_get(params))  # Nothing but the params.
  assert size(trained / 'float32') < 0.45 * size(trained / 'run' / 'checkpoints' / '10')  # AdamW keeps 2 moments.


def test_a_bfloat16_export_stores_the_params_cast_at_half_the_size(trained):
  _, params, _ = pretrained.load(trained / 'run')
  as_bfloat16 = jax.device_get(jax.tree.map(lambda x: x.astype(jnp.bfloat16), params))
  assert_trees_equal(stored_params(trained / 'bfloat16'), as_bfloat16)
  _, loaded, _ = pretrained.load(trained / 'bfloat16')  # Loaded back as float32, exactly.
  assert_trees_equal(jax.device_get(loaded), jax.tree.map(lambda x: x.astype(np.float32), as_bfloat16))
  # The arrays' bytes halve; Orbax's metadata (about 15 kB beside this model's 132 kB of float32 arrays) does not. Left
  # in float32, the export would be as large as the float32 one and fail by about 60 kB.
  assert size(trained / 'bfloat16' / 'params') < 0.5 * size(trained / 'float32' / 'params') + 32_000


def test_greedy_samples_from_an_export_match_those_from_the_run(trained):
  sample = lambda source: run(command('flaxlm-sample'), source, '--prompt=ROMEO:', '--max_new_tokens=30',
                              '--temperature=0')
  from_run, from_export = sample(f'--workdir={trained / "run"}'), sample(f'--params={trained / "float32"}')
  assert from_run.returncode == 0 and from_export.returncode == 0, from_run.stderr + from_export.stderr
  assert from_export.stdout.startswith('ROMEO:') and len(from_export.stdout.rstrip('\n')) == len('ROMEO:') + 30
  assert from_export.stdout == from_run.stdout


def test_bad_exports_get_one_line_and_leave_nothing(trained, tmp_path):
  (tmp_path / 'empty').mkdir()
  shutil.copytree(trained / 'run', tmp_path / 'untrained', ignore=shutil.ignore_patterns('checkpoints'))
  (tmp_path / 'existing').write_text('keep me')
  cases = [  # (workdir, output, dtype, what the error says)
      (trained / 'run', tmp_path / 'a', 'float16', '--dtype=float16 is not one of float32, bfloat16'),
      (trained / 'run', tmp_path / 'existing', 'float32', 'existing already exists'),
      (tmp_path / 'empty', tmp_path / 'b', 'float32', 'holds no flaxlm run'),
      (tmp_path / 'untrained', tmp_path / 'c', 'float32', 'has no checkpoint yet'),
      (trained / 'run', tmp_path / 'missing' / 'd', 'float32', 'which is not a directory: create it first'),
      (trained / 'run', tmp_path / 'dangling', 'float32', f'dangling is a symlink to {tmp_path / "gone"}, which does'),
  ]
  (tmp_path / 'dangling').symlink_to(tmp_path / 'gone')
  before = sorted(tmp_path.rglob('*'))
  for workdir, output, dtype, fragment in cases:
    result = run(command('flaxlm-export'), f'--workdir={workdir}', f'--output={output}', f'--dtype={dtype}')
    assert_one_line_error(result, fragment)
  assert sorted(tmp_path.rglob('*')) == before  # No export, and no partial one beside it.
  assert (tmp_path / 'existing').read_text() == 'keep me'


def test_an_interrupted_export_leaves_nothing(trained, tmp_path, monkeypatch):
  _, params, tokenizer = pretrained.load(trained / 'run')
  def interrupt(*args) -> None:
    raise KeyboardInterrupt
  monkeypatch.setattr(tokenizer_lib, 'save', interrupt)  # After the params are written, before the rename.
  with pytest.raises(KeyboardInterrupt):
    export.write(tmp_path / 'export', params, workdir_lib.load_config(trained / 'run'), tokenizer, 'float32')
  assert list(tmp_path.iterdir()) == []


def test_sigterm_while_an_export_is_written_stops_it_and_leaves_nothing(trained, tmp_path):
  out = tmp_path / 'out'
  code, stderr = stop_once_writing([command('flaxlm-export'), f'--workdir={trained / "run"}', f'--output={out}'], out,
                                   signal.SIGTERM)
  assert code == 130 and 'nothing was written at' in stderr and len(stderr.strip().splitlines()) == 1


def test_sampling_needs_exactly_one_run_or_export(trained):
  cases = [  # (where the model comes from, what the error says)
      ((), 'pass exactly one of --workdir'),
      ((f'--workdir={trained / "run"}', f'--params={trained / "float32"}'), 'pass exactly one of --workdir'),
      ((f'--params={trained}',), 'holds no flaxlm run'),  # Neither a run nor an export.
  ]
  for sources, fragment in cases:
    assert_one_line_error(run(command('flaxlm-sample'), *sources, '--prompt=a'), fragment)


def test_either_flag_loads_either_kind_of_directory(trained):
  """A run and its float32 export give the same sample, whichever flag names which (one loading function)."""
  sample = lambda flag: run(command('flaxlm-sample'), flag, '--prompt=a', '--max_new_tokens=8', '--temperature=0')
  outputs = [sample(flag) for flag in (f'--workdir={trained / "run"}', f'--params={trained / "run"}',
                                       f'--workdir={trained / "float32"}', f'--params={trained / "float32"}')]
  assert all(o.returncode == 0 for o in outputs), [o.stderr for o in outputs]
  assert len({o.stdout for o in outputs}) == 1 and len(outputs[0].stdout) > len('a')
