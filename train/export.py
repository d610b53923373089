"""Exports: a trained run's parameters alone (no optimizer state), for sampling and fine-tuning.

An export is a directory:
  params/                              an Orbax checkpoint of the params pytree, float32 or bfloat16
  config.json                          the run's resolved config (model.dtype is still the compute dtype)
  tokenizer.json or tokenizer.model    the run's tokenizer
It is written into a hidden sibling directory and renamed into place when complete, so an interrupted export
never leaves a partial one at its path.
"""

import contextlib
import os
import pathlib
import shutil
from typing import Any, Iterator

import jax
import ml_collections
import orbax.checkpoint as ocp

from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib
from flaxlm.model.transformer import DTYPES

PARAMS_DIR = 'params'


def check_writable(output: str | pathlib.Path, dtype: str) -> None:
  """Raises UserError if `dtype` is not one params can be stored in, or if `output` already exists."""
  if dtype not in DTYPES:
    raise UserError(f'--dtype={dtype} is not one of {", ".join(DTYPES)}: pick one of them.')
  if os.path.lexists(output):
    raise UserError(f'{output} already exists: pass a new --output path (an export never overwrites one).')
  files.check_parent(output, 'output')


def cast(params: Any, dtype: str) -> Any:
  """Returns `params` with every leaf cast to `dtype` (a name in DTYPES)."""
  return jax.tree.map(lambda x: x.astype(DTYPES[dtype]), params)


@contextlib.contextmanager
def new_directory(output: str | pathlib.Path) -> Iterator[pathlib.Path]:
  """Yields a hidden sibling directory to fill, renamed to `output` once the block completes, removed if it fails."""
  path = pathlib.Path(output).absolute()
  partial = path.with_name(f'.{path.name}.partial-{os.getpid()}')
  partial.mkdir()
  try:
    yield partial
    partial.rename(path)
  except BaseException:
    shutil.rmtree(partial)
    raise


def write(output: str | pathlib.Path, params: Any, config: ml_collections.ConfigDict,
          tokenizer: tokenizer_lib.Tokenizer, dtype: str) -> pathlib.Path:
  """Writes the export of `params` (cast to `dtype`), `config` and `tokenizer` at `output`; returns its path."""
  check_writable(output, dtype)
  with new_directory(output) as partial:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(partial / PARAMS_DIR, cast(params, dtype))
    (partial / 'config.json').write_text(config.to_json(indent=2))
    tokenizer_lib.save(tokenizer, partial)
  return pathlib.Path(output).absolute()


def check_is_export(path: str | pathlib.Path) -> None:
  """Raises UserError if `path` is not a directory written by `write` (it lacks params/ or config.json)."""
  directory = pathlib.Path(path)
  if not ((directory / PARAMS_DIR).is_dir() and (directory / 'config.json').is_file()):
    raise UserError(f'{path} is not a flaxlm export (no {PARAMS_DIR}/ or config.json): pass a directory written by '
                    'flaxlm-export, or a training run\'s --workdir.')


def read_params(path: str | pathlib.Path, abstract: Any) -> Any:
  """Returns the exported params laid out as `abstract` says (shapes, shardings, and the dtype they are cast to)."""
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(pathlib.Path(path).absolute() / PARAMS_DIR, abstract)
