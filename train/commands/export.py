"""`flaxlm-export --workdir=DIR --output=PATH`: write a run's parameters alone, to sample from, or as a GGUF file.

  flaxlm-export --workdir=/tmp/run --output=/tmp/run_export --dtype=bfloat16
  flaxlm-sample --params=/tmp/run_export --prompt="ROMEO:"
  flaxlm-export --workdir=/tmp/run --format=gguf --gguf_type=q8_0 --output=/tmp/run.gguf
  llama-cli -m /tmp/run.gguf -p "ROMEO:"
"""

import dataclasses

from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data import files, gguf_vocab
from flaxlm.model import gguf as gguf_lib
from flaxlm.model.transformer import count_params
from flaxlm.train import workdir as workdir_lib
from flaxlm.train.commands import cli
from flaxlm.train.plan.estimate import format_bytes
from flaxlm.train.use import export, gguf, pretrained

WORKDIR = flags.DEFINE_string('workdir', None, 'A training run (its latest checkpoint is exported, a LoRA run\'s '
                              'adapters merged), or with --format=gguf also an export or a converted model.')
OUTPUT = flags.DEFINE_string('output', None, 'The directory (--format=flaxlm) or .gguf file (--format=gguf) to '
                             'create; it must not exist yet.')
FORMAT = flags.DEFINE_enum('format', 'flaxlm', ['flaxlm', 'gguf'], 'flaxlm: an export directory (params, config and '
                           'tokenizer) for flaxlm-sample and fine-tuning; gguf: one file for llama.cpp.')
DTYPE = flags.DEFINE_string('dtype', 'float32', 'With --format=flaxlm: what the params are stored in: float32, or '
                            'bfloat16 (half the size).')
GGUF_TYPE = flags.DEFINE_string('gguf_type', 'f16', 'With --format=gguf: the type of its matrices: f32, f16, bf16, '
                                'q8_0, q4_0; q4_k_m, q5_k_m, q6_k with llama-cpp-python installed.')


def export_flaxlm(workdir: str, output: str) -> None:
  """Writes the params of `workdir`'s latest checkpoint, its config and tokenizer, as a new directory `output`."""
  export.check_writable(output, DTYPE.value)  # Before the restore, which may take minutes for a large model.
  with export.signals_stop(output):
    model, params, tokenizer = pretrained.load(workdir, 'float32')  # Full precision, cast once to --dtype when written.
    config = workdir_lib.load_config(workdir)
    plain = dataclasses.replace(model.config, dtype=config.model.dtype)  # A LoRA run's merged; its compute dtype.
    path = export.write(output, params, workdir_lib.with_model(config, plain), tokenizer, DTYPE.value)
  print(f'wrote {path}: {count_params(params):,} parameters in {DTYPE.value}')


def export_gguf(workdir: str, output: str) -> None:
  """Writes the model of the run or export `workdir` as the GGUF file `output`, saying its size first."""
  gguf_lib.check_type(GGUF_TYPE.value)
  path = gguf.check_output(output)
  gguf.check_k_quant(GGUF_TYPE.value, path)
  saved, tokenizer = pretrained.saved_model(workdir)
  c = pretrained.plain_config(saved.config)
  gguf_lib.check_expressible(c)
  vocab = gguf_vocab.vocabulary(tokenizer, c.vocab_size)  # Read once for the size and the notes.
  nbytes = gguf.size(c, tokenizer, vocab, GGUF_TYPE.value)
  _, arch = gguf_lib.architecture(c)
  print(f'writing {path}: a llama.cpp {arch} model in {GGUF_TYPE.value}, about {format_bytes(nbytes)}', flush=True)
  temporary = gguf.size(c, tokenizer, vocab, 'f16') if GGUF_TYPE.value in gguf_lib.K_QUANTS else 0  # made first
  gguf.check_room(path, nbytes + temporary)
  with export.signals_stop(output):
    # An export's params as stored (bfloat16 ones are not doubled in memory), each cast to float32 as it is written.
    is_export = (files.to_path(workdir) / export.PARAMS_DIR).is_dir()
    _, params, tokenizer = pretrained.load(workdir, export.stored_dtype(workdir) if is_export else 'float32')
    written = gguf.write(output, params, c, tokenizer, GGUF_TYPE.value)
  print('\n'.join([f'wrote {path}: {count_params(params):,} parameters, {format_bytes(written)}',
                   *gguf_vocab.notes(vocab)]))


def export_run() -> None:
  """Writes --workdir's model as --format says, at --output."""
  workdir = cli.required(WORKDIR, 'pass the --workdir of a run.')
  output = cli.required(OUTPUT, 'pass --output=PATH, a directory (or with --format=gguf, a .gguf file) to create.')
  other = GGUF_TYPE if FORMAT.value == 'flaxlm' else DTYPE
  if other.present:
    raise UserError(f'--{other.name} is used only with --format={"gguf" if other is GGUF_TYPE else "flaxlm"}: leave '
                    'it out, or pass that --format.')
  (export_gguf if FORMAT.value == 'gguf' else export_flaxlm)(workdir, output)


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-export."""
  cli.run(export_run, argv)
