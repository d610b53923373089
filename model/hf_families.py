"""Hugging Face model types: how each one's config.json and tensor names map onto flaxlm's model options and params.

Pure: config.json dicts and {name: array} dicts in and out. One `Family` per supported HF model type says how its
names and shapes map; model/hf.py converts whole checkpoints with them, and train/commands/convert.py reads and
writes the files.

Shape key: D width, H query heads, G key/value heads, K head dimension, F MLP width, V vocabulary, P positions.
GPT-2's Conv1D weights are stored (in, out) like flax kernels; Llama's nn.Linear weights (out, in), transposed.
HF's rotary embedding rotates halves of each head (rotate_half), as `model.transformer.rotate` does.
"""

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.model.transformer import ModelConfig

QKV = ('query', 'key', 'value')
Tensors = dict[str, np.ndarray]
Tree = dict[str, Any]

@dataclasses.dataclass(frozen=True)
class Family:
  """How one HF model type maps onto flaxlm: the options it fixes, its config.json, and its tensor names."""
  architecture: str  # the HF class its checkpoints are saved from
  prefix: str  # the body's tensor names start with this; the output head's ('lm_head.weight') does not
  layers: str  # layer i's tensor names start with f'{prefix}{layers}.{i}.'
  eps_key: str  # config.json's norm epsilon
  options: dict[str, Any]  # the flaxlm model options every model of this type has
  model_config: Callable[[dict], dict]  # config.json -> flaxlm's model section
  hf_config: Callable[[ModelConfig], dict]  # model config -> config.json
  outer_from_hf: Callable[[Tensors], Tree]  # embeddings and final norm
  outer_to_hf: Callable[[Tree], Tensors]
  layer_from_hf: Callable[[Tensors, ModelConfig], Tree]  # one layer; names without the layer prefix
  layer_to_hf: Callable[[Tree, ModelConfig], Tensors]
  buffers: tuple[str, ...]  # per-layer tensors older transformers saved that are not weights (flaxlm computes them)


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
  """Returns config.json's `key` (or `default`); raises UserError unless it is a positive integer."""
  found = setting(hf, key, default)
  if type(found) is not int or found <= 0:
    raise UserError(f'config.json has {key}={found!r}, which is not a positive integer: fix the value, or pass the '
                    'folder\'s own config.json.')
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


def llama_model_config(hf: dict) -> dict:
  """Returns flaxlm's model section for a Llama config.json: rotary positions, RMSNorm, SwiGLU, no biases."""
  require(hf, 'hidden_act', ('silu',), 'silu')
  require(hf, 'attention_bias', (False,), False)
  require(hf, 'mlp_bias', (False,), False)
  require(rope(hf), 'rope_type', ('default',), 'default')
  width, heads = integer(hf, 'hidden_size'), integer(hf, 'num_attention_heads')
  kv_heads = integer(hf, 'num_key_value_heads', heads)
  divides(('num_attention_heads', heads), ('hidden_size', width))
  divides(('num_key_value_heads', kv_heads), ('num_attention_heads', heads))
  require(hf, 'head_dim', (width // heads, None), None)
  return dict(vocab_size=integer(hf, 'vocab_size'), num_layers=integer(hf, 'num_hidden_layers'), num_heads=heads,
              num_kv_heads=kv_heads, width=width,
              mlp_width=integer(hf, 'intermediate_size'), max_length=integer(hf, 'max_position_embeddings'),
              rope_theta=number(rope(hf), 'rope_theta'), tie_embeddings=boolean(hf, 'tie_word_embeddings', False),
              norm_eps=number(hf, 'rms_norm_eps', 1e-6), **LLAMA.options)


def llama_hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of Llama with the shape of `c` (rotary settings in both the new and the old keys)."""
  return dict(vocab_size=c.vocab_size, num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads,
              num_key_value_heads=c.num_kv_heads, hidden_size=c.width, head_dim=c.head_dim,
              intermediate_size=c.mlp_width, max_position_embeddings=c.max_length, hidden_act='silu',
              attention_bias=False, mlp_bias=False, tie_word_embeddings=c.tie_embeddings, rms_norm_eps=c.norm_eps,
              rope_parameters={'rope_theta': c.rope_theta, 'rope_type': 'default'}, rope_theta=c.rope_theta)


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


def llama_layer_from_hf(t: Tensors, c: ModelConfig) -> Tree:
  """Returns one layer's flaxlm params from a Llama decoder layer's tensors (names after 'layers.{i}.')."""
  D, H, G, K = c.width, c.num_heads, c.num_kv_heads, c.head_dim
  return {'attention': {'query': {'kernel': t['self_attn.q_proj.weight'].T.reshape(D, H, K)},
                        'key': {'kernel': t['self_attn.k_proj.weight'].T.reshape(D, G, K)},
                        'value': {'kernel': t['self_attn.v_proj.weight'].T.reshape(D, G, K)},
                        'out': {'kernel': t['self_attn.o_proj.weight'].T.reshape(H, K, D)}},
          'attention_norm': {'RMSNorm_0': {'scale': t['input_layernorm.weight']}},
          'mlp': {name: {'kernel': t[f'mlp.{name}_proj.weight'].T} for name in ('gate', 'up', 'down')},
          'mlp_norm': {'RMSNorm_0': {'scale': t['post_attention_layernorm.weight']}}}


def llama_layer_to_hf(p: Tree, c: ModelConfig) -> Tensors:
  """Returns a Llama decoder layer's tensors (names after 'layers.{i}.') from one layer's flaxlm params."""
  a, D = p['attention'], c.width
  return {'input_layernorm.weight': p['attention_norm']['RMSNorm_0']['scale'],
          'self_attn.q_proj.weight': a['query']['kernel'].reshape(D, -1).T,
          'self_attn.k_proj.weight': a['key']['kernel'].reshape(D, -1).T,
          'self_attn.v_proj.weight': a['value']['kernel'].reshape(D, -1).T,
          'self_attn.o_proj.weight': a['out']['kernel'].reshape(-1, D).T,
          'post_attention_layernorm.weight': p['mlp_norm']['RMSNorm_0']['scale'],
          **{f'mlp.{name}_proj.weight': p['mlp'][name]['kernel'].T for name in ('gate', 'up', 'down')}}


def llama_outer_from_hf(t: Tensors) -> Tree:
  """Returns flaxlm's token embedding and final norm from Llama's embed_tokens and norm."""
  return {'embed': {'embedding': t['embed_tokens.weight']}, 'final_norm': {'RMSNorm_0': {'scale': t['norm.weight']}}}


def llama_outer_to_hf(p: Tree) -> Tensors:
  """Returns Llama's embed_tokens and norm from flaxlm's token embedding and final norm."""
  return {'embed_tokens.weight': p['embed']['embedding'], 'norm.weight': p['final_norm']['RMSNorm_0']['scale']}


GPT2 = Family('GPT2LMHeadModel', 'transformer.', 'h', 'layer_norm_epsilon',
              dict(positions='learned', norm='layernorm', mlp='gelu', use_bias=True),
              gpt2_model_config, gpt2_hf_config, gpt2_outer_from_hf, gpt2_outer_to_hf, gpt2_layer_from_hf,
              gpt2_layer_to_hf, buffers=('attn.bias', 'attn.masked_bias'))  # the causal mask
LLAMA = Family('LlamaForCausalLM', 'model.', 'layers', 'rms_norm_eps',
               dict(positions='rotary', norm='rmsnorm', mlp='swiglu', use_bias=False),
               llama_model_config, llama_hf_config, llama_outer_from_hf, llama_outer_to_hf, llama_layer_from_hf,
               llama_layer_to_hf, buffers=('self_attn.rotary_emb.inv_freq',))  # the rotary frequencies
FAMILIES = {'gpt2': GPT2, 'llama': LLAMA}


def family_of_hf(hf: dict) -> Family:
  """Returns the Family of a config.json; raises UserError naming the supported model types for any other."""
  model_type = hf.get('model_type')
  if not isinstance(model_type, str) or model_type not in FAMILIES:
    raise UserError(f'config.json has model_type={model_type!r}: flaxlm converts only {", ".join(FAMILIES)}.')
  return FAMILIES[model_type]


def family_of(c: ModelConfig) -> tuple[str, Family]:
  """Returns (model_type, Family) whose options `c` has; raises UserError if HF has no such model type."""
  for model_type, family in FAMILIES.items():
    if all(getattr(c, key) == value for key, value in family.options.items()):
      return model_type, family
  options = lambda o: ', '.join(f'{k}={v}' for k, v in o.items())
  have = options({key: getattr(c, key) for key in GPT2.options})
  raise UserError(f'this model ({have}) is neither GPT-2 ({options(GPT2.options)}) nor Llama '
                  f'({options(LLAMA.options)}): Hugging Face has no model type for it.')


def model_config(hf: dict) -> dict:
  """Returns flaxlm's model section (the keys of configs/base.py's `model`) for an HF config.json."""
  family = family_of_hf(hf)
  try:
    return family.model_config(hf)
  except KeyError as e:
    raise UserError(f'config.json lacks {e.args[0]!r}, which every {hf["model_type"]} config has: pass the '
                    'folder\'s own config.json.') from None


def hf_config(c: ModelConfig) -> dict:
  """Returns the config.json of the HF model `c` describes; raises UserError if HF cannot express it."""
  model_type, family = family_of(c)
  return {'architectures': [family.architecture], 'model_type': model_type, 'dtype': 'float32', **family.hf_config(c)}
