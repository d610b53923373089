"""`flaxlm-sample --workdir=DIR --prompt=TEXT`: continue a prompt with text from a trained model.

`--params=PATH` instead of `--workdir` samples from an export written by flaxlm-export.
"""

from typing import Any

from absl import flags

from configs.errors import UserError
from data.tokenizer import Tokenizer
from model import sampling
from model.transformer import Transformer
from train import cli, workdir as workdir_lib

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a training run (its latest checkpoint is used).')
PARAMS = flags.DEFINE_string('params', None, 'Directory written by flaxlm-export (instead of --workdir).')
PROMPT = flags.DEFINE_string('prompt', '\n', 'Text the samples continue.')
MAX_NEW_TOKENS = flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate after the prompt.')
TEMPERATURE = flags.DEFINE_float('temperature', 0.8, 'Below 1: safer choices; above 1: more varied; 0: greedy.')
TOP_K = flags.DEFINE_integer('top_k', 40, 'Draw only among the k most likely tokens; 0 keeps all.')
SEED = flags.DEFINE_integer('seed', 0, 'The same seed gives the same text.')
NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'How many continuations to draw.')


def check_flags() -> None:
  """Raises UserError for sampling settings that cannot work."""
  if not PROMPT.value:
    raise UserError('--prompt is empty: give at least one character to continue.')
  for flag in (MAX_NEW_TOKENS, NUM_SAMPLES):
    if flag.value <= 0:
      raise UserError(f'--{flag.name}={flag.value} must be positive.')
  if TEMPERATURE.value < 0 or TOP_K.value < 0:
    raise UserError('--temperature and --top_k must not be negative.')


def load_model() -> tuple[Transformer, Any, Tokenizer]:
  """Returns (model, params, tokenizer) from --workdir's latest checkpoint or from the --params export."""
  if bool(WORKDIR.value) == bool(PARAMS.value):
    raise UserError('pass exactly one of --workdir=DIR (a training run) and --params=PATH (a flaxlm-export).')
  return workdir_lib.load_trained(WORKDIR.value) if WORKDIR.value else workdir_lib.load_exported(PARAMS.value)


def sample() -> None:
  """Prints each sample: the prompt followed by its continuation."""
  check_flags()
  model, params, tokenizer = load_model()
  tokens_BxN = sampling.generate(model, params, tokenizer.encode(PROMPT.value), MAX_NEW_TOKENS.value,
                                 SEED.value, NUM_SAMPLES.value, TEMPERATURE.value, TOP_K.value)
  print('\n---\n'.join(PROMPT.value + tokenizer.decode(tokens_N) for tokens_N in tokens_BxN))


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-sample."""
  cli.run(sample, argv)
