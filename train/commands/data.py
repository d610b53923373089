"""`flaxlm-data prepare`: a corpus into a token store, once; `flaxlm-data verify`: a store proven whole;
`flaxlm-data check`: a fine-tuning file's examples.

  flaxlm-data prepare 'web/*.jsonl.zst,books/*.txt' --output=/data/store --tokenizer=tok.model
  flaxlm-data prepare fineweb/*.parquet --output=gs://bucket/store --tokenizer=tok.model --workers=32
  flaxlm-data prepare tfds:lm1b --output=/data/lm1b --tokenizer=byte

tokenizes text, JSONL (.gz, .zst), Parquet files or a TFDS dataset in worker processes and writes a token store
(data/store.py) that `--config.data.path=STORE` trains on. Ctrl-C or SIGTERM stops it within seconds, keeping the
groups of input it finished (it says how many); run the same command again to finish it.

  flaxlm-data verify /data/store

checks what a run checks when it opens the store (the manifest's fields and counts, each shard's size), then reads
every shard: its SHA-256 against the manifest's, every record's counts and token ids. It prints the store's splits
and 'verified', or one line naming the damaged shard and the damage, and exits non-zero.

  flaxlm-data check examples.jsonl                  # the defaults of a training run: char tokens, T = 64
  flaxlm-data check examples.jsonl --tokenizer=tok.model --max_length=1024

prints the example count, the distribution of tokens per example (template and EOS included), how many
examples max_length would truncate, the examples with an empty prompt or response, the duplicates, and
every malformed line; it exits non-zero if any line is malformed or there is no example. --tokenizer takes what
--config.data.tokenizer does: 'byte', 'char' (built from the file's text), a SentencePiece .model file, a
tokenizer.json or a Hugging Face model folder (its tokenizer, chat template and BOS included); it and
--max_length default to a training run's defaults (configs/base.py): set them as your training config does.

Shape key: E examples.
"""

import pathlib
import time

import numpy as np
from absl import flags

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import examples as examples_lib, files, prepare, store, tokenizer as tokenizer_lib
from flaxlm.train.commands import cli

DEFAULTS = base.get_config()
TOKENIZER = flags.DEFINE_string('tokenizer', DEFAULTS.data.tokenizer, "'byte', 'char' (from the file's text), a "
                                '.model file, a tokenizer.json or a Hugging Face model folder, as the training '
                                'config\'s data.tokenizer.')
MAX_LENGTH = flags.DEFINE_integer('max_length', DEFAULTS.model.max_length, 'Sequence length T, as the training '
                                  'config\'s model.max_length: examples over T + 1 tokens are truncated.')
OUTPUT = flags.DEFINE_string('output', None, 'prepare: the token store\'s directory (local or gs://), new or stopped.')
TEXT_FIELD = flags.DEFINE_string('text_field', DEFAULTS.data.text_field, 'prepare: the text field of JSONL records, '
                                 'Parquet rows and TFDS examples.')
VAL_FRACTION = flags.DEFINE_float('val_fraction', DEFAULTS.data.val_fraction, 'prepare: the share of documents held '
                                  'out for validation (TFDS datasets bring their own).')
WORKERS = flags.DEFINE_integer('workers', None, 'prepare: tokenizing processes; default one per core (none for an '
                               'input under 16 MB).')
GROUP_MB = flags.DEFINE_integer('group_mb', prepare.GROUP_BYTES >> 20, 'prepare: megabytes of input per group (a '
                                'shard of each split, a worker\'s unit of work).')
TFDS_DIR = flags.DEFINE_string('tfds_dir', DEFAULTS.data.tfds_dir, 'prepare: where TFDS datasets are prepared.')
TAKE_OVER = flags.DEFINE_bool('take_over', False, 'prepare: take the store\'s lock from the preparation that holds '
                              'it, when that one is known to be gone (a crashed host whose lease has not yet expired).')
MAX_DOCUMENTS = flags.DEFINE_integer('max_documents', 0, 'prepare: at most this many documents per TFDS split; 0: all.')
SHOWN = 10  # Places listed per finding; the rest are counted.


def finding(name: str, places: list) -> str:
  """Returns a report line: how many examples have a finding, and the first SHOWN places it is found."""
  shown = ', '.join(map(str, places[:SHOWN])) + (', ...' if len(places) > SHOWN else '')
  return f'{name}: {len(places)}' + (f' ({shown})' if places else '')


def duplicates(examples: list[examples_lib.Example]) -> list[str]:
  """Returns 'line L repeats line F' for each example that repeats an earlier one, F being the earliest."""
  first = {}
  repeats = []
  for example in examples:
    original = first.setdefault(example.pieces, example.line)
    if original != example.line:
      repeats.append(f'line {example.line} repeats line {original}')
  return repeats


def length_report(lengths_E: np.ndarray, max_length: int) -> list[str]:
  """Returns the report lines on the examples' token lengths: their distribution, and how many are truncated."""
  low, median, p90, high = np.percentile(lengths_E, [0, 50, 90, 100], method='nearest')
  truncated = int((lengths_E > max_length + 1).sum())
  return [f'tokens per example: min {low}, median {median}, p90 {p90}, max {high}',
          f'truncated at max_length={max_length} (over {max_length + 1} tokens): {truncated}']


def report(examples: list[examples_lib.Example], errors: list[UserError], tokenizer: tokenizer_lib.Tokenizer,
           max_length: int) -> list[str]:
  """Returns the lines of the check's report on a file's examples and malformed lines."""
  lines = [f'examples: {len(examples)}']
  if examples:
    lengths_E = np.asarray([len(examples_lib.tokenize(example, tokenizer)[0]) for example in examples])
    lines += length_report(lengths_E, max_length)
  lines.append(finding('empty prompts', [f'line {e.line}' for e in examples if not e.text('prompt').strip()]))
  lines.append(finding('empty responses', [f'line {e.line}' for e in examples if not e.text('response').strip()]))
  lines.append(finding('duplicates', duplicates(examples)))
  lines.append(f'malformed lines: {len(errors)}')
  return lines + [f'  {error}' for error in errors]


def check_tokenizer() -> None:
  """Raises UserError unless --tokenizer names what a training config's data.tokenizer may: char, byte, a tokenizer
  file or a Hugging Face model folder."""
  if TOKENIZER.value not in ('char', 'byte') and not pathlib.Path(TOKENIZER.value).exists():
    raise UserError(f'--tokenizer={TOKENIZER.value} is neither char, byte nor a tokenizer file or model folder that '
                    'exists: pass one of them, as the training config\'s data.tokenizer (a .model file comes from '
                    '`flaxlm-tokenizer train`; a tokenizer.json or a model folder from Hugging Face).')


def check_arguments(files: list[str]) -> None:
  """Raises UserError unless one file is named and --max_length and --tokenizer are settings a training run takes."""
  if len(files) != 1:
    raise UserError('name one file: flaxlm-data check FILE.jsonl [--tokenizer=SPEC] [--max_length=T].')
  if MAX_LENGTH.value <= 0:
    raise UserError(f'--max_length={MAX_LENGTH.value} must be positive: pass the training config\'s '
                    'model.max_length.')
  check_tokenizer()


def check_command(files: list[str]) -> None:
  """Prints the report on one JSONL file; raises UserError after it if any line is malformed."""
  check_arguments(files)
  path = pathlib.Path(files[0])
  examples, errors = examples_lib.scan(path)
  text = ''.join(text for example in examples for _, text in example.pieces)
  print('\n'.join(report(examples, errors, tokenizer_lib.for_corpus(TOKENIZER.value, text), MAX_LENGTH.value)))
  if errors:
    raise UserError(f'{len(errors)} malformed line(s) in {path}: fix or remove them (listed above).')
  if not examples:
    raise UserError(f'{path} holds no example: give it one JSON object per line (prompt/response or messages).')


def check_prepare_arguments(inputs: list[str]) -> None:
  """Raises UserError unless inputs are named and the numeric flags are in range."""
  if not inputs:
    raise UserError('name the input: flaxlm-data prepare FILES_OR_GLOBS|tfds:NAME --output=STORE --tokenizer=SPEC.')
  if not 0 < VAL_FRACTION.value < 1:
    raise UserError(f'--val_fraction={VAL_FRACTION.value} must lie strictly between 0 and 1, 0.1 say.')
  for flag in (WORKERS, MAX_DOCUMENTS):
    if (flag.value or 0) < 0:
      raise UserError(f'--{flag.name}={flag.value} must not be negative.')
  if GROUP_MB.value <= 0:
    raise UserError(f'--group_mb={GROUP_MB.value} must be positive: 256 say.')
  check_tokenizer()


def prepare_command(inputs: list[str]) -> None:
  """Prepares the token store of the inputs at --output, and prints what it holds."""
  check_prepare_arguments(inputs)
  output = cli.required(OUTPUT, 'pass the new token store\'s directory, e.g. --output=/data/store.')
  settings = prepare.Settings(TEXT_FIELD.value, VAL_FRACTION.value, TFDS_DIR.value, MAX_DOCUMENTS.value)
  start = time.perf_counter()
  prepared = prepare.prepare(','.join(inputs), output, TOKENIZER.value, settings, WORKERS.value, GROUP_MB.value << 20,
                             report=print, take_over=TAKE_OVER.value)
  seconds = time.perf_counter() - start
  print('\n'.join(split_lines(prepared.manifest)))
  total = sum(split['tokens'] for split in prepared.manifest['splits'].values())
  print(f'token store {output} is complete ({prepared.manifest["dtype"]} ids of a {prepared.tokenizer.vocab_size:,}-'
        f'token vocabulary; {total / max(seconds, 1e-9):,.0f} tokens/s this run); manifest digest {prepared.digest}')


def split_lines(manifest: dict) -> list[str]:
  """Returns a line per split of a store's manifest: its tokens, documents and shards."""
  return [f'{name}: {split["tokens"]:,} tokens, {split["documents"]:,} documents, {len(split["shards"])} shards'
          for name, split in manifest['splits'].items()]


def verify_command(stores: list[str]) -> None:
  """Verifies one token store and prints what it holds."""
  if len(stores) != 1:
    raise UserError('name one token store: flaxlm-data verify STORE.')
  if not files.exists(stores[0]):
    raise UserError(f'{stores[0]} does not exist: pass the --output of a `flaxlm-data prepare`.')
  if not store.is_store(stores[0]):
    raise UserError(f'{stores[0]} is not a token store (no manifest.json, no plan.json): pass the --output of a '
                    '`flaxlm-data prepare`.')
  verified = store.verify(stores[0])
  print('\n'.join(split_lines(verified.manifest)))
  print(f'token store {stores[0]} is verified: every shard\'s SHA-256, records, counts and token ids (below '
        f'{verified.tokenizer.vocab_size:,}) are as its manifest records.')


COMMANDS = {'prepare': prepare_command, 'check': check_command, 'verify': verify_command}


def dispatch(args: list[str]) -> None:
  """Runs the subcommand named by the first positional argument on the rest."""
  if not args or args[0] not in COMMANDS:
    raise UserError(f'name one command of {", ".join(COMMANDS)}: flaxlm-data COMMAND FILE --flags.')
  COMMANDS[args[0]](args[1:])


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-data."""
  cli.run(dispatch, argv, takes_args=True)
