"""Tests of model/hf.py and flaxlm-convert against golden Hugging Face fixtures (tests/fixtures/make_hf_fixtures.py).

No torch here: the fixtures hold the tensors and the logits transformers computed for fixed token ids.
"""

import concurrent.futures
import dataclasses
import json
import pathlib
import shutil

import numpy as np
import pytest
import safetensors.numpy

from conftest import command
from test_cli import assert_one_line_error, run
from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.model import hf
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
  section.update(hf.model_config(fixture_config(name)), scan_layers=scan_layers)
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
  assert hf.model_config(written) == hf.model_config(fixture)


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
  assert_config_matches(hf.hf_config(c), name)


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
      hf.hf_config(c)


def test_hf_configs_flaxlm_cannot_express_are_refused():
  cases = [  # (changes to a fixture's config.json, what the error says)
      ('hf_gpt2', {'model_type': 'bert'}, "model_type='bert': flaxlm converts only gpt2, llama"),
      ('hf_gpt2', {'activation_function': 'relu'}, "activation_function='relu'"),
      ('hf_llama', {'attention_bias': True}, 'attention_bias=True'),
      ('hf_llama', {'rope_parameters': {'rope_type': 'llama3', 'rope_theta': 5e5}}, "rope_type='llama3'"),
      ('hf_llama', {'hidden_size': None}, "lacks 'hidden_size'"),
  ]
  for name, changes, fragment in cases:
    config = {k: v for k, v in {**fixture_config(name), **changes}.items() if v is not None}
    with pytest.raises(UserError, match=fragment):
      hf.model_config(config)


def test_a_checkpoint_that_does_not_fit_its_config_is_refused():
  tensors = fixture_tensors('hf_llama')
  missing = {k: x for k, x in tensors.items() if k != 'lm_head.weight'}
  with pytest.raises(UserError, match="lack the tensor 'lm_head.weight'"):
    hf.params_from_hf(missing, model_config('hf_llama'))
  wrong = {**tensors, 'model.norm.weight': np.ones(3, np.float32)}
  with pytest.raises(UserError, match=r"\['final_norm'\]\['RMSNorm_0'\]\['scale'\] is \(3,\), not \(64,\)"):
    hf.params_from_hf(wrong, model_config('hf_llama'))


def test_the_norm_epsilon_carries_over_both_ways():
  for name, key in (('hf_gpt2', 'layer_norm_epsilon'), ('hf_llama', 'rms_norm_eps')):
    config = {**fixture_config(name), key: 1e-5}
    assert hf.model_config(config)['norm_eps'] == 1e-5
    c = model_config(name)
    assert hf.hf_config(dataclasses.replace(c, norm_eps=1e-5))[key] == 1e-5


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
