"""A trained model, loaded for use (sampling, scoring, export, conversion, fine-tuning): one function, `load`.

It reads either kind of directory flaxlm writes: a training run's workdir (its latest checkpoint) or an export
written by flaxlm-export (params alone). Only the params are read, never a run's optimizer moments, and each array
goes straight into its shards on the devices that hold it (`read_params`), in the dtype asked for: the model's
compute dtype to sample and score, float32 to fine-tune or export, the stored one to convert back to Hugging Face.
A LoRA run's checkpoint holds only its adapters: they are merged into the pretrained params it was trained on (its
train.init_from), so every user of `load` sees a plain model. The texts a model is given from files (a prompt, a
text to score) are read here too, with the same care.
"""

import copy
import dataclasses
import os
from typing import Any

import jax
import ml_collections
import optax

from flaxlm.configs import options
from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib
from flaxlm.model import lora
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import DTYPES, Transformer, param_shapes, shape_differences
from flaxlm.train import checkpoint, sharding, state, workdir as workdir_lib
from flaxlm.train.use import export


def load(path: str | os.PathLike, dtype: str | None = None,
         mesh: jax.sharding.Mesh | None = None) -> tuple[Transformer, Any, tokenizer_lib.Tokenizer]:
  """Returns (model, params, tokenizer) of the run or export at `path`: the plain model (a LoRA run's adapters merged)
  computing in `dtype` (default: its config's model.dtype), and its params in `dtype`, each placed in its shardings on
  `mesh` (default: `sharding.inference_mesh`, tensor-parallel over every device).

  Raises UserError if `dtype` is not a known one, or `path` is neither, or is a run without a checkpoint yet.
  """
  if dtype is not None:
    export.check_dtype(dtype)
  saved, tokenizer = saved_model(path)
  model = Transformer(plain_config(saved.config, dtype))
  abstract = abstract_params(model, mesh or sharding.inference_mesh(model.config))
  return model, read_params(path, abstract), tokenizer


def saved_model(path: str | os.PathLike) -> tuple[Transformer, tokenizer_lib.Tokenizer]:
  """Returns the model the run or export at `path` describes (with its adapters, for a LoRA run) and its tokenizer.

  Raises UserError if `path` holds neither, or its tokenizer has more ids than the model's vocabulary.
  """
  check_source(path)
  config, tokenizer = workdir_lib.load_config(path), workdir_lib.load_tokenizer(path)
  model = Transformer(model_config(path, config.model, tokenizer.vocab_size))
  base = config.train.init_from
  if model.config.lora.rank and not (base and files.exists(base)):
    raise UserError(f'{path} is a LoRA run, whose adapters are merged into the model it fine-tuned, and that model '
                    f'(train.init_from={base!r}) is not there: restore it at that path.')
  if tokenizer.vocab_size > model.config.vocab_size:
    raise UserError(f'the tokenizer in {path} has {tokenizer.vocab_size:,} ids, more than the model\'s vocabulary of '
                    f'{model.config.vocab_size:,}: restore the tokenizer file the model was trained with.')
  return model, tokenizer


def plain_config(config: ModelConfig, dtype: str | None = None) -> ModelConfig:
  """Returns `config` without LoRA adapters (what `load` merges them into), computing in `dtype` if given."""
  return dataclasses.replace(config.without_lora(), dtype=dtype or config.dtype)


def abstract_params(model: Transformer, mesh: jax.sharding.Mesh) -> Any:
  """Returns the shape structs of `model`'s trained params (a LoRA model's: its adapters) in the model's dtype, each
  with the sharding its logical axes give on `mesh`."""
  placed = state.abstract_state(model, optax.identity(), mesh).params
  dtype = DTYPES[model.config.dtype]
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding), placed)


def read_params(path: str | os.PathLike, abstract: Any) -> Any:
  """Returns the plain params of the run or export at `path`, read alone (never a run's optimizer moments) directly
  into `abstract`'s shapes, dtypes and shardings; a LoRA run's adapters are merged into its train.init_from's params.
  Raises UserError if they do not restore (damaged, of another shape, or a run without a checkpoint yet)."""
  if (files.to_path(path) / export.PARAMS_DIR).is_dir():
    return export.read_params(path, abstract)
  saved, _ = saved_model(path)
  c = saved.config
  if not c.lora.rank:
    return checkpoint_params(path, abstract)
  # The adapters are small: kept float32, so that the merge rounds once, to the base's dtype.
  adapters = checkpoint_params(path, state.abstract_state(saved, optax.identity(), sharding.mesh_of(abstract)).params)
  base = read_params(workdir_lib.load_config(path).train.init_from, abstract)
  merged = lora.merge(lora.combine(base, adapters), c.lora.alpha, c.lora.rank)
  return jax.device_put(merged, jax.tree.map(lambda x: x.sharding, abstract))  # Merged kernels: their shardings.


def check_folder(path: str | os.PathLike, what: str) -> None:
  """Raises UserError if `path` does not exist or is not a folder; `what` says what to pass instead."""
  folder = files.to_path(path)
  if not folder.exists():
    raise UserError(f'{path} does not exist: pass {what}.')
  if not folder.is_dir():
    raise UserError(f'{path} is not a folder: pass {what}.')


def check_source(path: str | os.PathLike) -> None:
  """Raises UserError unless `path` is a folder, not a Hugging Face one, and holds a tokenizer beside config.json."""
  check_folder(path, 'the folder of a training run or of an export')
  folder = files.to_path(path)
  if any(folder.glob('*.safetensors')):
    raise UserError(f'{path} is a Hugging Face model folder, not a flaxlm run or export: convert it first with '
                    f'flaxlm-convert --from_hf={path} --output=DIR, and pass DIR.')
  if (folder / 'config.json').is_file() and not any((folder / name).is_file() for name in workdir_lib.TOKENIZER_FILES):
    raise UserError(f'{path} has no tokenizer ({" or ".join(workdir_lib.TOKENIZER_FILES)}): restore the file the '
                    'model was saved with; no other tokenizer gives its ids the right text.')


# The model keys a fine-tune sets itself: how it computes the pretrained model and adapts it, not what the model is.
RUN_OWN = ('dtype', 'remat', 'attention', 'dropout', 'max_length', 'lora_rank', 'lora_alpha', 'lora_targets',
           'lora_base')


def adopt_model(config: ml_collections.ConfigDict,
                saved: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, list[str]]:
  """Returns (a copy of the run's `config` whose model section is the pretrained model's, `saved` being its
  config.json, less the RUN_OWN keys; the values taken that the run's config set otherwise).

  A fine-tune trains the pretrained model: its shape, but also what computes the same shapes differently (Gemma's norm
  offset, a rotary scaling, an activation), which a model section typed by hand would silently get wrong. A run value
  of 0 (derive it: vocab_size, num_kv_heads, mlp_width, head_dim) is no setting and is not listed.
  """
  adopted = copy.deepcopy(config)
  taken = []
  for key, value in saved.model.items():
    if key in RUN_OWN or key not in adopted.model or adopted.model[key] == value:
      continue
    if adopted.model[key] != 0:
      taken.append(f'model.{key}={value!r} (not {adopted.model[key]!r})')
    adopted.model[key] = value
  if adopted.model.rope_scaling != 'none' and not adopted.model.rope_original_length:  # 0 is max_length: keep the
    adopted.model.rope_original_length = saved.model.max_length  # context the scaling was made for, not the run's.
  return adopted, taken


def adopt(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Returns `config` with train.init_from's model (`adopt_model`), saying which of its values it took; raises
  UserError if train.init_from holds no run or export."""
  try:
    check_source(config.train.init_from)
  except UserError as e:
    raise UserError(f'train.init_from: {e}') from None
  adopted, taken = adopt_model(config, workdir_lib.load_config(config.train.init_from))
  if taken and jax.process_index() == 0:
    print(f'model: train.init_from\'s, so {", ".join(taken)}', flush=True)
  return adopted


def read_initial_params(path: str, abstract_params: Any) -> Any:
  """Returns the params of the export or run at `path` (never a run's optimizer moments), read directly into
  `abstract_params`' shapes, dtypes and shardings; raises UserError, before reading any, naming the first parameter
  whose shape differs from this config's model."""
  saved, _ = saved_model(path)
  differences = shape_differences(param_shapes(plain_config(saved.config)), abstract_params)
  if differences:
    name, there, here = differences[0]
    raise UserError(f'train.init_from={path}: parameter {name} is {there or "missing"} there and {here or "missing"} '
                    'here: set the model section to the pretrained model\'s (its config.json).')
  return read_params(path, abstract_params)


def model_config(path: str | os.PathLike, section: ml_collections.ConfigDict, vocab_size: int) -> ModelConfig:
  """Returns the checked model config of the model section read from `path`'s config.json; raises UserError if a
  value there has the wrong type (a number that is text, say) or is out of its range."""
  try:
    return ModelConfig.from_config(section, vocab_size)
  except (TypeError, ValueError, options.Refused) as e:
    reason = e.what if isinstance(e, options.Refused) else e  # A saved file is restored, not overridden by a flag.
    raise UserError(f'{files.to_path(path) / "config.json"} has a model section flaxlm cannot read ({reason}): '
                    'restore the file the model was saved with.') from None


def checkpoint_params(workdir: str | os.PathLike, abstract: Any) -> Any:
  """Returns the params alone of the latest checkpoint of the run in `workdir` that restores, laid out as `abstract`."""
  folder = checkpoint.directory(workdir)
  if folder.exists() and not folder.is_dir():
    raise UserError(f'{folder} is not a folder: restore the run\'s folder of checkpoints, which the model is read '
                    'from.')
  restored = checkpoint.restore_latest(workdir, abstract, move_failures=False, read=checkpoint.restore_params)
  if restored is None:
    raise UserError(f'{workdir} has no checkpoint yet (nor the {export.PARAMS_DIR}/ of an export): train it first '
                    f'with flaxlm-train --workdir={workdir}, or pass a whole export.')
  return restored[0]


def read_text(path: str, flag: str) -> str:
  """Returns the UTF-8 text of the file --`flag` names; raises UserError naming what is wrong with the path (a
  pipe or a device is refused before it is opened)."""
  file = files.to_path(path)
  if not file.exists():
    raise UserError(f'--{flag}={path} does not exist: pass the path of a text file.')
  if file.is_dir():
    raise UserError(f'--{flag}={path} is a directory: pass the path of a text file.')
  files.check_regular(file)
  try:
    return file.read_text(encoding='utf-8')
  except UnicodeDecodeError:
    raise UserError(f'--{flag}={path} is not UTF-8 text: save it as UTF-8.') from None
  except OSError as e:
    raise UserError(f'--{flag}={path} cannot be read ({e.strerror or e}): check its permissions.') from None
