"""Causal attention inside documents, by one of several implementations of the same function.

Shape key: B batch, T sequence length, H query heads, G key/value heads, K head dimension.
"""

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ('auto', 'xla', 'cudnn', 'splash')


def attend(q_BxTxHxK: jax.Array, k_BxTxGxK: jax.Array, v_BxTxGxK: jax.Array, segment_ids_BxT: jax.Array | None,
           implementation: str) -> jax.Array:
  """Returns softmax(q k^T / sqrt(K)) v, where position t attends to positions <= t of its own segment."""
  mask_Bx1xTxT = None
  if segment_ids_BxT is not None:
    mask_Bx1xTxT = segment_ids_BxT[:, None, :, None] == segment_ids_BxT[:, None, None, :]
  return jax.nn.dot_product_attention(q_BxTxHxK, k_BxTxGxK, v_BxTxGxK, mask=mask_Bx1xTxT, is_causal=True)
