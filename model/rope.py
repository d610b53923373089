"""Rotary position embeddings: the frequency each pair of a head's dimensions turns at, with the rescalings that
stretch a pretrained model's context (linear, Llama 3's, YaRN), and the rotation itself.

The frequencies are computed in float32 as Hugging Face's `modeling_rope_utils` computes them, so converted
checkpoints rotate their queries and keys by the same angles.

Shape key: B batch, T sequence length, H heads, K head dimension.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxlm.configs.options import Interval, NonNegative, OneOf, PositiveFinite, option

SCALINGS = ('none', 'linear', 'llama3', 'yarn')  # 'none': the plain frequencies theta^(-2i/K).
YARN_BETAS = (32.0, 1.0)  # YaRN's beta_fast and beta_slow, the rotation counts its ramp runs between (the paper's).


@dataclasses.dataclass(frozen=True)
class Rope:
  """Rotary positions: the base wavelength, and how the frequencies are stretched for a longer context."""
  theta: float = option(10_000.0, 'base wavelength of rotary positions', PositiveFinite('10000'))
  scaling: str = option('none', "rotary frequencies stretched for a longer context: 'none', 'linear' (all divided by "
                        "rope_factor), 'llama3' (Llama 3.1's: long wavelengths divided, short kept) or 'yarn'",
                        OneOf(SCALINGS))
  factor: float = option(1.0, 'how many times the context is stretched (linear, llama3, yarn)',
                         PositiveFinite('1, or the stretch'))
  original_length: int = option(0, 'llama3, yarn: the context the model was pretrained on; 0: max_length',
                                NonNegative('max_length'))
  low_freq_factor: float = option(1.0, 'llama3: wavelengths above rope_original_length / this are divided by '
                                  'rope_factor')
  high_freq_factor: float = option(4.0, 'llama3: wavelengths below rope_original_length / this are kept')
  local_theta: float = option(0.0, "local layers' own base wavelength, unscaled (Gemma 3: 10000, its global layers' "
                              '1000000); 0: the same rotation as global layers', Interval('[0', 'inf)', '0: theta'))

  def frequencies(self, head_dim: int) -> np.ndarray:
    """Returns the K/2 angular frequencies (radians per position) of pairs (i, i + K/2), float32."""
    plain_K2 = 1.0 / self.powers(head_dim)
    if self.scaling == 'linear':
      return plain_K2 / np.float32(self.factor)
    if self.scaling == 'llama3':
      return self.llama3(plain_K2)
    if self.scaling == 'yarn':
      return self.yarn(plain_K2)
    return plain_K2

  def powers(self, head_dim: int) -> np.ndarray:
    """Returns theta^(2i/K) for i < K/2, float32: the plain wavelengths over 2 pi."""
    return np.float32(self.theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))

  def llama3(self, plain_K2: np.ndarray) -> np.ndarray:
    """Returns Llama 3.1's frequencies: long wavelengths divided by `factor`, short ones kept, a blend between."""
    wavelength_K2 = 2 * math.pi / plain_K2
    long, short = self.original_length / self.low_freq_factor, self.original_length / self.high_freq_factor
    smooth_K2 = (self.original_length / wavelength_K2 - self.low_freq_factor) / (
        self.high_freq_factor - self.low_freq_factor)
    blended_K2 = (1 - smooth_K2) * plain_K2 / self.factor + smooth_K2 * plain_K2
    scaled_K2 = np.where(wavelength_K2 > long, plain_K2 / self.factor, blended_K2)
    return np.where(wavelength_K2 < short, plain_K2, scaled_K2).astype(np.float32)

  def yarn(self, plain_K2: np.ndarray) -> np.ndarray:
    """Returns YaRN's frequencies: those turning fewer than beta_slow times in the original context divided by
    `factor`, those turning more than beta_fast times kept, a linear ramp over the dimensions between."""
    head_dim = 2 * len(plain_K2)
    dimension = lambda turns: head_dim * math.log(self.original_length / (turns * 2 * math.pi)) / (
        2 * math.log(self.theta))
    low = max(math.floor(dimension(YARN_BETAS[0])), 0)
    high = min(math.ceil(dimension(YARN_BETAS[1])), head_dim - 1)
    high = high + 0.001 if low == high else high
    ramp_K2 = np.clip((np.arange(len(plain_K2), dtype=np.float32) - low) / (high - low), 0, 1)
    interpolated_K2 = 1.0 / (np.float32(self.factor) * self.powers(head_dim))
    return (interpolated_K2 * ramp_K2 + plain_K2 * (1 - ramp_K2)).astype(np.float32)

  def attention_factor(self) -> float:
    """Returns what the rotated queries and keys are multiplied by: YaRN's 0.1 ln(factor) + 1, else 1."""
    return 0.1 * math.log(self.factor) + 1.0 if self.scaling == 'yarn' else 1.0


def rotate(x_BxTxHxK: jax.Array, positions_BxT: jax.Array, rope: Rope) -> jax.Array:
  """Returns x with rotary position embeddings applied: pairs (x_i, x_{i+K/2}) turned by position * freq_i."""
  freq_K2 = rope.frequencies(x_BxTxHxK.shape[-1])
  angle_BxTx1xK2 = (positions_BxT[:, :, None, None] * freq_K2).astype(jnp.float32)
  sin, cos = (rope.attention_factor() * f(angle_BxTx1xK2) for f in (jnp.sin, jnp.cos))
  x1, x2 = jnp.split(x_BxTxHxK.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxTxHxK.dtype)


def problem(r: Rope) -> str | None:
  """Returns what is wrong with the relation between llama3's two factors, in one line naming the fix, or None
  (each value's own range is its option's rule)."""
  if r.scaling == 'llama3' and not 0 < r.low_freq_factor < r.high_freq_factor < math.inf:
    return (f'model.rope_low_freq_factor={r.low_freq_factor} and model.rope_high_freq_factor='
            f'{r.high_freq_factor} must be positive with low < high (Llama 3.1 uses 1 and 4): set them.')
  return None
