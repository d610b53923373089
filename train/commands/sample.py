"""`flaxlm-sample --workdir=DIR --prompt=TEXT`: continue a prompt with text from a trained model.

`--params=PATH` instead of `--workdir` samples from an export written by flaxlm-export. One sample is streamed
to the terminal as it is produced; `--show_probs=N` prints, at every step, the N tokens the model found most
likely and their probabilities. The model computes in its own dtype (`--dtype` overrides it) and is split over
every device present (tensor-parallel), so a model larger than one device's memory can be sampled. BOS goes
before the prompt where the tokenizer adds it; a sample ends at any of the tokenizer's EOS ids.

`--chat` makes the prompt the user's turn of a conversation, or, if the prompt is a JSON object
{"messages": [{"role": ..., "content": ...}, ...]} (as a fine-tuning example's line), that conversation; it is
rendered in the tokenizer's chat template (flaxlm's `<|role|>` template for its own tokenizers) followed by the
assistant's header, and the assistant's reply alone is printed.
"""

import math
import sys

import numpy as np
from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data import chat, tokenizer as tokenizer_lib
from flaxlm.data.tokenizer import Tokenizer
from flaxlm.model import quantize, sampling
from flaxlm.model.transformer import Transformer
from flaxlm.train import memory, sharding, step as step_lib
from flaxlm.train.commands import cli
from flaxlm.train.use import pretrained

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a training run (its latest checkpoint is used).')
PARAMS = flags.DEFINE_string('params', None, 'Directory written by flaxlm-export (instead of --workdir).')
PROMPT = flags.DEFINE_string('prompt', '\n', 'Text the samples continue.')
PROMPT_FILE = flags.DEFINE_string('prompt_file', None, 'A UTF-8 file whose text is the prompt (instead of --prompt).')
MAX_NEW_TOKENS_LIMIT = 1_000_000  # Each token is one decode step: a million is hours of streaming, not a typo's 10^9.
NUM_SAMPLES_LIMIT = 1_000  # The samples decode as one batch, whose cache grows with their number.
MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate after the prompt, at most '
                                      f'{MAX_NEW_TOKENS_LIMIT:,}.')
TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Below 1: safer choices; above 1: more varied; 0: greedy.')
TOP_K = flags.DEFINE_integer('top_k', 40, 'Draw only among the k most likely tokens; 0 keeps all (so does the default '
                             'on a smaller vocabulary); given, at most the vocabulary size.')
TOP_P = flags.DEFINE_float('top_p', 1.0, 'Draw only among the most likely tokens whose probabilities reach p; 1 keeps '
                           'all.')
SEED = flags.DEFINE_integer('seed', 0, 'The same seed gives the same text (any 64-bit signed integer).')
NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, f'How many continuations to draw, at most {NUM_SAMPLES_LIMIT:,}.')
SHOW_PROBS = flags.DEFINE_integer('show_probs', 0, 'Print the N most likely next tokens and their probabilities at '
                                  'each step (N at most the vocabulary size).')
QUANTIZE = flags.DEFINE_enum('quantize', 'none', quantize.MODES, 'Hold the weights as int8 or int4 (weight-only).')
CHAT = flags.DEFINE_bool('chat', False, 'The prompt is the user\'s turn (or a JSON {"messages": [...]} conversation) '
                         'in the tokenizer\'s chat template; print the assistant\'s reply.')
DTYPE = flags.DEFINE_string('dtype', None, 'What the model computes in and holds its params in: float32 or '
                            'bfloat16; default: the model\'s own (its config\'s model.dtype).')


def check_flags() -> None:
  """Raises UserError for sampling settings that cannot work, before the model is loaded."""
  for flag, limit in ((MAX_NEW_TOKENS, MAX_NEW_TOKENS_LIMIT), (NUM_SAMPLES, NUM_SAMPLES_LIMIT)):
    if not 0 < flag.value <= limit:
      raise UserError(f'--{flag.name}={flag.value} must be between 1 and {limit:,}: pass a number in that range.')
  if not 0 <= TEMPERATURE.value < math.inf:  # Also refuses nan, which fails every comparison.
    raise UserError(f'--temperature={TEMPERATURE.value} must be finite and must not be negative: 0 takes the most '
                    'likely token, 1 draws from the model\'s distribution.')
  for flag in (TOP_K, SHOW_PROBS):
    if flag.value < 0:
      raise UserError(f'--{flag.name}={flag.value} must not be negative: 0 turns it off.')
  if not 0 < TOP_P.value <= 1:
    raise UserError(f'--top_p={TOP_P.value} must be in (0, 1]: 1 keeps every token, 0.9 the most likely 90%.')
  if not -2**63 <= SEED.value < 2**63:
    raise UserError(f'--seed={SEED.value} does not fit in 64 bits: pass a seed between -2**63 and 2**63 - 1.')


def check_vocabulary(vocab_size: int) -> None:
  """Raises UserError if --top_k (when given) or --show_probs asks for more tokens than the model has."""
  for flag in (TOP_K, SHOW_PROBS):
    if flag.present and flag.value > vocab_size:  # The default top_k keeps all of a smaller vocabulary.
      raise UserError(f'--{flag.name}={flag.value} is more than the model\'s vocabulary of {vocab_size:,} tokens: '
                      f'pass at most {vocab_size:,}.')


def prompt_text() -> str:
  """Returns the prompt from --prompt_file or --prompt; raises UserError if both are given, or it is empty or
  unreadable."""
  if PROMPT_FILE.value is not None and PROMPT.present:
    raise UserError('pass one of --prompt=TEXT and --prompt_file=PATH, not both.')
  text = PROMPT.value if PROMPT_FILE.value is None else pretrained.read_text(PROMPT_FILE.value, PROMPT_FILE.name)
  if not text:
    raise UserError('the prompt is empty: give at least one character to continue.')
  return text


def encode_prompt(text: str, tokenizer: Tokenizer, model: Transformer) -> np.ndarray:
  """Returns the ids the model reads for the prompt (with --chat, its conversation's); raises UserError if they are
  more than the model's context."""
  if CHAT.value:
    tokens = chat.prompt_ids(tokenizer, chat.conversation(text))
  else:
    tokens = tokenizer_lib.model_ids(tokenizer, text)
  if len(tokens) > model.config.max_length:
    raise UserError(f'the prompt is {len(tokens)} tokens, longer than the model\'s context of '
                    f'{model.config.max_length}: shorten it.')
  return tokens


def reply(tokens: list[int], tokenizer: Tokenizer) -> str:
  """Returns the text of a sample's tokens, the EOS that ended it left out."""
  return tokenizer.decode(sampling.without_eos(tokens, tokenizer.eos_ids))


def streamer(tokenizer: Tokenizer):
  """Returns a stream callback that prints the text of each new token as it is produced (an EOS as nothing; a
  character whose UTF-8 bytes are split over tokens once it is whole)."""
  tokens, printed = [], ['']

  def stream(tokens_B: np.ndarray, emitted_B: np.ndarray) -> None:
    if emitted_B[0] and int(tokens_B[0]) not in tokenizer.eos_ids:
      tokens.append(int(tokens_B[0]))
      text = tokenizer.decode(tokens)
      if text.endswith('\ufffd'):  # Bytes of a character still to come.
        return
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
  """Prints each sample, the prompt followed by its continuation (streamed when there is one); with --chat, the
  reply alone."""
  check_flags()
  text = prompt_text()
  model, params, tokenizer = pretrained.load(cli.model_path(WORKDIR, PARAMS), DTYPE.value)
  mesh = sharding.mesh_of(params)
  check_vocabulary(model.config.vocab_size)
  prompt = encode_prompt(text, tokenizer, model)
  if QUANTIZE.value != 'none':
    print('\n'.join(memory.memory_table(params)), file=sys.stderr)
    params = quantize.quantize(params, QUANTIZE.value)
  settings = sampling.Settings(TEMPERATURE.value, TOP_K.value, TOP_P.value, tokenizer.eos_ids, SHOW_PROBS.value)
  one = NUM_SAMPLES.value == 1 and not SHOW_PROBS.value
  shown = '' if CHAT.value else text
  if one:
    print(shown, end='', flush=True)
  generate = step_lib.with_mesh(sampling.generate, mesh)  # Under the mesh and the logical-axis rules.
  samples = generate(model, params, [prompt] * NUM_SAMPLES.value, MAX_NEW_TOKENS.value, SEED.value, settings,
                     streamer(tokenizer) if one else None)
  if one:
    print()
  elif SHOW_PROBS.value:
    for s in samples:
      show_candidates(s, tokenizer)
      print(shown + reply(s.tokens, tokenizer))
  else:
    print('\n---\n'.join(shown + reply(s.tokens, tokenizer) for s in samples))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-sample."""
  cli.run(sample, argv)
