"""A mixture-of-experts MLP: a router sends each token to k of E expert MLPs, and the token's output is their sum,
weighted by the router's probabilities. The experts hold E times a dense MLP's weights, and a token computes with k.

Routing (Mixtral, Qwen3-MoE): the router's logits x W_r, a softmax over the E experts, the k most probable kept,
their probabilities divided by their sum with `model.router_renormalize` (Mixtral always; Qwen3-MoE's
norm_topk_prob). No token is dropped: the token copies are sorted by expert and each expert multiplies its own rows
in one grouped matmul (`jax.lax.ragged_dot`), however unevenly the router spreads them.

Two losses keep the routers healthy; each sparse layer sows them in the 'losses' collection, and train/loss.py adds
them to the training loss, times their coefficients, averaged over the sparse layers:
  balance: E * sum_e f_e P_e, f_e the share of tokens sent to expert e (the shares sum to k) and P_e the mean router
           probability of e (Switch Transformer, Mixtral and MaxText's load-balancing loss): k when perfectly
           balanced, E k when one expert takes every token.
  z:       the mean over tokens of logsumexp(logits)^2 (ST-MoE's router z-loss), which keeps the logits small.

Expert parallelism: the experts are split over the mesh axis the logical axis 'experts' maps to (train/sharding.py),
and the tokens over the batch axes, which include it. Each device gathers the tokens of the devices that share its
batch rows' expert group, computes the assignments to its own experts, and the outputs are summed back and scattered
to the devices the tokens came from (`expert_outputs`, under `jax.shard_map`). An expert's width F may be split over
the tensor axis too: its down-projection's partial sums are added across it.

Shape key: B batch, T sequence length, D model width, E experts (e on one device), k experts per token, F an expert's
MLP width, N tokens (B T on one device), A token copies (N k), X the devices of the expert axis.
"""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from flaxlm.model.config import ModelConfig


class ExpertKernel(nn.Module):
  """The E stacked matrices of one of the experts' projections (gate, up or down), each `shape`."""
  shape: tuple[int, ...]
  std: float
  axes: tuple[str, ...]

  @nn.compact
  def __call__(self) -> jax.Array:
    init = nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes)
    return self.param('kernel', init, self.shape, jnp.float32)


def route(logits_NxE: jax.Array, k: int, renormalize: bool) -> tuple[jax.Array, jax.Array]:
  """Returns (the k experts each token goes to, N x k, and their weights, N x k float32): the most probable k of
  the softmax of the float32 logits, their probabilities divided by their sum when `renormalize`."""
  probs_NxE = jax.nn.softmax(logits_NxE.astype(jnp.float32), axis=-1)
  weights_Nxk, experts_Nxk = jax.lax.top_k(probs_NxE, k)
  if renormalize:
    weights_Nxk /= weights_Nxk.sum(axis=-1, keepdims=True)
  return experts_Nxk, weights_Nxk


def balance_loss(logits_NxE: jax.Array, experts_Nxk: jax.Array) -> jax.Array:
  """Returns E * sum_e f_e P_e: f_e the tokens sent to expert e over the tokens, P_e e's mean router probability."""
  num_experts = logits_NxE.shape[-1]
  share_E = jax.nn.one_hot(experts_Nxk, num_experts, dtype=jnp.float32).sum(axis=1).mean(axis=0)
  probability_E = jax.nn.softmax(logits_NxE.astype(jnp.float32), axis=-1).mean(axis=0)
  return num_experts * jnp.sum(share_E * probability_E)


def z_loss(logits_NxE: jax.Array) -> jax.Array:
  """Returns the mean over tokens of the squared log-normaliser of the float32 router logits."""
  return jnp.mean(jnp.square(jax.nn.logsumexp(logits_NxE.astype(jnp.float32), axis=-1)))


def expert_outputs(x_NxD: jax.Array, experts_Nxk: jax.Array, weights_Nxk: jax.Array, gate_ExDxF: jax.Array | None,
                   up_ExDxF: jax.Array, down_ExFxD: jax.Array, activation: Callable, expert_axis: str | None = None,
                   width_axis: str | tuple | None = None) -> jax.Array:
  """Returns the weighted sum of each token's experts' outputs, N x D, on one device (inside `jax.shard_map` when
  named mesh axes split the experts or their width; without them, all E experts and tokens are local).

  The tokens of the `expert_axis` devices are gathered, and each device computes the copies routed to its e experts
  (sorted by expert, in one grouped matmul per projection; the copies for other devices' experts come last, outside
  every group, and give zeros); the outputs are summed over the devices and each gets its own tokens' back.
  """
  if expert_axis:
    x_NxD, experts_Nxk, weights_Nxk = (jax.lax.all_gather(a, expert_axis, axis=0, tiled=True)
                                       for a in (x_NxD, experts_Nxk, weights_Nxk))
  local_e = up_ExDxF.shape[0]
  first = jax.lax.axis_index(expert_axis) * local_e if expert_axis else 0
  expert_A = experts_Nxk.reshape(-1) - first
  mine_A = (expert_A >= 0) & (expert_A < local_e)
  order_A = jnp.argsort(jnp.where(mine_A, expert_A, local_e), stable=True)
  token_A = order_A // experts_Nxk.shape[1]
  sizes_e = jnp.sum(jax.nn.one_hot(expert_A, local_e, dtype=jnp.int32), axis=0)  # rows outside 0..e-1 count none
  x_AxD = x_NxD[token_A]
  h_AxF = jax.lax.ragged_dot(x_AxD, up_ExDxF, sizes_e)
  if gate_ExDxF is not None:
    h_AxF *= activation(jax.lax.ragged_dot(x_AxD, gate_ExDxF, sizes_e))
  else:
    h_AxF = activation(h_AxF)
  y_AxD = jax.lax.ragged_dot(h_AxF, down_ExFxD, sizes_e).astype(jnp.float32)
  weight_A = jnp.where(mine_A, weights_Nxk.reshape(-1), 0.0)[order_A]
  out_NxD = jnp.zeros(x_NxD.shape, jnp.float32).at[token_A].add(y_AxD * weight_A[:, None])
  if width_axis:
    out_NxD = jax.lax.psum(out_NxD, width_axis)
  if expert_axis:
    out_NxD = jax.lax.psum_scatter(out_NxD, expert_axis, scatter_dimension=0, tiled=True)
  return out_NxD.astype(x_NxD.dtype)


def mesh_axis(logical: str) -> str | tuple | None:
  """Returns the mesh axis (or axes) the active logical-axis rules map `logical` onto; None if none."""
  return nn.logical_to_mesh_axes((logical,))[0]


def sharded_expert_outputs(x_BxTxD: jax.Array, experts_BxTxk: jax.Array, weights_BxTxk: jax.Array,
                           kernels: tuple[jax.Array | None, jax.Array, jax.Array], activation: Callable) -> jax.Array:
  """Returns `expert_outputs` of the tokens B x T x D: on one device outside a mesh, and under `jax.shard_map`
  within one (`jax.set_mesh`), each device with its batch rows and its share of the experts and of their width."""
  gate, up, down = kernels
  flat = lambda a: a.reshape(-1, a.shape[-1])
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    out = expert_outputs(flat(x_BxTxD), flat(experts_BxTxk), flat(weights_BxTxk), gate, up, down, activation)
    return out.reshape(x_BxTxD.shape)
  batch, experts, width = mesh_axis('batch'), mesh_axis('experts'), mesh_axis('expert_mlp')

  def local(x, chosen, weights, gate, up, down):
    out = expert_outputs(flat(x), flat(chosen), flat(weights), gate, up, down, activation, experts, width)
    return out.reshape(x.shape)

  rows, in_kernel, out_kernel = P(batch), P(experts, None, width), P(experts, width, None)
  specs = (rows, rows, rows, in_kernel if gate is not None else None, in_kernel, out_kernel)
  return jax.shard_map(local, in_specs=specs, out_specs=rows)(x_BxTxD, experts_BxTxk, weights_BxTxk, gate, up, down)


class Moe(nn.Module):
  """The sparse MLP of a layer: the router (D x E), and E gated (or GELU) expert MLPs of width F (E x D x F up and
  gate, E x F x D down), named as a dense MLP's matrices so that quantization and conversion read them alike."""
  config: ModelConfig
  activation: Callable
  gated: bool

  @nn.compact
  def __call__(self, x_BxTxD: jax.Array, deterministic: bool) -> jax.Array:
    c = self.config
    E, D, F = c.num_experts, c.width, c.expert_width
    router = nn.Dense(E, use_bias=False, dtype=jnp.float32, name='router',
                      kernel_init=nn.with_logical_partitioning(nn.initializers.normal(D ** -0.5), ('embed', None)))
    logits_BxTxE = router(x_BxTxD.astype(jnp.float32))
    experts_BxTxk, weights_BxTxk = route(logits_BxTxE, c.experts_per_token, c.router_renormalize)
    if not self.is_initializing():  # what init returns is the params alone
      logits_NxE = logits_BxTxE.reshape(-1, E)
      self.sow('losses', 'balance', balance_loss(logits_NxE, experts_BxTxk.reshape(-1, c.experts_per_token)))
      self.sow('losses', 'z', z_loss(logits_NxE))
      self.sow('intermediates', 'tokens_per_expert', jax.nn.one_hot(experts_BxTxk, E, dtype=jnp.int32).sum((0, 1, 2)))
    in_axes, out_axes = ('experts', 'embed', 'expert_mlp'), ('experts', 'expert_mlp', 'embed')
    up = ExpertKernel((E, D, F), D ** -0.5, in_axes, name='up')()
    gate = ExpertKernel((E, D, F), D ** -0.5, in_axes, name='gate')() if self.gated else None
    down = ExpertKernel((E, F, D), (F * 2 * c.num_layers) ** -0.5, out_axes, name='down')()
    dtype = x_BxTxD.dtype
    kernels = tuple(None if w is None else w.astype(dtype) for w in (gate, up, down))
    out_BxTxD = sharded_expert_outputs(x_BxTxD, experts_BxTxk, weights_BxTxk, kernels, self.activation)
    return nn.Dropout(c.dropout)(out_BxTxD, deterministic=deterministic)


def losses(collection: dict) -> dict[str, jax.Array]:
  """Returns the mean over the sparse layers of each router loss the layers sowed in the 'losses' `collection`
  ({} for a dense model): {'balance_loss': ..., 'router_z_loss': ...}."""
  found = {'balance_loss': [], 'router_z_loss': []}
  for path, value in jax.tree_util.tree_leaves_with_path(collection):
    name = {'balance': 'balance_loss', 'z': 'router_z_loss'}[path[-2].key]  # sow keeps a tuple: ('balance', 0)
    found[name].append(jnp.ravel(value))
  return {name: jnp.concatenate(values).mean() for name, values in found.items() if values}

