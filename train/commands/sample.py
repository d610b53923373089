"""`flaxlm-sample --workdir=DIR --prompt=TEXT`: continue a prompt with text from a trained model.

`--params=PATH` instead of `--workdir` samples from an export written by flaxlm-export. One sample is streamed
to the terminal as it is produced; `--show_probs=N` prints, at every step, the N tokens the model found most
likely and their probabilities.
"""

import pathlib
import sys

import numpy as np
from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data.tokenizer import Tokenizer
from flaxlm.model import quantize, sampling
from flaxlm.model.transformer import Transformer
from flaxlm.train import pretrained
from flaxlm.train.commands import cli

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a training run (its latest checkpoint is used).')
PARAMS = flags.DEFINE_string('params', None, 'Directory written by flaxlm-export (instead of --workdir).')
PROMPT = flags.DEFINE_string('prompt', '\n', 'Text the samples continue.')
PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'A UTF-8 file whose text is the prompt (instead of --prompt).')
MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate after the prompt.')
TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Below 1: safer choices; above 1: more varied; 0: greedy.')
TOP_K = flags.DEFINE_integer('top_k', 40, 'Draw only among the k most likely tokens; 0 keeps all.')
TOP_P = flags.DEFINE_float('top_p', 1.0, 'Draw only among the most likely tokens whose probabilities reach p; 1 keeps '
                           'all.')
SEED = flags.DEFINE_integer('seed', 0, 'The same seed gives the same text.')
NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'How many continuations to draw.')
SHOW_PROBS = flags.DEFINE_integer('show_probs', 0, 'Print the N most likely next tokens and their probabilities at '
                                  'each step.')
QUANTIZE = flags.DEFINE_enum('quantize', 'none', quantize.MODES, 'Hold the weights as int8 or int4 (weight-only).')


def check_flags() -> None:
  """Raises UserError for sampling settings that cannot work."""
  for flag in (MAX_NEW_TOKENS, NUM_SAMPLES):
    if flag.value <= 0:
      raise UserError(f'--{flag.name}={flag.value} must be positive.')
  if TEMPERATURE.value < 0 or TOP_K.value < 0 or SHOW_PROBS.value < 0:
    raise UserError('--temperature, --top_k and --show_probs must not be negative.')
  if not 0 < TOP_P.value <= 1:
    raise UserError(f'--top_p={TOP_P.value} must be in (0, 1]: 1 keeps every token, 0.9 the most likely 90%.')


def prompt_text() -> str:
  """Returns the prompt from --prompt_file or --prompt; raises UserError if it is empty or unreadable."""
  text = PROMPT.value
  if PROMPT_FILE.value:
    try:
      text = pathlib.Path(PROMPT_FILE.value).read_text(encoding='utf-8')
    except (OSError, UnicodeDecodeError) as e:
      raise UserError(f'--prompt_file={PROMPT_FILE.value} does not read as UTF-8 text ({e}).') from None
  if not text:
    raise UserError('the prompt is empty: give at least one character to continue.')
  return text


def encode_prompt(text: str, tokenizer: Tokenizer, model: Transformer) -> np.ndarray:
  """Returns the prompt's ids; raises UserError if it is longer than the model's context."""
  tokens = tokenizer.encode(text)
  if len(tokens) > model.config.max_length:
    raise UserError(f'the prompt is {len(tokens)} tokens, longer than the model\'s context of '
                    f'{model.config.max_length}: shorten it.')
  return tokens


def streamer(tokenizer: Tokenizer):
  """Returns a stream callback that prints the text of each new token as it is produced."""
  tokens, printed = [], ['']

  def stream(tokens_B: np.ndarray, emitted_B: np.ndarray) -> None:
    if emitted_B[0]:
      tokens.append(int(tokens_B[0]))
      text = tokenizer.decode(tokens)
      sys.stdout.write(text[len(printed[0]):])
      sys.stdout.flush()
      printed[0] = text
  return stream


def show_candidates(sample: sampling.Sample, tokenizer: Tokenizer) -> None:
  """Prints, for each step of `sample`, the token drawn and the model's most likely tokens with probabilities."""
  for step, (token, ids, probs) in enumerate(zip(sample.tokens, sample.top_ids, sample.top_probs), 1):
    candidates = '  '.join(f'{tokenizer.piece(i)!r} {p:.1%}' for i, p in zip(ids, probs))
    print(f'{step:>4}  drew {tokenizer.piece(token)!r:<8}  {candidates}')


def sample() -> None:
  """Prints each sample, the prompt followed by its continuation (streamed when there is one)."""
  check_flags()
  text = prompt_text()
  model, params, tokenizer = pretrained.load(cli.model_path(WORKDIR, PARAMS))
  prompt = encode_prompt(text, tokenizer, model)
  if QUANTIZE.value != 'none':
    print('\n'.join(quantize.memory_table(params)), file=sys.stderr)
    params = quantize.quantize(params, QUANTIZE.value)
  settings = sampling.Settings(TEMPERATURE.value, TOP_K.value, TOP_P.value, tokenizer.eos_id, SHOW_PROBS.value)
  one = NUM_SAMPLES.value == 1 and not SHOW_PROBS.value
  if one:
    print(text, end='', flush=True)
  samples = sampling.generate(model, params, [prompt] * NUM_SAMPLES.value, MAX_NEW_TOKENS.value, SEED.value,
                              settings, streamer(tokenizer) if one else None)
  if one:
    print()
  elif SHOW_PROBS.value:
    for s in samples:
      show_candidates(s, tokenizer)
      print(text + tokenizer.decode(s.tokens))
  else:
    print('\n---\n'.join(text + tokenizer.decode(s.tokens) for s in samples))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-sample."""
  cli.run(sample, argv)
