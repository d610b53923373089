"""`flaxlm-convert`: Hugging Face GPT-2 and Llama checkpoints to flaxlm exports and back, without torch.

  flaxlm-convert --from_hf=/models/tinyllama --output=/tmp/tinyllama [--dtype=bfloat16] [--tokenizer=FILE.model]
  flaxlm-sample --params=/tmp/tinyllama --prompt="Once upon a time"
  flaxlm-convert --to_hf=/tmp/tinyllama_hf --params=/tmp/tinyllama

An HF folder holds config.json and the weights as *.safetensors (one file, or shards). The tokenizer comes from
the folder's SentencePiece tokenizer.model (as Llama 2 ships one) or from --tokenizer; without either the
conversion is refused, since GPT-2's BPE (vocab.json, merges.txt) and tokenizer.json files are not SentencePiece
and a byte tokenizer would give the ids the wrong text. Back to HF, a SentencePiece tokenizer is written as
tokenizer.model; flaxlm's byte and char tokenizers have no HF form and are left out.
"""

import json
import pathlib

import jax
import safetensors.numpy
from absl import flags

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import files, tokenizer as tokenizer_lib
from flaxlm.model import hf, hf_families
from flaxlm.model.transformer import ModelConfig, count_params
from flaxlm.train import export, pretrained, workdir as workdir_lib
from flaxlm.train.commands import cli

FROM_HF = flags.DEFINE_string('from_hf', None, 'An HF model folder (config.json, *.safetensors) to convert.')
OUTPUT = flags.DEFINE_string('output', None, 'With --from_hf: the flaxlm export directory to create.')
TOKENIZER = flags.DEFINE_string('tokenizer', None, 'With --from_hf: "byte" or a SentencePiece .model file whose ids '
                                'are the checkpoint\'s; default: the folder\'s tokenizer.model.')
DTYPE = flags.DEFINE_string('dtype', 'float32', 'With --from_hf: what the params are stored in: float32 or bfloat16.')
TO_HF = flags.DEFINE_string('to_hf', None, 'An HF model folder to create from the export --params.')
PARAMS = flags.DEFINE_string('params', None, 'With --to_hf: a flaxlm export (written by flaxlm-export or --from_hf).')


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


def read_tensors(directory: str) -> hf.Tensors:
  """Returns all the tensors of the *.safetensors files (one, or shards) in an HF model folder."""
  shards = sorted(pathlib.Path(directory).glob('*.safetensors'))
  if not shards:
    raise UserError(f'{directory} has no *.safetensors weights: save the model with save_pretrained('
                    'safe_serialization=True).')
  tensors = {}
  for file in shards:
    if not file.is_file():  # A directory, or a pipe (opening one waits for a writer forever).
      raise UserError(f'{file} is not a regular file: pass a folder whose weights are *.safetensors files.')
    try:
      shard = safetensors.numpy.load_file(file)
    except (safetensors.SafetensorError, OSError) as e:
      raise UserError(f'{file} does not read as safetensors ({e}): it is cut short or damaged; download it '
                      'again.') from None
    twice = sorted(tensors.keys() & shard.keys())
    if twice:
      raise UserError(f'{file} holds the tensor {twice[0]}, which an earlier shard holds too: pass a folder with '
                      'one checkpoint.')
    tensors.update(shard)
  return tensors


def hf_tokenizer(directory: str, kind: str | None, vocab_size: int) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer `kind` names ('byte' or a .model file), else the folder's SentencePiece tokenizer.model."""
  path = pathlib.Path(directory) / tokenizer_lib.SentencePieceTokenizer.filename
  if kind is None and not path.is_file():
    raise UserError(f'{directory} has no SentencePiece tokenizer.model (GPT-2\'s vocab.json and merges.txt, and '
                    'tokenizer.json, are not one): pass --tokenizer=FILE.model, a SentencePiece model with the '
                    'checkpoint\'s ids, or --tokenizer=byte.')
  if kind == 'byte':
    tokenizer = tokenizer_lib.ByteTokenizer()
  else:
    tokenizer = sentencepiece_file(kind) if kind else tokenizer_lib.load(path)
  if tokenizer.vocab_size > vocab_size:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size:,} ids and the model {vocab_size:,}: pass a '
                    '--tokenizer with the checkpoint\'s ids.')
  return tokenizer


def sentencepiece_file(path: str) -> tokenizer_lib.Tokenizer:
  """Returns the SentencePiece model --tokenizer names; raises UserError if it is no file, or a flaxlm char or byte
  tokenizer's JSON (whose ids are not the checkpoint's)."""
  if not files.to_path(path).is_file():
    raise UserError(f'--tokenizer={path} is not a file: pass the SentencePiece .model file with the checkpoint\'s ids, '
                    'or --tokenizer=byte.')
  tokenizer = tokenizer_lib.load(path)
  if not isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
    raise UserError(f'--tokenizer={path} is a flaxlm {type(tokenizer).__name__}, not a SentencePiece model: its ids '
                    'are not the checkpoint\'s; pass the .model file the checkpoint was trained with.')
  return tokenizer


def from_hf(directory: str, output: str, tokenizer_kind: str | None, dtype: str) -> list[str]:
  """Writes the flaxlm export of the HF model folder `directory` at `output`; returns the lines to print."""
  export.check_writable(output, dtype)
  hf_config = read_hf_config(directory)
  config = base.get_config()
  config.model.update(hf_families.model_config(hf_config))
  tokenizer = hf_tokenizer(directory, tokenizer_kind, config.model.vocab_size)
  config.data.tokenizer = tokenizer_kind or str(pathlib.Path(directory).absolute() / tokenizer.filename)
  params = hf.params_from_hf(read_tensors(directory), ModelConfig.from_config(config.model, tokenizer.vocab_size))
  path = export.write(output, params, config, tokenizer, dtype)
  return [f'wrote {path}: {count_params(params):,} parameters of a {hf_config["model_type"]} model in {dtype}']


def write_hf(output: str, hf_config: dict, tensors: hf.Tensors, tokenizer: tokenizer_lib.Tokenizer) -> pathlib.Path:
  """Writes config.json, model.safetensors and a SentencePiece tokenizer.model as a new folder; returns its path."""
  with export.new_directory(output) as partial:
    (partial / 'config.json').write_text(json.dumps(hf_config, indent=2))
    safetensors.numpy.save_file(tensors, partial / 'model.safetensors', metadata={'format': 'pt'})
    if isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
      tokenizer_lib.save(tokenizer, partial)
  return pathlib.Path(output).absolute()


def to_hf(output: str, params_path: str) -> list[str]:
  """Writes the HF model folder of the flaxlm export `params_path` at `output`; returns the lines to print."""
  export.check_new_directory(output, 'to_hf')
  export.check_is_export(params_path)
  c = pretrained.model_config(params_path, workdir_lib.load_config(params_path).model, 0)
  hf_config = hf_families.hf_config(c)  # Refuses a model HF cannot express before its params are read.
  _, params, tokenizer = pretrained.load(params_path, 'float32')
  path = write_hf(output, hf_config, hf.params_to_hf(jax.device_get(params), c), tokenizer)
  lines = [f'wrote {path}: {count_params(params):,} parameters of a {hf_config["model_type"]} model in float32']
  if not isinstance(tokenizer, tokenizer_lib.SentencePieceTokenizer):
    lines.append('note: the export\'s tokenizer is flaxlm\'s byte or char one, which HF has no file for: not written.')
  return lines


def check_local(flag: flags.FlagHolder) -> None:
  """Raises UserError if --`flag`, a Hugging Face folder, is a gs:// URL: safetensors reads and writes local files."""
  if files.is_cloud(flag.value):
    raise UserError(f'--{flag.name}={flag.value} is on Cloud Storage, and Hugging Face folders are read and written '
                    'on local disk: copy it there (or from there) with gcloud storage cp --recursive.')


DIRECTIONS = {'from_hf': (OUTPUT, TOKENIZER, DTYPE), 'to_hf': (PARAMS,)}  # The flags each direction takes.


def check_direction(other: flags.FlagHolder) -> None:
  """Raises UserError if a flag of the direction `other` names (not the one taken) is given: it would be ignored."""
  for flag in DIRECTIONS[other.name]:
    if flag.present:
      raise UserError(f'--{flag.name} is used only with --{other.name}, not in this direction: leave it out.')


def convert() -> None:
  """Converts --from_hf to the export --output, or the export --params to --to_hf, and prints what it wrote."""
  if bool(FROM_HF.value) == bool(TO_HF.value):
    raise UserError('pass exactly one of --from_hf=DIR (HF to flaxlm) and --to_hf=DIR (flaxlm to HF).')
  check_direction(TO_HF if FROM_HF.value else FROM_HF)
  check_local(FROM_HF if FROM_HF.value else TO_HF)
  if FROM_HF.value:
    output = cli.required(OUTPUT, 'pass --output=PATH, the export directory to create.')
    lines = from_hf(FROM_HF.value, output, TOKENIZER.value, DTYPE.value)
  else:
    lines = to_hf(TO_HF.value, cli.required(PARAMS, 'pass --params=PATH, a flaxlm export.'))
  print('\n'.join(lines))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-convert."""
  cli.run(convert, argv)
