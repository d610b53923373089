"""A run's workdir: `config.json` (the resolved config), the tokenizer's file, and the checks that keep runs apart.

Also loads a trained model to use: from a workdir's latest checkpoint, or from an export of its parameters.
"""

import dataclasses
import json
import pathlib
from typing import Any

import ml_collections
import optax

from configs import base
from configs.errors import UserError
from data import tokenizer as tokenizer_lib
from model import lora
from model.transformer import ModelConfig, Transformer
from train import checkpoint, export, optimizer, sharding, state


def with_model(config: ml_collections.ConfigDict, model: ModelConfig) -> ml_collections.ConfigDict:
  """Returns a copy of `config` whose model section states every field of `model`."""
  described = ml_collections.ConfigDict(config.to_dict())
  described.model.update({k: v for k, v in dataclasses.asdict(model).items() if k in described.model})
  return described


def resolve(config: ml_collections.ConfigDict, vocab_size: int) -> ml_collections.ConfigDict:
  """Returns a copy of `config` whose model section states every derived value (vocab, kv heads, MLP width)."""
  return with_model(config, ModelConfig.from_config(config.model, vocab_size))


def load_config(workdir: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Returns the resolved config saved in `workdir`; raises UserError if the workdir holds no run."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise UserError(f'{workdir} holds no flaxlm run (no config.json): pass the --workdir of a training run.')
  saved = json.loads(path.read_text())
  defaults = base.get_config().to_dict()  # Keys added since the run was saved keep the behaviour it had.
  return ml_collections.ConfigDict({section: {**defaults.get(section, {}), **values} if isinstance(values, dict)
                                    else values for section, values in saved.items()})


def load_tokenizer(workdir: str | pathlib.Path) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer saved with the run in `workdir` (a SentencePiece model or a JSON description)."""
  path = pathlib.Path(workdir)
  model = path / tokenizer_lib.SentencePieceTokenizer.filename
  return tokenizer_lib.load(model if model.exists() else path / tokenizer_lib.CharTokenizer.filename)


def check_compatible(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                     tokenizer: tokenizer_lib.Tokenizer) -> None:
  """Raises UserError if `workdir` holds a run of another model shape or tokenizer than this one."""
  if not (pathlib.Path(workdir) / 'config.json').exists():
    return
  saved = load_config(workdir).model.to_dict()
  differences = [f'model.{k}: {saved.get(k)!r} there, {v!r} here' for k, v in config.model.items() if saved.get(k) != v]
  if differences:
    raise UserError(f'workdir {workdir} holds a run of a different model ({"; ".join(differences)}): '
                    'use a new --workdir, or the same settings to resume it.')
  if load_tokenizer(workdir).serialized() != tokenizer.serialized():
    raise UserError(f'workdir {workdir} holds a run with a different tokenizer: use a new --workdir, '
                    'or the same --config.data.path and --config.data.tokenizer to resume it.')


def write_run_files(workdir: str | pathlib.Path, config: ml_collections.ConfigDict,
                    tokenizer: tokenizer_lib.Tokenizer) -> None:
  """Creates `workdir` and writes the tokenizer's file, then config.json (atomically: a reader sees both or neither)."""
  path = pathlib.Path(workdir)
  path.mkdir(parents=True, exist_ok=True)
  tokenizer_lib.save(tokenizer, path)
  partial = path / 'config.json.tmp'
  partial.write_text(config.to_json(indent=2))
  partial.replace(path / 'config.json')


def load_trained(workdir: str | pathlib.Path):
  """Returns (model, params, tokenizer) from the latest checkpoint in `workdir`, on one device.

  A LoRA run's checkpoint holds its adapters only: they are merged into the pretrained params it was trained on
  (its train.init_from), and the model returned is the plain one, without adapters.
  """
  config, tokenizer = load_config(workdir), load_tokenizer(workdir)
  model = Transformer(ModelConfig.from_config(config.model, tokenizer.vocab_size))
  abstract = state.abstract_state(model, optimizer.make_optimizer(config.train), sharding.single_device_mesh())
  restored = checkpoint.restore_latest(workdir, abstract, move_failures=False)
  if restored is None:
    raise UserError(f'{workdir} has no checkpoint yet: train it first with flaxlm-train --workdir={workdir}.')
  params, c = restored[0].params, model.config
  if not c.lora_rank:
    return model, params, tokenizer
  _, base, _ = load_pretrained(config.train.init_from)
  merged = lora.merge(lora.combine(base, params), c.lora_alpha, c.lora_rank)
  return Transformer(dataclasses.replace(c, lora_rank=0)), merged, tokenizer


def load_exported(path: str | pathlib.Path) -> tuple[Transformer, Any, tokenizer_lib.Tokenizer]:
  """Returns (model, params, tokenizer) from an export written by flaxlm-export, the params float32 on one device.

  Params stored in bfloat16 are cast back to float32, exactly: the model then holds its params as training and
  `load_trained` do (float32, as a fine-tune needs them), and computes in its config's model.dtype either way.
  """
  export.check_is_export(path)
  config, tokenizer = load_config(path), load_tokenizer(path)
  model = Transformer(ModelConfig.from_config(config.model, tokenizer.vocab_size))
  abstract = state.abstract_state(model, optax.identity(), sharding.single_device_mesh()).params
  return model, export.read_params(path, abstract), tokenizer


def load_pretrained(path: str | pathlib.Path) -> tuple[Transformer, Any, tokenizer_lib.Tokenizer]:
  """Returns (model, params, tokenizer) of a flaxlm-export directory or of a run's workdir (latest checkpoint)."""
  load_config(path)  # Refuses, naming the path, what is neither.
  return load_exported(path) if (pathlib.Path(path) / export.PARAMS_DIR).is_dir() else load_trained(path)


def load_model(workdir: str | None, params: str | None) -> tuple[Transformer, Any, tokenizer_lib.Tokenizer]:
  """Returns (model, params, tokenizer) from a run's latest checkpoint or from an export: exactly one of the two."""
  if bool(workdir) == bool(params):
    raise UserError('pass exactly one of --workdir=DIR (a training run) and --params=PATH (a flaxlm-export).')
  return load_trained(workdir) if workdir else load_exported(params)
