"""Scoring a text: the log-probability the model gives each token after the first, and the text's perplexity.

The model sees at most T = max_length tokens, so a longer text is scored by a sliding window: windows of T
tokens starting every S = T // 2 tokens (S at least 1). The first window scores tokens 1..T from their whole
prefix; each later window scores only the S tokens after the previous window's last, each then seen with
T - S + 1..T tokens of context (more than T/2). Every token after the first is scored exactly once; the tokens
are the text as the model reads it (data/tokenizer.py's model_ids), so where BOS comes first every token of the
text itself is scored.

Each window is padded to T tokens, so the forward pass compiles once per model, whatever the text's length.

Shape key: N text length, M = N - 1 scored tokens, T context length (model max_length), V vocabulary.
"""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from flaxlm.configs.errors import UserError


def stride(length: int) -> int:
  """Returns S, how far each window starts after the previous one: T // 2, at least 1."""
  return max(length // 2, 1)


def windows(num_tokens: int, length: int) -> list[tuple[int, int]]:
  """Returns (start, first) per window: it reads tokens start..start+T-1 and scores tokens first..start+T (< N)."""
  step = stride(length)
  count = 1 + max(0, math.ceil((num_tokens - 1 - length) / step))
  return [(k * step, 1 if k == 0 else k * step + length - step + 1) for k in range(count)]


@functools.partial(jax.jit, static_argnames='model')
def window_scores(model: nn.Module, params, windows_BxT: jax.Array,
                  targets_BxT: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Returns B x T (log p of targets[b, t], the top id, its log p), position t of row b seeing windows[b, :t + 1];
  int8/int4 params (model/quantize.py) are read as stored, a layer's matrices expanded inside the layer scan."""
  logits_BxTxV = model.apply({'params': params}, windows_BxT)
  log_probs_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  target_BxT = jnp.take_along_axis(log_probs_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  return target_BxT, jnp.argmax(log_probs_BxTxV, axis=-1), jnp.max(log_probs_BxTxV, axis=-1)


def token_log_probs(model: nn.Module, params, tokens_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns M-long (log p of each token after the first, the model's top id there, its log p)."""
  num_tokens, length = len(tokens_N), model.config.max_length
  if num_tokens < 2:
    raise UserError(f'the text is {num_tokens} token(s) long: give at least 2, as the first is only context.')
  padded = np.zeros(num_tokens + length + 1, np.int32)
  padded[:num_tokens] = tokens_N
  plan = windows(num_tokens, length)
  scores = [window_scores(model, params, padded[None, start:start + length], padded[None, start + 1:start + length + 1])
            for start, _ in plan]
  scores = jax.device_get(scores)  # Every window is dispatched before the first result is pulled to the host.
  keeps = [slice(first - start - 1, min(start + length, num_tokens - 1) - start) for start, first in plan]
  return tuple(np.concatenate([window[i][0, keep] for window, keep in zip(scores, keeps)]) for i in range(3))


def mean_loss(log_probs_M: np.ndarray) -> float:
  """Returns the mean loss in nats: -mean(log p)."""
  return -float(np.mean(log_probs_M, dtype=np.float64))


def perplexity(log_probs_M: np.ndarray) -> float:
  """Returns exp(mean loss): the number of equally likely tokens the model is, on average, choosing among."""
  return math.exp(mean_loss(log_probs_M))
