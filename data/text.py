"""A local text file, read and split into a training part and a held-out validation part."""

import pathlib

import numpy as np

from configs.errors import UserError


def read_text(path: str) -> str:
  """Returns the UTF-8 contents of `path`; raises UserError if it is missing, unreadable or empty."""
  if not path:
    raise UserError('no training text given: set --config.data.path=FILE.txt.')
  file = pathlib.Path(path)
  if not file.is_file():
    raise UserError(f'data file {path} does not exist: set --config.data.path to a UTF-8 text file.')
  try:
    text = file.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'data file {path} is not UTF-8 text ({e.reason} at byte {e.start}).') from None
  if not text.strip():
    raise UserError(f'data file {path} is empty: give it some text to train on.')
  return text


def split_tokens(tokens: np.ndarray, val_fraction: float, min_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (train, validation): the last `val_fraction` of the tokens is held out.

  Raises UserError unless each part holds at least `min_length` tokens (one training window).
  """
  if not 0 < val_fraction < 1:
    raise UserError(f'data.val_fraction={val_fraction} must lie strictly between 0 and 1.')
  cut = int(len(tokens) * (1 - val_fraction))
  train, val = tokens[:cut], tokens[cut:]
  if min(len(train), len(val)) < min_length:
    raise UserError(f'the text has {len(tokens)} tokens, too few for training and validation windows of '
                    f'{min_length}: use a longer file or a shorter --config.model.max_length.')
  return train, val
