"""Looking inside a model: the attention weights each layer's heads give the positions they read.

The model never materialises its attention weights (the fused kernels compute softmax(q k^T / sqrt(K)) v in
one pass), so they are recomputed here from the queries and keys each attention layer sows as it attends with them
(LoRA adapters, q/k norms and rotary positions applied), with the layer's own scale, soft cap and window.

Shape key: L layers, B batch, T sequence length, H query heads, G key/value heads, K head dimension.
"""

import functools

import jax
import jax.numpy as jnp

from flaxlm.model.transformer import Transformer, unstack


def queries_and_keys(model: Transformer, params, tokens_BxT: jax.Array) -> list[tuple[jax.Array, jax.Array]]:
  """Returns each layer's float32 queries B x T x H x K and keys B x T x G x K as it attends with them: normed and
  turned by its rotary positions (the values each attention layer sows as 'rotated')."""
  _, state = model.apply({'params': params}, tokens_BxT, mutable=['intermediates'])
  layers = unstack(state['intermediates']['stack'], model.config)
  return [tuple(x.astype(jnp.float32) for x in layer['attention']['rotated'][0]) for layer in layers]


@functools.partial(jax.jit, static_argnames='model')
def attention_weights(model: Transformer, params, tokens_BxT: jax.Array) -> jax.Array:
  """Returns L x B x H x T x T: the weight head h of each layer gives key position s when at query position t.

  Each row sums to 1 and is zero for s > t (causal) and outside a local layer's window. The tokens are one document
  each, at positions 0..T-1.
  """
  c, positions_T = model.config, jnp.arange(tokens_BxT.shape[1])
  weights = []
  for (q_BxTxHxK, k_BxTxGxK), kind in zip(queries_and_keys(model, params, tokens_BxT), c.layer_kinds):
    scores = c.scores(kind)
    k_BxTxHxK = jnp.repeat(k_BxTxGxK, c.num_heads // c.num_kv_heads, axis=-2)  # query head h reads h // (H/G).
    logits_BxHxTxT = scores.cap(jnp.einsum('bthk,bshk->bhts', q_BxTxHxK, k_BxTxHxK) * scores.scale)
    seen_TxT = scores.sees(positions_T[:, None], positions_T[None, :])
    weights.append(jax.nn.softmax(jnp.where(seen_TxT, logits_BxHxTxT, -jnp.inf), axis=-1))
  return jnp.stack(weights)
