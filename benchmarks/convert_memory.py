"""Prints the peak memory of flaxlm-convert, both ways, on a generated Llama-shaped bfloat16 checkpoint of 1.14 GB.

  python benchmarks/convert_memory.py --workdir=/tmp/convert_memory_bench

1. Writes a random bfloat16 Llama checkpoint under --workdir (reused when already there): config.json and --shards
   safetensors files, each written and freed before the next; TinyLlama's width (2048, MLP 5632, 32 heads, 4
   key/value heads, 32,000 tokens) with --layers layers: 571M parameters, 1.14 GB at 10 layers.
2. Runs `flaxlm-convert --from_hf` on it (--tokenizer=byte), then `--to_hf` on the export with --max_shard_size
   5GB (one file) and with --small_shard_size (several), each in its own process. For each: its peak resident set
   (its VmHWM, its own high-water mark; ru_maxrss would also count the pages of the parent it was forked from), the
   largest shard (read by --from_hf, written by --to_hf), the params' bytes (written by --from_hf, read by --to_hf)
   and the ratio peak / (largest shard + params), also with the baseline subtracted: the peak of a process that only
   imports flaxlm-convert (Python, JAX, Orbax, TensorStore). The target: peak less baseline at most about 1.5 x the
   largest shard plus the output.

Every figure is printed as `name: value unit`. --python_path runs another checkout of flaxlm instead (prepended to
the children's PYTHONPATH: a folder holding `flaxlm`, such as a `git archive` of an older commit), to compare.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import ml_dtypes
import numpy as np
from absl import flags

from flaxlm.train.commands import cli

WORKDIR = flags.DEFINE_string('workdir', '/tmp/convert_memory_bench', 'Where the checkpoint and outputs are written.')
LAYERS = flags.DEFINE_integer('layers', 10, 'Layers of the generated model (each 44.0M parameters, 88 MB).')
SHARDS = flags.DEFINE_integer('shards', 4, 'Safetensors files the generated checkpoint is split into.')
SMALL_SHARD_SIZE = flags.DEFINE_string('small_shard_size', '300MB', 'The --max_shard_size of the second --to_hf.')
PYTHON_PATH = flags.DEFINE_string('python_path', None, 'A folder holding another flaxlm to measure instead.')
CLEANUP = flags.DEFINE_bool('cleanup', False, 'Remove --workdir at the end.')

D, F, H, G, V = 2048, 5632, 32, 4, 32_000  # width, MLP width, heads, key/value heads, vocabulary
K = D // H  # head dimension
GB = 1e9


def hf_config(layers: int) -> dict:
  """Returns the config.json of the generated Llama."""
  return dict(architectures=['LlamaForCausalLM'], model_type='llama', vocab_size=V, hidden_size=D,
              intermediate_size=F, num_hidden_layers=layers, num_attention_heads=H, num_key_value_heads=G,
              head_dim=K, max_position_embeddings=2048, rms_norm_eps=1e-5, hidden_act='silu',
              tie_word_embeddings=False, rope_parameters={'rope_type': 'default', 'rope_theta': 10_000.0},
              dtype='bfloat16')


def tensor_shapes(layers: int) -> dict[str, tuple[int, ...]]:
  """Returns {name: shape} of the generated Llama's tensors, in the order save_pretrained writes them."""
  layer = {'input_layernorm.weight': (D,), 'self_attn.q_proj.weight': (H * K, D),
           'self_attn.k_proj.weight': (G * K, D), 'self_attn.v_proj.weight': (G * K, D),
           'self_attn.o_proj.weight': (D, H * K), 'post_attention_layernorm.weight': (D,),
           'mlp.gate_proj.weight': (F, D), 'mlp.up_proj.weight': (F, D), 'mlp.down_proj.weight': (D, F)}
  shapes = {'model.embed_tokens.weight': (V, D)}
  shapes.update({f'model.layers.{i}.{name}': shape for i in range(layers) for name, shape in layer.items()})
  return {**shapes, 'model.norm.weight': (D,), 'lm_head.weight': (V, D)}


def split(shapes: dict[str, tuple[int, ...]], shards: int) -> list[list[str]]:
  """Returns the names of `shapes` in order, in `shards` groups of about equal bytes."""
  sizes = np.cumsum([np.prod(shape) for shape in shapes.values()])
  group = np.minimum((sizes - 1) * shards // sizes[-1], shards - 1)
  return [[name for name, g in zip(shapes, group) if g == i] for i in range(shards)]


def generate(folder: pathlib.Path, layers: int, shards: int) -> None:
  """Writes the random bfloat16 checkpoint into `folder`, one shard at a time (unless it is already there)."""
  if (folder / 'config.json').is_file():
    return
  import safetensors.numpy  # Only the parent writes safetensors.
  partial = folder.with_name(folder.name + '.partial')
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  rng = np.random.default_rng(0)
  shapes = tensor_shapes(layers)
  for i, names in enumerate(split(shapes, shards)):
    tensors = {name: (0.02 * rng.standard_normal(shapes[name], np.float32)).astype(ml_dtypes.bfloat16)
               for name in names}
    safetensors.numpy.save_file(tensors, partial / f'model-{i + 1:05d}-of-{shards:05d}.safetensors',
                                metadata={'format': 'pt'})
    del tensors
  (partial / 'config.json').write_text(json.dumps(hf_config(layers), indent=2))
  partial.rename(folder)


# Run first in each child: at exit, print the high-water mark of its resident set since it started (VmHWM; its
# ru_maxrss would also count the parent's pages it was forked with).
REPORT_PEAK = ('import atexit, re, sys; atexit.register(lambda: print("VmHWM", re.search(r"VmHWM:\\s+(\\d+)", '
               'open("/proc/self/status").read())[1]))')


def peak_rss(code: str, *args: str) -> tuple[float, str]:
  """Returns the peak resident set (GB) of a Python process running `code` with `args`, and its output; exits if it
  fails."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  if PYTHON_PATH.value:
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [PYTHON_PATH.value, env.get('PYTHONPATH')]))
  result = subprocess.run([sys.executable, '-c', f'{REPORT_PEAK}\n{code}', *args], capture_output=True, text=True,
                          env=env)
  if result.returncode:
    sys.exit(f'{code} {" ".join(args)} failed:\n{result.stdout}{result.stderr}')
  *lines, peak = result.stdout.strip().splitlines()
  return int(peak.split()[1]) * 1024 / GB, '\n'.join(lines)  # VmHWM is in KiB.


def convert(*flag_args: str) -> tuple[float, str]:
  """Returns the peak resident set (GB) and output of flaxlm-convert with `flag_args`."""
  return peak_rss('from flaxlm.train.commands import convert; convert.main(sys.argv)', *flag_args)


def folder_size(folder: pathlib.Path) -> float:
  """Returns the bytes (GB) of the files under `folder`."""
  return sum(file.stat().st_size for file in folder.rglob('*') if file.is_file()) / GB


def bytes_of(files: list[pathlib.Path]) -> float:
  """Returns the largest size (GB) of `files`."""
  return max(file.stat().st_size for file in files) / GB


def report(name: str, peak: float, baseline: float, shard: float, params: float) -> None:
  """Prints one direction's figures."""
  print(f'{name}_peak_rss: {peak:.3f} GB')
  print(f'{name}_largest_shard: {shard:.3f} GB')
  print(f'{name}_params: {params:.3f} GB')
  print(f'{name}_ratio: {peak / (shard + params):.2f} x (peak / (largest shard + params))')
  print(f'{name}_ratio_less_baseline: {(peak - baseline) / (shard + params):.2f} x')


def benchmark() -> None:
  """Generates the checkpoint, converts it both ways, and prints the figures."""
  root = pathlib.Path(WORKDIR.value)
  checkpoint, export, to_hf = root / 'hf', root / 'export', root / 'to_hf'
  generate(checkpoint, LAYERS.value, SHARDS.value)
  for path in (export, to_hf, root / 'to_hf_small'):
    shutil.rmtree(path, ignore_errors=True)
  shards = sorted(checkpoint.glob('*.safetensors'))
  params = sum(file.stat().st_size for file in shards) / GB  # the headers are a few kB
  print(f'checkpoint: {params:.3f} GB in {len(shards)} files, {LAYERS.value} layers, bfloat16')
  baseline, _ = peak_rss('from flaxlm.train.commands import convert')
  print(f'baseline_peak_rss: {baseline:.3f} GB (a process that imports flaxlm-convert)')
  peak, output = convert(f'--from_hf={checkpoint}', f'--output={export}', '--tokenizer=byte')
  print(output.strip().splitlines()[-1])
  report('from_hf', peak, baseline, bytes_of(shards), params)
  print(f'export_on_disk: {folder_size(export):.3f} GB')
  for name, size in (('to_hf', '5GB'), ('to_hf_small', SMALL_SHARD_SIZE.value)):
    peak, output = convert(f'--to_hf={root / name}', f'--params={export}', f'--max_shard_size={size}')
    print(output.strip().splitlines()[0])
    report(name, peak, baseline, bytes_of(sorted((root / name).glob('*.safetensors'))), params)
  if CLEANUP.value:
    shutil.rmtree(root)


if __name__ == '__main__':
  cli.run(benchmark)
