"""Hugging Face model types: how each one's config.json and tensor names map onto flaxlm's model options and params.

Pure: config.json dicts and {name: array} dicts in and out. One `Family` per supported HF model type says how its
names and shapes map; model/hf.py converts whole checkpoints with them, and train/use/convert.py reads and
writes the files.

Shape key: D width, H query heads, G key/value heads, K head dimension, F MLP width, V vocabulary, P positions.
GPT-2's Conv1D weights are stored (in, out) like flax kernels; Llama's nn.Linear weights (out, in), transposed.
HF's rotary embedding rotates halves of each head (rotate_half), as `model.rope.rotate` does. Llama, Mistral, Qwen2,
Qwen3, Gemma, Phi-3, Gemma 2 and Gemma 3 name their tensors alike (Phi-3 fuses q, k and v, and gate and up, into one
matrix each; Gemma 2 and 3 have four norms a layer); each is a few model options (`Family.options`) over one mapping.
The sparse Mixtral and Qwen3-MoE add a router and E experts to a layer (model/moe.py), each expert's matrices a tensor
of its own, as the Hub holds them (E x F x D for flaxlm's stacked E x D x F).
A multimodal Gemma 3 folder holds Gemma 3's text model under other names, beside a vision tower left out.
Functions here only reshape, transpose, split and concatenate: a tensor keeps its dtype.
"""

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.configs.options import LARGEST, value as option_value
from flaxlm.model import pattern as pattern_lib, rope as rope_lib
from flaxlm.model.config import ModelConfig

QKV = ('query', 'key', 'value')
Tensors = dict[str, np.ndarray]
Tree = dict[str, Any]

@dataclasses.dataclass(frozen=True)
class Family:
  """How one HF model type maps onto flaxlm: the options it fixes, its config.json, and its tensor names."""
  architecture: str  # the HF class its checkpoints are saved from
  prefix: str  # the body's tensor names start with this; the output head's ('lm_head.weight') does not
  layers: str  # layer i's tensor names start with f'{prefix}{layers}.{i}.'
  layers_key: str  # config.json's count of layers
  options: dict[str, Any]  # the flaxlm model options every model of this type has
  model_config: Callable[[dict], dict]  # config.json -> flaxlm's model section
  hf_config: Callable[[ModelConfig], dict]  # model config -> config.json
  outer_from_hf: Callable[[Tensors], Tree]  # embeddings and final norm
  outer_to_hf: Callable[[Tree], Tensors]
  layer_from_hf: Callable[[Tensors, ModelConfig], Tree]  # one layer; names without the layer prefix
  layer_to_hf: Callable[[Tree, ModelConfig], Tensors]
  buffers: tuple[str, ...]  # per-layer tensors older transformers saved that are not weights (flaxlm computes them)
  also_prefixes: tuple[str, ...] = ()  # other prefixes the body's names may have (a multimodal folder's text model)
  sparse: bool = False  # its models have mixtures of experts (model.num_experts > 0); the others have none
  skipped: tuple[str, ...] = ()  # name prefixes of tensors outside the language model, left out (a vision tower)


def require(hf: dict, key: str, allowed: tuple, default: Any) -> None:
  """Raises UserError if config.json's `key` (or its `default`) is not among `allowed`."""
  value = hf.get(key, default)
  if value not in allowed:
    raise UserError(f'config.json has {key}={value!r}, which flaxlm cannot express: it converts only {key} in '
                    f'{allowed}.')


def setting(hf: dict, key: str, default: Any) -> Any:
  """Returns config.json's `key`, or `default` if it is absent or null; raises KeyError if both are missing."""
  found = default if hf.get(key) is None else hf[key]
  if found is None:
    raise KeyError(key)
  return found


def integer(hf: dict, key: str, default: int | None = None) -> int:
  """Returns config.json's `key` (or `default`); raises UserError unless it is a positive integer of at most
  LARGEST (a larger size is no checkpoint's: the device indexes with int32)."""
  found = setting(hf, key, default)
  if type(found) is not int or not 0 < found <= LARGEST:
    raise UserError(f'config.json has {key}={found!r}, which is not a positive integer of at most {LARGEST:,}: fix '
                    'the value, or pass the folder\'s own config.json.')
  return found


def number(hf: dict, key: str, default: float | None = None) -> float:
  """Returns config.json's `key` (or `default`) as a float; raises UserError unless it is a positive finite number."""
  found = setting(hf, key, default)
  if type(found) not in (int, float) or not 0 < found < math.inf:
    raise UserError(f'config.json has {key}={found!r}, which is not a positive number: fix the value, or pass the '
                    'folder\'s own config.json.')
  return float(found)


def boolean(hf: dict, key: str, default: bool) -> bool:
  """Returns config.json's `key` (or `default`); raises UserError unless it is true or false."""
  found = setting(hf, key, default)
  if type(found) is not bool:
    raise UserError(f'config.json has {key}={found!r}, which is not true or false: fix the value, or pass the '
                    'folder\'s own config.json.')
  return found


def divides(divisor: tuple[str, int], whole: tuple[str, int]) -> None:
  """Raises UserError unless config.json's `divisor` (key, value) divides its `whole` (key, value)."""
  (divisor_key, d), (whole_key, w) = divisor, whole
  if w % d:
    raise UserError(f'config.json has {divisor_key}={d}, which does not divide {whole_key}={w}: fix the value, or '
                    'pass the folder\'s own config.json.')


def gpt2_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a GPT-2 config.json: learned positions, LayerNorm, GELU (tanh), biases."""
  require(hf, 'activation_function', ('gelu_new', 'gelu_pytorch_tanh'), 'gelu_new')
  require(hf, 'scale_attn_weights', (True,), True)
  require(hf, 'scale_attn_by_inverse_layer_idx', (False,), False)
  width, heads = integer(hf, 'n_embd'), integer(hf, 'n_head')
  divides(('n_head', heads), ('n_embd', width))
  return dict(vocab_size=integer(hf, 'vocab_size'), num_layers=integer(hf, 'n_layer'), num_heads=heads,
              num_kv_heads=heads, width=width,
              mlp_width=integer(hf, 'n_inner', 4 * width), max_length=integer(hf, 'n_positions'),
              tie_embeddings=boolean(hf, 'tie_word_embeddings', True),
              norm_eps=number(hf, 'layer_norm_epsilon', 1e-5), **GPT2.options)


def gpt2_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of GPT-2 with the shape of `c`; raises UserError for grouped-query attention."""
  if c.head_dim * c.num_heads != c.width:
    raise UserError(f'GPT-2\'s heads split its width, and this model has {c.num_heads} heads of {c.head_dim} for a '
                    f'width of {c.width}: only models with head_dim=width/num_heads convert to GPT-2.')
  if c.num_kv_heads != c.num_heads:
    raise UserError(f'GPT-2 has no grouped-query attention, and this model has {c.num_kv_heads} key/value heads '
                    f'for {c.num_heads} query heads: only models with num_kv_heads=num_heads convert to GPT-2.')
  return dict(vocab_size=c.vocab_size, n_layer=c.num_layers, n_head=c.num_heads, n_embd=c.width,
              n_inner=c.mlp_width, n_positions=c.max_length, tie_word_embeddings=c.tie_embeddings,
              activation_function='gelu_new', layer_norm_epsilon=c.norm_eps)


def rope(hf: dict) -> dict:
  """Returns config.json's rotary settings: `rope_parameters` (transformers 5), else the older top-level keys."""
  for key in ('rope_scaling', 'rope_parameters'):
    if not isinstance(hf.get(key) or {}, dict):
      raise UserError(f'config.json has {key}={hf[key]!r}, which is not an object of rotary settings: fix the '
                      'value, or pass the folder\'s own config.json.')
  legacy = hf.get('rope_scaling') or {'rope_type': 'default'}
  return hf.get('rope_parameters') or {'rope_theta': hf.get('rope_theta', 10_000.0), **legacy}


def rope_options(hf: dict) -> dict:
  """Returns the rotary model options of config.json's rope type (default, linear, llama3, yarn); raises UserError
  naming any other type, or a setting of a supported one flaxlm cannot express."""
  r = rope(hf)
  kind = r.get('rope_type', r.get('type', 'default'))
  if not isinstance(kind, str) or kind not in ROPE_KEYS:
    raise UserError(f'config.json has rope_type={kind!r}, which flaxlm cannot express: it converts only rope_type in '
                    f'{tuple(ROPE_KEYS)} (dynamic scaling changes the frequencies with each sequence\'s length).')
  require(r, 'partial_rotary_factor', (1, 1.0, None), None)
  if kind == 'yarn':
    require(r, 'beta_fast', (rope_lib.YARN_BETAS[0], None), None)
    require(r, 'beta_slow', (rope_lib.YARN_BETAS[1], None), None)
    require(r, 'truncate', (True, None), None)
    for key in ('attention_factor', 'mscale', 'mscale_all_dim'):
      require(r, key, (None,), None)
  options = dict(rope_theta=number(r, 'rope_theta', hf.get('rope_theta', 10_000.0)), rope_scaling=ROPE_SCALINGS[kind])
  for key, option in ROPE_KEYS[kind].items():
    if r.get(key) is not None:
      options[option] = (integer if key == 'original_max_position_embeddings' else number)(r, key)
    elif key != 'original_max_position_embeddings':  # which transformers, as flaxlm, takes as max_position_embeddings
      raise UserError(f'config.json has rope_type={kind!r} without its {key!r}: pass the folder\'s own config.json.')
  return options


def rope_to_hf(c: ModelConfig) -> dict:
  """Returns config.json's `rope_parameters` of model `c`."""
  kind = {scaling: kind for kind, scaling in ROPE_SCALINGS.items()}[c.rope.scaling]
  values = {key: option_value(c, option) for key, option in ROPE_KEYS[kind].items()}
  if 'original_max_position_embeddings' in values:
    values['original_max_position_embeddings'] = c.rotary.original_length
  return {'rope_theta': c.rope.theta, 'rope_type': kind, **values}


def attention_shape(hf: dict) -> dict:
  """Returns the heads, key/value heads, width and head dimension of a rotary config.json, checked."""
  width, heads = integer(hf, 'hidden_size'), integer(hf, 'num_attention_heads')
  if hf.get('head_dim') is None:
    divides(('num_attention_heads', heads), ('hidden_size', width))
  kv_heads = integer(hf, 'num_key_value_heads', heads)
  divides(('num_key_value_heads', kv_heads), ('num_attention_heads', heads))
  return dict(num_heads=heads, num_kv_heads=kv_heads, width=width, head_dim=integer(hf, 'head_dim', width // heads))


def rotary_model_config(hf: dict, options: dict, activations: tuple[str, ...], tied: bool) -> dict:
  """Returns flaxlm's model section for a config.json of a Llama-like model type with the given `options`, MLP
  `activations` (hidden_act) and head tying default; raises UserError for settings flaxlm cannot express."""
  require(hf, 'hidden_act', activations, activations[0])
  return dict(vocab_size=integer(hf, 'vocab_size'), num_layers=integer(hf, 'num_hidden_layers'),
              **attention_shape(hf), mlp_width=integer(hf, 'intermediate_size'),
              max_length=integer(hf, 'max_position_embeddings'), tie_embeddings=boolean(hf, 'tie_word_embeddings', tied),
              norm_eps=number(hf, 'rms_norm_eps', 1e-6), **rope_options(hf), **options)


def rotary_hf_config(c: ModelConfig, activation: str) -> dict:
  """Returns the config.json keys every Llama-like model type shares, for model `c` (rotary settings in both the
  new and the old keys)."""
  return dict(vocab_size=c.vocab_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
              num_key_value_heads=c.num_kv_heads, hidden_size=c.width, head_dim=c.head_dim,
              intermediate_size=c.mlp_width, max_position_embeddings=c.max_length, hidden_act=activation,
              tie_word_embeddings=c.tie_embeddings, rms_norm_eps=c.norm_eps, rope_parameters=rope_to_hf(c),
              rope_theta=c.rope.theta)


def llama_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Llama config.json: rotary positions, RMSNorm, SwiGLU, no biases."""
  require(hf, 'attention_bias', (False,), False)
  require(hf, 'mlp_bias', (False,), False)
  return rotary_model_config(hf, LLAMA.options, ('silu',), tied=False)


def llama_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Llama with the shape of `c`."""
  return dict(rotary_hf_config(c, 'silu'), attention_bias=False, mlp_bias=False)


def mistral_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Mistral config.json (a Llama, with a sliding window flaxlm refuses)."""
  no_sliding_window(hf)
  return rotary_model_config(hf, MISTRAL.options, ('silu',), tied=False)


def mistral_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Mistral with the shape of `c` (no sliding window)."""
  return dict(rotary_hf_config(c, 'silu'), sliding_window=None)


def no_sliding_window(hf: dict) -> None:
  """Raises UserError if config.json's `sliding_window` is shorter than its context (flaxlm's attention sees it all)."""
  window, length = hf.get('sliding_window'), integer(hf, 'max_position_embeddings')
  if window is not None and (type(window) is not int or window < length):
    raise UserError(f'config.json has sliding_window={window!r}, which flaxlm cannot express: its attention sees '
                    f'all {length} positions (max_position_embeddings); it converts sliding_window null or at least '
                    'that.')


def phi3_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Phi-3 or Phi-4 config.json: a Llama whose q, k and v (and gate and up)
  are stored as one fused matrix each; no sliding window, no longrope (Phi-3's 128k variants)."""
  no_sliding_window(hf)
  require(hf, 'attention_bias', (False, None), None)
  return rotary_model_config(hf, PHI3.options, ('silu',), tied=False)


def phi3_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Phi-3 with the shape of `c` (no sliding window; its whole head rotated, which
  transformers' Phi-3 config says)."""
  return dict(rotary_hf_config(c, 'silu'), sliding_window=None, original_max_position_embeddings=c.max_length,
              rope_parameters={**rope_to_hf(c), 'partial_rotary_factor': 1.0})


def full_attention(hf: dict) -> None:
  """Raises UserError if a Qwen config.json turns on sliding-window attention in any layer."""
  require(hf, 'use_sliding_window', (False,), False)
  kinds = hf.get('layer_types') or []
  others = [kind for kind in kinds if kind != 'full_attention'] if isinstance(kinds, list) else kinds
  if others:
    raise UserError(f'config.json has layer_types with {others!r}, which flaxlm cannot express: it converts only a '
                    'list of "full_attention" layers.')


def qwen2_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Qwen2 (Qwen2.5) config.json: a Llama with biases on q, k and v."""
  full_attention(hf)
  return rotary_model_config(hf, QWEN2.options, ('silu',), tied=False)


def qwen2_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Qwen2 with the shape of `c`."""
  return dict(rotary_hf_config(c, 'silu'), use_sliding_window=False, sliding_window=None)


def qwen3_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Qwen3 config.json: a Llama with RMSNorm on each head of q and k."""
  require(hf, 'attention_bias', (False,), False)
  full_attention(hf)
  return rotary_model_config(hf, QWEN3.options, ('silu',), tied=False)


def qwen3_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Qwen3 with the shape of `c`."""
  return dict(rotary_hf_config(c, 'silu'), attention_bias=False, use_sliding_window=False, sliding_window=None)


def gemma_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Gemma (1) config.json: GeGLU, RMSNorm times 1 + w, embeddings times
  sqrt(D), a tied head by default."""
  require(hf, 'hidden_activation', ('gelu_pytorch_tanh', None), None)
  require(hf, 'attention_bias', (False,), False)
  require(hf, 'use_bidirectional_attention', (False, None), None)
  return rotary_model_config(hf, GEMMA.options, ('gelu_pytorch_tanh', 'gelu'), tied=True)  # 'gelu' means tanh here


def gemma_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Gemma with the shape of `c`."""
  return dict(rotary_hf_config(c, 'gelu_pytorch_tanh'), attention_bias=False)


def layer_kinds(hf: dict) -> tuple[str, ...]:
  """Returns each layer's kind ('local' or 'global') from config.json's `layer_types` (transformers 5), else from
  the older `sliding_window_pattern` (every n-th layer global) or Gemma 2's alternation; raises UserError naming an
  unknown type."""
  count, types = integer(hf, 'num_hidden_layers'), hf.get('layer_types')
  if types is None:
    every = integer(hf, 'sliding_window_pattern', 2)
    return tuple('global' if (i + 1) % every == 0 else 'local' for i in range(count))
  kinds = {'sliding_attention': 'local', 'full_attention': 'global'}
  if not isinstance(types, list) or len(types) != count or any(t not in kinds for t in types):
    raise UserError(f'config.json has layer_types={types!r}, which flaxlm cannot express: it converts a list of '
                    f'{count} (num_hidden_layers) entries, each "sliding_attention" or "full_attention".')
  return tuple(kinds[t] for t in types)


def windowed(hf: dict) -> dict:
  """Returns the local-attention options of a Gemma 2 or 3 config.json: its layer pattern and window."""
  kinds = layer_kinds(hf)
  window = integer(hf, 'sliding_window', 4096) if 'local' in kinds else 0
  return dict(layer_pattern=pattern_lib.as_text(pattern_lib.shortest(kinds)), window=window)


def softcap(hf: dict, key: str) -> float:
  """Returns config.json's soft cap `key` (null: 0, not capped), checked."""
  return 0.0 if hf.get(key) is None else number(hf, key)


def gemma2_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Gemma 2 config.json: Gemma's, plus norms after attention and the MLP,
  local layers alternating with global ones, query_pre_attn_scalar and soft caps on attention and output logits."""
  require(hf, 'attention_bias', (False,), False)
  require(hf, 'hidden_activation', ('gelu_pytorch_tanh', None), None)
  require(hf, 'use_bidirectional_attention', (False, None), None)
  section = rotary_model_config(hf, GEMMA2.options, ('gelu_pytorch_tanh',), tied=True)
  return dict(section, **windowed(hf), query_scalar=number(hf, 'query_pre_attn_scalar', 256),
              attention_softcap=softcap(hf, 'attn_logit_softcapping'),
              logits_softcap=softcap(hf, 'final_logit_softcapping'))


def gemma2_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Gemma 2 (or Gemma 3's text model, which adds q/k norms) with the shape of `c`."""
  kinds = {'local': 'sliding_attention', 'global': 'full_attention'}
  shared = {key: value for key, value in rotary_hf_config(c, '').items() if key != 'hidden_act'}  # hidden_activation
  return dict(shared, hidden_activation='gelu_pytorch_tanh', attention_bias=False,
              layer_types=[kinds[kind] for kind in c.layer_kinds], sliding_window=c.window or None,
              query_pre_attn_scalar=whole(c.query_scalar) or c.head_dim,
              attn_logit_softcapping=c.attention_softcap or None,
              final_logit_softcapping=c.logits_softcap or None)


def whole(x: float) -> float | int:
  """Returns `x` as an int when it is a whole number (transformers 5 types query_pre_attn_scalar as an int)."""
  return int(x) if float(x).is_integer() else x


def gemma3_rope(hf: dict) -> dict:
  """Returns the rotary options of a Gemma 3 config.json: its global layers' (scaling included), and its local
  layers' own base, from `rope_parameters` per layer type (transformers 5) or the older rope_theta,
  rope_local_base_freq and rope_scaling; raises UserError if local layers' rotation is scaled."""
  per_kind = hf.get('rope_parameters')
  if isinstance(per_kind, dict) and 'full_attention' in per_kind:
    local = per_kind.get('sliding_attention') or {}
    require(local, 'rope_type', ('default',), 'default')
    return dict(rope_options({'rope_parameters': per_kind['full_attention']}),
                rope_local_theta=number(local, 'rope_theta', 10_000.0))
  return dict(rope_options(hf), rope_local_theta=number(hf, 'rope_local_base_freq', 10_000.0))


def gemma3_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Gemma 3 text config.json (Gemma3ForCausalLM's, or the `text_config` of a
  multimodal Gemma3ForConditionalGeneration folder): Gemma 2's, plus q/k norms and two rotary bases."""
  section = gemma2_model_config({**hf, 'sliding_window_pattern': hf.get('sliding_window_pattern', 6)})
  return dict(section, **GEMMA3.options, **gemma3_rope(hf))


def gemma3_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Gemma 3's text model (Gemma3ForCausalLM) with the shape of `c`: its rotary settings
  per layer type."""
  local = {'rope_type': 'default', 'rope_theta': c.rope.local_theta or c.rope.theta}
  return dict(gemma2_hf_config(c), rope_parameters={'full_attention': rope_to_hf(c), 'sliding_attention': local})


def text_config(hf: dict) -> dict:
  """Returns the language model's config.json of a multimodal Gemma 3 folder (model_type gemma3): its `text_config`,
  with the keys transformers takes from the whole; raises UserError if it has none."""
  text = hf.get('text_config')
  if not isinstance(text, dict):
    raise UserError('config.json has model_type=\'gemma3\' (a multimodal Gemma 3) without its text_config, the '
                    'language model\'s settings: pass the folder\'s own config.json, or a text-only gemma3_text one.')
  return {'vocab_size': 262_208, 'tie_word_embeddings': hf.get('tie_word_embeddings', True), **text}


def layer_norm(t: Tensors, name: str) -> Tree:
  """Returns flax LayerNorm params from HF's `name`.weight and `name`.bias."""
  return {'LayerNorm_0': {'scale': t[f'{name}.weight'], 'bias': t[f'{name}.bias']}}


def layer_norm_to_hf(p: Tree, name: str) -> Tensors:
  """Returns HF's `name`.weight and `name`.bias from flax LayerNorm params."""
  return {f'{name}.weight': p['LayerNorm_0']['scale'], f'{name}.bias': p['LayerNorm_0']['bias']}


def conv1d(t: Tensors, name: str) -> Tree:
  """Returns flax Dense params from a GPT-2 Conv1D (its weight is (in, out), like a flax kernel)."""
  return {'kernel': t[f'{name}.weight'], 'bias': t[f'{name}.bias']}


def gpt2_layer_from_hf(t: Tensors, c: ModelConfig) -> Tree:
  """Returns one layer's flaxlm params from a GPT-2 block's tensors (names after 'h.{i}.')."""
  D, H, K = c.width, c.num_heads, c.head_dim
  w_DxD = np.split(t['attn.c_attn.weight'], 3, axis=1)  # query, key and value packed along the output axis
  b_D = np.split(t['attn.c_attn.bias'], 3)
  attention = {name: {'kernel': w.reshape(D, H, K), 'bias': b.reshape(H, K)} for name, w, b in zip(QKV, w_DxD, b_D)}
  attention['out'] = {'kernel': t['attn.c_proj.weight'].reshape(H, K, D), 'bias': t['attn.c_proj.bias']}
  return {'attention': attention, 'attention_norm': layer_norm(t, 'ln_1'),
          'mlp': {'up': conv1d(t, 'mlp.c_fc'), 'down': conv1d(t, 'mlp.c_proj')}, 'mlp_norm': layer_norm(t, 'ln_2')}


def gpt2_layer_to_hf(p: Tree, c: ModelConfig) -> Tensors:
  """Returns a GPT-2 block's tensors (names after 'h.{i}.') from one layer's flaxlm params."""
  a, D = p['attention'], c.width
  return {**layer_norm_to_hf(p['attention_norm'], 'ln_1'),
          'attn.c_attn.weight': np.concatenate([a[name]['kernel'].reshape(D, D) for name in QKV], axis=1),
          'attn.c_attn.bias': np.concatenate([a[name]['bias'].reshape(D) for name in QKV]),
          'attn.c_proj.weight': a['out']['kernel'].reshape(D, D), 'attn.c_proj.bias': a['out']['bias'],
          **layer_norm_to_hf(p['mlp_norm'], 'ln_2'),
          'mlp.c_fc.weight': p['mlp']['up']['kernel'], 'mlp.c_fc.bias': p['mlp']['up']['bias'],
          'mlp.c_proj.weight': p['mlp']['down']['kernel'], 'mlp.c_proj.bias': p['mlp']['down']['bias']}


def gpt2_outer_from_hf(t: Tensors) -> Tree:
  """Returns flaxlm's token and position embeddings and final norm from GPT-2's wte, wpe and ln_f."""
  return {'embed': {'embedding': t['wte.weight']}, 'position_embed': {'embedding': t['wpe.weight']},
          'final_norm': layer_norm(t, 'ln_f')}


def gpt2_outer_to_hf(p: Tree) -> Tensors:
  """Returns GPT-2's wte, wpe and ln_f from flaxlm's embeddings and final norm."""
  return {'wte.weight': p['embed']['embedding'], 'wpe.weight': p['position_embed']['embedding'],
          **layer_norm_to_hf(p['final_norm'], 'ln_f')}


def projection(t: Tensors, name: str, shape: tuple[int, ...], bias: bool) -> Tree:
  """Returns flax Einsum params of the nn.Linear `name` (weight (out, in)) as a D x `shape` kernel (and a bias)."""
  params = {'kernel': t[f'{name}.weight'].T.reshape(-1, *shape)}
  if bias:
    params['bias'] = t[f'{name}.bias'].reshape(shape)
  return params


def projection_to_hf(p: Tree, name: str) -> Tensors:
  """Returns the nn.Linear `name`'s weight (out, in) (and bias) of flax Einsum params with a D x ... kernel."""
  tensors = {f'{name}.weight': p['kernel'].reshape(p['kernel'].shape[0], -1).T}
  if 'bias' in p:
    tensors[f'{name}.bias'] = p['bias'].reshape(-1)
  return tensors


def rms_norm(t: Tensors, name: str) -> Tree:
  """Returns flaxlm's RMSNorm params from HF's `name`.weight (as stored: Gemma's scale less 1 stays so)."""
  return {'RMSNorm_0': {'scale': t[f'{name}.weight']}}


def rotary_layer_from_hf(t: Tensors, c: ModelConfig) -> Tree:
  """Returns one layer's flaxlm params from a Llama-like decoder layer's tensors (names after 'layers.{i}.'): q/k/v
  biases with `qkv_bias`, q/k norms with `qk_norm`."""
  H, G, K, D = c.num_heads, c.num_kv_heads, c.head_dim, c.width
  attention = {name: projection(t, f'self_attn.{hf}_proj', (heads, K), c.qkv_bias)
               for name, hf, heads in (('query', 'q', H), ('key', 'k', G), ('value', 'v', G))}
  attention['out'] = {'kernel': t['self_attn.o_proj.weight'].T.reshape(H, K, D)}
  if c.qk_norm:
    attention.update(query_norm=rms_norm(t, 'self_attn.q_norm'), key_norm=rms_norm(t, 'self_attn.k_norm'))
  layer = {'attention': attention, 'attention_norm': rms_norm(t, 'input_layernorm'),
           'mlp_norm': rms_norm(t, 'post_attention_layernorm')}
  if 'mlp.gate_proj.weight' in t:  # else a sparse layer's, which `sparse_layer_from_hf` adds
    layer['mlp'] = {name: {'kernel': t[f'mlp.{name}_proj.weight'].T} for name in ('gate', 'up', 'down')}
  return layer


def rotary_layer_to_hf(p: Tree, c: ModelConfig) -> Tensors:
  """Returns a Llama-like decoder layer's tensors (names after 'layers.{i}.') from one layer's flaxlm params."""
  a = p['attention']
  tensors = {'input_layernorm.weight': p['attention_norm']['RMSNorm_0']['scale']}
  for name, hf in (('query', 'q'), ('key', 'k'), ('value', 'v')):
    tensors.update(projection_to_hf(a[name], f'self_attn.{hf}_proj'))
  tensors['self_attn.o_proj.weight'] = a['out']['kernel'].reshape(-1, c.width).T
  if c.qk_norm:
    tensors.update({'self_attn.q_norm.weight': a['query_norm']['RMSNorm_0']['scale'],
                    'self_attn.k_norm.weight': a['key_norm']['RMSNorm_0']['scale']})
  tensors['post_attention_layernorm.weight'] = p['mlp_norm']['RMSNorm_0']['scale']
  if 'mlp' in p:  # else a sparse layer's, which `sparse_layer_to_hf` adds
    tensors.update({f'mlp.{name}_proj.weight': p['mlp'][name]['kernel'].T for name in ('gate', 'up', 'down')})
  return tensors


MIXTRAL_EXPERTS = ('block_sparse_moe', ('w1', 'w3', 'w2'))  # the sparse MLP's name, and its experts' gate, up, down
QWEN3_MOE_EXPERTS = ('mlp', ('gate_proj', 'up_proj', 'down_proj'))


def sparse_layer_from_hf(experts: tuple[str, tuple[str, ...]]) -> Callable[[Tensors, ModelConfig], Tree]:
  """Returns the `layer_from_hf` of a sparse Llama-like model type whose mixture of experts is named `experts`: a
  layer with its router (`name`.gate, E x D) reads as 'moe', the experts' matrices stacked; a dense one as Llama's."""
  name, matrices = experts

  def from_hf(t: Tensors, c: ModelConfig) -> Tree:
    layer = rotary_layer_from_hf(t, c)
    if f'{name}.gate.weight' in t:
      stacked = lambda hf: np.stack([t[f'{name}.experts.{j}.{hf}.weight'].T for j in range(c.num_experts)])
      layer['moe'] = {'router': {'kernel': t[f'{name}.gate.weight'].T},
                      **{ours: {'kernel': stacked(hf)} for ours, hf in zip(('gate', 'up', 'down'), matrices)}}
    return layer
  return from_hf


def sparse_layer_to_hf(experts: tuple[str, tuple[str, ...]]) -> Callable[[Tree, ModelConfig], Tensors]:
  """Returns the `layer_to_hf` of a sparse Llama-like model type whose mixture of experts is named `experts` (see
  `sparse_layer_from_hf`): each expert's matrix a tensor of its own."""
  name, matrices = experts

  def to_hf(p: Tree, c: ModelConfig) -> Tensors:
    tensors = rotary_layer_to_hf(p, c)
    if 'moe' in p:
      tensors[f'{name}.gate.weight'] = p['moe']['router']['kernel'].T
      for ours, hf in zip(('gate', 'up', 'down'), matrices):
        tensors.update({f'{name}.experts.{j}.{hf}.weight': w.T for j, w in enumerate(p['moe'][ours]['kernel'])})
    return tensors
  return to_hf


def mixtral_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Mixtral config.json: Mistral's layers, each MLP E experts of which the router
  picks k, their weights renormalised; raises UserError for router noise or a sliding window."""
  no_sliding_window(hf)
  require(hf, 'router_jitter_noise', (0, 0.0, None), None)
  section = rotary_model_config(hf, MIXTRAL.options, ('silu',), tied=False)
  experts = integer(hf, 'num_local_experts')
  return dict(section, num_experts=experts, experts_per_token=per_token(hf, experts),
              expert_width=section['mlp_width'], balance_loss=router_weight(hf))


def per_token(hf: dict, experts: int) -> int:
  """Returns config.json's num_experts_per_tok, checked against its count of `experts`."""
  k = integer(hf, 'num_experts_per_tok')
  if k > experts:
    raise UserError(f'config.json has num_experts_per_tok={k}, above its {experts} experts: fix the value, or pass '
                    'the folder\'s own config.json.')
  return k


def router_weight(hf: dict) -> float:
  """Returns config.json's router_aux_loss_coef, the weight of the load-balancing loss (0 when absent, null or 0)."""
  return number(hf, 'router_aux_loss_coef') if hf.get('router_aux_loss_coef') not in (None, 0) else 0.0


def mixtral_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Mixtral with the shape of `c` (its experts' width the intermediate_size; head_dim null
  when it is width / heads, as transformers and the Hub's Mixtral write it)."""
  return dict(rotary_hf_config(c, 'silu'), intermediate_size=c.expert_width,
              head_dim=None if c.head_dim * c.num_heads == c.width else c.head_dim, num_local_experts=c.num_experts,
              num_experts_per_tok=c.experts_per_token, router_aux_loss_coef=c.balance_loss, router_jitter_noise=0.0,
              sliding_window=None, output_router_logits=False)


def dense_layers(hf: dict) -> int:
  """Returns how many first layers of a Qwen3-MoE config.json are dense (`mlp_only_layers` 0..n-1); raises UserError
  for dense layers elsewhere, or sparse layers spaced by a decoder_sparse_step other than 1."""
  require(hf, 'decoder_sparse_step', (1,), 1)
  dense = hf.get('mlp_only_layers') or []
  if not isinstance(dense, list) or dense != list(range(len(dense))):
    raise UserError(f'config.json has mlp_only_layers={dense!r}, which flaxlm cannot express: its dense layers are '
                    'the first n (mlp_only_layers [0, 1, ..., n-1]).')
  return len(dense)


def qwen3_moe_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Qwen3-MoE config.json: Qwen3's attention, then E experts of
  moe_intermediate_size in each layer but the first mlp_only_layers (dense, of intermediate_size)."""
  require(hf, 'attention_bias', (False,), False)
  full_attention(hf)
  section = rotary_model_config(hf, QWEN3_MOE.options, ('silu',), tied=False)
  experts = integer(hf, 'num_experts' if 'num_experts' in hf else 'num_local_experts')  # transformers 5: the latter
  return dict(section, num_experts=experts, experts_per_token=per_token(hf, experts),
              expert_width=integer(hf, 'moe_intermediate_size'), dense_layers=dense_layers(hf),
              router_renormalize=boolean(hf, 'norm_topk_prob', False), balance_loss=router_weight(hf))


def qwen3_moe_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Qwen3-MoE with the shape of `c`."""
  return dict(qwen3_hf_config(c), num_experts=c.num_experts, num_experts_per_tok=c.experts_per_token,
              moe_intermediate_size=c.expert_width, norm_topk_prob=c.router_renormalize, decoder_sparse_step=1,
              mlp_only_layers=list(range(c.dense_layers)), router_aux_loss_coef=c.balance_loss,
              output_router_logits=False)


GEMMA2_NORMS = (('attention_norm', 'input_layernorm'), ('attention_post_norm', 'post_attention_layernorm'),
                ('mlp_norm', 'pre_feedforward_layernorm'), ('mlp_post_norm', 'post_feedforward_layernorm'))


def gemma2_layer_from_hf(t: Tensors, c: ModelConfig) -> Tree:
  """Returns one layer's flaxlm params from a Gemma 2 or 3 decoder layer's tensors: Llama's projections, and four
  norms (HF's post_attention_layernorm is the norm of the attention's output there, not the MLP's input)."""
  norms = {hf: t[f'{hf}.weight'] for _, hf in GEMMA2_NORMS}
  layer = rotary_layer_from_hf({**t, 'post_attention_layernorm.weight': norms['pre_feedforward_layernorm']}, c)
  return {**layer, **{ours: rms_norm(t, hf) for ours, hf in GEMMA2_NORMS}}


def gemma2_layer_to_hf(p: Tree, c: ModelConfig) -> Tensors:
  """Returns a Gemma 2 or 3 decoder layer's tensors from one layer's flaxlm params (see `gemma2_layer_from_hf`)."""
  t = rotary_layer_to_hf(p, c)
  return {**t, **{f'{hf}.weight': p[ours]['RMSNorm_0']['scale'] for ours, hf in GEMMA2_NORMS}}


def phi3_layer_from_hf(t: Tensors, c: ModelConfig) -> Tree:
  """Returns one layer's flaxlm params from a Phi-3 decoder layer's tensors: its fused qkv_proj split into q, k and v
  (rows H*K, G*K, G*K) and its fused gate_up_proj into gate and up (F rows each), then read as Llama's."""
  H, G, K = c.num_heads, c.num_kv_heads, c.head_dim
  q, k, v = np.split(t['self_attn.qkv_proj.weight'], [H * K, (H + G) * K])
  gate, up = np.split(t['mlp.gate_up_proj.weight'], 2)
  split = {'self_attn.q_proj.weight': q, 'self_attn.k_proj.weight': k, 'self_attn.v_proj.weight': v,
           'mlp.gate_proj.weight': gate, 'mlp.up_proj.weight': up}
  fused = ('self_attn.qkv_proj.weight', 'mlp.gate_up_proj.weight')
  return rotary_layer_from_hf({**{name: x for name, x in t.items() if name not in fused}, **split}, c)


def phi3_layer_to_hf(p: Tree, c: ModelConfig) -> Tensors:
  """Returns a Phi-3 decoder layer's tensors from one layer's flaxlm params: Llama's, q, k and v joined into
  qkv_proj and gate and up into gate_up_proj."""
  t = rotary_layer_to_hf(p, c)
  qkv = np.concatenate([t.pop(f'self_attn.{name}_proj.weight') for name in 'qkv'])
  gate_up = np.concatenate([t.pop(f'mlp.{name}_proj.weight') for name in ('gate', 'up')])
  return {**t, 'self_attn.qkv_proj.weight': qkv, 'mlp.gate_up_proj.weight': gate_up}


def rotary_outer_from_hf(t: Tensors) -> Tree:
  """Returns flaxlm's token embedding and final norm from a Llama-like model's embed_tokens and norm."""
  return {'embed': {'embedding': t['embed_tokens.weight']}, 'final_norm': rms_norm(t, 'norm')}


def rotary_outer_to_hf(p: Tree) -> Tensors:
  """Returns a Llama-like model's embed_tokens and norm from flaxlm's token embedding and final norm."""
  return {'embed_tokens.weight': p['embed']['embedding'], 'norm.weight': p['final_norm']['RMSNorm_0']['scale']}


def rotary_family(architecture: str, options: dict, model_config: Callable[[dict], dict],
                  hf_config: Callable[[ModelConfig], dict], layer_from_hf: Callable = rotary_layer_from_hf,
                  layer_to_hf: Callable = rotary_layer_to_hf, free: tuple[str, ...] = (),
                  experts: tuple[str, tuple[str, ...]] | None = None) -> Family:
  """Returns the Family of a Llama-like model type: its tensors are named as Llama's (but the layer's where
  `layer_from_hf` and `layer_to_hf` say otherwise), its options say the rest; the options `free` name are each
  model's own (Gemma 2's window), not the type's. A sparse type's `experts` names its mixtures of experts."""
  fixed = {key: value for key, value in {**PLAIN, **options}.items() if key not in free}
  if experts:
    layer_from_hf, layer_to_hf = sparse_layer_from_hf(experts), sparse_layer_to_hf(experts)
  return Family(architecture, 'model.', 'layers', 'num_hidden_layers', fixed, model_config, hf_config,
                rotary_outer_from_hf, rotary_outer_to_hf, layer_from_hf, layer_to_hf,
                buffers=('self_attn.rotary_emb.inv_freq',), sparse=bool(experts))  # the rotary frequencies


# The options that tell model types apart, as flaxlm's own models have them.
PLAIN = dict(positions='rotary', norm='rmsnorm', mlp='swiglu', use_bias=False, qkv_bias=False, qk_norm=False,
             norm_offset=0.0, scale_embeddings=False, post_norms=False, layer_pattern='global', window=0,
             query_scalar=0.0, attention_softcap=0.0, logits_softcap=0.0, rope_local_theta=0.0)
WINDOWED = ('layer_pattern', 'window', 'query_scalar', 'attention_softcap', 'logits_softcap')  # each Gemma 2's own
GEMMA_OPTIONS = dict(mlp='geglu', norm_offset=1.0, scale_embeddings=True)
ROPE_SCALINGS = {'default': 'none', 'linear': 'linear', 'llama3': 'llama3', 'yarn': 'yarn'}  # HF's rope_type: ours
ROPE_KEYS = {  # each HF rope_type's settings, and the model options they set
    'default': {}, 'linear': {'factor': 'rope_factor'},
    'llama3': {'factor': 'rope_factor', 'low_freq_factor': 'rope_low_freq_factor',
               'high_freq_factor': 'rope_high_freq_factor', 'original_max_position_embeddings': 'rope_original_length'},
    'yarn': {'factor': 'rope_factor', 'original_max_position_embeddings': 'rope_original_length'}}
GPT2 = Family('GPT2LMHeadModel', 'transformer.', 'h', 'n_layer',
              dict(PLAIN, positions='learned', norm='layernorm', mlp='gelu', use_bias=True),
              gpt2_model_config, gpt2_hf_config, gpt2_outer_from_hf, gpt2_outer_to_hf, gpt2_layer_from_hf,
              gpt2_layer_to_hf, buffers=('attn.bias', 'attn.masked_bias'))  # the causal mask
LLAMA = rotary_family('LlamaForCausalLM', {}, llama_model_config, llama_hf_config)
MISTRAL = rotary_family('MistralForCausalLM', {}, mistral_model_config, mistral_hf_config)
QWEN2 = rotary_family('Qwen2ForCausalLM', dict(qkv_bias=True), qwen2_model_config, qwen2_hf_config)
QWEN3 = rotary_family('Qwen3ForCausalLM', dict(qk_norm=True), qwen3_model_config, qwen3_hf_config)
GEMMA = rotary_family('GemmaForCausalLM', GEMMA_OPTIONS, gemma_model_config, gemma_hf_config)
PHI3 = rotary_family('Phi3ForCausalLM', {}, phi3_model_config, phi3_hf_config, phi3_layer_from_hf, phi3_layer_to_hf)
GEMMA2 = rotary_family('Gemma2ForCausalLM', dict(GEMMA_OPTIONS, post_norms=True), gemma2_model_config,
                       gemma2_hf_config, gemma2_layer_from_hf, gemma2_layer_to_hf, free=WINDOWED)
GEMMA3 = dataclasses.replace(
    rotary_family('Gemma3ForCausalLM', dict(GEMMA_OPTIONS, post_norms=True, qk_norm=True), gemma3_model_config,
                  gemma3_hf_config, gemma2_layer_from_hf, gemma2_layer_to_hf, free=(*WINDOWED, 'rope_local_theta')),
    also_prefixes=('model.language_model.', 'language_model.model.'),  # a multimodal folder's language model's,
    skipped=('model.vision_tower.', 'model.multi_modal_projector.', 'vision_tower.', 'multi_modal_projector.'))
MIXTRAL = rotary_family('MixtralForCausalLM', dict(dense_layers=0, router_renormalize=True), mixtral_model_config,
                        mixtral_hf_config, experts=MIXTRAL_EXPERTS)
QWEN3_MOE = rotary_family('Qwen3MoeForCausalLM', dict(qk_norm=True), qwen3_moe_model_config, qwen3_moe_hf_config,
                          experts=QWEN3_MOE_EXPERTS)
FAMILIES = {'gpt2': GPT2, 'llama': LLAMA, 'mistral': MISTRAL, 'qwen2': QWEN2, 'qwen3': QWEN3, 'gemma': GEMMA,
            'phi3': PHI3, 'gemma2': GEMMA2, 'gemma3_text': GEMMA3, 'mixtral': MIXTRAL, 'qwen3_moe': QWEN3_MOE}
MULTIMODAL = {'gemma3': 'gemma3_text'}  # a model type whose folder holds a language model of another, its text_config


def family_of_hf(hf: dict) -> Family:
  """Returns the Family of a config.json (a multimodal one's language model's); raises UserError naming the supported
  model types for any other."""
  model_type = hf.get('model_type')
  if not isinstance(model_type, str) or model_type not in (*FAMILIES, *MULTIMODAL):
    raise UserError(f'config.json has model_type={model_type!r}: flaxlm converts only '
                    f'{", ".join([*FAMILIES, *MULTIMODAL])}.')
  return FAMILIES[MULTIMODAL.get(model_type, model_type)]


def family_of(c: ModelConfig) -> tuple[str, Family]:
  """Returns (model_type, Family) of model `c`: its recorded `hf_model_type` if its options are that type's, else
  the first type whose options it has; raises UserError if HF has no such model type."""
  fits = lambda family: (family.sparse == (c.num_experts > 0) and
                         all(option_value(c, key) == value for key, value in family.options.items()))
  if c.hf_model_type and c.hf_model_type not in FAMILIES:
    raise UserError(f'model.hf_model_type={c.hf_model_type!r} is not one of {", ".join(FAMILIES)}: set '
                    '--config.model.hf_model_type (\'\' picks the first type that fits the model\'s options).')
  types = [t for t, family in FAMILIES.items() if fits(family)]
  if types:
    model_type = c.hf_model_type if c.hf_model_type in types else types[0]
    return model_type, FAMILIES[model_type]
  differences = lambda family: ', '.join([f'{k}={v}' for k, v in family.options.items() if option_value(c, k) != v] +
                                         ([f'num_experts{">" if family.sparse else "="}0']
                                          if family.sparse != (c.num_experts > 0) else []))
  raise UserError(f'this model is neither GPT-2 nor any model type flaxlm exports ('
                  f'{"; ".join(f"{t} needs {differences(family)}" for t, family in FAMILIES.items())}): '
                  'Hugging Face has no model type for it.')


def model_config(hf: dict) -> dict:
  """Returns flaxlm's model section (the keys of configs/base.py's `model`) for an HF config.json."""
  family = family_of_hf(hf)
  try:
    text = text_config(hf) if hf['model_type'] in MULTIMODAL else hf
    return {**family.model_config(text), 'hf_model_type': MULTIMODAL.get(hf['model_type'], hf['model_type'])}
  except KeyError as e:
    raise UserError(f'config.json lacks {e.args[0]!r}, which every {hf["model_type"]} config has: pass the '
                    'folder\'s own config.json.') from None


def hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of the HF model `c` describes; raises UserError if HF cannot express it."""
  model_type, family = family_of(c)
  return {'architectures': [family.architecture], 'model_type': model_type, 'dtype': 'float32', **family.hf_config(c)}
