"""The floating-point operations a training step spends per token, counted as MaxText counts them.

A matmul of a token's D-wide activation with a D x F weight matrix is D*F multiply-adds: 2 FLOPs per weight.
Training does it three times per weight: once forward (2 FLOPs), and twice backward, for the gradient of the
activation and for the gradient of the weight (4 FLOPs). So each weight that takes part in a matmul costs
6 FLOPs per token. Attention adds the matmuls between activations (QK^T and AV), which have no weights and
grow with the context length T; causal masking skips half of them, and a local layer's window (Gemma 2 and 3) more.
Everything else (norms, softmax, activation functions, the optimizer update) is left out, as MaxText and nanoGPT
leave it out.

nanoGPT's `estimate_mfu` counts attention without halving it for the causal mask (12 L H K T per token, not
6 L H K T); MaxText halves it, and so does this module.

A sparse layer (model/moe.py) counts what a token computes with, as MaxText counts it: the router (D x E) and the
k experts the token visits, not the E - k it skips.

Shape key: T sequence length, D model width, H query heads, G key/value heads, K head dimension,
F MLP width (an expert's in a sparse layer), V vocabulary, L layers, E experts, k experts per token.
"""

from flaxlm.model.config import ModelConfig

MLP_MATRICES = {'swiglu': 3, 'geglu': 3, 'gelu': 2}  # Gated (SwiGLU, GeGLU): gate, up and down; GELU: up, down.


def matmul_params(c: ModelConfig) -> int:
  """Returns the number of weights that take part in a matmul per token: L (attention + MLP) + the output head.

  Attention: q and out are D x H x K, k and v are D x G x K. A sparse layer's MLP is its router and k experts. The
  output head V x D is counted once even when tied to the embedding, because the logits matmul happens either way.
  Left out: the input embedding (a lookup, not a matmul), learned position embeddings, norms and biases.
  """
  attention = c.width * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = sum(mlp_matmul_params(c, layer) for layer in range(c.num_layers))
  return c.num_layers * attention + mlp + c.vocab_size * c.width


def mlp_matmul_params(c: ModelConfig, layer: int) -> int:
  """Returns the MLP weights of layer `layer` a token multiplies with: a dense MLP's, or the router and k experts."""
  if c.sparse(layer):
    return c.width * c.num_experts + c.experts_per_token * expert_params(c)
  return MLP_MATRICES[c.mlp] * c.width * c.mlp_width


def expert_params(c: ModelConfig) -> int:
  """Returns the weights of one expert: its MLP's matrices, D x F each."""
  return MLP_MATRICES[c.mlp] * c.width * c.expert_width


def inactive_params(c: ModelConfig) -> int:
  """Returns the parameters a token does not compute with: the E - k experts of each sparse layer it skips (0 for a
  dense model). The parameters less these are the model's active parameters per token."""
  sparse = sum(c.sparse(layer) for layer in range(c.num_layers))
  return sparse * (c.num_experts - c.experts_per_token) * expert_params(c)


def keys_per_query(c: ModelConfig, kind: str) -> float:
  """Returns how many keys a query attends to, on average over the T positions, as counted here: T/2 in a global
  layer (MaxText's halving for the causal mask), W - W^2/(2T) in a local one (a query at t sees min(t + 1, W) keys;
  T/2 again when W = T)."""
  seen = min(c.window, c.max_length) if kind == 'local' else c.max_length
  return seen - seen * seen / (2 * c.max_length)


def attention_flops_per_token(c: ModelConfig) -> float:
  """Returns the FLOPs per token of the attention matmuls (QK^T and AV), forward and backward, all layers.

  For one query token, QK^T is a K-long dot product with each key it sees in each of H heads: 2*H*K FLOPs a key; AV
  is the same. Forward: 4*H*K a key, backward twice that: 12*H*K a key, times `keys_per_query` (T/2 in a global
  layer, so 6*T*H*K), summed over the layers (a local layer's window makes its share smaller).
  Query heads H count, not key/value heads G: grouped-query attention shares keys, it does not skip products.
  """
  return sum(12.0 * c.num_heads * c.head_dim * keys_per_query(c, kind) for kind in c.layer_kinds)


def training_flops_per_token(c: ModelConfig) -> float:
  """Returns the FLOPs one training token costs: 6 per matmul weight, plus the attention matmuls."""
  return 6.0 * matmul_params(c) + attention_flops_per_token(c)
