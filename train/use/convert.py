"""Hugging Face checkpoints to flaxlm exports and back, without torch, a layer at a time (`flaxlm-convert`'s work;
train/commands/convert.py parses its flags).

An HF folder holds config.json and the weights as *.safetensors (one file, or shards); the model types are those of
model/hf_families.py. The shards are read lazily, a layer's tensors at a time, after every name, shape and dtype has
been checked against the model; the params keep the checkpoint's dtype (bfloat16 stays bfloat16; float16 becomes
float32, which holds it exactly), and the converted model computes in the dtype asked for. The tokenizer is the
folder's tokenizer.json (with the special tokens and chat template of its tokenizer_config.json and
generation_config.json), else its SentencePiece tokenizer.model, or one named; without any the conversion is refused,
since a byte tokenizer would give the ids the wrong text. Back to HF, the params are written in the dtype they are
stored in, into safetensors files of at most a size, one at a time (several with the model.safetensors.index.json
naming each tensor's file), with the export's tokenizer files; flaxlm's byte and char tokenizers have no HF form and
are left out.
"""

import json
import pathlib
import re

import jax
import numpy as np

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib
from flaxlm.model import hf, hf_families
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import count_params
from flaxlm.train import workdir as workdir_lib
from flaxlm.train.use import export, pretrained


def read_hf_config(directory: str) -> dict:
  """Returns the config.json of an HF model folder."""
  pretrained.check_folder(directory, 'a Hugging Face model folder (config.json and *.safetensors)')
  path = pathlib.Path(directory) / 'config.json'
  if not path.is_file():
    raise UserError(f'{directory} has no config.json: pass --from_hf=DIR, a Hugging Face model folder.')
  try:
    config = json.loads(path.read_text())
  except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8.
    raise UserError(f'{path} does not read as JSON ({e}): pass the folder\'s own config.json.') from None
  if not isinstance(config, dict):
    raise UserError(f'{path} holds a JSON {type(config).__name__}, not an object of settings: pass the folder\'s '
                    'own config.json.')
  return config


def read_checkpoint(directory: str) -> hf.Checkpoint:
  """Returns the tensors of an HF model folder's weights, their headers read (names, shapes and dtypes) and their
  data read when each is converted: the files its model.safetensors.index.json names (the folder may hold others,
  as Mistral's hold a consolidated.safetensors of other names), else every *.safetensors file in it."""
  folder = pathlib.Path(directory)
  index = folder / hf.INDEX
  shards = indexed_shards(index) if index.is_file() else sorted(folder.glob('*.safetensors'))
  if not shards:
    raise UserError(f'{directory} has no *.safetensors weights: save the model with save_pretrained('
                    'safe_serialization=True).')
  return hf.Checkpoint(shards)


def indexed_shards(index: pathlib.Path) -> list[pathlib.Path]:
  """Returns the files a model.safetensors.index.json names; raises UserError if it is not such an index, or a file
  it names is missing."""
  try:
    content = json.loads(index.read_text())
  except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8.
    content = e
  weight_map = content.get('weight_map') if isinstance(content, dict) else None
  if not isinstance(weight_map, dict) or not all(isinstance(file, str) for file in weight_map.values()):
    raise UserError(f'{index} is not an index of safetensors files (a "weight_map" from tensor names to files): '
                    'download it again.')
  shards = [index.parent / file for file in sorted(set(weight_map.values()))]
  missing = [shard.name for shard in shards if not shard.exists()]
  if missing:
    raise UserError(f'{index} names {missing[0]}, which the folder lacks ({len(missing)} missing): download the '
                    'missing files.')
  return shards


HF_KINDS = (tokenizer_lib.HFTokenizer, tokenizer_lib.SentencePieceTokenizer)  # the tokenizers HF folders hold


def hf_tokenizer(directory: str, kind: str | None, vocab_size: int) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer `kind` names ('byte', or a tokenizer.json or SentencePiece .model file), else the folder's
  own (its tokenizer.json, else its tokenizer.model); raises UserError if it has more ids than the model's
  `vocab_size`."""
  if kind is None and not any((pathlib.Path(directory) / held.filename).is_file() for held in HF_KINDS):
    raise UserError(f'{directory} has neither a tokenizer.json nor a tokenizer.model: copy the model\'s tokenizer '
                    'files into it, or pass --tokenizer=FILE.json or --tokenizer=FILE.model with the checkpoint\'s '
                    'ids (or --tokenizer=byte).')
  if kind == 'byte':
    tokenizer = tokenizer_lib.ByteTokenizer()
  else:
    tokenizer = tokenizer_file(kind) if kind else tokenizer_lib.from_hf_folder(directory)
  if tokenizer.vocab_size > vocab_size:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size:,} ids and the model {vocab_size:,}: its vocabulary is '
                    'not the checkpoint\'s; pass a --tokenizer with the checkpoint\'s ids.')
  return tokenizer


def tokenizer_file(path: str) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer.json or SentencePiece model --tokenizer names; raises UserError if it is no file, or a
  flaxlm char or byte tokenizer's JSON (whose ids are not the checkpoint's)."""
  if not files.to_path(path).is_file():
    raise UserError(f'--tokenizer={path} is not a file: pass the tokenizer.json or SentencePiece .model file with the '
                    'checkpoint\'s ids, or --tokenizer=byte.')
  tokenizer = tokenizer_lib.load(path)
  if not isinstance(tokenizer, HF_KINDS):
    raise UserError(f'--tokenizer={path} is a flaxlm {type(tokenizer).__name__}, not a SentencePiece model or a '
                    'tokenizer.json: its ids are not the checkpoint\'s; pass the file the checkpoint was trained with.')
  return tokenizer


def from_hf(directory: str, output: str, tokenizer_kind: str | None, dtype: str) -> list[str]:
  """Writes the flaxlm export of the HF model folder `directory` at `output`, its params in the checkpoint's dtype
  and its model computing in `dtype`; returns the lines to print."""
  export.check_writable(output, dtype)
  hf_config = read_hf_config(directory)
  config = base.get_config()
  config.model.update(hf_families.model_config(hf_config), dtype=dtype)
  tokenizer = hf_tokenizer(directory, tokenizer_kind, config.model.vocab_size)
  config.data.tokenizer = tokenizer_kind or str(pathlib.Path(directory).absolute() / tokenizer.filename)
  params = hf.params_from_hf(read_checkpoint(directory), ModelConfig.from_config(config.model, tokenizer.vocab_size))
  stored = dtype_name(params)
  path = export.write(output, params, config, tokenizer, stored)
  return [f'wrote {path}: {count_params(params):,} parameters of a {hf_config["model_type"]} model, stored in '
          f'{stored}, computing in {dtype}']


def dtype_name(params: hf.Tree) -> str:
  """Returns the name of the dtype of `params` (converted ones all share one)."""
  return jax.tree.leaves(params)[0].dtype.name


def write_hf(output: str, hf_config: dict, params: hf.Tree, c: ModelConfig, tokenizer: tokenizer_lib.Tokenizer,
             max_shard_bytes: int) -> list[str]:
  """Writes config.json, the safetensors shards of `params` (model `c`), one at a time, and the tokenizer's files
  where HF has a form for it (`HF_KINDS`) as a new folder; returns the names of the weight files."""
  with export.new_directory(output) as partial:
    (partial / 'config.json').write_text(json.dumps(hf_config, indent=2))
    names = hf.write_shards(partial, hf.hf_groups(params, c), max_shard_bytes)
    if isinstance(tokenizer, HF_KINDS):
      tokenizer_lib.save(tokenizer, partial)
  return names


def to_hf(output: str, params_path: str, max_shard_size: str) -> list[str]:
  """Writes the HF model folder of the flaxlm export `params_path` at `output`, in the dtype its params are stored
  in, in safetensors files of at most `max_shard_size`; returns the lines to print."""
  max_shard_bytes = size_in_bytes(max_shard_size)
  export.check_new_directory(output, 'to_hf')
  export.check_is_export(params_path)
  c = pretrained.model_config(params_path, workdir_lib.load_config(params_path).model, 0)
  hf_config = hf_families.hf_config(c)  # Refuses a model HF cannot express before its params are read.
  dtype = export.stored_dtype(params_path)
  hf_config.update(dtype=dtype, torch_dtype=dtype)  # transformers 5's key, and 4's
  _, params, tokenizer = pretrained.load(params_path, dtype)
  names = write_hf(output, hf_config, jax.tree.map(np.asarray, params), c, tokenizer, max_shard_bytes)
  shards = [name for name in names if name.endswith('.safetensors')]
  lines = [f'wrote {pathlib.Path(output).absolute()}: {count_params(params):,} parameters of a '
           f'{hf_config["model_type"]} model in {dtype}, in {len(shards)} safetensors file(s)']
  if not isinstance(tokenizer, HF_KINDS):
    lines.append('note: the export\'s tokenizer is flaxlm\'s byte or char one, which HF has no file for: not written.')
  return lines


UNITS = {'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30}  # as transformers


def size_in_bytes(size: str) -> int:
  """Returns the bytes of a size such as 5GB, 500MB, 2GiB or 1000 (bytes); raises UserError for anything else."""
  match = re.fullmatch(r'([0-9]+(?:\.[0-9]*)?)\s*([KMG]i?B|B)?', size.strip(), re.IGNORECASE)
  if not match or float(match[1]) * UNITS[(match[2] or 'B').upper()] < 1:
    raise UserError(f'--max_shard_size={size} is not a size: pass one such as 5GB, 500MB or 2GiB.')
  return int(float(match[1]) * UNITS[(match[2] or 'B').upper()])
