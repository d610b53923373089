"""The loss: the next-token cross-entropy, how surprised the model is by each true next token, averaged.

`loss_fn` is what training minimizes (train/step.py calls it once per batch or microbatch): the model's final-norm
output, then the cross-entropy computed a chunk of positions at a time, so the B x T x V logits never exist at once;
with `train.z_loss`, plus that weight times the mean squared log-normaliser of the logits (PaLM's z-loss, which keeps
the logsumexp near 0); in a sparse model, plus the routers' losses (model/moe.py) times their weights. `loss_parts`
also returns each.
`cross_entropy` is the same loss of logits already in hand (the notebooks compute it so).

Shape key: B batch, T sequence length, D model width, V vocabulary, N chunks, C positions per chunk.

For a large vocabulary the head's float32 logits are a step's largest tensor (llama_1b, 16 x 2048 tokens on 8
devices: 2 GiB per device, more with their bfloat16 copy and their gradient). Here each chunk's logits are made,
reduced to their logsumexp and target logit, and dropped; the backward pass makes them again (`jax.checkpoint`)
instead of keeping them, at the cost of one more head matmul (about 2 B T D V FLOPs).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from flaxlm.model import moe
from flaxlm.model.transformer import Transformer

LOGITS_PER_CHUNK = 2 ** 25  # Logits of one sequence's chunk: 128 MiB in float32, whatever the vocabulary.

Batch = dict[str, jax.Array]


def loss_fn(params, batch: Batch, model: nn.Module, dropout_rng: jax.Array | None,
            total_weight: jax.Array | None = None, z_loss: float = 0.0) -> jax.Array:
  """Returns the loss training minimizes of `params` on `batch`: `loss_parts`' first."""
  return loss_parts(params, batch, model, dropout_rng, total_weight, z_loss)[0]


def loss_parts(params, batch: Batch, model: nn.Module, dropout_rng: jax.Array | None,
               total_weight: jax.Array | None = None, z_loss: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Returns (the loss training minimizes, {'loss': the next-token loss, with a `z_loss` weight 'z_loss', and in a
  sparse model 'balance_loss' and 'router_z_loss'}) of `params` (all the model's: with LoRA, the adapters on the
  base) on `batch` (dropout on when `dropout_rng` is given). The minimized loss is the next-token loss plus each
  other part times its weight (`z_loss`, model.balance_loss, model.router_z_loss).

  The weighted token losses are summed and divided by `total_weight` (default: this batch's weights), and the router
  losses weighted by this batch's share of it, so the parts of a batch's microbatches, each divided by the whole
  batch's weight, add up to the batch's.
  """
  c, variables = model.config, {'params': params}
  x_BxTxD, sown = model.apply(variables, batch['inputs'], batch['positions'], batch['segment_ids'],
                              deterministic=dropout_rng is None,
                              rngs={'dropout': dropout_rng} if dropout_rng is not None else None,
                              method=Transformer.hidden, mutable=['losses'])
  loss_sum, z_sum = token_loss_sums(model, variables, x_BxTxD, batch['targets'], batch['weights'])
  weight = batch_weight(batch['weights']) if total_weight is None else total_weight
  share = batch_weight(batch['weights']) / weight
  parts = {'loss': loss_sum / weight, **({'z_loss': z_sum / weight} if z_loss else {}),
           **{name: share * value for name, value in moe.losses(sown.get('losses', {})).items()}}
  weights = {'z_loss': z_loss, 'balance_loss': c.balance_loss, 'router_z_loss': c.router_z_loss}
  return parts['loss'] + sum(weights[name] * value for name, value in parts.items() if name != 'loss'), parts


def batch_weight(weights_BxT: jax.Array) -> jax.Array:
  """Returns the sum of the loss weights, at least 1 (so a batch of padding alone has loss 0, not nan)."""
  return jnp.maximum(weights_BxT.sum(), 1)


def cross_entropy(logits_BxTxV: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array) -> jax.Array:
  """Returns the weighted mean over tokens of -log p(target), from logits already computed: `loss_fn`'s loss."""
  losses_BxT = optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT)
  return (losses_BxT * weights_BxT).sum() / batch_weight(weights_BxT)


def chunk_length(vocab_size: int, length: int) -> int:
  """Returns C, the positions per chunk: the largest power of two with C x V <= LOGITS_PER_CHUNK, at most T.

  A power of two divides the usual (power-of-two) T, so no position is padded; llama_1b's V = 128,256 gives 256,
  Llama 2's 32,000 gives 1024, GPT-2's 50,257 gives 512, and a small vocabulary one chunk of all T positions.
  """
  return min(length, 2 ** (max(1, LOGITS_PER_CHUNK // vocab_size).bit_length() - 1))


def in_chunks(a_BxT: jax.Array, chunk: int) -> jax.Array:
  """Returns `a` (B x T x ...) as N x B x C x ...: T padded with zeros to N C positions, cut into N chunks of C."""
  padding = [(0, 0), (0, -a_BxT.shape[1] % chunk)] + [(0, 0)] * (a_BxT.ndim - 2)
  a_BxNCx = jnp.pad(a_BxT, padding)
  return a_BxNCx.reshape(a_BxNCx.shape[0], -1, chunk, *a_BxNCx.shape[2:]).swapaxes(0, 1)


def token_loss_sums(model: nn.Module, variables: Any, x_BxTxD: jax.Array, targets_BxT: jax.Array,
                    weights_BxT: jax.Array, chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Returns the float32 sums over positions of weight x -log p(target) and of weight x z^2, p the softmax of the
  logits that `model`'s head (`Transformer.logits`, with `variables`) gives the final-norm outputs x and z their
  logsumexp.

  The positions are taken `chunk` at a time (default `chunk_length(V, T)`), T padded with weight 0 to a multiple
  of it; the batch axis stays whole, so its sharding is untouched.
  """
  chunk = chunk or chunk_length(model.config.vocab_size, x_BxTxD.shape[1])

  @jax.checkpoint  # Keeps only the chunk's inputs: the backward pass recomputes its logits.
  def chunk_sums(x_BxCxD: jax.Array, targets_BxC: jax.Array, weights_BxC: jax.Array) -> jax.Array:
    logits_BxCxV = model.apply(variables, x_BxCxD, method=Transformer.logits)
    target_BxC = jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
    z_BxC = jax.nn.logsumexp(logits_BxCxV, axis=-1)
    return jnp.stack([((z_BxC - target_BxC) * weights_BxC).sum(), (z_BxC ** 2 * weights_BxC).sum()])

  chunks = tuple(in_chunks(a, chunk) for a in (x_BxTxD, targets_BxT, weights_BxT))
  totals, _ = jax.lax.scan(lambda totals, xs: (totals + chunk_sums(*xs), None), jnp.zeros(2, jnp.float32), chunks)
  return totals[0], totals[1]
