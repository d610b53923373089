"""Autoregressive sampling: predict a distribution over the next token, draw one, append it, repeat.

This first version recomputes the last `max_length` tokens at every step (no KV cache), inside one compiled
loop. Shape key: B samples, P prompt length, N new tokens, T context length, V vocabulary.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def filter_logits(logits_BxV: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Returns logits divided by `temperature`, with all but the `top_k` largest set to -inf (0 or >= V: keep all)."""
  logits_BxV = logits_BxV / temperature
  if 0 < top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def next_token(logits_BxV: jax.Array, rng: jax.Array, temperature: float, top_k: int) -> jax.Array:
  """Returns B token ids: the most likely when temperature is 0, else drawn from the filtered distribution."""
  if temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1)
  return jax.random.categorical(rng, filter_logits(logits_BxV, temperature, top_k), axis=-1)


@functools.partial(jax.jit, static_argnames=('model', 'prompt_length', 'end', 'temperature', 'top_k'))
def generate_tokens(model: nn.Module, params, buffer_BxS: jax.Array, rng: jax.Array, prompt_length: int,
                    end: int, temperature: float, top_k: int) -> jax.Array:
  """Returns the buffer with positions prompt_length..end-1 filled, each predicted from the T tokens before it."""
  length = model.config.max_length
  def step(position, state):
    buffer_BxS, rng = state
    start = jnp.maximum(position - length, 0)
    window_BxT = jax.lax.dynamic_slice_in_dim(buffer_BxS, start, length, axis=1)
    logits_BxTxV = model.apply({'params': params}, window_BxT)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, position - 1 - start, axis=1, keepdims=False)
    rng, draw = jax.random.split(rng)
    token_B = next_token(logits_BxV, draw, temperature, top_k).astype(buffer_BxS.dtype)
    return jax.lax.dynamic_update_index_in_dim(buffer_BxS, token_B, position, axis=1), rng
  buffer_BxS, _ = jax.lax.fori_loop(prompt_length, end, step, (buffer_BxS, rng))
  return buffer_BxS


def generate(model: nn.Module, params, prompt_P: np.ndarray, max_new_tokens: int, seed: int = 0,
             num_samples: int = 1, temperature: float = 1.0, top_k: int = 0) -> np.ndarray:
  """Returns B x N new token ids continuing the prompt; the same seed gives the same tokens."""
  prompt_length = len(prompt_P)
  size = max(prompt_length + max_new_tokens, model.config.max_length)
  buffer_BxS = np.zeros((num_samples, size), np.int32)
  buffer_BxS[:, :prompt_length] = prompt_P
  end = prompt_length + max_new_tokens
  filled_BxS = generate_tokens(model, params, jnp.asarray(buffer_BxS), jax.random.key(seed), prompt_length,
                               end, float(temperature), int(top_k))
  return np.asarray(filled_BxS[:, prompt_length:end])
