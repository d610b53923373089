"""Prints decoding speed with the key/value cache against full recomputation (nanoGPT's way), batch 1 and 8.

  python benchmarks/decode.py --config=shakespeare_char --config.model.max_length=272 \
      --config.model.vocab_size=65
  python benchmarks/decode.py --config=llama_1b --batches=1 --recompute=False   # on a GPU
  python benchmarks/decode.py --config=llama_1b --config.model.dtype=bfloat16 --recompute=False --quantize=int8

The model has random weights (speed does not depend on them). Both ways are compiled once, then timed on a
second call; each generates --new_tokens tokens after a --prompt_length token prompt, inside the context.
Recomputation runs the model over a fixed window of min(context, prompt + new tokens) positions for every token;
nanoGPT's window grows with the text instead, doing about half that work on average when the window is the
whole text, so halve the printed ratio for a conservative comparison with nanoGPT. With a
known accelerator, batch-1 decoding is also compared with the memory-bandwidth bound: every new token reads all
the weights once, so tokens/s cannot exceed HBM bandwidth / weight bytes.

--quantize=int8 or int4 decodes with weight-only quantized matrices (model/quantize.py), quantized from the weights
in the model's dtype as flaxlm-sample does; the decoding model reads them as stored. The weights' bytes (integers,
their float32 scales and the float parameters left, int4 packed two to a byte) are printed and set the bound.
"""

import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from flaxlm.configs.errors import UserError
from flaxlm.model import quantize, sampling
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import memory
from flaxlm.train.plan import hardware
from flaxlm.train.commands import cli

CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file of the model to decode with.', lock_config=True)
NEW_TOKENS = flags.DEFINE_integer('new_tokens', 256, 'Tokens to generate.')
PROMPT_LENGTH = flags.DEFINE_integer('prompt_length', 16, 'Prompt tokens.')
BATCHES = flags.DEFINE_list('batches', ['1', '8'], 'Batch sizes to time.')
RECOMPUTE = flags.DEFINE_bool('recompute', True, 'Also time decoding without the cache.')
QUANTIZE = flags.DEFINE_enum('quantize', 'none', quantize.MODES, 'Decode with the weights held as int8 or int4 '
                             '(weight-only); none keeps them in the model\'s dtype.')


def seconds(fn) -> float:
  """Returns the wall time of `fn()` (its result fetched) on a second call, the first having compiled it."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - start


def cached(model: Transformer, params, prompts_BxP: np.ndarray):
  """Returns a call that decodes the prompts with the cache, greedily."""
  settings = sampling.Settings(temperature=0.0)
  return lambda: [s.tokens for s in sampling.generate(model, params, list(prompts_BxP), NEW_TOKENS.value,
                                                      settings=settings)]


def recomputed(model: Transformer, params, prompts_BxP: np.ndarray):
  """Returns a call that decodes the prompts by running the model on the whole sequence for each token."""
  buffer_BxS = jnp.zeros((len(prompts_BxP), PROMPT_LENGTH.value + NEW_TOKENS.value), jnp.int32)
  buffer_BxS = buffer_BxS.at[:, :PROMPT_LENGTH.value].set(prompts_BxP)
  end = PROMPT_LENGTH.value + NEW_TOKENS.value
  return lambda: sampling.generate_uncached(model, params, buffer_BxS, jax.random.key(0), PROMPT_LENGTH.value, end,
                                            sampling.Settings(temperature=0.0))


def bandwidth_line(params, tokens_per_second: float) -> str:
  """Returns batch-1 decoding against the memory-bandwidth bound of the device, where its bandwidth is known."""
  kind = jax.devices()[0].device_kind
  bandwidth = hardware.hbm_bytes_per_second(kind)
  if bandwidth is None:
    return f'bandwidth bound: n/a (unknown HBM bandwidth for {kind})'
  weight_bytes = memory.memory_bytes(params)
  bound = bandwidth / weight_bytes
  return (f'bandwidth bound: {weight_bytes / 2**30:.2f} GiB of weights at {bandwidth / 1e12:.2f} TB/s = '
          f'{bound:,.0f} tokens/s; batch 1 reaches {tokens_per_second / bound:.0%} of it')


def benchmark() -> None:
  """Prints tokens/s per batch size, cached and recomputed, and their ratio."""
  config = cli.config(CONFIG)
  if not config.model.vocab_size:
    raise UserError('set --config.model.vocab_size: the benchmark has no tokenizer to take it from.')
  c = ModelConfig.from_config(config.model, 0)
  if PROMPT_LENGTH.value + NEW_TOKENS.value > c.max_length:
    raise UserError(f'--prompt_length + --new_tokens exceeds the context of {c.max_length}: raise '
                    '--config.model.max_length or generate fewer tokens.')
  model = Transformer(c)
  params = jax.jit(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))['params']))()
  params = quantize.quantize(jax.tree.map(lambda x: x.astype(jnp.dtype(c.dtype)), params), QUANTIZE.value)
  print(f'jax {jax.__version__}, {jax.devices()[0].device_kind}; {c.num_layers} layers, width {c.width}, '
        f'context {c.max_length}, {c.dtype}; {PROMPT_LENGTH.value}-token prompts, {NEW_TOKENS.value} new tokens')
  held = c.dtype if QUANTIZE.value == 'none' else QUANTIZE.value
  print(f'weights: {held}, {memory.memory_bytes(params):,} bytes (--quantize={QUANTIZE.value})')
  for batch in map(int, BATCHES.value):
    prompts_BxP = np.random.default_rng(0).integers(0, c.vocab_size, (batch, PROMPT_LENGTH.value), dtype=np.int32)
    fast = batch * NEW_TOKENS.value / seconds(cached(model, params, prompts_BxP))
    line = f'batch {batch}: with the cache {fast:,.0f} tokens/s'
    if RECOMPUTE.value:
      slow = batch * NEW_TOKENS.value / seconds(recomputed(model, params, prompts_BxP))
      line += f'; recomputing {slow:,.0f} tokens/s; the cache is {fast / slow:.1f}x faster'
    print(line, flush=True)
    if batch == 1:
      print(bandwidth_line(params, fast))


if __name__ == '__main__':
  cli.run(benchmark)
