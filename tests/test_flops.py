"""Tests of model/flops.py: the per-token FLOP counts against hand counts, and against the model's own weights."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from flaxlm.configs import base, gpt2_124m
from flaxlm.model import flops
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params


def small_config() -> ModelConfig:
  """Returns a 2-layer SwiGLU model: V 100, D 32, H 4, G 2, K 8, F 96, T 16, untied, no biases."""
  c = base.model_config()
  c.update(vocab_size=100, num_layers=2, num_heads=4, num_kv_heads=2, width=32, mlp_width=96, max_length=16)
  return ModelConfig.from_config(c, 0)


def test_small_config_against_a_hand_count():
  c = small_config()
  # Per layer: attention 32*8*(2*4 + 2*2) = 3,072; SwiGLU 3*32*96 = 9,216. Head 100*32 = 3,200.
  assert flops.matmul_params(c) == 2 * (3_072 + 9_216) + 3_200 == 27_776
  # 6 * T 16 * H 4 * K 8 * L 2 = 6,144.
  assert flops.attention_flops_per_token(c) == 6_144
  assert flops.training_flops_per_token(c) == 6 * 27_776 + 6_144 == 172_800


def test_a_local_layer_counts_the_keys_its_window_lets_it_see():
  c = dataclasses.replace(small_config(), layer_pattern='local,global', window=4)
  # Layer 0, local: queries at t = 0..15 see min(t + 1, 4) keys, 58 in all; counted as W - W^2/2T = 3.5 a query
  # (the global layer's T/2 = 8 likewise undercounts its 8.5 by the diagonal's half). 12 * H 4 * K 8 = 384 a key.
  assert flops.keys_per_query(c, 'local') == 3.5 and flops.keys_per_query(c, 'global') == 8
  assert flops.attention_flops_per_token(c) == 384 * (3.5 + 8) == 4_416
  assert flops.attention_flops_per_token(dataclasses.replace(c, window=16)) == 6_144  # a window of T: global


def test_gpt2_124m_against_a_hand_count():
  c = ModelConfig.from_config(gpt2_124m.get_config().model, 0)
  # Per layer: q, k, v, out 768*64*(2*12 + 2*12) = 2,359,296; GELU MLP 2*768*3072 = 4,718,592.
  # 12 layers: 12 * 7,077,888 = 84,934,656; head 50257*768 = 38,597,376 (tied, counted once).
  assert flops.matmul_params(c) == 84_934_656 + 38_597_376 == 123_532_032
  # 6 * T 1024 * H 12 * K 64 * L 12 = 56,623,104.
  assert flops.attention_flops_per_token(c) == 56_623_104
  # 6 * 123,532,032 = 741,192,192; plus attention: 797,815,296 (about 0.8 GFLOP per token).
  assert flops.training_flops_per_token(c) == 797_815_296


@pytest.mark.parametrize('tie_embeddings, mlp, head_dim', [(False, 'swiglu', 8), (True, 'swiglu', 8),
                                                            (True, 'geglu', 12)])  # Gemma's: gated, K not D / H.
def test_matmul_params_are_the_models_weights_less_embedding_and_norms(tie_embeddings, mlp, head_dim):
  c = dataclasses.replace(small_config(), tie_embeddings=tie_embeddings, mlp=mlp, head_dim=head_dim)
  shapes = jax.eval_shape(lambda: nn.unbox(Transformer(c).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))
  norms = (2 * c.num_layers + 1) * c.width
  lookup_only = 0 if tie_embeddings else c.vocab_size * c.width  # Untied, the input embedding is in no matmul.
  assert count_params(shapes) == flops.matmul_params(c) + lookup_only + norms
