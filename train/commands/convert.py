"""`flaxlm-convert`: Hugging Face checkpoints to flaxlm exports and back, without torch, a layer at a time.

  flaxlm-convert --from_hf=/models/llama-3.2-1b --output=/tmp/llama [--dtype=float32] [--tokenizer=FILE]
  flaxlm-sample --params=/tmp/llama --prompt="Once upon a time"
  flaxlm-convert --to_hf=/tmp/llama_hf --params=/tmp/llama [--max_shard_size=5GB]

An HF folder holds config.json and the weights as *.safetensors (one file, or shards); the model types are those of
model/hf_families.py. The shards are read lazily, a layer's tensors at a time, after every name, shape and dtype has
been checked against the model; the params keep the checkpoint's dtype (bfloat16 stays bfloat16; float16 becomes
float32, which holds it exactly), and the converted model computes in --dtype (bfloat16 unless asked otherwise).
The tokenizer is the folder's tokenizer.json (with the special tokens and chat template of its tokenizer_config.json
and generation_config.json), else its SentencePiece tokenizer.model, or --tokenizer; without any the conversion is
refused, since a byte tokenizer would give the ids the wrong text. Back to HF, the params are written in the dtype
they are stored in, into safetensors files of at most --max_shard_size, one at a time (several with the
model.safetensors.index.json naming each tensor's file), with the export's tokenizer files; flaxlm's byte and char
tokenizers have no HF form and are left out.
"""

from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data import files
from flaxlm.train.commands import cli
from flaxlm.train.use import convert as convert_lib, export

FROM_HF = flags.DEFINE_string('from_hf', None, 'An HF model folder (config.json, *.safetensors) to convert.')
OUTPUT = flags.DEFINE_string('output', None, 'With --from_hf: the flaxlm export directory to create.')
TOKENIZER = flags.DEFINE_string('tokenizer', None, 'With --from_hf: "byte", or a tokenizer.json or SentencePiece '
                                '.model file whose ids are the checkpoint\'s; default: the folder\'s tokenizer.json, '
                                'else its tokenizer.model.')
DTYPE = flags.DEFINE_string('dtype', 'bfloat16', 'With --from_hf: the dtype the converted model computes in (its '
                            'config\'s model.dtype): bfloat16 or float32. Its params keep the checkpoint\'s dtype.')
TO_HF = flags.DEFINE_string('to_hf', None, 'An HF model folder to create from the export --params.')
PARAMS = flags.DEFINE_string('params', None, 'With --to_hf: a flaxlm export (written by flaxlm-export or --from_hf).')
MAX_SHARD_SIZE = flags.DEFINE_string('max_shard_size', '5GB', 'With --to_hf: the most each safetensors file holds '
                                     '(as transformers\' save_pretrained: 5GB, 500MB, 2GiB); more make shards.')


def check_local(flag: flags.FlagHolder) -> None:
  """Raises UserError if --`flag`, a Hugging Face folder, is a gs:// URL: safetensors reads and writes local files."""
  if files.is_cloud(flag.value):
    raise UserError(f'--{flag.name}={flag.value} is on Cloud Storage, and Hugging Face folders are read and written '
                    'on local disk: copy it there (or from there) with gcloud storage cp --recursive.')


# The flags each direction takes.
DIRECTIONS = {'from_hf': (OUTPUT, TOKENIZER, DTYPE), 'to_hf': (PARAMS, MAX_SHARD_SIZE)}


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
  output = cli.required(OUTPUT, 'pass --output=PATH, the export directory to create.') if FROM_HF.value else TO_HF.value
  with export.signals_stop(output):
    if FROM_HF.value:
      lines = convert_lib.from_hf(FROM_HF.value, output, TOKENIZER.value, DTYPE.value)
    else:
      lines = convert_lib.to_hf(output, cli.required(PARAMS, 'pass --params=PATH, a flaxlm export.'),
                                MAX_SHARD_SIZE.value)
  print('\n'.join(lines))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-convert."""
  cli.run(convert, argv)
