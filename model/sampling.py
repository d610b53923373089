"""Autoregressive sampling: predict a distribution over the next token, draw one, append it, repeat.

The prompt is run through the model once (prefill), filling a key/value cache of T positions per sequence, and
the output head is applied at each sequence's last prompt position only; each new token then costs one position's
work (decode). Quantized params (model/quantize.py) stay int8 or int4: the decoding model expands each layer's
matrices inside its layer scan, in the model's dtype. The decode loop is one `jax.lax.while_loop`,
compiled once per batch size and prompt-length bucket (a power of two), so new prompts and lengths do not
recompile. Prompts of different lengths share a batch: each is right-padded, and each sequence writes at its
own position and stops at the first EOS id it emits (a model may have several, as Llama 3's end of text and end of
turn). When a sequence fills its T positions, its last T/2 tokens are run again as a new prompt and decoding goes
on (the model never sees more than its context).

Shape key: B sequences, P prompt length (bucketed), T context length (the cache), V vocabulary, C candidates.
"""

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from flaxlm.model.transformer import Transformer


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the next token is chosen: greedy at temperature 0, else drawn after top-k and top-p (nucleus) filtering."""
  temperature: float = 1.0
  top_k: int = 0  # 0 keeps every token.
  top_p: float = 1.0  # 1 keeps every token.
  eos_ids: tuple[int, ...] = ()  # a sequence stops after emitting any of them.
  candidates: int = 0  # also record the C most likely next tokens and their probabilities at each step.


def filter_logits(logits_BxV: jax.Array, settings: Settings) -> jax.Array:
  """Returns (logits - their max) / temperature, tokens outside the top k and the top-p nucleus set to -inf.

  The max is subtracted first (the distribution is unchanged) and the temperature is at least float32's smallest normal
  number, so a tiny temperature gives 0 for the most likely token and -inf for the rest, never inf - inf or 0 / 0.
  """
  temperature = max(settings.temperature, float(np.finfo(np.float32).tiny))
  logits_BxV = (logits_BxV - jnp.max(logits_BxV, axis=-1, keepdims=True)) / temperature
  if 0 < settings.top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, settings.top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if settings.top_p < 1:
    sorted_BxV = jnp.sort(logits_BxV, axis=-1)[:, ::-1]
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    before_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV  # probability of the more likely tokens.
    count_Bx1 = jnp.sum(before_BxV < settings.top_p, axis=-1, keepdims=True)  # the nucleus: at least one token.
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, count_Bx1 - 1, axis=-1)
    logits_BxV = jnp.where(logits_BxV < threshold_Bx1, -jnp.inf, logits_BxV)
  return logits_BxV


def next_token(logits_BxV: jax.Array, rng: jax.Array, settings: Settings) -> jax.Array:
  """Returns B token ids: the most likely when temperature is 0, else drawn from the filtered distribution."""
  if settings.temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits_BxV, settings), axis=-1).astype(jnp.int32)


def hidden(model: Transformer, params, cache: dict | None, tokens_BxT: jax.Array,
           positions_BxT: jax.Array) -> tuple[jax.Array, dict]:
  """Returns (the decoding model's final-norm output B x T x D, the updated cache) on tokens at absolute positions."""
  variables = {'params': params} if cache is None else {'params': params, 'cache': cache}
  x_BxTxD, mutated = model.clone(decode=True).apply(variables, tokens_BxT, positions_BxT, mutable=['cache'],
                                                    method=Transformer.hidden)
  return x_BxTxD, mutated['cache']


def head(model: Transformer, params, x_BxTxD: jax.Array) -> jax.Array:
  """Returns the float32 logits B x T x V of final-norm outputs."""
  return model.clone(decode=True).apply({'params': params}, x_BxTxD, method=Transformer.logits)


def prefill(model: Transformer, params, prompts_BxP: jax.Array, lengths_B: jax.Array) -> tuple[jax.Array, dict]:
  """Returns (logits B x V at each prompt's last position lengths - 1, the cache filled with the P positions).

  Prompts are right-padded to P, the padding at position -1 (a local layer's cache keeps no such key); the head runs
  on the B last positions alone, not on all B x P.
  """
  positions_BxP = jnp.arange(prompts_BxP.shape[1])[None, :]
  positions_BxP = jnp.where(positions_BxP < lengths_B[:, None], positions_BxP, -1)
  x_BxPxD, cache = hidden(model, params, None, prompts_BxP, positions_BxP)
  last_Bx1xD = jnp.take_along_axis(x_BxPxD, (lengths_B - 1)[:, None, None], axis=1)
  return head(model, params, last_Bx1xD)[:, 0], cache


def decode_step(model: Transformer, params, cache: dict, tokens_B: jax.Array,
                positions_B: jax.Array) -> tuple[jax.Array, dict]:
  """Returns (logits B x V for the token after each of `tokens_B`, written at `positions_B`; the updated cache)."""
  x_Bx1xD, cache = hidden(model, params, cache, tokens_B[:, None], positions_B[:, None])
  return head(model, params, x_Bx1xD)[:, 0], cache


@dataclasses.dataclass
class Loop:
  """The decode loop's state: the token buffer, where each sequence writes next, and what it has left to do."""
  tokens_BxT: jax.Array
  positions_B: jax.Array  # next position to write; T when the sequence's context is full.
  left_B: jax.Array  # tokens each sequence may still emit.
  logits_BxV: jax.Array  # the model's prediction for each sequence's next token.
  cache: dict
  rng: jax.Array
  top_ids_BxTxC: jax.Array
  top_probs_BxTxC: jax.Array


jax.tree_util.register_dataclass(Loop, data_fields=[f.name for f in dataclasses.fields(Loop)], meta_fields=[])


@functools.partial(jax.jit, static_argnames=('model', 'settings', 'stream'))
def decode_chunk(model: Transformer, params, prompts_BxP: jax.Array, lengths_B: jax.Array, left_B: jax.Array,
                 rng: jax.Array, settings: Settings, stream: Callable | None = None) -> Loop:
  """Runs the prompts once, then emits tokens until each sequence is out of tokens, stops at EOS, or is full.

  `stream(tokens_B, emitted_B)` is called on the host after each step when given.
  """
  batch, prompt_length = prompts_BxP.shape
  context = model.config.max_length
  logits_BxV, cache = prefill(model, params, prompts_BxP, lengths_B)
  tokens_BxT = jnp.zeros((batch, context), jnp.int32).at[:, :prompt_length].set(prompts_BxP)
  candidates = (batch, context, settings.candidates)
  state = Loop(tokens_BxT, lengths_B, left_B, logits_BxV, cache, rng, jnp.zeros(candidates, jnp.int32),
               jnp.zeros(candidates, jnp.float32))

  def active(s: Loop) -> jax.Array:
    return (s.left_B > 0) & (s.positions_B < context)

  def step(s: Loop) -> Loop:
    rng, draw = jax.random.split(s.rng)
    token_B = next_token(s.logits_BxV, draw, settings)
    emitted_B = active(s)
    rows, write_B = jnp.arange(batch), jnp.minimum(s.positions_B, context - 1)
    tokens_BxT = s.tokens_BxT.at[rows, write_B].set(jnp.where(emitted_B, token_B, s.tokens_BxT[rows, write_B]))
    if stream is not None:
      io_callback(stream, None, token_B, emitted_B, ordered=True)
    stopped_B = jnp.isin(token_B, jnp.asarray(settings.eos_ids, jnp.int32))
    left_B = jnp.where(emitted_B, jnp.where(stopped_B, 0, s.left_B - 1), s.left_B)
    top_ids_BxTxC, top_probs_BxTxC = s.top_ids_BxTxC, s.top_probs_BxTxC
    if settings.candidates:
      top_probs_BxC, top_ids_BxC = jax.lax.top_k(jax.nn.softmax(s.logits_BxV), settings.candidates)
      top_ids_BxTxC = top_ids_BxTxC.at[rows, write_B].set(top_ids_BxC)
      top_probs_BxTxC = top_probs_BxTxC.at[rows, write_B].set(top_probs_BxC)
    logits_BxV, cache = decode_step(model, params, s.cache, token_B, write_B)
    return Loop(tokens_BxT, s.positions_B + emitted_B, left_B, logits_BxV, cache, rng, top_ids_BxTxC,
                top_probs_BxTxC)

  return jax.lax.while_loop(lambda s: jnp.any(active(s)), step, state)


def bucket(length: int, context: int) -> int:
  """Returns the prompt buffer length for `length` tokens: the next power of two, at most the context."""
  return min(1 << max(length - 1, 0).bit_length(), context)


@dataclasses.dataclass
class Sample:
  """What `generate` returns for one sequence: its new tokens, and (with candidates) each step's top-C tokens."""
  tokens: list[int]
  top_ids: list[list[int]]
  top_probs: list[list[float]]


def without_eos(tokens: list[int], eos_ids: tuple[int, ...]) -> list[int]:
  """Returns a sample's tokens without the EOS id that ended it, if one did."""
  return tokens[:-1] if tokens and tokens[-1] in eos_ids else tokens


def generate(model: Transformer, params, prompts: list[np.ndarray], max_new_tokens: int, seed: int = 0,
             settings: Settings = Settings(), stream: Callable[[np.ndarray, np.ndarray], None] | None = None
             ) -> list[Sample]:
  """Returns each prompt's continuation of up to `max_new_tokens` tokens; the same seed gives the same tokens.

  Prompts must be non-empty and no longer than the context. `stream(tokens_B, emitted_B)` sees each step's tokens.
  """
  context = model.config.max_length
  history = [list(map(int, prompt)) for prompt in prompts]
  samples = [Sample([], [], []) for _ in prompts]
  left = np.full(len(prompts), max_new_tokens, np.int32)
  rng = jax.random.key(seed)
  while left.any():
    windows = [tokens[-context:] if len(tokens) < context else tokens[-(context // 2):] for tokens in history]
    lengths = np.asarray([len(w) for w in windows], np.int32)
    prompts_BxP = np.zeros((len(windows), bucket(int(lengths.max()), context)), np.int32)
    for row, window in enumerate(windows):
      prompts_BxP[row, :len(window)] = window
    rng, chunk_rng = jax.random.split(rng)
    chunk = decode_chunk(model, params, jnp.asarray(prompts_BxP), jnp.asarray(lengths), jnp.asarray(left),
                         chunk_rng, settings, stream)
    result = jax.device_get(dataclasses.replace(chunk, cache=None, logits_BxV=None))  # Not the cache: it stays.
    for row, sample in enumerate(samples):
      new = slice(lengths[row], result.positions_B[row])
      sample.tokens += result.tokens_BxT[row, new].tolist()
      sample.top_ids += result.top_ids_BxTxC[row, new].tolist()
      sample.top_probs += result.top_probs_BxTxC[row, new].tolist()
      history[row] += result.tokens_BxT[row, new].tolist()
    left = np.where(result.left_B > 0, result.left_B, 0)
  return samples


@functools.partial(jax.jit, static_argnames=('model', 'settings'))
def generate_uncached(model: nn.Module, params, buffer_BxS: jax.Array, rng: jax.Array, prompt_length: int,
                      end: int, settings: Settings) -> jax.Array:
  """Returns the buffer with positions prompt_length..end-1 filled by running the model on the whole last T
  tokens for every new token (nanoGPT's way, no cache): the reference the cache is tested and timed against."""
  length = min(model.config.max_length, buffer_BxS.shape[1])

  def step(position, state):
    buffer_BxS, rng = state
    start = jnp.maximum(position - length, 0)
    window_BxT = jax.lax.dynamic_slice_in_dim(buffer_BxS, start, length, axis=1)
    logits_BxTxV = model.apply({'params': params}, window_BxT)
    logits_BxV = jax.lax.dynamic_index_in_dim(logits_BxTxV, position - 1 - start, axis=1, keepdims=False)
    rng, draw = jax.random.split(rng)
    token_B = next_token(logits_BxV, draw, settings).astype(buffer_BxS.dtype)
    return jax.lax.dynamic_update_index_in_dim(buffer_BxS, token_B, position, axis=1), rng

  buffer_BxS, _ = jax.lax.fori_loop(prompt_length, end, step, (buffer_BxS, rng))
  return buffer_BxS
