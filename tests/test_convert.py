"""Tests of model/hf.py and flaxlm-convert against golden Hugging Face fixtures (tests/fixtures/make_hf_fixtures.py).

No torch here: the fixtures hold the tensors and the logits transformers computed for fixed token ids.
"""

import concurrent.futures
import dataclasses
import json
import pathlib
import shutil
import signal
import time
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

import commands
from conftest import command
from test_cli import assert_one_line_error, run
from test_transformer import forward
from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.model import hf, hf_families
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import workdir as workdir_lib
from flaxlm.train.use import convert, export, pretrained

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
  logits_BxTxV = np.asarray(forward(model, params, tokens_BxT))
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
  assert set(written) - set(fixture) <= {'rope_theta', 'torch_dtype'}  # also under transformers 4's keys
  assert hf_families.model_config(written) == hf_families.model_config(fixture)


# Gemma 3: four layers of two kinds; Qwen3-MoE: a dense layer, then two of experts.
@pytest.mark.parametrize('name', ['hf_gpt2', 'hf_llama', 'hf_gemma3', 'hf_qwen3_moe'])
def test_unscanned_layers_import_and_go_back_exactly(name):  # tests/test_hf_families.py checks scanned ones
  c = model_config(name, scan_layers=False)
  params = hf.params_from_hf(fixture_tensors(name), c)
  assert_logits_match(name, Transformer(c), params)
  assert_tensors_equal(hf.params_to_hf(params, c), name)


def test_gpt2_tensors_saved_without_the_transformer_prefix_import_alike():
  tensors = {name.removeprefix('transformer.'): x for name, x in fixture_tensors('hf_gpt2').items()}
  c = model_config('hf_gpt2')
  assert_logits_match('hf_gpt2', Transformer(c), hf.params_from_hf(tensors, c))


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
    'expert_missing': ('hf_mixtral', lambda t: {k: x for k, x in t.items() if '.experts.3.w2' not in k},
                       "lack the tensor 'model.layers.0.block_sparse_moe.experts.3.w2.weight'"),
    'expert_extra': ('hf_qwen3_moe', lambda t: {**t, 'model.layers.1.mlp.experts.4.up_proj.weight': np.ones(
        (32, 64), np.float32)}, 'tensors a qwen3_moe model does not have (model.layers.1.mlp.experts.4.up_proj.weight)'),
    'many_extra': ('hf_gpt2', lambda t: {**t, **{f'vision.{i}': np.ones(2, np.float32) for i in range(5)}},
                   'tensors a gpt2 model does not have (vision.0, vision.1, vision.2 and 2 more)'),
}


@pytest.mark.parametrize('name, key', [('hf_llama', 'num_hidden_layers'), ('hf_gpt2', 'n_layer')])
def test_more_layers_than_the_tensors_hold_are_refused_before_any_work_per_layer(name, key):
  c = dataclasses.replace(model_config(name), num_layers=10_000_000)  # Once per layer, this took hours.
  layer = 'model.layers' if name == 'hf_llama' else 'transformer.h'
  with pytest.raises(UserError, match=rf'{key}=10,000,000, and the safetensors files lack the tensors of layer 2 '
                     rf'\({layer}\.2\.\*; they hold 2 layers\)'):
    hf.params_from_hf(fixture_tensors(name), c)


@pytest.mark.parametrize('name', BAD_TENSORS)
def test_a_checkpoint_that_is_not_exactly_the_model_s_is_refused(name):
  fixture, damage, fragment = BAD_TENSORS[name]
  with pytest.raises(UserError) as raised:
    hf.params_from_hf(damage(fixture_tensors(fixture)), model_config(fixture))
  assert fragment in str(raised.value)


def test_buffers_a_tied_head_and_bfloat16_weights_are_accepted_and_bfloat16_is_kept():
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
  assert {x.dtype for x in jax.tree.leaves(params)} == {np.dtype(jnp.bfloat16)}
  assert {x.dtype for x in jax.tree.leaves(expected)} == {np.dtype(np.float32)}
  assert jax.tree.all(jax.tree.map(np.array_equal, params, expected))
  assert {x.dtype for x in hf.params_to_hf(params, llama).values()} == {np.dtype(jnp.bfloat16)}


def test_params_keep_the_checkpoint_s_one_dtype_else_float32():
  llama = model_config('hf_llama')
  dtypes = lambda tensors: {x.dtype for x in jax.tree.leaves(hf.params_from_hf(tensors, llama))}
  tensors = fixture_tensors('hf_llama')
  float16 = {name: x.astype(np.float16) for name, x in tensors.items()}
  mixed = {name: x if name == 'model.norm.weight' else x.astype(jnp.bfloat16) for name, x in tensors.items()}
  assert dtypes(float16) == dtypes(mixed) == {np.dtype(np.float32)}  # Each holds its tensors exactly.


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
  assert result.stdout == (f'wrote {path}: 90,432 parameters of a llama model, stored in float32, computing in '
                           'bfloat16\n')
  return path


def test_convert_a_llama_folder_to_an_export_and_back(converted, tmp_path):
  assert workdir_lib.load_config(converted).model.dtype == 'bfloat16'  # the default compute dtype
  assert export.stored_dtype(converted) == 'float32'  # the checkpoint's
  model, params, tokenizer = pretrained.load(converted, 'float32')
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
      ((f'--from_hf={FIXTURES / "hf_gpt2"}', f'--output={out}'), 'neither a tokenizer.json nor a tokenizer.model'),
      ((f'--to_hf={out}', f'--params={folders["layernorm_llama"]}'), 'is neither GPT-2'),
      ((f'--from_hf={FIXTURES / "hf_llama"}', f'--output={tmp_path / "missing" / "out"}'),
       f'--output={tmp_path / "missing" / "out"} is in {tmp_path / "missing"}, which is not a directory: create it'),
      ((f'--to_hf={tmp_path / "missing" / "hf"}', f'--params={converted}'), 'which is not a directory: create it'),
      ((f'--to_hf={tmp_path / "hf"}', f'--params={converted}', '--max_shard_size=5TB'), 'is not a size'),
  ]
  before = sorted(tmp_path.rglob('*'))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda case: run(command('flaxlm-convert'), *case[0]), cases))
  for result, (args, fragment) in zip(results, cases):
    assert 'Traceback' not in result.stderr, (args, result.stderr)
    assert_one_line_error(result, fragment)
  assert sorted(tmp_path.rglob('*')) == before  # No output, no partial one, no directory made on the way.


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
  folders['shards'] = (shards, 'holds the tensor model.norm.weight, which model-2.safetensors holds too')
  return folders


def test_damaged_checkpoints_are_refused_and_write_nothing(tmp_path):
  folders = damaged_folders(tmp_path / 'hf')
  out, tokenizer = tmp_path / 'out', str(FIXTURES / 'hf_llama' / 'tokenizer.model')
  before = sorted(tmp_path.rglob('*'))
  for name, (folder, fragment) in folders.items():
    with pytest.raises(UserError) as raised:
      convert.from_hf(str(folder), str(out), tokenizer, 'bfloat16')
    assert fragment in str(raised.value), name
  assert sorted(tmp_path.rglob('*')) == before  # No output, no partial one, no directory made on the way.

def shards_of(root: pathlib.Path, tensors: hf.Tensors, files: int) -> pathlib.Path:
  """Returns a copy of the Llama fixture folder (config.json, tokenizer.model) whose `tensors` are split in order
  into `files` safetensors files, as transformers shards a checkpoint."""
  folder = root / 'sharded'
  shutil.copytree(FIXTURES / 'hf_llama', folder, ignore=shutil.ignore_patterns('*.safetensors', '*.npz'))
  for i, names in enumerate(np.array_split(list(tensors), files)):
    file = folder / f'model-{i + 1}-of-{files}.safetensors'
    safetensors.numpy.save_file({name: tensors[name] for name in names}, file)
  return folder


def test_import_holds_one_layer_s_tensors_at_a_time(tmp_path, monkeypatch):
  folder = shards_of(tmp_path, fixture_tensors('hf_llama'), 3)
  shards = sorted(folder.glob('*.safetensors'))
  live, peak, reads = [0], [0], []  # the bytes of the arrays read and still alive, their most, the names read
  read = hf.Checkpoint.__getitem__

  def counted(checkpoint: hf.Checkpoint, name: str) -> np.ndarray:
    x = read(checkpoint, name)
    owner = x
    while isinstance(owner.base, np.ndarray):
      owner = owner.base
    live[0] += owner.nbytes
    peak[0] = max(peak[0], live[0])
    weakref.finalize(owner, lambda n=owner.nbytes: live.__setitem__(0, live[0] - n))
    reads.append(name)
    return x

  monkeypatch.setattr(hf.Checkpoint, '__getitem__', counted)
  c = model_config('hf_llama')
  params = hf.params_from_hf(hf.Checkpoint(shards), c)
  sizes = [file.stat().st_size for file in shards]
  assert peak[0] <= max(sizes) < sum(sizes)  # All the tensors at once would be about sum(sizes).
  assert live[0] == 0  # None is kept once converted.
  assert sorted(reads) == sorted(fixture_tensors('hf_llama'))  # Each read once.
  assert_logits_match('hf_llama', Transformer(c), params)


def test_a_tensor_of_integers_is_refused_before_any_data_is_read(tmp_path):
  folder = shards_of(tmp_path, {**fixture_tensors('hf_llama'), 'model.norm.weight': np.ones(64, np.int8)}, 2)
  checkpoint = hf.Checkpoint(sorted(folder.glob('*.safetensors')))
  checkpoint.shard_of = {}  # A read would raise KeyError.
  with pytest.raises(UserError, match='the tensor model.norm.weight holds int8, not floating-point weights'):
    hf.params_from_hf(checkpoint, model_config('hf_llama'))


def test_an_index_names_the_files_to_read(tmp_path):
  folder = shards_of(tmp_path, fixture_tensors('hf_llama'), 3)
  files = sorted(folder.glob('*.safetensors'))
  weight_map = {name: file.name for file in files for name in safetensors.numpy.load_file(file)}
  (folder / hf.INDEX).write_text(json.dumps({'metadata': {}, 'weight_map': weight_map}))
  safetensors.numpy.save_file({'layers.0.attention.wq.weight': np.ones(2, np.float32)},  # as Mistral's folders hold
                              folder / 'consolidated.safetensors')
  assert convert.read_checkpoint(str(folder)).specs == hf.specs_of(fixture_tensors('hf_llama'))
  files[0].unlink()
  with pytest.raises(UserError, match=f'names {files[0].name}, which the folder lacks \\(1 missing\\)'):
    convert.read_checkpoint(str(folder))
  for bad in ('{"weight_map": ', '[]', '{"weight_map": {"a": 1}}'):
    (folder / hf.INDEX).write_text(bad)
    with pytest.raises(UserError, match='is not an index of safetensors files'):
      convert.read_checkpoint(str(folder))


def read_by_index(folder: pathlib.Path) -> hf.Tensors:
  """Returns the tensors of an HF folder's shards, each read from the file its model.safetensors.index.json names."""
  index = json.loads((folder / hf.INDEX).read_text())
  tensors = {}
  for name, file in index['weight_map'].items():
    with safetensors.safe_open(folder / file, framework='numpy') as f:
      tensors[name] = f.get_tensor(name)
  assert index['metadata']['total_size'] == sum(x.nbytes for x in tensors.values())
  return tensors


def test_a_bfloat16_checkpoint_stays_bfloat16_both_ways_and_exports_in_shards(tmp_path):
  bfloat16 = {name: x.astype(jnp.bfloat16) for name, x in fixture_tensors('hf_llama').items()}
  export_path, hf_path = tmp_path / 'export', tmp_path / 'hf'
  convert.from_hf(str(shards_of(tmp_path, bfloat16, 3)), str(export_path), None, 'float32')
  assert export.stored_dtype(export_path) == 'bfloat16'
  assert workdir_lib.load_config(export_path).model.dtype == 'float32'  # as asked
  lines = convert.to_hf(str(hf_path), str(export_path), '40KB')
  shards = sorted(p.name for p in hf_path.glob('*.safetensors'))
  assert lines == [f'wrote {hf_path}: 90,432 parameters of a llama model in bfloat16, in {len(shards)} safetensors '
                   'file(s)']
  n = len(shards)  # 181 kB in all, in files of at most 40 kB: 5 or more
  assert n >= 5 and shards == [f'model-{i:05d}-of-{n:05d}.safetensors' for i in range(1, n + 1)]
  assert all((hf_path / name).stat().st_size <= 40_000 + 2_000 for name in shards)  # the cap, and a header
  written = read_by_index(hf_path)
  assert sorted(written) == sorted(bfloat16)
  for name, x in bfloat16.items():
    assert written[name].dtype == x.dtype and np.array_equal(written[name], x), name
  config = json.loads((hf_path / 'config.json').read_text())
  assert config['dtype'] == config['torch_dtype'] == 'bfloat16'
  c = model_config('hf_llama')
  again = hf.params_from_hf(convert.read_checkpoint(str(hf_path)), c)  # The shards read back, by their index.
  assert jax.tree.all(jax.tree.map(lambda x, y: x.dtype == y.dtype and np.array_equal(x, y), again,
                                   hf.params_from_hf(bfloat16, c)))
  assert (hf_path / 'tokenizer.model').read_bytes() == (FIXTURES / 'hf_llama' / 'tokenizer.model').read_bytes()


def test_max_shard_size_reads_as_transformers_does():
  assert [convert.size_in_bytes(s) for s in ('5GB', '500MB', '2GiB', '1.5kb', '1000', '7 MiB')] == [
      5 * 10**9, 5 * 10**8, 2 * 2**30, 1500, 1000, 7 * 2**20]
  for bad in ('', 'GB', 'five', '0', '0.5B', '5 TB', '-1GB'):
    with pytest.raises(UserError, match=f'--max_shard_size={bad} is not a size'):
      convert.size_in_bytes(bad)


def with_tokenizer_json(root: pathlib.Path, vocab_size: int) -> pathlib.Path:
  """Returns a copy of the Llama fixture folder with the tokenizer.json fixture's files for its tokenizer.model and a
  vocabulary of `vocab_size` (the embedding and head padded with random rows)."""
  folder = root / f'llama_{vocab_size}'
  shutil.copytree(FIXTURES / 'hf_llama', folder, ignore=shutil.ignore_patterns('tokenizer.model', '*.npz'))
  for file in (FIXTURES / 'hf_tokenizer').glob('*.json'):
    shutil.copy(file, folder)
  tensors = fixture_tensors('hf_llama')
  rows = np.random.default_rng(0).normal(size=(vocab_size - 128, 64)).astype(np.float32)
  for name in ('model.embed_tokens.weight', 'lm_head.weight'):
    tensors[name] = np.concatenate([tensors[name], rows])
  safetensors.numpy.save_file(tensors, folder / 'model.safetensors')
  (folder / 'config.json').write_text(json.dumps({**fixture_config('hf_llama'), 'vocab_size': vocab_size}))
  return folder


def assert_same_tokenizer(tokenizer: tokenizer_lib.Tokenizer, expected: tokenizer_lib.Tokenizer) -> None:
  """Checks two tokenizers have the same file, special tokens and template."""
  assert isinstance(tokenizer, tokenizer_lib.HFTokenizer)
  assert tokenizer.serialized() == expected.serialized()
  assert (tokenizer.bos_id, tokenizer.eos_ids, tokenizer.pad_id, tokenizer.add_bos, tokenizer.chat_template) == (
      expected.bos_id, expected.eos_ids, expected.pad_id, expected.add_bos, expected.chat_template)


def test_a_folder_s_tokenizer_json_goes_into_the_export_and_back(tmp_path):
  expected = tokenizer_lib.from_hf_folder(FIXTURES / 'hf_tokenizer')
  export_path, hf_path = tmp_path / 'export', tmp_path / 'hf'
  convert.from_hf(str(with_tokenizer_json(tmp_path, 384)), str(export_path), None, 'bfloat16')
  assert_same_tokenizer(workdir_lib.load_tokenizer(export_path), expected)
  convert.to_hf(str(hf_path), str(export_path), '5GB')
  assert {'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'} <= {p.name for p in hf_path.iterdir()}
  assert_same_tokenizer(tokenizer_lib.from_hf_folder(hf_path), expected)


def test_a_tokenizer_with_more_ids_than_the_checkpoint_is_refused(tmp_path):
  assert tokenizer_lib.from_hf_folder(FIXTURES / 'hf_tokenizer').vocab_size == 357
  with pytest.raises(UserError, match=r'^the tokenizer has 357 ids and the model 128: its vocabulary is not the '):
    convert.from_hf(str(with_tokenizer_json(tmp_path, 128)), str(tmp_path / 'out'), None, 'bfloat16')
  assert not (tmp_path / 'out').exists()


def stop_once_writing(argv: list[str], output: pathlib.Path, sig: int) -> tuple[int, str]:
  """Starts a command writing the folder `output`, sends it `sig` as soon as its hidden partial sibling appears (within
  60 s), and returns its exit code and stderr; checks that neither `output` nor the sibling is left."""
  process = commands.start(*argv)
  deadline = time.monotonic() + 60
  while not any(output.parent.glob(f'.{output.name}.partial-*')):
    assert process.poll() is None and time.monotonic() < deadline, 'the command never started writing'
    time.sleep(0.001)
  process.send_signal(sig)
  code = process.wait(60)
  assert list(output.parent.glob(f'*{output.name}*')) == []
  return code, process.output()[1]


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_a_conversion_writes_stops_it_and_leaves_nothing(tmp_path, sig):
  out = tmp_path / 'out'
  code, stderr = stop_once_writing([command('flaxlm-convert'), f'--from_hf={FIXTURES / "hf_llama"}',
                                    f'--output={out}'], out, sig)
  assert code == 130 and stderr.strip() == (f'flaxlm-convert: error: interrupted: nothing was written at {out}; run '
                                            'the command again')
