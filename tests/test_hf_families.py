"""Tests of model/hf_families.py: every Hugging Face model type flaxlm converts computes transformers' logits, imported
and after a round trip back to HF, and what a family cannot express is refused by name.

No torch here: the fixtures (tests/fixtures/make_hf_fixtures.py) hold tiny random models of each family saved by
transformers, with the float32 logits transformers computed for fixed token ids.
"""

import dataclasses
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.configs.options import value as option_value
from flaxlm.model import hf, hf_families
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
NAMES = ('hf_gpt2', 'hf_llama', 'hf_llama3', 'hf_mistral', 'hf_qwen2', 'hf_qwen3', 'hf_gemma', 'hf_phi3', 'hf_gemma2',
         'hf_gemma3', 'hf_gemma3_multimodal', 'hf_mixtral', 'hf_qwen3_moe')
# float32 logits of a different program (XLA, not torch) computing the same function: errors of a few ulps of the
# logits' scale per operation, summed over a few hundred operations, stay well below 1e-4 of that scale; a misplaced
# tensor or option errs by O(1) of it.
TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Imported:
  """A fixture folder and what flaxlm makes of it."""
  name: str
  config: dict  # the folder's config.json
  tensors: hf.Tensors  # its model.safetensors
  model: ModelConfig
  params: hf.Tree


def model_of(config: dict) -> ModelConfig:
  """Returns the flaxlm model config of an HF config.json, built as flaxlm-convert builds it."""
  section = base.model_config()
  section.update(hf_families.model_config(config))
  return ModelConfig.from_config(section, 0)


def load(name: str) -> Imported:
  """Returns the fixture `name` imported."""
  config = json.loads((FIXTURES / name / 'config.json').read_text())
  tensors = safetensors.numpy.load_file(FIXTURES / name / 'model.safetensors')
  c = model_of(config)
  return Imported(name, config, tensors, c, hf.params_from_hf(tensors, c))


@functools.partial(jax.jit, static_argnums=0)
def logits(c: ModelConfig, params: hf.Tree, tokens_BxT: jax.Array) -> jax.Array:
  """Returns model `c`'s float32 logits, compiled once per model."""
  return Transformer(c).apply({'params': params}, tokens_BxT)


def assert_logits_match(name: str, c: ModelConfig, params: hf.Tree) -> None:
  """Checks model `c` computes the fixture's logits within TOLERANCE of their largest magnitude."""
  with np.load(FIXTURES / name / 'reference.npz', allow_pickle=False) as data:
    tokens_BxT, expected_BxTxV = data['tokens_BxT'], data['logits_BxTxV']
  error = np.abs(np.asarray(logits(c, params, tokens_BxT)) - expected_BxTxV).max()
  assert error <= TOLERANCE * np.abs(expected_BxTxV).max(), (name, error)


@pytest.fixture(scope='module', params=NAMES)
def imported(request) -> Imported:
  """Each fixture folder imported once per module."""
  return load(request.param)


def test_imported_models_compute_transformers_logits(imported):
  assert_logits_match(imported.name, imported.model, imported.params)


def language_model(imported: Imported) -> tuple[hf.Tensors, dict]:
  """Returns the tensors and config.json of the fixture's language model: a multimodal folder's text model, its
  tensors named as a text-only one names them, without the vision tower; any other folder's whole."""
  if imported.config['model_type'] not in hf_families.MULTIMODAL:
    return imported.tensors, imported.config
  text = {'model.' + name.removeprefix('language_model.model.'): x for name, x in imported.tensors.items()
          if name.startswith('language_model.')}
  whole = {key: imported.config[key] for key in ('tie_word_embeddings', 'dtype')}
  return text, {**imported.config['text_config'], **whole, 'architectures': ['Gemma3ForCausalLM']}


@pytest.mark.parametrize('imported', ['hf_phi3', 'hf_gemma2', 'hf_gemma3', 'hf_gemma3_multimodal', 'hf_mixtral',
                                      'hf_qwen3_moe'], indirect=True)
def test_in_bfloat16_the_error_is_of_the_size_of_transformers_own(imported):
  """The fixtures that hold transformers' bfloat16 logits (the newer families): flaxlm holding and computing the
  model in bfloat16 errs against the float32 logits by at most twice what transformers errs in bfloat16. Both round
  the same values to 8 bits of mantissa at different places (measured ratios 0.7 to 1.1:
  benchmarks/hf_bf16_error.py); a step done in the wrong precision, or wrong, errs by far more."""
  with np.load(FIXTURES / imported.name / 'reference.npz', allow_pickle=False) as data:
    tokens_BxT, float32, theirs = data['tokens_BxT'], data['logits_BxTxV'], data['bfloat16_logits_BxTxV']
  params = jax.tree.map(lambda x: np.asarray(x, jnp.bfloat16), imported.params)
  ours = np.asarray(logits(dataclasses.replace(imported.model, dtype='bfloat16'), params, tokens_BxT))
  assert np.abs(ours - float32).max() <= 2 * np.abs(theirs - float32).max()


def test_a_round_trip_gives_back_every_tensor_and_the_config_and_computes_the_same_logits(imported):
  """A multimodal folder's language model comes back as the text-only model type's (Gemma3ForCausalLM)."""
  exported = hf.params_to_hf(imported.params, imported.model)
  tensors, fixture = language_model(imported)
  assert sorted(exported) == sorted(tensors)
  for key, x in tensors.items():
    assert exported[key].dtype == x.dtype and exported[key].shape == x.shape, key
    np.testing.assert_array_equal(exported[key], x, err_msg=key)
  written = hf_families.hf_config(imported.model)
  assert {k: v for k, v in written.items() if k in fixture} == {k: fixture[k] for k in written if k in fixture}
  # The rotary base under transformers 4's key too; Qwen3-MoE's experts as the Hub's config.json counts them
  # (transformers 5 writes num_local_experts, and reads either).
  assert set(written) - set(fixture) <= {'rope_theta', 'head_dim', 'num_experts'}
  again = model_of(written)
  assert again == imported.model
  assert_logits_match(imported.name, again, hf.params_from_hf(exported, again))


OPTIONS = {  # what each fixture exercises, as flaxlm's model options
    'hf_gpt2': dict(positions='learned', norm='layernorm', mlp='gelu', use_bias=True, tie_embeddings=True),
    'hf_llama': dict(num_kv_heads=2, rope_theta=1000.0, rope_scaling='none', tie_embeddings=False),
    'hf_llama3': dict(head_dim=24, rope_scaling='llama3', rope_factor=8.0, rope_low_freq_factor=1.0,
                      rope_high_freq_factor=4.0, rope_original_length=16, tie_embeddings=True),
    'hf_mistral': dict(rope_scaling='linear', rope_factor=2.0, hf_model_type='mistral'),
    'hf_qwen2': dict(qkv_bias=True, use_bias=False, rope_scaling='yarn', rope_factor=4.0, rope_original_length=16,
                     tie_embeddings=True),
    'hf_qwen3': dict(qk_norm=True, head_dim=32, qkv_bias=False),
    'hf_gemma': dict(mlp='geglu', norm_offset=1.0, scale_embeddings=True, num_kv_heads=1, head_dim=32,
                     tie_embeddings=True),
    'hf_phi3': dict(num_kv_heads=2, rope_scaling='none', tie_embeddings=False, hf_model_type='phi3'),
    'hf_gemma2': dict(post_norms=True, layer_pattern='local,global', window=4, query_scalar=24.0,
                      attention_softcap=5.0, logits_softcap=3.0, qk_norm=False, rope_local_theta=0.0),
    'hf_gemma3': dict(post_norms=True, qk_norm=True, layer_pattern='local*2,global', window=4, query_scalar=20.0,
                      attention_softcap=0.0, rope_theta=1000.0, rope_scaling='linear', rope_factor=2.0,
                      rope_local_theta=100.0),
    'hf_mixtral': dict(num_experts=4, experts_per_token=2, expert_width=32, router_renormalize=True, dense_layers=0,
                       balance_loss=0.001, qk_norm=False),
    'hf_qwen3_moe': dict(num_experts=4, experts_per_token=2, expert_width=32, mlp_width=96, router_renormalize=False,
                         dense_layers=1, qk_norm=True),
}
OPTIONS['hf_gemma3_multimodal'] = OPTIONS['hf_gemma3']


def test_each_fixture_exercises_its_family_s_options_and_exports_as_its_type(imported):
  assert {key: option_value(imported.model, key) for key in OPTIONS[imported.name]} == OPTIONS[imported.name]
  model_type = imported.config['model_type']
  assert hf_families.family_of(imported.model)[0] == hf_families.MULTIMODAL.get(model_type, model_type)


def test_llama_and_mistral_are_told_apart_by_the_recorded_type_alone():
  mistral = model_of(json.loads((FIXTURES / 'hf_mistral' / 'config.json').read_text()))
  assert hf_families.hf_config(mistral)['architectures'] == ['MistralForCausalLM']
  assert hf_families.hf_config(dataclasses.replace(mistral, hf_model_type=''))['model_type'] == 'llama'
  qkv_bias = dataclasses.replace(mistral, qkv_bias=True)  # options that no longer fit the recorded type win
  assert hf_families.hf_config(qkv_bias)['model_type'] == 'qwen2'


@pytest.mark.parametrize('name', ['hf_llama3', 'hf_mistral', 'hf_qwen2'])
def test_the_rotary_scaling_shows_in_the_reference_logits(name):
  """Without its scaling a fixture's logits are far outside the tolerance: the tests above check the scaling."""
  fixture = load(name)
  plain = dataclasses.replace(fixture.model, rope=dataclasses.replace(fixture.model.rope, scaling='none'))
  with pytest.raises(AssertionError):
    assert_logits_match(name, plain, fixture.params)


@pytest.mark.parametrize('name, changes', [
    ('hf_gemma2', dict(window=16, attention_softcap=0.0)), ('hf_gemma2', dict(logits_softcap=0.0, query_scalar=0.0)),
    ('hf_gemma3', dict(window=16)), ('hf_gemma3', dict(rope_local_theta=0.0)),
    ('hf_mixtral', dict(router_renormalize=False)), ('hf_qwen3_moe', dict(router_renormalize=True))])
def test_windows_caps_local_rotations_and_routing_show_in_the_reference_logits(name, changes):
  """Without them a fixture's logits are far outside the tolerance: the tests above check them."""
  fixture = load(name)
  local = {'rope': dataclasses.replace(fixture.model.rope, local_theta=0.0)} if 'rope_local_theta' in changes else {}
  changed = dataclasses.replace(fixture.model, **{k: v for k, v in changes.items() if k != 'rope_local_theta'}, **local)
  with pytest.raises(AssertionError):
    assert_logits_match(name, changed, fixture.params)


def fixture_config(name: str) -> dict:
  """Returns the fixture's config.json."""
  return json.loads((FIXTURES / name / 'config.json').read_text())


def rope_of(name: str, **changes) -> dict:
  """Returns the fixture's rope_parameters with `changes`."""
  return {'rope_parameters': {**fixture_config(name)['rope_parameters'], **changes}}


SUPPORTED = ('flaxlm converts only gpt2, llama, mistral, qwen2, qwen3, gemma, phi3, gemma2, gemma3_text, mixtral, '
             'qwen3_moe, gemma3')
BAD_CONFIGS = [  # (fixture, changes to its config.json (None removes a key), what the error says)
    ('hf_llama', {'model_type': 'falcon'}, f"model_type='falcon': {SUPPORTED}"),
    ('hf_gemma', {'model_type': 'gemma3n'}, f"model_type='gemma3n': {SUPPORTED}"),
    ('hf_llama', rope_of('hf_llama', rope_type='dynamic', factor=2.0), "rope_type='dynamic', which flaxlm cannot"),
    ('hf_llama', rope_of('hf_llama', rope_type='longrope'), "rope_type='longrope', which flaxlm cannot express"),
    ('hf_llama', {'rope_parameters': None, 'rope_scaling': {'type': 'dynamic', 'factor': 2.0}}, "rope_type='dynamic'"),
    ('hf_llama3', rope_of('hf_llama3', factor=None), "rope_type='llama3' without its 'factor'"),
    ('hf_llama3', rope_of('hf_llama3', low_freq_factor='one'), "low_freq_factor='one', which is not a positive"),
    ('hf_llama3', rope_of('hf_llama3', partial_rotary_factor=0.5), 'partial_rotary_factor=0.5'),
    ('hf_qwen2', rope_of('hf_qwen2', mscale=0.7), 'mscale=0.7, which flaxlm cannot express'),
    ('hf_qwen2', rope_of('hf_qwen2', beta_fast=16), 'beta_fast=16, which flaxlm cannot express'),
    ('hf_qwen2', rope_of('hf_qwen2', truncate=False), 'truncate=False, which flaxlm cannot express'),
    ('hf_qwen2', {'use_sliding_window': True}, 'use_sliding_window=True, which flaxlm cannot express'),
    ('hf_qwen2', {'layer_types': ['full_attention', 'sliding_attention']}, "layer_types with ['sliding_attention']"),
    ('hf_qwen3', {'attention_bias': True}, 'attention_bias=True, which flaxlm cannot express'),
    ('hf_mistral', {'sliding_window': 32}, 'sliding_window=32, which flaxlm cannot express'),
    ('hf_gemma', {'hidden_act': 'relu'}, "hidden_act='relu', which flaxlm cannot express"),
    ('hf_gemma', {'use_bidirectional_attention': True}, 'use_bidirectional_attention=True'),
    ('hf_llama', {'head_dim': None, 'num_attention_heads': 3},
     'num_attention_heads=3, which does not divide hidden_size=64'),
    ('hf_qwen3', {'head_dim': 0}, 'head_dim=0, which is not a positive integer'),
    ('hf_gpt2', {'activation_function': 'relu'}, "activation_function='relu'"),
    ('hf_gpt2', {'n_layer': 0}, 'n_layer=0, which is not a positive integer'),
    ('hf_gpt2', {'model_type': ['gpt2']}, f"model_type=['gpt2']: {SUPPORTED}"),
    ('hf_llama', {'attention_bias': True}, 'attention_bias=True'),
    ('hf_llama', {'mlp_bias': True}, 'mlp_bias=True'),
    ('hf_llama', {'hidden_size': None}, "lacks 'hidden_size'"),
    ('hf_llama', {'num_attention_heads': 'four'}, "num_attention_heads='four', which is not a positive integer"),
    ('hf_llama', {'num_attention_heads': 4.0}, 'num_attention_heads=4.0, which is not a positive integer'),
    ('hf_llama', {'vocab_size': -5}, 'vocab_size=-5, which is not a positive integer'),
    ('hf_llama', {'num_key_value_heads': True}, 'num_key_value_heads=True, which is not a positive integer'),
    ('hf_llama', {'rms_norm_eps': 'small'}, "rms_norm_eps='small', which is not a positive number"),
    ('hf_llama', {'rope_parameters': {'rope_theta': float('inf')}}, 'rope_theta=inf, which is not a positive'),
    ('hf_llama', {'rope_parameters': 'default'}, "rope_parameters='default', which is not an object"),
    ('hf_llama', {'tie_word_embeddings': 'no'}, "tie_word_embeddings='no', which is not true or false"),
    ('hf_llama', {'hidden_size': 10**10}, 'hidden_size=10000000000, which is not a positive integer of at most 2,147'),
    ('hf_gpt2', {'vocab_size': [50257]}, 'vocab_size=[50257], which is not a positive integer'),
    ('hf_llama', rope_of('hf_llama', rope_type=['linear']), "rope_type=['linear'], which flaxlm cannot express"),
    ('hf_qwen2', {'layer_types': 'full_attention'}, "layer_types with 'full_attention', which flaxlm cannot"),
    ('hf_qwen3', {'layer_types': [['full_attention']]}, "layer_types with [['full_attention']], which flaxlm"),
    # Phi-3's 128k variants (Phi-3-mini-128k, Phi-3.5): longrope, as their config.json writes it.
    ('hf_phi3', {'rope_parameters': None, 'rope_scaling': {'type': 'longrope', 'long_factor': [1.0] * 8,
                                                           'short_factor': [1.0] * 8}},
     "rope_type='longrope', which flaxlm cannot express"),
    ('hf_phi3', {'sliding_window': 32}, 'sliding_window=32, which flaxlm cannot express'),  # Phi-3-mini-4k: 2047
    ('hf_phi3', rope_of('hf_phi3', partial_rotary_factor=0.75), 'partial_rotary_factor=0.75'),  # Phi-4-mini
    ('hf_gemma3_multimodal', {'text_config': None}, "model_type='gemma3' (a multimodal Gemma 3) without its "
                                                    'text_config'),
    ('hf_gemma2', {'layer_types': ['sliding_attention', 'chunked_attention', 'full_attention']},
     "layer_types=['sliding_attention', 'chunked_attention', 'full_attention'], which flaxlm cannot express"),
    ('hf_gemma2', {'layer_types': ['full_attention']}, 'a list of 3 (num_hidden_layers) entries'),
    ('hf_gemma2', {'attn_logit_softcapping': -1.0}, 'attn_logit_softcapping=-1.0, which is not a positive number'),
    ('hf_gemma2', {'sliding_window': 0}, 'sliding_window=0, which is not a positive integer'),
    ('hf_gemma3', {'rope_parameters': {'full_attention': {'rope_type': 'default', 'rope_theta': 1e6},
                                       'sliding_attention': {'rope_type': 'linear', 'factor': 8.0}}},
     "rope_type='linear', which flaxlm cannot express"),
    ('hf_gemma3', {'use_bidirectional_attention': True}, 'use_bidirectional_attention=True'),
    ('hf_mixtral', {'router_jitter_noise': 0.1}, 'router_jitter_noise=0.1, which flaxlm cannot express'),
    ('hf_mixtral', {'sliding_window': 32}, 'sliding_window=32, which flaxlm cannot express'),
    ('hf_mixtral', {'num_experts_per_tok': 5}, 'num_experts_per_tok=5, above its 4 experts'),
    ('hf_mixtral', {'num_local_experts': 0}, 'num_local_experts=0, which is not a positive integer'),
    ('hf_qwen3_moe', {'mlp_only_layers': [1]}, 'mlp_only_layers=[1], which flaxlm cannot express'),
    ('hf_qwen3_moe', {'decoder_sparse_step': 2}, 'decoder_sparse_step=2, which flaxlm cannot express'),
    ('hf_qwen3_moe', {'norm_topk_prob': 'yes'}, "norm_topk_prob='yes', which is not true or false"),
]


@pytest.mark.parametrize('name, changes, fragment', BAD_CONFIGS)
def test_settings_flaxlm_cannot_express_are_refused_by_name(name, changes, fragment):
  config = {k: v for k, v in {**fixture_config(name), **changes}.items() if v is not None}
  with pytest.raises(UserError) as raised:
    hf_families.model_config(config)
  assert fragment in str(raised.value) and '\n' not in str(raised.value)


def test_a_mistral_without_a_window_or_with_one_as_long_as_its_context_imports():
  for window in (None, 64, 128):
    assert model_of({**fixture_config('hf_mistral'), 'sliding_window': window}).hf_model_type == 'mistral'


def test_models_hf_has_no_type_for_are_refused_on_export():
  llama, gpt2 = model_of(fixture_config('hf_llama')), model_of(fixture_config('hf_gpt2'))
  cases = [  # (model config, what the error says)
      (dataclasses.replace(llama, norm='layernorm'), 'is neither GPT-2 nor any model type flaxlm exports'),
      (dataclasses.replace(llama, qkv_bias=True, qk_norm=True), 'qwen3 needs qkv_bias=False'),
      (dataclasses.replace(llama, mlp='geglu'), 'gemma needs norm_offset=1.0, scale_embeddings=True'),
      (dataclasses.replace(gpt2, head_dim=8), 'only models with head_dim=width/num_heads convert to GPT-2'),
      (dataclasses.replace(gpt2, num_kv_heads=2), 'GPT-2 has no grouped-query attention'),
      (dataclasses.replace(llama, hf_model_type='bert'), "model.hf_model_type='bert' is not one of gpt2, llama"),
      (dataclasses.replace(llama, num_experts=4, qkv_bias=True), 'qwen2 needs num_experts=0; .*mixtral needs '
       'qkv_bias=False; qwen3_moe needs qkv_bias=False, qk_norm=True'),
      (dataclasses.replace(llama, norm='layernorm'), 'mixtral needs norm=rmsnorm, num_experts>0'),
  ]
  for c, fragment in cases:
    with pytest.raises(UserError, match=fragment):
      hf_families.hf_config(c)


def test_a_router_loss_weight_of_0_or_none_imports_as_0():
  for weight in (0, 0.0, None):
    assert model_of({**fixture_config('hf_mixtral'), 'router_aux_loss_coef': weight}).balance_loss == 0.0


def test_the_norm_epsilon_carries_over_both_ways():
  for name, key in (('hf_gpt2', 'layer_norm_epsilon'), ('hf_qwen3', 'rms_norm_eps')):
    c = model_of({**fixture_config(name), key: 1e-5})
    assert c.norm_eps == 1e-5 and hf_families.hf_config(c)[key] == 1e-5


def test_an_absent_original_context_is_max_position_embeddings_as_transformers_takes_it():
  config = fixture_config('hf_qwen2')
  rope = {k: v for k, v in config['rope_parameters'].items() if k != 'original_max_position_embeddings'}
  c = model_of({**config, 'rope_parameters': rope})
  assert c.rope.original_length == 0 and c.rotary.original_length == config['max_position_embeddings'] == 64
  assert hf_families.hf_config(c)['rope_parameters']['original_max_position_embeddings'] == 64
