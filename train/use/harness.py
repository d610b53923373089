"""flaxlm as a model of EleutherAI's lm-evaluation-harness: the `flaxlm` backend, answering its three requests.

- loglikelihood(context, continuation): the log-probability of the continuation's tokens after the context, and
  whether each is the model's most likely token there (is greedy). Context and continuation are encoded as the
  harness's own Hugging Face backend encodes them (`TemplateLM`: the whole text, BOS first where the tokenizer adds
  it, split where the context's ids end; an empty context is the prefix token), and a pair longer than the context
  window keeps its last T + 1 tokens, as that backend does. Requests are sorted longest first and run B at a time,
  each batch padded on the right to one of four widths per octave (at least 16, at most T), so a task compiles a
  handful of times and pads at most a quarter of a batch.
- loglikelihood_rolling(text): the log-probability of a whole document, in the harness's own windows
  (`lm_eval.utils.get_rolling_token_windows`: T tokens predicted per window, each window's input the T tokens before
  its last; the first seeing the prefix token), which are scored as loglikelihood requests. The harness's
  perplexities are defined by these windows; `flaxlm-score`'s overlapping window gives each token more context and a
  lower perplexity.
- generate_until(context, kwargs): the KV-cache sampler (model/sampling.py), greedy unless the task samples, the
  context cut from the left to T - max_gen_toks tokens, the text cut before the first of the task's `until` strings
  (the EOS text among them) and ended at an EOS id. Tokens are generated in rounds of 16, 32, 64, ... per batch, and a
  sequence that has produced a stop string or an EOS drops out, so a task stopping at a newline decodes a few tokens,
  not max_gen_toks.

The prefix token, read before the text of a rolling document or an empty context, is BOS, else EOS, else the
newline (flaxlm's character and byte tokenizers have neither BOS nor EOS). Every process of a multi-host job runs the
same requests on the global mesh and gets the same answers.

Shape key: B requests per batch, L padded length (`padded_width`), T context length.
"""

import dataclasses
import json
from typing import Any, Iterable

import jax
from jax.experimental import multihost_utils
import numpy as np
from lm_eval import utils as lm_eval_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models import utils as model_utils

from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.data.tokenizer import Tokenizer
from flaxlm.model import quantize, sampling, scoring
from flaxlm.model.transformer import Transformer
from flaxlm.train import sharding, step as step_lib
from flaxlm.train.use import pretrained

MIN_WIDTH = 16  # the shortest padded batch: short requests share one shape (the padding costs little).
STEPS_PER_OCTAVE = 4  # padded widths between two powers of two: at most a quarter of a batch is padding.
FIRST_ROUND = 16  # tokens generated before the first look for stop strings; each later round doubles.
SAMPLING_KEYS = ('until', 'max_gen_toks', 'do_sample', 'temperature', 'top_p', 'top_k')  # what generate_until reads.


@dataclasses.dataclass(frozen=True)
class Pair:
  """A loglikelihood request as ids: the context's and the continuation's."""
  context: list[int]
  continuation: list[int]


def prefix_id(tokenizer: Tokenizer) -> int:
  """Returns the id read before a text that has no context: BOS, else EOS, else the newline; raises UserError if the
  tokenizer has none of them as one id."""
  for token in (tokenizer.bos_id, tokenizer.eos_id):
    if token is not None:
      return token
  newline = tokenizer.encode('\n').tolist()
  if len(newline) != 1:
    raise UserError('the tokenizer has no BOS, no EOS and no newline id, so a text without context cannot be scored: '
                    'use a tokenizer with one of them.')
  return newline[0]


def window(pair: Pair, length: int) -> tuple[list[int], int]:
  """Returns (the last T + 1 ids of context and continuation, of which the model reads all but the last; how many of
  them are the continuation's); raises UserError for a continuation longer than the context window."""
  if len(pair.continuation) > length:
    raise UserError(f'a continuation is {len(pair.continuation)} tokens, longer than the model\'s whole context of '
                    f'{length}: it cannot be scored (a long context is cut from the left, a continuation is not); '
                    'shorten the task\'s answers.')
  ids = (pair.context + pair.continuation)[-(length + 1):]
  return ids, len(pair.continuation)


def batches(items: list, size: int) -> Iterable[list]:
  """Yields `items` in consecutive batches of at most `size`."""
  for start in range(0, len(items), size):
    yield items[start:start + size]


def to_host(tree: Any) -> Any:
  """Returns the arrays of `tree` as numpy on this process, also where they span other hosts' devices."""
  if all(x.is_fully_addressable for x in jax.tree.leaves(tree)):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def padded_width(n: int, length: int) -> int:
  """Returns the width a batch whose longest row reads `n` ids is padded to: at least MIN_WIDTH, at most T, else `n`
  rounded up to one of STEPS_PER_OCTAVE evenly spaced widths between two powers of two."""
  if n <= MIN_WIDTH:
    return min(MIN_WIDTH, length)
  step = max(1, (1 << (n - 1).bit_length()) // (2 * STEPS_PER_OCTAVE))
  return min(-(-n // step) * step, length)


def score_pairs(model: Transformer, params, pairs: list[Pair], batch_size: int) -> list[tuple[float, bool]]:
  """Returns (sum of the continuation's log p, whether every one of its ids is the model's top id) per pair, scored
  longest first in batches of `batch_size` rows, each batch padded to its `padded_width`; with params None (a dry
  run), checks the pairs alone and returns zeros."""
  length = model.config.max_length
  windows = [window(pair, length) for pair in pairs]
  if params is None:
    return [(0.0, False)] * len(pairs)
  order = sorted(range(len(pairs)), key=lambda i: (-len(windows[i][0]), windows[i][0]))
  scores = step_lib.with_mesh(scoring.window_scores, sharding.mesh_of(params))
  results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
  for rows in batches(order, batch_size):
    width = padded_width(len(windows[rows[0]][0]) - 1, length)
    ids_BxL1 = np.zeros((batch_size, width + 1), np.int32)
    for row, i in enumerate(rows):
      ids_BxL1[row, :len(windows[i][0])] = windows[i][0]
    target_BxL, top_BxL, _ = to_host(scores(model, params, ids_BxL1[:, :-1], ids_BxL1[:, 1:]))
    for row, i in enumerate(rows):
      ids, count = windows[i]
      kept = slice(len(ids) - 1 - count, len(ids) - 1)
      results[i] = (float(np.sum(target_BxL[row, kept], dtype=np.float64)),
                    bool(np.all(top_BxL[row, kept] == ids_BxL1[row, 1:][kept])))
  return results


def rolling_pairs(tokens: list[int], prefix: int, length: int) -> list[Pair]:
  """Returns the harness's disjoint rolling windows over a document's ids as (context, continuation) pairs."""
  windows = lm_eval_utils.get_rolling_token_windows(token_list=tokens, prefix_token=prefix, max_seq_len=length,
                                                    context_len=1)
  return [Pair(*lm_eval_utils.make_disjoint_window(w)) for w in windows]


def sampling_settings(kwargs: dict, tokenizer: Tokenizer) -> tuple[sampling.Settings, list[str], int]:
  """Returns (the sampler's settings, the stop strings with the EOS text, max_gen_toks) of a request's generation
  kwargs; raises UserError for a key the sampler does not read."""
  unknown = sorted(set(kwargs) - set(SAMPLING_KEYS) - {'max_new_tokens', 'max_tokens', 'max_completion_tokens'})
  if unknown:
    raise UserError(f'generation_kwargs {", ".join(unknown)} are not read by flaxlm\'s sampler (it reads '
                    f'{", ".join(SAMPLING_KEYS)}): remove them from the task.')
  normal = model_utils.normalize_gen_kwargs(kwargs, default_max_gen_toks=256)
  eos = None if tokenizer.eos_id is None else tokenizer.decode([tokenizer.eos_id])
  until = model_utils.handle_stop_sequences(normal.get('until'), eos=eos or None)
  temperature = float(normal.get('temperature', 1.0)) if normal['do_sample'] else 0.0  # transformers' default: 1.
  settings = sampling.Settings(temperature=temperature, top_k=int(normal.get('top_k') or 0),
                               top_p=float(normal.get('top_p') or 1.0), eos_ids=tokenizer.eos_ids)
  return settings, until, int(normal['max_gen_toks'])


def generate(model: Transformer, params, tokenizer: Tokenizer, contexts: list[list[int]], kwargs: dict,
             batch_size: int, seed: int = 0) -> list[str]:
  """Returns each context's generation for one set of generation kwargs, cut before its first stop string; with
  params None (a dry run), checks the kwargs alone and returns empty texts."""
  settings, until, max_gen_toks = sampling_settings(kwargs, tokenizer)
  room = model.config.max_length - max_gen_toks
  if room <= 0:
    raise UserError(f'a task asks for max_gen_toks={max_gen_toks}, not fewer than the model\'s context of '
                    f'{model.config.max_length} tokens: set its generation_kwargs max_gen_toks below that.')
  if params is None:  # A dry run: the requests are checked, nothing is generated.
    return [''] * len(contexts)
  contexts = [c[-room:] for c in contexts]
  run = step_lib.with_mesh(sampling.generate, sharding.mesh_of(params))
  texts = [''] * len(contexts)
  for rows in batches(sorted(range(len(contexts)), key=lambda i: -len(contexts[i])), batch_size):
    made: dict[int, list[int]] = {i: [] for i in rows}
    active, size = list(rows), FIRST_ROUND
    while active:
      size = min(size, max_gen_toks - len(made[active[0]]))
      prompts = [np.asarray(contexts[i] + made[i], np.int32) for i in active]
      prompts += [prompts[0]] * (batch_size - len(prompts))  # The same batch shape every round: no new compilation.
      samples = run(model, params, prompts, size, seed, settings)
      for i, sample in zip(list(active), samples):
        made[i] += sample.tokens
        text = tokenizer.decode(sampling.without_eos(made[i], tokenizer.eos_ids), skip_special=True)
        texts[i] = model_utils.postprocess_generated_text(text, until, None)
        ended = (made[i] and made[i][-1] in tokenizer.eos_ids) or len(made[i]) >= max_gen_toks
        if ended or texts[i] != text:
          active.remove(i)
      size *= 2
  return texts


@register_model('flaxlm')
class FlaxLM(TemplateLM):
  """A flaxlm model (a run, an export or a converted Hugging Face model) as an lm-evaluation-harness model.

  In Python: `FlaxLM(model, params, tokenizer)` with what `pretrained.load` returns, or by name,
  `lm_eval.simple_evaluate(model='flaxlm', model_args='path=DIR,dtype=float32,quantize=int8,batch_size=16', ...)`
  once this module is imported. With params None it is a dry run: every request is encoded and checked (a character
  the tokenizer cannot write, a continuation longer than the context, generation kwargs the sampler does not read)
  and answered with zeros, so that a training run refuses a task it could not score before it writes anything.
  """

  def __init__(self, model: Transformer, params, tokenizer: Tokenizer, batch_size: int = 16):
    super().__init__()
    self.model, self.params, self.flaxlm_tokenizer, self.rows = model, params, tokenizer, batch_size
    self.prefix = prefix_id(tokenizer)

  @classmethod
  def load(cls, path: str, dtype: str | None = None, quantized: str = 'none', batch_size: int = 16) -> 'FlaxLM':
    """Returns the backend of the run or export at `path`, computing in `dtype`, its weights held as `quantized`
    (none, int8 or int4)."""
    model, params, tokenizer = pretrained.load(path, dtype)
    if quantized != 'none':
      params = quantize.quantize(params, quantized)
    return cls(model, params, tokenizer, batch_size)

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> 'FlaxLM':
    """Returns the backend of `path=DIR[,dtype=...][,quantize=int8|int4][,batch_size=N]`, as lm-eval passes it."""
    args = lm_eval_utils.simple_parse_args_string(arg_string) | {
        k: v for k, v in (additional_config or {}).items() if k == 'batch_size' and v is not None}
    return cls.load(args['path'], args.get('dtype'), args.get('quantize', 'none'), int(args.get('batch_size', 16)))

  @property
  def eot_token_id(self) -> int:
    """The id that ends a text: EOS, else the prefix id."""
    return self.prefix if self.flaxlm_tokenizer.eos_id is None else self.flaxlm_tokenizer.eos_id

  @property
  def prefix_token_id(self) -> int:
    """The id read before a text without context."""
    return self.prefix

  @property
  def max_length(self) -> int:
    """T, the most tokens the model reads."""
    return self.model.config.max_length

  def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
    """Returns the ids of `string`: as the model reads a text (BOS first where the tokenizer adds it) unless
    `add_special_tokens` is False, or the text already begins with the prefix token's text."""
    tokenizer = self.flaxlm_tokenizer
    prefix_text = tokenizer.piece(self.prefix) if self.prefix in (tokenizer.bos_id, tokenizer.eos_id) else None
    begins = bool(prefix_text) and string.startswith(prefix_text)
    plain = add_special_tokens is False or (add_special_tokens is None and begins)
    return (tokenizer.encode(string) if plain else tokenizer_lib.model_ids(tokenizer, string)).tolist()

  def loglikelihood(self, requests: list[Instance], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """Returns (log p, is greedy) of each (context, continuation) request, encoded as the harness encodes them."""
    return super().loglikelihood(requests, disable_tqdm=True)  # No progress bar of the encoding alone.

  def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str], list[int], list[int]]],
                            **kwargs) -> list[tuple[float, bool]]:
    """Returns (log p, is greedy) of each already encoded (strings, context ids, continuation ids) request."""
    return score_pairs(self.model, self.params, [Pair(list(c), list(x)) for _, c, x in requests], self.rows)

  def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
    """Returns the log p of each whole document, summed over the harness's rolling windows."""
    per_request = [rolling_pairs(self.tok_encode(text), self.prefix, self.max_length) for (text,) in
                   (r.args for r in requests)]
    scores = score_pairs(self.model, self.params, [p for pairs in per_request for p in pairs], self.rows)
    totals, start = [], 0
    for pairs in per_request:
      totals.append(sum(s for s, _ in scores[start:start + len(pairs)]))
      start += len(pairs)
    return totals

  def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
    """Returns each request's generation, requests with the same generation kwargs decoded together."""
    groups: dict[str, list[int]] = {}
    for i, request in enumerate(requests):
      groups.setdefault(json.dumps(request.args[1], sort_keys=True), []).append(i)
    results = [''] * len(requests)
    for key, members in groups.items():
      contexts = [self.tok_encode(requests[i].args[0]) for i in members]
      texts = generate(self.model, self.params, self.flaxlm_tokenizer, contexts, json.loads(key), self.rows)
      for i, text in zip(members, texts):
        results[i] = text
    return results
