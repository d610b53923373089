"""The model's options, in one place: each one's default, what it means and the values it may take.

configs/base.py builds every config's `model` section from `ModelConfig` (configs/options.py), with the groups
flattened under their prefixes (`rope.theta` is `model.rope_theta`, `lora.rank` is `model.lora_rank`), so the
defaults and their documentation cannot drift apart. `from_config` reads a section back, checked, with the values
left at 0 filled in (the vocabulary from the tokenizer, the MLP width, the head width, the key/value heads).
"""

import dataclasses
import math

import ml_collections

from flaxlm.configs import options
from flaxlm.configs.errors import UserError
from flaxlm.configs.options import Finite, Interval, NonNegative, OneOf, Positive, PositiveFinite, group, option
from flaxlm.model import lora, pattern, rope
from flaxlm.model.attention import IMPLEMENTATIONS, Scores
from flaxlm.model.lora import Lora
from flaxlm.model.rope import Rope

DTYPES = ('float32', 'bfloat16')
MLPS = ('swiglu', 'geglu', 'gelu')  # the first two gated (silu, tanh-GELU), as Llama and Gemma; gelu as GPT-2.
REMATS = ('none', 'full', 'save_dots')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The transformer's shape and options; `from_config` checks a config's and fills the values left at 0."""
  vocab_size: int = option(0, 'V; 0: the tokenizer\'s', NonNegative("the tokenizer's"))
  num_layers: int = option(4, 'L, the transformer blocks', Positive())
  num_heads: int = option(4, 'H, the query heads', Positive())
  num_kv_heads: int = option(0, 'G, the key/value heads; 0: num_heads (multi-head); fewer gives grouped-query '
                             'attention', NonNegative('num_heads'))
  width: int = option(128, 'D, the residual stream\'s width; a multiple of num_heads unless head_dim is set',
                      Positive())
  head_dim: int = option(0, 'K, the width of one attention head; 0: width / num_heads (Gemma and Qwen3 set it)',
                         NonNegative('width / num_heads'))
  mlp_width: int = option(0, 'F; 0: 4 * width for gelu, 8/3 * width rounded up to a multiple of 64 for the gated '
                          'MLPs', NonNegative('the default'))
  max_length: int = option(64, 'T, the context length the model is trained on', Positive())
  positions: str = option('rotary', "'rotary' or 'learned'", OneOf(('rotary', 'learned')))
  norm: str = option('rmsnorm', "'rmsnorm' or 'layernorm'", OneOf(('rmsnorm', 'layernorm')))
  norm_eps: float = option(1e-6, 'added to the variance in the norms (GPT-2 and Llama 2 use 1e-5)',
                           PositiveFinite('1e-6 to 1e-5'))
  norm_offset: float = option(0.0, "the rmsnorms multiply by norm_offset + scale; Gemma's 1 (its checkpoints store "
                              'scale - 1)', Finite('0, or 1 for Gemma'))
  mlp: str = option('swiglu', "'swiglu', 'geglu' (Gemma) or 'gelu' (GPT-2)", OneOf(MLPS))
  tie_embeddings: bool = option(False, 'True: the output head reuses the token embedding matrix (GPT-2, Gemma)')
  use_bias: bool = option(False, 'True: biases in the attention and MLP projections (GPT-2); Llama has none')
  qkv_bias: bool = option(False, 'True: biases on the query, key and value projections alone (Qwen2)')
  qk_norm: bool = option(False, 'True: an RMSNorm over each head of the queries and keys, before the rotation '
                         '(Qwen3)')
  layer_pattern: str = option('global', "the kinds of successive layers, repeated over the depth (model/pattern.py): "
                              "'global' (all earlier positions), 'local' (the last `window`), or a mix: Gemma 2's "
                              "'local,global', Gemma 3's 'local*5,global'")
  window: int = option(0, 'W, the positions a local layer sees, its own included (Gemma 3: 512); 0: no local layers',
                       NonNegative('no local layers'))
  query_scalar: float = option(0.0, 'the attention logits are q.k / sqrt(query_scalar) (Gemma 2 and 3 set '
                               'query_pre_attn_scalar); 0: the head width K', Interval('[0', 'inf)', '0: K'))
  attention_softcap: float = option(0.0, 'attention logits become cap * tanh(logits / cap) (Gemma 2: 50); 0: not '
                                    'capped', Interval('[0', 'inf)', '0: not capped'))
  logits_softcap: float = option(0.0, 'output logits become cap * tanh(logits / cap) (Gemma 2: 30); 0: not capped',
                                 Interval('[0', 'inf)', '0: not capped'))
  post_norms: bool = option(False, 'True: the attention and MLP outputs are normed too, before the residual add '
                            '(Gemma 2 and 3)')
  num_experts: int = option(0, 'E, the experts of a sparse (mixture-of-experts) layer, each a gated MLP of '
                            'expert_width (model/moe.py); 0: every MLP dense', NonNegative('dense MLPs'))
  experts_per_token: int = option(2, 'k, the experts the router sends each token to (top-k); at most num_experts',
                                  Positive())
  expert_width: int = option(0, "F of each expert's MLP; 0: mlp_width", NonNegative('mlp_width'))
  dense_layers: int = option(0, 'the first layers keep a dense MLP, the rest are sparse (DeepSeek-V3: 3; Qwen3-MoE\'s '
                             'mlp_only_layers 0..n-1)', NonNegative('every layer sparse'))
  router_renormalize: bool = option(True, "True: each token's k router probabilities are divided by their sum "
                                    "(Mixtral; Qwen3-MoE's norm_topk_prob)")
  balance_loss: float = option(0.01, "the weight of the routers' load-balancing loss in the training loss (Mixtral: "
                               '0.02, Qwen3-MoE: 0.001)', Interval('[0', 'inf)', '0 leaves it out'))
  router_z_loss: float = option(0.0, "the weight of the routers' z-loss, their logits' squared log-normaliser "
                                '(ST-MoE: 0.001)', Interval('[0', 'inf)', '0 leaves it out'))
  scale_embeddings: bool = option(False, 'True: token embeddings times sqrt(width) in the model\'s dtype (Gemma)')
  dropout: float = option(0.0, 'dropout rate on embeddings, attention output and MLP output',
                          Interval('[0', '1)', 'the fraction of activations dropped; 0 turns dropout off'))
  dtype: str = option('float32', "compute dtype: 'float32' or 'bfloat16'; parameters stay float32", OneOf(DTYPES))
  scan_layers: bool = option(True, 'stack layers with nn.scan so compile time does not grow with depth')
  remat: str = option('none', "backward-pass recomputation per layer: 'none', 'full' (keep only layer inputs), or "
                      "'save_dots' (keep the weight matmuls' outputs, recompute the rest): less memory, more FLOPs",
                      OneOf(REMATS))
  attention: str = option('auto', "'xla' (any platform), 'cudnn' (NVIDIA flash attention, bfloat16), 'splash' (TPU "
                          "Pallas kernel), or 'auto': the fastest the platform supports",
                          OneOf(IMPLEMENTATIONS))
  hf_model_type: str = option('', 'the Hugging Face model_type the model was converted from, which flaxlm-convert '
                              '--to_hf writes when the options allow it (llama and mistral have the same); \'\': the '
                              'first type that fits the options')
  rope: Rope = group(Rope)
  lora: Lora = group(Lora)

  @property
  def rotary(self) -> Rope:
    """Returns the rotary settings (model/rope.py), an original length of 0 read as max_length."""
    return dataclasses.replace(self.rope, original_length=self.rope.original_length or self.max_length)

  @property
  def layer_kinds(self) -> tuple[str, ...]:
    """Returns the kind of each layer, 'global' or 'local' (model/pattern.py)."""
    return pattern.of_layers(self.layer_pattern, self.num_layers)

  @property
  def pattern(self) -> tuple[str, ...]:
    """Returns the kinds of one repeat of the layer pattern (Gemma 3: five 'local', one 'global')."""
    return pattern.parse(self.layer_pattern)

  def rotary_of(self, kind: str) -> Rope:
    """Returns the rotary settings of a layer of `kind`: a local layer's own base, unscaled, when rope_local_theta
    sets one (Gemma 3), else the model's."""
    if kind == 'local' and self.rope.local_theta:
      return Rope(theta=self.rope.local_theta)
    return self.rotary

  def scores(self, kind: str) -> Scores:
    """Returns how a layer of `kind` makes its attention scores: scale, soft cap and window."""
    return Scores((self.query_scalar or self.head_dim) ** -0.5, self.attention_softcap,
                  self.window if kind == 'local' else 0)

  def sparse(self, layer: int) -> bool:
    """Returns whether layer `layer` (from 0) has a mixture of experts (model/moe.py) rather than a dense MLP."""
    return self.num_experts > 0 and layer >= self.dense_layers

  def without_lora(self) -> 'ModelConfig':
    """Returns the same model with no adapters: the model a LoRA model's merged params belong to."""
    return dataclasses.replace(self, lora=Lora())

  @classmethod
  def from_config(cls, c: ml_collections.ConfigDict, vocab_size: int) -> 'ModelConfig':
    """Returns the checked model config for `c` (the `model` section), with zeros replaced by defaults."""
    options.check(c, 'model', options.rules(cls))
    declared = options.read(cls, c)
    check_relations(declared, vocab_size)
    mlp_width = declared.mlp_width or default_mlp_width(declared.width, declared.mlp)
    return dataclasses.replace(
        declared, vocab_size=declared.vocab_size or vocab_size,
        num_kv_heads=declared.num_kv_heads or declared.num_heads,
        mlp_width=mlp_width,
        head_dim=declared.head_dim or declared.width // declared.num_heads,
        expert_width=declared.expert_width or (declared.num_experts and mlp_width))


def check_relations(c: ModelConfig, vocab_size: int) -> None:
  """Raises UserError if the options, each in its range, do not describe a transformer that can be built."""
  if (c.vocab_size or vocab_size) <= 0:
    raise UserError(f'the vocabulary has {c.vocab_size or vocab_size} tokens: set --config.model.vocab_size to a '
                    'positive size (0 takes the tokenizer\'s).')
  if c.width % c.num_heads and not c.head_dim:
    raise UserError(f'model.num_heads={c.num_heads} does not divide model.width={c.width}: '
                    'choose a width that is a multiple of num_heads, or set --config.model.head_dim.')
  if c.num_heads % (c.num_kv_heads or c.num_heads):
    raise UserError(f'model.num_kv_heads={c.num_kv_heads} does not divide model.num_heads={c.num_heads}: '
                    'choose num_kv_heads among the divisors of num_heads.')
  if c.positions == 'rotary' and (c.head_dim or c.width // c.num_heads) % 2:
    raise UserError(f'rotary positions need an even head dimension, not {c.head_dim or c.width // c.num_heads}: '
                    'change model.head_dim (or width or num_heads), or set --config.model.positions=learned.')
  if c.norm_offset and c.norm != 'rmsnorm':
    raise UserError(f'model.norm_offset={c.norm_offset} applies to rmsnorm only: set --config.model.norm_offset=0 '
                    'or --config.model.norm=rmsnorm.')
  layers = pattern.problem(c.layer_pattern, c.window)
  for problem in (layers, experts_problem(c), rope.problem(c.rope), lora.problem(c.lora, c.mlp, c.num_experts)):
    if problem:
      raise UserError(problem)


def experts_problem(c: ModelConfig) -> str | None:
  """Returns what is wrong with the mixture-of-experts options of `c` (None if nothing)."""
  if c.num_experts and c.experts_per_token > c.num_experts:
    return (f'model.experts_per_token={c.experts_per_token} is above model.num_experts={c.num_experts}: a token '
            'goes to k of the experts; set --config.model.experts_per_token at most num_experts.')
  if c.num_experts and c.dense_layers >= c.num_layers:
    return (f'model.dense_layers={c.dense_layers} leaves none of the {c.num_layers} layers sparse: set '
            '--config.model.dense_layers below model.num_layers, or model.num_experts=0 for a dense model.')
  return None


def default_mlp_width(width: int, mlp: str) -> int:
  """Returns F: 4D for GELU; for the gated MLPs 8D/3 (the same parameter count), rounded up to a multiple of 64."""
  if mlp == 'gelu':
    return 4 * width
  return 64 * math.ceil(8 * width / 3 / 64)
