"""A run's workdir: `config.json` (the resolved config), the tokenizer's files, and the checks that keep runs apart."""

import json
import os
import pathlib
import shutil

import ml_collections

from flaxlm.configs import base, options
from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib
from flaxlm.model.config import ModelConfig
from flaxlm.train import trackers


def with_model(config: ml_collections.ConfigDict, model: ModelConfig) -> ml_collections.ConfigDict:
  """Returns a copy of `config` whose model section states every field of `model`."""
  described = ml_collections.ConfigDict(config.to_dict())
  described.model.update({k: v for k, v in options.values(model).items() if k in described.model})
  return described


def resolve(config: ml_collections.ConfigDict, vocab_size: int) -> ml_collections.ConfigDict:
  """Returns a copy of `config` whose model section states every derived value (vocab, kv heads, MLP width).

  Raises UserError if model.vocab_size is set below `vocab_size`, the tokenizer's: its ids would index past the
  embedding (the loss becomes NaN).
  """
  if 0 < config.model.vocab_size < vocab_size:
    raise UserError(f'model.vocab_size={config.model.vocab_size} is smaller than the tokenizer\'s {vocab_size} ids: '
                    f'set --config.model.vocab_size={vocab_size} or more (0 takes the tokenizer\'s).')
  return with_model(config, ModelConfig.from_config(config.model, vocab_size))


TOKENIZER_FILES = (tokenizer_lib.CharTokenizer.filename, tokenizer_lib.SentencePieceTokenizer.filename)
FILES = ('config.json', 'metrics.jsonl', trackers.WANDB_ID_FILE, *TOKENIZER_FILES,  # What a run writes: files,
         *tokenizer_lib.SIDE_FILES)
FOLDERS = ('checkpoints', 'corrupt_checkpoints', 'tensorboard')  # and folders.


def check_usable(workdir: str | os.PathLike) -> None:
  """Raises UserError unless `workdir` is new (in a bucket that exists, on Cloud Storage), or a folder this process
  may write whose run entries are what a run makes (files and folders by name): a resume must not fail halfway
  through its first save."""
  if files.is_cloud(workdir):
    files.check_bucket(workdir, 'workdir')
  path = files.to_path(workdir)
  if files.is_link(path) and not path.exists():
    raise UserError(f'--workdir={workdir} is a symlink to nothing: pass a directory (new, or a run\'s to resume it).')
  if not path.exists():
    return
  if not path.is_dir():
    raise UserError(f'--workdir={workdir} is a file: pass a directory (new, or a run\'s to resume it).')
  if not files.is_cloud(path) and not os.access(path, os.W_OK | os.X_OK):  # Cloud Storage has no permission bits.
    raise UserError(f'--workdir={workdir} is not writable: give yourself write permission on it, or pass a new '
                    '--workdir.')
  for names, is_kind, kind in ((FILES, lambda p: p.is_file(), 'a file'), (FOLDERS, lambda p: p.is_dir(), 'a folder')):
    for name in names:
      entry = path / name
      if files.exists(entry) and not is_kind(entry):
        raise UserError(f'{entry} should be {kind}: move it out of the workdir, or pass a new --workdir.')


def load_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  """Returns the resolved config saved in `workdir`; raises UserError if the workdir holds no run."""
  path = files.to_path(workdir) / 'config.json'
  if not path.is_file():
    raise UserError(f'{workdir} holds no flaxlm run (no config.json): pass the --workdir of a training run.')
  try:
    saved = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise UserError(f'{path} is not valid JSON ({e}): restore it from a checkpoint\'s config (checkpoints/STEP/'
                    'config), or train in a new --workdir.') from None
  if not isinstance(saved, dict) or not isinstance(saved.get('model'), dict):
    raise UserError(f'{path} holds no flaxlm config (no model section): restore it, or train in a new --workdir.')
  defaults = base.get_config().to_dict()  # Keys added since the run was saved keep the behaviour it had.
  for section, values in saved.items():
    if section in defaults and not isinstance(values, dict):
      raise UserError(f'{path}: its {section} section is {json.dumps(values)[:40]}, not a JSON object: restore it '
                      'from the config saved with a checkpoint (checkpoints/STEP/config/metadata).')
  return ml_collections.ConfigDict({section: {**defaults.get(section, {}), **values} if isinstance(values, dict)
                                    else values for section, values in saved.items()})


def load_tokenizer(workdir: str | os.PathLike) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer saved with the run in `workdir` (a SentencePiece model, a Hugging Face tokenizer.json or a
  flaxlm JSON description, with the special tokens of the tokenizer_config.json beside it)."""
  path = files.to_path(workdir)
  model = path / tokenizer_lib.SentencePieceTokenizer.filename
  return tokenizer_lib.load(model if model.exists() else path / tokenizer_lib.CharTokenizer.filename)


# What a resume may change: how the same model is computed, not what it is or which batches it sees.
COMPUTE_ONLY = ('model.dtype', 'model.remat', 'model.attention', 'train.microbatches')
# What it may not change besides the model's shape: the stream of batches the checkpoint's data position indexes.
SAME_DATA = ('train.batch_size', 'train.seed', 'data.path', 'data.store_digest', 'data.format', 'data.text_field',
             'data.val_fraction', 'data.max_documents')
SAME_STATE = ('train.optimizer',)  # Nor the optimizer whose state the checkpoints hold.


def check_compatible(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                     tokenizer: tokenizer_lib.Tokenizer) -> list[str]:
  """Returns the compute-only settings a resume of `workdir` changes ('model.dtype: ... there, ... here'); raises
  UserError if the workdir holds a run of another model, tokenizer, stream of batches or optimizer than this
  config's."""
  if not (files.to_path(workdir) / 'config.json').exists():
    return []
  saved = load_config(workdir)
  keys = dict.fromkeys([*(f'model.{k}' for k in config.model), *SAME_DATA, *SAME_STATE, *COMPUTE_ONLY])  # In order.
  changed = [key for key in keys if lookup(saved, key) != lookup(config, key)]
  describe = lambda key: f'{key}: {lookup(saved, key)!r} there, {lookup(config, key)!r} here'
  refused = [describe(key) for key in changed if key not in COMPUTE_ONLY]
  if refused:
    raise UserError(f'workdir {workdir} holds a run of a different model, data or optimizer ({"; ".join(refused)}): '
                    'use a new --workdir, or the same settings to resume it.')
  if tokenizer_lib.files_of(load_tokenizer(workdir)) != tokenizer_lib.files_of(tokenizer):
    raise UserError(f'workdir {workdir} holds a run with a different tokenizer: use a new --workdir, '
                    'or the same --config.data.path and --config.data.tokenizer to resume it.')
  return [describe(key) for key in changed]


def lookup(config: ml_collections.ConfigDict, key: str):
  """Returns the value of the dotted `key` ('train.seed') in `config`, None where it has no such key."""
  section, name = key.split('.')
  return config.get(section, {}).get(name)


def remove_run_files(workdir: str) -> None:
  """Removes what a run writes in the local `workdir` (FILES and FOLDERS): a new run that failed to start leaves
  nothing."""
  for name in FILES + FOLDERS:
    entry = pathlib.Path(workdir) / name
    if entry.is_dir() and not entry.is_symlink():
      shutil.rmtree(entry)
    elif files.exists(entry):
      entry.unlink()


def write_run_files(workdir: str | os.PathLike, config: ml_collections.ConfigDict,
                    tokenizer: tokenizer_lib.Tokenizer) -> None:
  """Creates `workdir` and writes the tokenizer's files, then config.json (atomically: a reader sees both or neither)."""
  path = files.to_path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  tokenizer_lib.save(tokenizer, path)  # Unchanged on a resume: nothing is written.
  files.update(path / 'config.json', config.to_json(indent=2))
