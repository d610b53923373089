"""Looking inside a model: the attention weights each layer's heads give the positions they read.

The model never materialises its attention weights (the fused kernels compute softmax(q k^T / sqrt(K)) v in
one pass), so they are recomputed here from the queries and keys its attention layers project (captured with
Flax's `capture_intermediates`, LoRA adapters included), turned by the rotary positions as the model turns them.

Shape key: L layers, B batch, T sequence length, H query heads, G key/value heads, K head dimension.
"""

import functools
import operator

import flax.linen as nn
import jax
import jax.numpy as jnp

from flaxlm.model import rope
from flaxlm.model.transformer import Attention, Transformer


def is_projection(module: nn.Module, method_name: str) -> bool:
  """Returns whether a call is an attention layer's `project`, which returns its queries, keys, then values."""
  return isinstance(module, Attention) and method_name == 'project'


def per_layer(intermediates: dict, path: tuple[str, ...], num_layers: int) -> tuple[jax.Array, ...]:
  """Returns the values sown at `path` inside each layer, e.g. ('attention', 'project'): q, k, v; each L x ...."""
  stack = intermediates['stack']
  if 'layers' in stack:  # nn.scan stacked each value over the layers already.
    return functools.reduce(operator.getitem, path, stack['layers'])
  sown = [functools.reduce(operator.getitem, path, stack[f'layer_{i}']) for i in range(num_layers)]
  return tuple(jnp.stack(values) for values in zip(*sown))


def queries_and_keys(model: Transformer, params, tokens_BxT: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Returns every layer's float32 queries L x B x T x H x K and keys L x B x T x G x K, positions applied."""
  c = model.config
  _, state = model.apply({'params': params}, tokens_BxT, capture_intermediates=is_projection,
                         mutable=['intermediates'])
  q_LxBxTxHxK, k_LxBxTxGxK, _ = per_layer(state['intermediates'], ('attention', 'project'), c.num_layers)
  if c.positions == 'rotary':
    positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
    rotate_layers = jax.vmap(functools.partial(rope.rotate, rope=c.rotary), in_axes=(0, None))
    q_LxBxTxHxK, k_LxBxTxGxK = (rotate_layers(x, positions_BxT) for x in (q_LxBxTxHxK, k_LxBxTxGxK))
  return q_LxBxTxHxK.astype(jnp.float32), k_LxBxTxGxK.astype(jnp.float32)


@functools.partial(jax.jit, static_argnames='model')
def attention_weights(model: Transformer, params, tokens_BxT: jax.Array) -> jax.Array:
  """Returns L x B x H x T x T: the weight head h of each layer gives key position s when at query position t.

  Each row sums to 1 and is zero for s > t (causal). The tokens are one document each, at positions 0..T-1.
  """
  q_LxBxTxHxK, k_LxBxTxGxK = queries_and_keys(model, params, tokens_BxT)
  heads, head_dim, length = q_LxBxTxHxK.shape[-2], q_LxBxTxHxK.shape[-1], tokens_BxT.shape[1]
  k_LxBxTxHxK = jnp.repeat(k_LxBxTxGxK, heads // k_LxBxTxGxK.shape[-2], axis=-2)  # query head h reads h // (H/G).
  logits_LxBxHxTxT = jnp.einsum('lbthk,lbshk->lbhts', q_LxBxTxHxK, k_LxBxTxHxK) / jnp.sqrt(head_dim)
  causal_TxT = jnp.tril(jnp.ones((length, length), bool))
  return jax.nn.softmax(jnp.where(causal_TxT, logits_LxBxHxTxT, -jnp.inf), axis=-1)
