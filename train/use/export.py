"""Exports: a trained run's parameters alone (no optimizer state), for sampling and fine-tuning.

An export is a directory:
  params/                              an Orbax checkpoint of the params pytree, float32 or bfloat16
  config.json                          the run's resolved config (model.dtype is still the compute dtype)
  tokenizer.json or tokenizer.model    the run's tokenizer
It is written into a hidden sibling directory and renamed into place when complete, so an interrupted export never
leaves a partial one at its path: Ctrl-C or SIGTERM stops a command that writes one (`signals_stop`) and the sibling
is removed. Cloud Storage has no renames: there an export is written at its path, config.json last, and is one
(`check_is_export`) only once that is there.
"""

import contextlib
import os
import shutil
import signal
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib
from flaxlm.model.transformer import DTYPES
from flaxlm.train import checkpoint, preemption

PARAMS_DIR = 'params'


def check_dtype(dtype: str) -> None:
  """Raises UserError if `dtype` (a --dtype flag's value) is not one params can be stored and computed in."""
  if dtype not in DTYPES:
    raise UserError(f'--dtype={dtype} is not one of {", ".join(DTYPES)}: pick one of them.')


def check_writable(output: str | os.PathLike, dtype: str) -> None:
  """Raises UserError if `dtype` is not one params can be stored in, or if `output` is no path for a new export."""
  check_dtype(dtype)
  check_new_directory(output, 'output')


def check_new_directory(output: str | os.PathLike, flag: str) -> None:
  """Raises UserError, naming `flag`, if `output` exists, is in a missing directory, or is inside a model's own
  folder of checkpoints or params (where a new folder would be taken for part of that model)."""
  files.check_parent(output, flag)
  if files.exists(output):
    raise UserError(f'{output} already exists: pass a new --{flag} path (flaxlm never overwrites one).')
  for folder in files.absolute(output).parents:
    model = folder.parent
    if folder in (checkpoint.directory(model), model / PARAMS_DIR) and (model / 'config.json').is_file():
      raise UserError(f'--{flag}={output} is inside {folder}, which holds the model in {model} (a folder there is '
                      'taken for part of it): pass a path outside it.')


def unwritable(output: str | os.PathLike, error: OSError) -> UserError:
  """Returns the error to raise when writing `output` failed with `error` (a full disk, a read-only folder)."""
  return UserError(f'could not write {output} ({error.strerror or error}): free some space, or pass a path you can '
                   'write to.')


def cast(params: Any, dtype: str) -> Any:
  """Returns `params` with every leaf cast to `dtype` (a name in DTYPES); a leaf already in it is not copied."""
  return jax.tree.map(lambda x: x if x.dtype == DTYPES[dtype] else x.astype(DTYPES[dtype]), params)


def params_checkpointer() -> ocp.Checkpointer:
  """Returns Orbax's checkpointer of a params pytree that holds no copy of them while it writes: host (numpy) arrays
  are written as they are (Orbax's default first copies each, so that its caller may change them meanwhile), and
  uncompressed (zstd would hold every array's compressed copy until written, for 10-25% less disk with bfloat16)."""
  registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
      (jax.Array, ocp.type_handlers.get_type_handler(jax.Array)))
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False))


@contextlib.contextmanager
def new_directory(output: str | os.PathLike) -> Iterator[files.Path]:
  """Yields a hidden sibling directory to fill, renamed to `output` once the block completes (on Cloud Storage,
  `output` itself), removed if it fails; raises UserError if the directory cannot be written (a full disk, a
  read-only folder)."""
  path = files.absolute(output)
  cloud = files.is_cloud(path)
  partial = path if cloud else path.with_name(f'.{path.name}.partial-{os.getpid()}')
  try:
    try:  # The mkdir too: an interruption just after it must remove what it made.
      partial.mkdir()
      yield partial
      preemption.check_interrupted()  # One a library's callback dropped: not renamed into place.
      if not cloud:
        partial.rename(path)
    except BaseException:
      if cloud:
        partial.rmtree(missing_ok=True)
      elif os.path.lexists(partial):  # Not there if the mkdir failed.
        shutil.rmtree(partial)
      raise
  except OSError as e:
    raise unwritable(output, e) from None


class Stopper(preemption.Interrupter):
  """The Ctrl-C and SIGTERM handler of a command writing the folder `output`: the first signal raises
  KeyboardInterrupt (and is remembered: `preemption.check_interrupted`), later ones are ignored while what was
  written is removed, and one that comes once `output` is whole changes nothing."""

  def __init__(self, output: str | os.PathLike):
    super().__init__()
    self.output = output

  def __call__(self, signum: int, frame) -> None:
    if not self.came and not (files.to_path(self.output) / 'config.json').exists():  # config.json: last, or renamed
      super().__call__(signum, frame)


@contextlib.contextmanager
def signals_stop(output: str | os.PathLike) -> Iterator[None]:
  """Runs the block of a command that writes the folder `output` (an export, or a Hugging Face folder) with a
  `Stopper` taking Ctrl-C and SIGTERM, then raises KeyboardInterrupt saying that nothing was written if one came,
  also where a library took the interruption for another error (an Orbax read cut short)."""
  stopper = Stopper(output)
  with preemption.interruptible(stopper):
    try:
      yield
    except (KeyboardInterrupt, Exception):
      if stopper.came:
        raise KeyboardInterrupt(f'nothing was written at {output}; run the command again') from None
      raise


def write(output: str | os.PathLike, params: Any, config: ml_collections.ConfigDict,
          tokenizer: tokenizer_lib.Tokenizer, dtype: str) -> files.Path:
  """Writes the export of `params` (cast to `dtype`), `config` and `tokenizer` at `output`; returns its path."""
  check_writable(output, dtype)
  with new_directory(output) as partial:
    # Held: Orbax's threads would go on writing after an interruption, and the partial folder could not be removed.
    with params_checkpointer() as checkpointer, preemption.signals_held((signal.SIGINT, signal.SIGTERM)):
      checkpointer.save(partial / PARAMS_DIR, args=ocp.args.PyTreeSave(cast(params, dtype)))
    tokenizer_lib.save(tokenizer, partial)
    (partial / 'config.json').write_text(config.to_json(indent=2))  # Last: what makes it an export.
  return files.absolute(output)


def check_is_export(path: str | os.PathLike) -> None:
  """Raises UserError if `path` is not a directory written by `write` (it lacks params/ or config.json)."""
  directory = files.to_path(path)
  if (directory / PARAMS_DIR).is_dir() and (directory / 'config.json').is_file():
    return
  if checkpoint.directory(directory).is_dir():
    raise UserError(f'{path} is a training run, not an export: export it first with flaxlm-export --workdir={path} '
                    '--output=DIR, and pass DIR.')
  raise UserError(f'{path} is not a flaxlm export (no {PARAMS_DIR}/ or config.json): pass a directory written by '
                  'flaxlm-export or flaxlm-convert --from_hf.')


def stored_dtype(path: str | os.PathLike) -> str:
  """Returns the name (in DTYPES) of the dtype the params of the export at `path` are stored in, from their metadata
  alone; float32 if they mix dtypes. Raises UserError if the metadata does not read."""
  handler = ocp.PyTreeCheckpointHandler()  # A Checkpointer's metadata() would also log a damaged file's error.
  try:
    leaves = jax.tree.leaves(dict(handler.metadata(files.absolute(path) / PARAMS_DIR)))
  except Exception as e:  # Orbax raises many kinds for damaged files.
    raise damaged(path, e) from None
  finally:
    handler.close()
  found = {np.dtype(leaf.dtype).name for leaf in leaves}
  return found.pop() if len(found) == 1 and found <= DTYPES.keys() else 'float32'


def read_params(path: str | os.PathLike, abstract: Any) -> Any:
  """Returns the exported params laid out as `abstract` says (shapes, shardings, and the dtype they are cast to);
  raises UserError if they do not restore (damaged files, or params of another shape than config.json's)."""
  checkpoint.quiet_abandoned_reads()
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(files.absolute(path) / PARAMS_DIR, abstract)
  except Exception as e:  # Orbax and TensorStore raise many kinds for damaged files.
    raise damaged(path, e) from None


def damaged(path: str | os.PathLike, error: Exception) -> UserError:
  """Returns the error to raise when the params of the export at `path` do not read (`error`)."""
  return UserError(f'the params in {path} do not restore ({checkpoint.first_line(error)}): the export is damaged, or '
                   'its config.json is not the one it was written with; export it again.')
