"""`flaxlm-score --workdir=DIR --text=TEXT`: how surprised a trained model is by each token of a text.

  flaxlm-score --workdir=/tmp/run --text="ROMEO: what light"
  flaxlm-score --params=/tmp/run_export --text_file=speech.txt

Prints a row per token after the first: the token, the probability the model gave it, its loss (-ln p) and, where
the model expected another token, that one and its probability; then the text's mean loss and perplexity. Where
the tokenizer adds BOS (a checkpoint's that asks for it), the text follows BOS, so its first token is scored too.
A text longer than the model's context is scored by a sliding window, as model/scoring.py describes. The model
computes in its own dtype (`--dtype` overrides it), split over every device present (tensor-parallel).
"""

import math

import numpy as np
from absl import flags

from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.data.tokenizer import Tokenizer
from flaxlm.model import scoring
from flaxlm.train import sharding, step as step_lib
from flaxlm.train.commands import cli
from flaxlm.train.use import pretrained

WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of a training run (its latest checkpoint is used).')
PARAMS = flags.DEFINE_string('params', None, 'Directory written by flaxlm-export (instead of --workdir).')
TEXT = flags.DEFINE_string('text', None, 'The text to score.')
TEXT_FILE = flags.DEFINE_string('text_file', None, 'A UTF-8 file holding the text to score (instead of --text).')
DTYPE = flags.DEFINE_string('dtype', None, 'What the model computes in and holds its params in: float32 or '
                            'bfloat16; default: the model\'s own (its config\'s model.dtype).')


def read_text() -> str:
  """Returns --text, or the contents of --text_file; raises UserError unless exactly one is given, readable and
  not empty."""
  if (TEXT.value is None) == (TEXT_FILE.value is None):
    raise UserError('pass exactly one of --text=TEXT and --text_file=PATH.')
  text = TEXT.value if TEXT.value is not None else pretrained.read_text(TEXT_FILE.value, TEXT_FILE.name)
  if not text:
    raise UserError('the text is empty: give at least 2 tokens, as the first is only context.')
  return text


def shown(tokenizer: Tokenizer, token: int) -> str:
  """Returns the token's piece quoted as a Python literal, so spaces and newlines are visible."""
  return repr(tokenizer.piece(token))


def table(tokenizer: Tokenizer, tokens_N: np.ndarray, log_probs_M: np.ndarray, top_ids_M: np.ndarray,
          top_log_probs_M: np.ndarray) -> list[str]:
  """Returns the header and one aligned row per scored token: position, token, p, loss, the expected token."""
  pieces = [shown(tokenizer, token) for token in tokens_N[1:]]
  index_width, piece_width = len(str(len(pieces))), max(map(len, ['token', *pieces]))
  lines = [f'{"#":>{index_width}}  {"token":<{piece_width}}  {"p":>6}  {"loss":>7}  expected (p)']
  for i, (piece, log_p, top_id, top_log_p) in enumerate(zip(pieces, log_probs_M, top_ids_M, top_log_probs_M), 1):
    expected = '' if top_id == tokens_N[i] else f'{shown(tokenizer, top_id)} ({math.exp(top_log_p):.4f})'
    # The loss -log p is printed as abs(log p), which is never -0.0000.
    row = f'{i:>{index_width}}  {piece:<{piece_width}}  {math.exp(log_p):6.4f}  {abs(log_p):7.4f}  {expected}'
    lines.append(row.rstrip())
  return lines


def windows_note(num_tokens: int, length: int) -> str:
  """Returns the line saying how a text longer than the context was split into windows."""
  step = scoring.stride(length)
  return (f'{num_tokens} tokens exceed the context of {length}: scored in {len(scoring.windows(num_tokens, length))} '
          f'windows of {length} tokens starting {step} apart; after the first window each token sees at least '
          f'{length - step + 1} tokens.')


def score() -> None:
  """Prints the text's per-token table, then its mean loss and perplexity."""
  text = read_text()
  model, params, tokenizer = pretrained.load(cli.model_path(WORKDIR, PARAMS), DTYPE.value)
  tokens_N = tokenizer_lib.model_ids(tokenizer, text)
  score_on_mesh = step_lib.with_mesh(scoring.token_log_probs, sharding.mesh_of(params))
  log_probs_M, top_ids_M, top_log_probs_M = score_on_mesh(model, params, tokens_N)
  if len(tokens_N) - 1 > model.config.max_length:
    print(windows_note(len(tokens_N), model.config.max_length))
  print('\n'.join(table(tokenizer, tokens_N, log_probs_M, top_ids_M, top_log_probs_M)))
  print(f'mean loss {scoring.mean_loss(log_probs_M):.4f} | perplexity {scoring.perplexity(log_probs_M):.3f} | '
        f'{len(log_probs_M)} tokens scored')


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-score."""
  cli.run(score, argv)
