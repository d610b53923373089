"""`flaxlm-data check`: what a fine-tuning JSONL file holds, and what is wrong with it, before training on it.

  flaxlm-data check examples.jsonl                  # the defaults of a training run: char tokens, T = 64
  flaxlm-data check examples.jsonl --tokenizer=tok.model --max_length=1024

prints the example count, the distribution of tokens per example (template and EOS included), how many
examples max_length would truncate, the examples with an empty prompt or response, the duplicates, and
every malformed line; it exits non-zero if any line is malformed or there is no example. --tokenizer takes what
--config.data.tokenizer does: 'byte', 'char' (built from the file's text) or a SentencePiece .model file; it and
--max_length default to a training run's defaults (configs/base.py): set them as your training config does.

Shape key: E examples.
"""

import pathlib

import numpy as np
from absl import flags

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import examples as examples_lib, tokenizer as tokenizer_lib
from flaxlm.train.commands import cli

DEFAULTS = base.get_config()
TOKENIZER = flags.DEFINE_string('tokenizer', DEFAULTS.data.tokenizer, "'byte', 'char' (from the file's text) or a "
                                '.model file, as the training config\'s data.tokenizer.')
MAX_LENGTH = flags.DEFINE_integer('max_length', DEFAULTS.model.max_length, 'Sequence length T, as the training '
                                  'config\'s model.max_length: examples over T + 1 tokens are truncated.')
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


def check_arguments(files: list[str]) -> None:
  """Raises UserError unless one file is named and --max_length and --tokenizer are settings a training run takes."""
  if len(files) != 1:
    raise UserError('name one file: flaxlm-data check FILE.jsonl [--tokenizer=SPEC] [--max_length=T].')
  if MAX_LENGTH.value <= 0:
    raise UserError(f'--max_length={MAX_LENGTH.value} must be positive: pass the training config\'s '
                    'model.max_length.')
  if TOKENIZER.value not in ('char', 'byte') and not pathlib.Path(TOKENIZER.value).is_file():
    raise UserError(f'--tokenizer={TOKENIZER.value} is neither char, byte nor a tokenizer file that exists: pass '
                    'one of them, as the training config\'s data.tokenizer (a .model file comes from '
                    '`flaxlm-tokenizer train`).')


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


COMMANDS = {'check': check_command}


def dispatch(args: list[str]) -> None:
  """Runs the subcommand named by the first positional argument on the rest."""
  if not args or args[0] not in COMMANDS:
    raise UserError(f'name one command of {", ".join(COMMANDS)}: flaxlm-data COMMAND FILE --flags.')
  COMMANDS[args[0]](args[1:])


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-data."""
  cli.run(dispatch, argv, takes_args=True)
