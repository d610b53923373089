"""A trained model, loaded for use (sampling, scoring, export, conversion, fine-tuning): one function, `load`.

It reads either kind of directory flaxlm writes: a training run's workdir (its latest checkpoint) or an export
written by flaxlm-export (params alone). A LoRA run's checkpoint holds only its adapters: they are merged into the
pretrained params it was trained on (its train.init_from), so every user of `load` sees a plain model.
"""

import dataclasses
import pathlib
from typing import Any

import optax

from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.model import lora
from flaxlm.model.transformer import ModelConfig, Transformer
from flaxlm.train import checkpoint, export, optimizer, sharding, state, workdir as workdir_lib


def load(path: str | pathlib.Path) -> tuple[Transformer, Any, tokenizer_lib.Tokenizer]:
  """Returns (model, params, tokenizer) of the run or export at `path`, the params float32 on one device.

  Raises UserError if `path` is neither, or is a run without a checkpoint yet.
  """
  config, tokenizer = workdir_lib.load_config(path), workdir_lib.load_tokenizer(path)
  model = Transformer(ModelConfig.from_config(config.model, tokenizer.vocab_size))
  if (pathlib.Path(path) / export.PARAMS_DIR).is_dir():
    return model, exported_params(path, model), tokenizer
  params = checkpoint_params(path, model, config)
  if not model.config.lora_rank:
    return model, params, tokenizer
  _, base, _ = load(config.train.init_from)
  merged = lora.merge(lora.combine(base, params), model.config.lora_alpha, model.config.lora_rank)
  return Transformer(dataclasses.replace(model.config, lora_rank=0)), merged, tokenizer


def exported_params(path: str | pathlib.Path, model: Transformer) -> Any:
  """Returns an export's params as float32 (bfloat16 exports are cast back exactly, as fine-tuning needs)."""
  abstract = state.abstract_state(model, optax.identity(), sharding.single_device_mesh()).params
  return export.read_params(path, abstract)


def checkpoint_params(workdir: str | pathlib.Path, model: Transformer, config) -> Any:
  """Returns the params of the latest checkpoint of the run in `workdir` that restores."""
  abstract = state.abstract_state(model, optimizer.make_optimizer(config.train), sharding.single_device_mesh())
  restored = checkpoint.restore_latest(workdir, abstract, move_failures=False)
  if restored is None:
    raise UserError(f'{workdir} has no checkpoint yet: train it first with flaxlm-train --workdir={workdir}.')
  return restored[0].params
