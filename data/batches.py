"""Batches for next-token prediction: windows of T+1 tokens split into inputs and targets shifted by one."""

import numpy as np


def window_batch(tokens: np.ndarray, starts_B: np.ndarray, length: int) -> dict[str, np.ndarray]:
  """Returns {'inputs', 'targets'} (B x T int32): targets[b, t] is the token after inputs[b, t]."""
  windows_BxT1 = tokens[starts_B[:, None] + np.arange(length + 1)]
  return {'inputs': windows_BxT1[:, :-1], 'targets': windows_BxT1[:, 1:]}


def train_batch(tokens: np.ndarray, step: int, batch_size: int, length: int, seed: int) -> dict[str, np.ndarray]:
  """Returns the training batch of `step`: random windows drawn from a generator seeded by (seed, step).

  The batch depends only on its step, so a resumed run sees exactly the batches it would have seen.
  """
  rng = np.random.default_rng([seed, step])
  starts_B = rng.integers(0, len(tokens) - length, size=batch_size)
  return window_batch(tokens, starts_B, length)


def eval_batches(tokens: np.ndarray, num_batches: int, batch_size: int, length: int) -> list[dict[str, np.ndarray]]:
  """Returns the validation batches: evenly spaced windows, the same at every evaluation."""
  count = num_batches * batch_size
  starts = np.linspace(0, len(tokens) - length - 1, count).astype(np.int64)
  return [window_batch(tokens, starts_B, length) for starts_B in starts.reshape(num_batches, batch_size)]
