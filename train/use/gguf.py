"""`flaxlm-export --format=gguf`'s work: a run or export written as one GGUF file that llama.cpp runs.

The file's header (hyper-parameters, vocabulary, every tensor's name, shape and type) is written first, then each
tensor as hf.hf_groups yields them, a layer at a time, quantized by gguf-py as it goes (model/gguf.py,
data/gguf_vocab.py). Its size is known before anything is written (`size`), and a disk without room for it is
refused. The file is written beside its path under a hidden name and renamed into place when whole, so an
interrupted or failed export leaves nothing. The k-quants (q4_k_m, q5_k_m, q6_k) are llama.cpp's own quantizer's:
an f16 file is written first, then quantized by llama-cpp-python (`pip install 'flaxlm[llama]'`), else refused with
the `llama-quantize` command that does it.
"""

import contextlib
import importlib.util
import os
import pathlib
import shutil
from typing import Any, Iterator

import gguf
import jax
import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.data import files, gguf_vocab, tokenizer as tokenizer_lib
from flaxlm.model import gguf as gguf_lib
from flaxlm.model.config import ModelConfig
from flaxlm.train import preemption
from flaxlm.train.plan.estimate import format_bytes
from flaxlm.train.use import export


def size(c: ModelConfig, tokenizer: tokenizer_lib.Tokenizer, vocab: dict, gguf_type: str) -> int:
  """Returns the bytes of model `c`'s GGUF file of `gguf_type` with `tokenizer`'s vocabulary `vocab`
  (gguf_vocab.vocabulary's) and chat template."""
  pieces = sum(len(piece.encode('utf-8')) + 16 for piece in [*vocab['tokens'], *(vocab['merges'] or [])])
  return gguf_lib.file_bytes(c, gguf_type, pieces + len((tokenizer.chat_template or '').encode('utf-8')))


def check_output(output: str) -> pathlib.Path:
  """Returns the absolute local path of --output, a new file; raises UserError if it exists, is on Cloud Storage, or
  is in a folder that does not exist."""
  if files.is_cloud(output):
    raise UserError(f'--output={output} is on Cloud Storage, and GGUF files are written on local disk: write it there, '
                    'then copy it with gcloud storage cp.')
  files.check_parent(output, 'output')
  if os.path.lexists(output):
    raise UserError(f'{output} already exists: pass a new --output path (flaxlm never overwrites one).')
  return pathlib.Path(output).absolute()


def check_room(path: pathlib.Path, nbytes: int) -> None:
  """Raises UserError if the disk of `path`'s folder has less than `nbytes` free."""
  free = shutil.disk_usage(path.parent).free
  if free < nbytes:
    raise UserError(f'the GGUF file needs about {format_bytes(nbytes)} and {path.parent} has {format_bytes(free)} '
                    'free: free some space, or pass an --output on a disk with room.')


def check_k_quant(gguf_type: str, output: pathlib.Path) -> None:
  """Raises UserError for a k-quant when llama-cpp-python is not installed, giving the commands that make the file."""
  if gguf_type not in gguf_lib.K_QUANTS:
    return
  if importlib.util.find_spec('llama_cpp') is None:  # the optional extra that runs llama.cpp's quantizer
    f16 = output.with_name(f'{output.stem}-f16.gguf')
    raise UserError(f'--gguf_type={gguf_type} is made by llama.cpp\'s own quantizer, and llama-cpp-python is not '
                    f'installed: pip install "flaxlm[llama]", or export --gguf_type=f16 --output={f16} and run '
                    f'llama-quantize {f16} {output} {gguf_type.upper()}')


def header_writer(path: pathlib.Path, c: ModelConfig, tokenizer: tokenizer_lib.Tokenizer, gguf_type: str,
                  name: str) -> tuple[gguf.GGUFWriter, list[gguf_lib.Tensor]]:
  """Returns a GGUFWriter of `path` whose header (keys and tensor infos) is written, and the tensors to write."""
  _, arch = gguf_lib.architecture(c)
  writer = gguf.GGUFWriter(path, arch)
  writer.add_type(gguf.GGUFType.MODEL)
  writer.add_name(name)
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
  gguf_lib.add_hyperparameters(writer, c, gguf_type)
  gguf_vocab.add_vocabulary(writer, tokenizer, c.vocab_size)
  tensors = gguf_lib.tensors(c, gguf_type)
  for t in tensors:
    writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)  # shape in elements
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_ti_data_to_file()
  return writer, tensors


def write_file(path: pathlib.Path, params: Any, c: ModelConfig, tokenizer: tokenizer_lib.Tokenizer, gguf_type: str,
               name: str) -> None:
  """Writes model `c`'s GGUF file of `gguf_type` (one of TYPES) at `path`, a tensor at a time."""
  _, arch = gguf_lib.architecture(c)
  writer, tensors = header_writer(path, c, tokenizer, gguf_type, name)
  try:
    planned = iter(tensors)
    # Host arrays (views of the CPU's own buffers): slicing a layer off them, or transposing, copies nothing.
    for group in gguf_lib.named_groups(jax.tree.map(np.asarray, params), c):
      for _, hf_name, x in group:
        t = next(planned)
        data = gguf_lib.quantize(gguf_lib.layout(hf_name, np.asarray(x), c, arch), t.qtype)
        writer.write_tensor_data(data.view(np.uint8).reshape(-1) if data.dtype != np.uint8 else data.reshape(-1))
  finally:
    writer.close()


def k_quantize(source: pathlib.Path, path: pathlib.Path, gguf_type: str) -> None:
  """Writes `path`, the k-quant `gguf_type` of the GGUF file `source`, with llama.cpp's quantizer."""
  import llama_cpp
  params = llama_cpp.llama_model_quantize_default_params()
  params.ftype = int(gguf_lib.K_QUANTS[gguf_type])
  params.nthread = os.cpu_count() or 1
  if llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), params) != 0:
    raise UserError(f'llama.cpp\'s quantizer could not make {gguf_type} of the model (see its log above): export '
                    '--gguf_type=f16 and quantize that with llama-quantize.')


@contextlib.contextmanager
def partial_file(path: pathlib.Path, suffix: str = '') -> Iterator[pathlib.Path]:
  """Yields a hidden sibling path of `path` to write, removed when the block ends (put in place by `write`)."""
  partial = path.with_name(f'.{path.name}.partial-{os.getpid()}{suffix}')
  try:
    yield partial
  finally:
    partial.unlink(missing_ok=True)


def put_in_place(partial: pathlib.Path, path: pathlib.Path) -> None:
  """Makes the whole file `partial` the file `path` (`partial` is removed by `partial_file`); raises UserError if
  another command wrote `path` meanwhile, which is left as it is."""
  try:
    os.link(partial, path)  # Fails if anything is at `path`, where a rename would replace it.
  except FileExistsError:
    raise UserError(f'{path} was written by another command while this one wrote it: it is left as that one wrote '
                    'it; pass another --output.') from None
  except OSError:  # A file system without hard links.
    partial.rename(path)


def write(output: str, params: Any, c: ModelConfig, tokenizer: tokenizer_lib.Tokenizer, gguf_type: str) -> int:
  """Writes the GGUF file of model `c` (`params`, numpy or JAX) with `tokenizer`'s vocabulary at --output; returns
  its bytes. Raises UserError if it cannot be written (a full disk, a read-only folder)."""
  path = check_output(output)
  try:
    with partial_file(path) as partial, partial_file(path, '.f16') as f16:
      if gguf_type in gguf_lib.K_QUANTS:
        write_file(f16, params, c, tokenizer, 'f16', path.stem)
        k_quantize(f16, partial, gguf_type)
      else:
        write_file(partial, params, c, tokenizer, gguf_type, path.stem)
      preemption.check_interrupted()
      put_in_place(partial, path)
  except OSError as e:
    raise export.unwritable(output, e) from None
  return path.stat().st_size
