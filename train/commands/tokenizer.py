"""`flaxlm-tokenizer train|encode|count`: train a SentencePiece tokenizer, and see what text costs in tokens.

  flaxlm-tokenizer train --input=corpus.txt --vocab_size=8000 --model_type=bpe --output=tok.model
  flaxlm-tokenizer encode --tokenizer=tok.model --text="The capital of France is"
  flaxlm-tokenizer count --tokenizer=tok.model --input=corpus.txt
  flaxlm-tokenizer encode --tokenizer=/models/Llama-3.2-1B --text="Hello"   (a Hugging Face model folder)

--tokenizer takes a SentencePiece .model, a Hugging Face tokenizer.json (with the tokenizer_config.json beside it),
a flaxlm JSON, or a Hugging Face model folder. `encode` prints the ids the model reads, BOS first where the
tokenizer adds it; `count` counts the text's own tokens.
"""

from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data import files, sources, tokenizer as tokenizer_lib
from flaxlm.train.commands import cli

INPUT = flags.DEFINE_string('input', None, 'Text or JSONL files, comma-separated, globs allowed; or tfds:NAME.')
TFDS_DIR = flags.DEFINE_string('tfds_dir', None, 'Where TFDS datasets are prepared (default: TFDS\'s own).')
JSONL_FIELD = flags.DEFINE_string('jsonl_field', 'text', 'The field holding the text in .jsonl files and TFDS.')
VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 8000, 'Number of tokens, special and byte tokens included.')
MODEL_TYPE = flags.DEFINE_string('model_type', 'bpe', 'bpe or unigram.')
MAX_SENTENCES = flags.DEFINE_integer('max_sentences', 1_000_000, 'Lines sampled from a larger corpus for training.')
OUTPUT = flags.DEFINE_string('output', None, 'Where to write the trained model, e.g. tok.model (a new file).')
OVERWRITE = flags.DEFINE_bool('overwrite', False, 'Replace --output if it exists (never one of the --input files).')
TOKENIZER = flags.DEFINE_string('tokenizer', None, 'A tokenizer file (a SentencePiece .model, a tokenizer.json, a '
                                'flaxlm JSON) or a Hugging Face model folder.')
TEXT = flags.DEFINE_string('text', None, 'Text to encode or count.')


def check_output(output: str, inputs: str) -> None:
  """Raises UserError if --output cannot take the model: it exists (without --overwrite), is a directory or one of
  the --input files, or its directory does not exist."""
  if not OVERWRITE.value:
    files.check_new(output, 'output')
    return
  files.check_parent(output, 'output')
  if files.to_path(output).is_dir():
    raise UserError(f'--output={output} is a directory: pass the path of a file to write the model to.')
  if not inputs.startswith(sources.TFDS_PREFIX) and any(
      files.resolve(path) == files.resolve(output) for path in sources.expand(inputs)):
    raise UserError(f'--output={output} is one of the --input files: write the model to a new path.')


def train_command() -> None:
  """Trains SentencePiece on --input and writes --output, never leaving a partial file behind."""
  output, inputs = cli.required(OUTPUT, 'pass --output=FILE.model.'), cli.required(INPUT, 'pass --input=FILES.')
  check_output(output, inputs)  # Before training, which may take minutes.
  lines = sources.lines(inputs, JSONL_FIELD.value, TFDS_DIR.value, MAX_SENTENCES.value)
  tokenizer = tokenizer_lib.train_sentencepiece(lines, VOCAB_SIZE.value, MODEL_TYPE.value, MAX_SENTENCES.value)
  files.write_output(output, tokenizer.serialized(), 'output', OVERWRITE.value)
  print(f'wrote {output}: {tokenizer.vocab_size:,} tokens ({MODEL_TYPE.value})')


def text_to_measure() -> str:
  """Returns --text, or the contents of the --input files."""
  if TEXT.value is not None and INPUT.value is not None:
    raise UserError('--text and --input both give the text to measure: pass one of them.')
  if TEXT.value is not None:
    return TEXT.value
  paths = sources.expand(cli.required(INPUT, 'pass --text=TEXT or --input=FILES.'))
  return ''.join(doc for path in paths for doc in sources.documents_of(path, JSONL_FIELD.value))


def encode_command() -> None:
  """Prints each token the model reads for the text (BOS first where the tokenizer adds it): its id and piece."""
  tokenizer = tokenizer_lib.from_path(cli.required(TOKENIZER, 'pass --tokenizer=FILE.'))
  for token in tokenizer_lib.model_ids(tokenizer, text_to_measure()):
    print(f'{int(token):>7}  {tokenizer.piece(token)}')


def count_command() -> None:
  """Prints how many tokens the text costs, and characters per token."""
  tokenizer = tokenizer_lib.from_path(cli.required(TOKENIZER, 'pass --tokenizer=FILE.'))
  text = text_to_measure()
  count = len(tokenizer.encode(text))
  print(f'{count:,} tokens for {len(text):,} characters ({len(text) / max(count, 1):.2f} characters per token)')


MEASURE_FLAGS = (TOKENIZER, TEXT, INPUT, JSONL_FIELD)
COMMANDS = {  # name: the function, and the flags it takes.
    'train': (train_command, (INPUT, TFDS_DIR, JSONL_FIELD, VOCAB_SIZE, MODEL_TYPE, MAX_SENTENCES, OUTPUT, OVERWRITE)),
    'encode': (encode_command, MEASURE_FLAGS),
    'count': (count_command, MEASURE_FLAGS),
}


def check_flags(command: str) -> None:
  """Raises UserError if a flag of another subcommand was given: `command` would ignore it."""
  taken = {flag.name for flag in COMMANDS[command][1]}
  for other, (_, flags_of_other) in COMMANDS.items():
    for flag in flags_of_other:
      if flag.present and flag.name not in taken:
        raise UserError(f'flaxlm-tokenizer {command} takes no --{flag.name} (a flag of {other}): drop it.')


def dispatch(commands: list[str]) -> None:
  """Runs the subcommand named by the one positional argument."""
  if len(commands) != 1 or commands[0] not in COMMANDS:
    raise UserError(f'name one command of {", ".join(COMMANDS)}: flaxlm-tokenizer COMMAND --flags.')
  check_flags(commands[0])
  COMMANDS[commands[0]][0]()


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-tokenizer."""
  cli.run(dispatch, argv, takes_args=True)
