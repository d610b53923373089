"""Tests of configs/: every preset builds a model, and the keys scripts rely on exist."""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from flaxlm import configs
from flaxlm.configs import lm1b
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
  data, fsdp, tensor = sharding.mesh_shape(config, devices)
  assert data * fsdp * tensor == devices and config.train.batch_size % (data * fsdp * config.train.microbatches) == 0


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
])
def test_scale_presets_have_their_published_parameter_counts(name, hand_count, published):
  config = configs.load(name)
  model = Transformer(ModelConfig.from_config(config.model, 32_000))
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  assert count_params(shapes) == hand_count == published
