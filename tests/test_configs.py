"""Tests of configs/: every preset builds a model, and the keys scripts rely on exist."""

import importlib
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from configs import lm1b
from model.transformer import ModelConfig, Transformer, count_params

PRESETS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'base', 'errors'))
CONTRACT = ['data.path', 'train.steps', 'train.batch_size', 'train.eval_every', 'train.checkpoint_every',
            'train.seed', 'model.num_layers', 'model.num_heads', 'model.num_kv_heads', 'model.width',
            'model.max_length']


@pytest.mark.parametrize('name', PRESETS)
def test_presets_hold_the_contract_keys_and_build_a_model(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  for key in CONTRACT:
    section, field = key.split('.')
    assert field in config[section], key
  model = Transformer(ModelConfig.from_config(config.model, 32_000))
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  assert count_params(shapes) > 0


def test_lm1b_preset_size():
  config = lm1b.get_config()
  c = ModelConfig.from_config(config.model, 32_000)
  # 32000*512 embed + head; 6 layers of attention (512*64*(8+8+2+2)) + SwiGLU (3*512*1408) + 2 norms; final norm.
  expected = 2 * 32_000 * 512 + 6 * (512 * 64 * 20 + 3 * 512 * 1408 + 2 * 512) + 512
  model = Transformer(c)
  shapes = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  assert c.mlp_width == 1408 and count_params(shapes) == expected
  assert config.data.path == 'tfds:lm1b' and config.data.tokenizer.endswith('.model')
