"""Tests of model/hf.py and flaxlm-convert against golden Hugging Face fixtures (tests/fixtures/make_hf_fixtures.py).

No torch here: the fixtures hold the tensors and the logits transformers computed for fixed token ids.
"""

import concurrent.futures
import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from conftest import command
from test_cli import assert_one_line_error, run
from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.model import hf, hf_families
from flaxlm.model.transformer import ModelConfig, Transformer
from flaxlm.train import pretrained, workdir as workdir_lib

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
TOLERANCE = 1e-4  # float32 logits of a different program (XLA, not torch) computing the same function


def fixture_config(name: str) -> dict:
  """Returns the fixture's HF config.json."""
  return json.loads((FIXTURES / name / 'config.json').read_text())


def fixture_tensors(name: str) -> hf.Tensors:
  """Returns the fixture's HF tensors by name."""
  return safetensors.numpy.load_file(FIXTURES / name / 'model.safetensors')


def reference(name: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns the fixture's token ids B x T and the logits B x T x V transformers computed for them."""
  with np.load(FIXTURES / name / 'reference.npz', allow_pickle=False) as data:
    return data['tokens_BxT'], data['logits_BxTxV']


def model_config(name: str, scan_layers: bool = True) -> ModelConfig:
  """Returns the flaxlm model config of the fixture, built as flaxlm-convert builds it."""
  section = base.model_config()
  section.update(hf_families.model_config(fixture_config(name)), scan_layers=scan_layers)
  return ModelConfig.from_config(section, 0)


def assert_logits_match(name: str, model: Transformer, params) -> None:
  """Checks the flaxlm model computes the fixture's logits."""
  tokens_BxT, expected_BxTxV = reference(name)
  logits_BxTxV = np.asarray(model.apply({'params': params}, tokens_BxT))
  np.testing.assert_allclose(logits_BxTxV, expected_BxTxV, rtol=0, atol=TOLERANCE)


def assert_tensors_equal(tensors: hf.Tensors, name: str) -> None:
  """Checks `tensors` have exactly the fixture's names, shapes, dtypes and values."""
  expected = fixture_tensors(name)
  assert sorted(tensors) == sorted(expected)
  for key, x in expected.items():
    assert tensors[key].dtype == x.dtype and tensors[key].shape == x.shape, key
    np.testing.assert_array_equal(tensors[key], x, err_msg=key)


def assert_config_matches(written: dict, name: str) -> None:
  """Checks every field of a written config.json that the fixture's has is equal, and both map to one model."""
  fixture = fixture_config(name)
  assert {k: v for k, v in written.items() if k in fixture} == {k: fixture[k] for k in written if k in fixture}
  assert set(written) - set(fixture) <= {'rope_theta'}  # Llama's rotary base, also under transformers 4's key.
  assert hf_families.model_config(written) == hf_families.model_config(fixture)


@pytest.mark.parametrize('name, scan_layers', [('hf_gpt2', True), ('hf_gpt2', False), ('hf_llama', True)])
def test_imported_fixtures_compute_transformers_logits(name, scan_layers):
  c = model_config(name, scan_layers)
  assert_logits_match(name, Transformer(c), hf.params_from_hf(fixture_tensors(name), c))


def test_the_fixtures_map_to_the_expected_options():
  gpt2, llama = model_config('hf_gpt2'), model_config('hf_llama')
  assert (gpt2.positions, gpt2.norm, gpt2.mlp, gpt2.use_bias, gpt2.tie_embeddings) == (
      'learned', 'layernorm', 'gelu', True, True)
  assert (llama.positions, llama.norm, llama.mlp, llama.use_bias, llama.tie_embeddings) == (
      'rotary', 'rmsnorm', 'swiglu', False, False)
  assert (llama.num_heads, llama.num_kv_heads, llama.rope_theta, llama.mlp_width) == (4, 2, 1000.0, 128)


@pytest.mark.parametrize('name', ['hf_gpt2', 'hf_llama'])
@pytest.mark.parametrize('scan_layers', [True, False])
def test_params_go_back_to_the_fixture_tensors_and_config_exactly(name, scan_layers):
  c = model_config(name, scan_layers)
  assert_tensors_equal(hf.params_to_hf(hf.params_from_hf(fixture_tensors(name), c), c), name)
  assert_config_matches(hf_families.hf_config(c), name)


def test_gpt2_tensors_saved_without_the_transformer_prefix_import_alike():
  tensors = {name.removeprefix('transformer.'): x for name, x in fixture_tensors('hf_gpt2').items()}
  c = model_config('hf_gpt2')
  assert_logits_match('hf_gpt2', Transformer(c), hf.params_from_hf(tensors, c))


def test_models_hf_cannot_express_are_refused():
  llama, gpt2 = model_config('hf_llama'), model_config('hf_gpt2')
  cases = [  # (model config, what the error says)
      (dataclasses.replace(llama, norm='layernorm'), 'is neither GPT-2'),
      (dataclasses.replace(llama, use_bias=True), 'is neither GPT-2'),
      (dataclasses.replace(gpt2, positions='rotary'), 'is neither GPT-2'),
      (dataclasses.replace(gpt2, num_kv_heads=2), 'GPT-2 has no grouped-query attention'),
  ]
  for c, fragment in cases:
    with pytest.raises(UserError, match=fragment):
      hf_families.hf_config(c)


def test_hf_configs_flaxlm_cannot_express_are_refused():
  cases = [  # (changes to a fixture's config.json, what the error says)
      ('hf_gpt2', {'model_type': 'bert'}, "model_type='bert': flaxlm converts only gpt2, llama"),
      ('hf_gpt2', {'activation_function': 'relu'}, "activation_function='relu'"),
      ('hf_llama', {'attention_bias': True}, 'attention_bias=True'),
      ('hf_llama', {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 5e5}}, "rope_type='llama3'"),
      ('hf_llama', {'hidden_size': None}, "lacks 'hidden_size'"),
      ('hf_llama', {'num_attention_heads': 'four'}, "num_attention_heads='four', which is not a positive integer"),
      ('hf_llama', {'num_attention_heads': 4.0}, 'num_attention_heads=4.0, which is not a positive integer'),
      ('hf_llama', {'vocab_size': -5}, 'vocab_size=-5, which is not a positive integer'),
      ('hf_llama', {'num_key_value_heads': True}, 'num_key_value_heads=True, which is not a positive integer'),
      ('hf_llama', {'rms_norm_eps': 'small'}, "rms_norm_eps='small', which is not a positive number"),
      ('hf_llama', {'rope_parameters': {'rope_theta': float('inf')}}, 'rope_theta=inf, which is not a positive'),
      ('hf_llama', {'rope_parameters': 'default'}, "rope_parameters='default', which is not an object"),
      ('hf_llama', {'tie_word_embeddings': 'no'}, "tie_word_embeddings='no', which is not true or false"),
      ('hf_gpt2', {'n_layer': 0}, 'n_layer=0, which is not a positive integer'),
      ('hf_gpt2', {'model_type': ['gpt2']}, "model_type=['gpt2']: flaxlm converts only gpt2, llama"),
  ]
  for name, changes, fragment in cases:
    config = {k: v for k, v in {**fixture_config(name), **changes}.items() if v is not None}
    with pytest.raises(UserError) as raised:
      hf_families.model_config(config)
    assert fragment in str(raised.value)


def test_hf_shapes_are_the_fixture_tensors_shapes():
  for name, prefix in (('hf_gpt2', 'transformer.'), ('hf_llama', 'model.')):
    assert hf.hf_shapes(model_config(name), prefix) == {k: x.shape for k, x in fixture_tensors(name).items()}


# Damage done to a fixture's tensors (a function of them, returning new ones), and what the error says.
BAD_TENSORS = {
    'missing': ('hf_llama', lambda t: {k: x for k, x in t.items() if k != 'lm_head.weight'},
                "lack the tensor 'lm_head.weight'"),
    'missing_in_a_layer': ('hf_llama', lambda t: {k: x for k, x in t.items() if 'layers.1.mlp.up' not in k},
                           "lack the tensor 'model.layers.1.mlp.up_proj.weight'"),
    'wrong_shape': ('hf_llama', lambda t: {**t, 'model.norm.weight': np.ones(3, np.float32)},
                    'model.norm.weight is (3,), not (64,)'),
    'unreshapeable': ('hf_llama', lambda t: {**t, 'model.layers.0.mlp.up_proj.weight': np.ones((3, 5), np.float32)},
                      'model.layers.0.mlp.up_proj.weight is (3, 5), not (128, 64)'),
    'unsplittable': ('hf_gpt2', lambda t: {**t, 'transformer.h.0.attn.c_attn.weight': np.ones((64, 5), np.float32)},
                     'transformer.h.0.attn.c_attn.weight is (64, 5), not (64, 192)'),
    'nan': ('hf_llama', lambda t: {**t, 'model.norm.weight': np.full(64, np.nan, np.float32)},
            'the tensor model.norm.weight holds NaN or infinite values'),
    'inf': ('hf_gpt2', lambda t: {**t, 'transformer.h.1.mlp.c_fc.bias': np.full(256, -np.inf, np.float32)},
            'the tensor transformer.h.1.mlp.c_fc.bias holds NaN or infinite values'),
    'integers': ('hf_llama', lambda t: {**t, 'model.norm.weight': np.ones(64, np.int32)},
                 'the tensor model.norm.weight holds int32, not floating-point weights'),
    'extra': ('hf_llama', lambda t: {**t, 'model.vision.weight': np.ones(3, np.float32)},
              'tensors a llama model does not have (model.vision.weight)'),
    'many_extra': ('hf_gpt2', lambda t: {**t, **{f'vision.{i}': np.ones(2, np.float32) for i in range(5)}},
                   'tensors a gpt2 model does not have (vision.0, vision.1, vision.2 and 2 more)'),
}


@pytest.mark.parametrize('name', BAD_TENSORS)
def test_a_checkpoint_that_is_not_exactly_the_model_s_is_refused(name):
  fixture, damage, fragment = BAD_TENSORS[name]
  with pytest.raises(UserError) as raised:
    hf.params_from_hf(damage(fixture_tensors(fixture)), model_config(fixture))
  assert fragment in str(raised.value)


def test_buffers_a_tied_head_and_bfloat16_weights_are_accepted():
  tensors = fixture_tensors('hf_gpt2')
  c = model_config('hf_gpt2')
  buffers = {f'transformer.h.{i}.attn.{name}': np.ones((1, 1, 4, 4), np.uint8)  # older transformers' causal mask
             for i in range(c.num_layers) for name in ('bias', 'masked_bias')}
  with_buffers = {**tensors, **buffers, 'lm_head.weight': tensors['transformer.wte.weight']}
  assert_logits_match('hf_gpt2', Transformer(c), hf.params_from_hf(with_buffers, c))
  rotary = {f'model.layers.{i}.self_attn.rotary_emb.inv_freq': np.ones(8, np.float32) for i in range(2)}
  llama = model_config('hf_llama')
  bfloat16 = {k: x.astype(jnp.bfloat16) for k, x in fixture_tensors('hf_llama').items()}
  params = hf.params_from_hf({**bfloat16, **rotary}, llama)
  expected = hf.params_from_hf(jax.tree.map(lambda x: np.asarray(x, np.float32), bfloat16), llama)
  assert jax.tree.all(jax.tree.map(np.array_equal, params, expected))


def test_the_norm_epsilon_carries_over_both_ways():
  for name, key in (('hf_gpt2', 'layer_norm_epsilon'), ('hf_llama', 'rms_norm_eps')):
    config = {**fixture_config(name), key: 1e-5}
    assert hf_families.model_config(config)['norm_eps'] == 1e-5
    c = model_config(name)
    assert hf_families.hf_config(dataclasses.replace(c, norm_eps=1e-5))[key] == 1e-5


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> pathlib.Path:
  """The export `flaxlm-convert --from_hf` writes of the Llama fixture (the first line checks its output)."""
  path = tmp_path_factory.mktemp('convert') / 'export'
  result = run(command('flaxlm-convert'), f'--from_hf={FIXTURES / "hf_llama"}', f'--output={path}')
  assert result.returncode == 0, result.stderr
  assert result.stdout == f'wrote {path}: 90,432 parameters of a llama model in float32\n'
  return path


def test_convert_a_llama_folder_to_an_export_and_back(converted, tmp_path):
  model, params, tokenizer = pretrained.load(converted)
  assert model.config.scan_layers and model.config.num_kv_heads == 2
  assert_logits_match('hf_llama', model, params)
  assert tokenizer.serialized() == (FIXTURES / 'hf_llama' / 'tokenizer.model').read_bytes()

  exported = run(command('flaxlm-convert'), f'--to_hf={tmp_path / "hf"}', f'--params={converted}')
  assert exported.returncode == 0, exported.stderr
  assert sorted(p.name for p in (tmp_path / 'hf').iterdir()) == ['config.json', 'model.safetensors', 'tokenizer.model']
  assert_tensors_equal(safetensors.numpy.load_file(tmp_path / 'hf' / 'model.safetensors'), 'hf_llama')
  assert_config_matches(json.loads((tmp_path / 'hf' / 'config.json').read_text()), 'hf_llama')
  assert (tmp_path / 'hf' / 'tokenizer.model').read_bytes() == tokenizer.serialized()


def bad_folders(root: pathlib.Path, export: pathlib.Path) -> dict[str, pathlib.Path]:
  """Returns an HF folder of an unsupported model type, an empty folder, and an export of a model HF lacks."""
  folders = {name: root / name for name in ('bert', 'empty', 'layernorm_llama')}
  shutil.copytree(FIXTURES / 'hf_gpt2', folders['bert'])
  (folders['bert'] / 'config.json').write_text(json.dumps({**fixture_config('hf_gpt2'), 'model_type': 'bert'}))
  folders['empty'].mkdir()
  shutil.copytree(export, folders['layernorm_llama'])
  config = workdir_lib.load_config(export)
  config.model.norm = 'layernorm'
  (folders['layernorm_llama'] / 'config.json').write_text(config.to_json())
  return folders


def test_bad_input_gets_one_line_and_writes_nothing(converted, tmp_path):
  folders = bad_folders(tmp_path, converted)
  out = tmp_path / 'out'
  cases = [  # (flags, what the error says)
      ((f'--from_hf={folders["bert"]}', f'--output={out}'), "model_type='bert': flaxlm converts only gpt2, llama"),
      ((f'--from_hf={folders["empty"]}', f'--output={out}'), 'has no config.json'),
      ((f'--from_hf={FIXTURES / "hf_gpt2"}', f'--output={out}'), 'has no SentencePiece tokenizer.model'),
      ((f'--to_hf={out}', f'--params={folders["layernorm_llama"]}'), 'is neither GPT-2'),
  ]
  before = sorted(tmp_path.rglob('*'))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda case: run(command('flaxlm-convert'), *case[0]), cases))
  for result, (_, fragment) in zip(results, cases):
    assert_one_line_error(result, fragment)
  assert sorted(tmp_path.rglob('*')) == before  # No output, and no partial one beside it.


def damaged(root: pathlib.Path, fixture: str, name: str, config: dict | bytes | None = None,
            tensors: hf.Tensors | None = None, raw: bytes | None = None) -> pathlib.Path:
  """Returns a copy of a fixture folder named `name`, with config.json or model.safetensors replaced."""
  folder = root / name
  shutil.copytree(FIXTURES / fixture, folder)
  if config is not None:
    (folder / 'config.json').write_bytes(config if isinstance(config, bytes) else json.dumps(config).encode())
  if tensors is not None:
    safetensors.numpy.save_file(tensors, folder / 'model.safetensors')
  if raw is not None:
    (folder / 'model.safetensors').write_bytes(raw)
  return folder


def damaged_folders(root: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
  """Returns damaged copies of the fixtures by name, each with what flaxlm-convert's error says about it."""
  llama, gpt2 = fixture_config('hf_llama'), fixture_config('hf_gpt2')
  weights = (FIXTURES / 'hf_llama' / 'model.safetensors').read_bytes()
  cases = {  # name: (fixture, damage, what the error says)
      'truncated': ('hf_llama', dict(raw=weights[:len(weights) // 2]), 'does not read as safetensors'),
      'random_bytes': ('hf_llama', dict(raw=np.random.default_rng(0).bytes(4096)), 'cut short or damaged'),
      'empty_weights': ('hf_llama', dict(raw=b''), 'download it again'),
      'not_json': ('hf_llama', dict(config=b'{"model_type": "llama",'), 'config.json does not read as JSON'),
      'not_utf8': ('hf_llama', dict(config=b'{"model_type": "\xff"}'), 'config.json does not read as JSON'),
      'json_list': ('hf_llama', dict(config=b'[1, 2]'), 'holds a JSON list, not an object of settings'),
      'heads_not_a_number': ('hf_llama', dict(config={**llama, 'num_attention_heads': 'four'}),
                             "num_attention_heads='four', which is not a positive integer"),
      'vocab_negative': ('hf_llama', dict(config={**llama, 'vocab_size': -5}), 'vocab_size=-5, which is not'),
      'key_missing': ('hf_llama', dict(config={k: v for k, v in llama.items() if k != 'intermediate_size'}),
                      "lacks 'intermediate_size'"),
      'model_type_list': ('hf_gpt2', dict(config={**gpt2, 'model_type': ['gpt2']}), "model_type=['gpt2']"),
      **{f'tensors_{name}': (fixture, dict(tensors=damage(fixture_tensors(fixture))), fragment)
         for name, (fixture, damage, fragment) in BAD_TENSORS.items()},
  }
  folders = {name: (damaged(root, fixture, name, **damage), fragment) for name, (fixture, damage, fragment)
             in cases.items()}
  shards = damaged(root, 'hf_llama', 'shards')  # The same tensor in two shards.
  safetensors.numpy.save_file({'model.norm.weight': np.ones(64, np.float32)}, shards / 'model-2.safetensors')
  folders['shards'] = (shards, 'holds the tensor model.norm.weight, which an earlier shard holds too')
  return folders


def test_damaged_checkpoints_get_one_line_and_write_nothing(converted, tmp_path):
  folders = damaged_folders(tmp_path / 'hf')
  out, tokenizer = tmp_path / 'out', f'--tokenizer={FIXTURES / "hf_llama" / "tokenizer.model"}'
  cases = [((f'--from_hf={folder}', f'--output={out}', tokenizer), fragment) for folder, fragment in folders.values()]
  cases += [
      ((f'--from_hf={FIXTURES / "hf_llama"}', f'--output={tmp_path / "missing" / "out"}'),
       f'--output={tmp_path / "missing" / "out"} is in {tmp_path / "missing"}, which is not a directory: create it'),
      ((f'--to_hf={tmp_path / "missing" / "hf"}', f'--params={converted}'), 'which is not a directory: create it'),
  ]
  before = sorted(tmp_path.rglob('*'))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda case: run(command('flaxlm-convert'), *case[0]), cases))
  for result, (args, fragment) in zip(results, cases):
    assert 'Traceback' not in result.stderr, (args, result.stderr)
    assert_one_line_error(result, fragment)
  assert sorted(tmp_path.rglob('*')) == before  # No output, no partial one, no directory made on the way.
