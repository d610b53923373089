"""GGUF files, the format llama.cpp (and Ollama, LM Studio, llama-cpp-python) runs: a model's hyper-parameters and
tensors as llama.cpp's own converter (convert_hf_to_gguf.py) writes them for the same Hugging Face model.

A flaxlm model is written through its Hugging Face form (model/hf.py yields those tensors a layer at a time): each
HF tensor gets llama.cpp's name from gguf-py's own table (`gguf.get_tensor_name_map`) and llama.cpp's layout:
  - llama (Llama, Mistral, and flaxlm's own rotary models): the rows of q and k regrouped from rotate-half pairs
    (i, i + K/2) to interleaved pairs (2i, 2i + 1), llama.cpp's rotary layout for that architecture (`permute`);
    Llama 3.1's rotary scaling as the per-frequency divisors `rope_freqs.weight`;
  - qwen2, qwen3: as stored (llama.cpp rotates halves for them, as transformers does);
  - gemma: RMSNorm scales stored as 1 + w (llama.cpp multiplies by the scale alone);
  - gpt2: its Conv1D weights (in, out) transposed to (out, in).
Types (`TYPES`) follow the converter's rules: vectors, norms, biases and learned positions stay float32; every other
matrix takes the file's type, float16 where its rows do not split into the type's blocks. q4_0 keeps the output head
(the token embeddings, when tied) in q8_0, as llama.cpp's quantizer keeps it in a higher type (q6_k, which gguf-py
cannot write). The k-quants need llama.cpp's own quantizer (`K_QUANTS`; train/use/gguf.py).

Shape key: D width, H query heads, G key/value heads, K head dimension, V vocabulary.
"""

import dataclasses
from typing import Iterator

import gguf
import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.model import hf, hf_families
from flaxlm.model.config import ModelConfig

Q = gguf.GGMLQuantizationType
# --gguf_type: the type of the file's matrices, and the file type llama.cpp records for it.
TYPES = {'f32': (Q.F32, gguf.LlamaFileType.ALL_F32), 'f16': (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
         'bf16': (Q.BF16, gguf.LlamaFileType.MOSTLY_BF16), 'q8_0': (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
         'q4_0': (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0)}
# The k-quants, written by llama.cpp's quantizer from an f16 file: their file types (llama.h's LLAMA_FTYPE_MOSTLY_*).
K_QUANTS = {'q4_k_m': gguf.LlamaFileType.MOSTLY_Q4_K_M, 'q5_k_m': gguf.LlamaFileType.MOSTLY_Q5_K_M,
            'q6_k': gguf.LlamaFileType.MOSTLY_Q6_K}
K_QUANT_BITS = {'q4_k_m': 4.85, 'q5_k_m': 5.69, 'q6_k': 6.56}  # bits per weight llama.cpp reports for 7B models
# HF model type: llama.cpp's architecture (Mistral's is llama's, as its converter writes it).
# Phi-3 is llama's computation too (flaxlm converts it without a sliding window or longrope), written as llama's
# unfused tensors; llama.cpp's converter writes it as its phi3 architecture, q/k/v and gate/up fused.
ARCHITECTURES = {'llama': 'llama', 'mistral': 'llama', 'phi3': 'llama', 'qwen2': 'qwen2', 'qwen3': 'qwen3',
                 'gemma': 'gemma', 'gpt2': 'gpt2'}
PERMUTED = ('q_proj.weight', 'k_proj.weight')  # llama: regrouped into llama.cpp's rotary pairs
CONV1D = ('attn.c_attn.weight', 'attn.c_proj.weight', 'mlp.c_fc.weight', 'mlp.c_proj.weight')  # gpt2: transposed


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of the file: its name, its numpy shape (rows last, as gguf-py takes them) and its type."""
  name: str
  shape: tuple[int, ...]
  qtype: gguf.GGMLQuantizationType

  @property
  def nbytes(self) -> int:
    """Returns the bytes of its data in the file (before the alignment padding)."""
    block, size = gguf.GGML_QUANT_SIZES[self.qtype]
    return int(np.prod(self.shape[:-1], dtype=np.int64)) * self.shape[-1] // block * size


def check_type(gguf_type: str) -> None:
  """Raises UserError if `gguf_type` (--gguf_type) is not a type flaxlm writes (TYPES, K_QUANTS)."""
  if gguf_type not in TYPES and gguf_type not in K_QUANTS:
    raise UserError(f'--gguf_type={gguf_type} is not a GGUF type flaxlm writes: pick one of '
                    f'{", ".join([*TYPES, *K_QUANTS])}.')


def architecture(c: ModelConfig) -> tuple[str, str]:
  """Returns (HF model type, llama.cpp architecture) of model `c`; raises UserError, naming the options, if llama.cpp
  has no architecture for it."""
  try:
    model_type, _ = hf_families.family_of(c)
  except UserError as e:
    raise UserError(f'llama.cpp runs the model types of Hugging Face that it has an architecture for, and this '
                    f'model is none: {e}') from None
  if model_type not in ARCHITECTURES:
    raise UserError(f'flaxlm writes GGUF files of {", ".join(ARCHITECTURES)} models, and this one is {model_type} '
                    '(its window, layer pattern, local rotary base and soft caps have llama.cpp keys flaxlm does not '
                    "write yet): write it with flaxlm-convert --to_hf, then llama.cpp's convert_hf_to_gguf.py.")
  return model_type, ARCHITECTURES[model_type]


def rope_divisors(c: ModelConfig) -> np.ndarray:
  """Returns Llama 3.1's rotary scaling as llama.cpp takes it: what each plain frequency is divided by (K/2)."""
  rope = c.rotary
  return (1.0 / rope.powers(c.head_dim) / rope.frequencies(c.head_dim)).astype(np.float32)


def permute(w_OxD: np.ndarray, heads: int) -> np.ndarray:
  """Returns the rows of a q or k projection (heads x K rows, each head's rotate-half pairs (i, i + K/2)) regrouped as
  llama.cpp's llama architecture rotates them: pairs (2i, 2i + 1); as its converter's `LlamaModel.permute`."""
  O = w_OxD.shape[0]
  return w_OxD.reshape(heads, 2, O // heads // 2, *w_OxD.shape[1:]).swapaxes(1, 2).reshape(w_OxD.shape)


def layout(name: str, x: np.ndarray, c: ModelConfig, arch: str) -> np.ndarray:
  """Returns the HF tensor `name` of model `c` as llama.cpp's architecture `arch` stores it (float32)."""
  x = np.asarray(x, np.float32)
  if arch == 'llama' and name.endswith(PERMUTED):
    return permute(x, c.num_heads if name.endswith('q_proj.weight') else c.num_kv_heads)
  if arch == 'gemma' and name.endswith('norm.weight'):
    return x + np.float32(1.0)
  if arch == 'gpt2' and name.endswith(CONV1D):
    return x.T
  return x


def tensor_type(name: str, shape: tuple[int, ...], gguf_type: str, tied: bool) -> gguf.GGMLQuantizationType:
  """Returns the type llama.cpp's converter gives the tensor `name` of `shape` in a file of `gguf_type`: float32 for
  vectors, norms, biases and learned positions; float16 for a matrix whose rows do not split into the type's blocks;
  q8_0 for q4_0's output head (`tied`: the token embeddings are the head)."""
  if len(shape) <= 1 or name.endswith('_norm.weight') or not name.endswith('.weight') or name.startswith(
      'position_embd.'):
    return Q.F32
  qtype = TYPES[gguf_type][0]
  if qtype == Q.Q4_0 and (name == 'output.weight' or tied and name == 'token_embd.weight'):
    qtype = Q.Q8_0
  block, _ = gguf.GGML_QUANT_SIZES[qtype]
  return qtype if shape[-1] % block == 0 else Q.F16


def named_groups(params: hf.Tree, c: ModelConfig) -> Iterator[list[tuple[str, str, np.ndarray]]]:
  """Yields (GGUF name, HF name, HF tensor) of model `c`'s tensors a layer at a time, as hf.hf_groups groups them
  (an untied output head last), Llama 3.1's `rope_freqs.weight` (already in llama.cpp's form) first."""
  model_type, arch = architecture(c)
  names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], c.num_layers)
  if c.positions == 'rotary' and c.rope.scaling == 'llama3':
    yield [('rope_freqs.weight', '', rope_divisors(c))]
  named_as = dataclasses.replace(c, hf_model_type='llama') if arch == 'llama' else c  # Llama's tensor names
  for group in hf.hf_groups(params, named_as):
    renamed = []
    for name, x in group.items():
      new_name = names.get_name(name, try_suffixes=('.weight', '.bias'))
      if new_name is None:
        raise UserError(f'llama.cpp\'s {arch} architecture has no tensor for {model_type}\'s {name}: flaxlm cannot '
                        'export this model to GGUF.')
      renamed.append((new_name, name, x))
    yield renamed


def tensors(c: ModelConfig, gguf_type: str) -> list[Tensor]:
  """Returns the tensors of model `c`'s file of `gguf_type`, in file order, from the shapes alone (nothing is
  allocated): what the file's header and size are computed from."""
  _, arch = architecture(c)
  shaped = lambda name, x: x.shape[::-1] if arch == 'gpt2' and name.endswith(CONV1D) else x.shape
  return [Tensor(new_name, shape, tensor_type(new_name, shape, gguf_type, c.tie_embeddings))
          for group in named_groups(hf.shape_views(c), c) for new_name, name, x in group
          for shape in [shaped(name, x)]]


def quantize(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
  """Returns `x` in `qtype` as gguf-py writes it (float32 and float16 as arrays of that dtype, others as bytes)."""
  if qtype == Q.F32:
    return np.ascontiguousarray(x, np.float32)
  if qtype == Q.F16:
    return np.ascontiguousarray(x, np.float16)
  return gguf.quants.quantize(np.ascontiguousarray(x, np.float32), qtype)


def data_bytes(listed: list[Tensor], gguf_type: str) -> int:
  """Returns the bytes of the tensors `listed` (a file of `gguf_type`'s, or for a k-quant the f16 file's it is made
  from, estimated from llama.cpp's bits per weight for it), the alignment padding included."""
  if gguf_type in K_QUANTS:
    return int(sum(int(np.prod(t.shape)) for t in listed) * K_QUANT_BITS[gguf_type] / 8)
  align = gguf.GGUF_DEFAULT_ALIGNMENT
  return sum(-(-t.nbytes // align) * align for t in listed)


def file_bytes(c: ModelConfig, gguf_type: str, vocabulary_bytes: int | None = None) -> int:
  """Returns the bytes of model `c`'s GGUF file of `gguf_type`: its tensors and their infos, its vocabulary's
  (where None, 24 bytes for each of c.vocab_size ids: a piece, its score and type), and 4 KiB for the other keys."""
  listed = tensors(c, 'f16' if gguf_type in K_QUANTS else gguf_type)
  infos = sum(len(t.name) + 48 for t in listed)
  vocabulary = 24 * c.vocab_size if vocabulary_bytes is None else vocabulary_bytes
  return data_bytes(listed, gguf_type) + infos + vocabulary + 4096


def check_expressible(c: ModelConfig) -> None:
  """Raises UserError naming the option of model `c` that llama.cpp's architecture for it cannot express."""
  _, arch = architecture(c)
  if c.positions == 'rotary' and c.rope.scaling == 'llama3' and arch != 'llama':
    raise UserError(f'model.rope_scaling=llama3 on a {arch} model: llama.cpp takes Llama 3.1\'s rotary scaling on its '
                    'llama architecture only; export a model without it, or with rope_scaling linear or yarn.')


def add_hyperparameters(writer: gguf.GGUFWriter, c: ModelConfig, gguf_type: str) -> None:
  """Adds model `c`'s hyper-parameters to `writer`'s keys, as llama.cpp's converter writes them for its
  architecture; the rotary base also for gemma, whose converter leaves it out (llama.cpp would take 10,000)."""
  _, arch = architecture(c)
  writer.add_block_count(c.num_layers)
  writer.add_context_length(c.max_length)
  writer.add_embedding_length(c.width)
  writer.add_feed_forward_length(c.mlp_width)
  writer.add_head_count(c.num_heads)
  if arch == 'gpt2':
    writer.add_layer_norm_eps(c.norm_eps)
  else:
    writer.add_head_count_kv(c.num_kv_heads)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope.theta)
    writer.add_key_length(c.head_dim)
    writer.add_value_length(c.head_dim)
    add_rope_scaling(writer, c)
  if arch == 'llama':
    writer.add_vocab_size(c.vocab_size)
    writer.add_rope_dimension_count(c.head_dim)
  writer.add_file_type(TYPES[gguf_type][1] if gguf_type in TYPES else K_QUANTS[gguf_type])


def add_rope_scaling(writer: gguf.GGUFWriter, c: ModelConfig) -> None:
  """Adds linear and YaRN rotary scaling to `writer`'s keys (Llama 3.1's is the tensor rope_freqs.weight)."""
  if c.rope.scaling == 'linear':
    writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
    writer.add_rope_scaling_factor(c.rope.factor)
  elif c.rope.scaling == 'yarn':
    writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
    writer.add_rope_scaling_factor(c.rope.factor)
    writer.add_rope_scaling_orig_ctx_len(c.rotary.original_length)
