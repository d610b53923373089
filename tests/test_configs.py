"""Tests of configs/: every preset builds a model, and the keys scripts rely on exist."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from flaxlm import configs
from flaxlm.configs import base, lm1b
from flaxlm.configs.errors import UserError
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import sharding
from flaxlm.train.plan import tpu_compile

PRESETS = configs.presets()
CONTRACT = ['data.path', 'train.steps', 'train.batch_size', 'train.eval_every', 'train.checkpoint_every',
            'train.seed', 'model.num_layers', 'model.num_heads', 'model.num_kv_heads', 'model.width',
            'model.max_length']


@pytest.mark.parametrize('name', PRESETS)
def test_presets_hold_the_contract_keys_and_build_a_model(name):
  config = configs.load(name)
  for key in CONTRACT:
    section, field = key.split('.')
    assert field in config[section], key
  model = Transformer(ModelConfig.from_config(config.model, 32_000))
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  assert count_params(shapes) > 0


@pytest.mark.parametrize('name', PRESETS)
def test_each_preset_names_a_tpu_slice_its_batch_splits_over(name):
  # That the step fits the slice's memory is compiled in tests/test_tpu_compile.py (it needs libtpu).
  config = configs.load(name)
  devices = tpu_compile.SLICES[importlib.import_module(f'flaxlm.configs.{name}').TPU_SLICE].devices
  data, fsdp, expert, tensor = sharding.mesh_shape(config, devices)
  assert data * fsdp * expert * tensor == devices
  assert config.train.batch_size % (data * fsdp * expert * config.train.microbatches) == 0


def test_lm1b_preset_size():
  config = lm1b.get_config()
  c = ModelConfig.from_config(config.model, 32_000)
  # 32000*512 embed + head; 6 layers of attention (512*64*(8+8+2+2)) + SwiGLU (3*512*1408) + 2 norms; final norm.
  expected = 2 * 32_000 * 512 + 6 * (512 * 64 * 20 + 3 * 512 * 1408 + 2 * 512) + 512
  model = Transformer(c)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  assert c.mlp_width == 1408 and count_params(shapes) == expected
  assert config.data.path == 'tfds:lm1b' and config.data.tokenizer.endswith('.model')


@pytest.mark.parametrize('name, hand_count, published', [
    # 50257*768 embed (tied head) + 1024*768 positions + 12 layers of [attention 4*(768*768 + 768),
    # MLP 768*3072 + 3072 + 3072*768 + 768, 2 LayerNorms 2*2*768] + final LayerNorm 2*768.
    ('gpt2_124m', 38_597_376 + 786_432 + 12 * (2_362_368 + 4_722_432 + 3_072) + 1_536, 124_439_808),
    # 128256*2048 embed (tied head) + 16 layers of [attention 2048*64*(32+8+8+32), SwiGLU 3*2048*8192,
    # 2 RMSNorms 2*2048] + final RMSNorm 2048.
    ('llama_1b', 262_668_288 + 16 * (10_485_760 + 50_331_648 + 4_096) + 2_048, 1_235_814_400),
    # 2*32000*4096 embed and head + 32 layers of [attention 4*4096*4096, SwiGLU 3*4096*11008, 2*4096] + 4096.
    ('llama2_7b', 262_144_000 + 32 * (67_108_864 + 135_266_304 + 8_192) + 4_096, 6_738_415_616),
    # 262144*1152 embed (tied head) + 26 layers of [attention 1152*256*(4+1+1+4), GeGLU 3*1152*6912,
    # 4 RMSNorms 4*1152, q/k norms 2*256] + final RMSNorm 1152.
    ('gemma3_1b', 301_989_888 + 26 * (2_949_120 + 23_887_872 + 4_608 + 512) + 1_152, 999_885_952),
    # The language model of Gemma 3 12B (the checkpoint's vision tower left out): 262144*3840 embed + 48 layers of
    # [attention 3840*256*(16+8+8+16), GeGLU 3*3840*15360, 4*3840, 2*256] + 3840.
    ('gemma3_12b', 1_006_632_960 + 48 * (47_185_920 + 176_947_200 + 15_360 + 512) + 3_840, 11_765_788_416),
    # Mixtral-8x7B: 2*32000*4096 embed and head + 32 layers of [attention 4096*128*(32+8+8+32), router 4096*8,
    # 8 SwiGLU experts 8*3*4096*14336, 2*4096] + 4096.
    ('mixtral_8x7b', 262_144_000 + 32 * (41_943_040 + 32_768 + 1_409_286_144 + 8_192) + 4_096, 46_702_792_704),
])
def test_scale_presets_have_their_published_parameter_counts(name, hand_count, published):
  config = configs.load(name)
  model = Transformer(ModelConfig.from_config(config.model, 32_000).without_lora())
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  assert count_params(shapes) == hand_count == published


@pytest.mark.parametrize('key, value, says', [
    ('train.seed', -1, 'train.seed=-1 must be from 0 to 4,294,967,295'),
    ('train.seed', 2**32, 'train.seed=4294967296 must be from 0 to 4,294,967,295'),
    ('train.steps', '100', "train.steps='100' is not an integer"),
    ('train.batch_size', True, 'train.batch_size=True is not an integer'),
    ('train.steps', 2**31, 'train.steps=2147483648 must be positive (and at most 2,147,483,647)'),
    ('train.warmup_steps', 1.5, 'train.warmup_steps=1.5 is not an integer'),
    ('train.learning_rate', float('nan'), 'train.learning_rate=nan must be in [0, inf)'),
    ('train.beta2', 'high', "train.beta2='high' is not a number"),
    ('train.nonfinite', 1, 'train.nonfinite=1 is not text'),
    ('data.max_documents', -1, 'data.max_documents=-1 must not be negative'),
    ('mesh.fsdp', 0, 'mesh.fsdp=0 must be -1 (the devices the other axes leave) or positive'),
    ('mesh.data', -2, 'mesh.data=-2 must be -1'),
    ('mesh.dcn_data', 0, 'mesh.dcn_data=0 must be positive'),
    ('model.num_layers', 10**12, 'model.num_layers=1000000000000 must be positive (and at most 2,147,483,647)'),
])
def test_check_refuses_a_value_of_the_wrong_kind_or_range_naming_its_key_and_flag(key, value, says):
  values = base.get_config().to_dict()
  section, field = key.split('.')
  values[section][field] = value  # As a run's config.json or a config file building its own dict may hold it.
  with pytest.raises(UserError) as raised:
    base.check(ml_collections.ConfigDict(values))
  assert str(raised.value).startswith(says) and str(raised.value).endswith(f': set --config.{key}.')
