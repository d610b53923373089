"""Prints the time and peak memory of flaxlm-export --format=gguf on a generated Llama-shaped bfloat16 model of
1.14 GB, with flaxlm-convert --to_hf of the same export measured in the same run as the reference.

  python benchmarks/gguf_export.py --workdir=/tmp/gguf_export_bench

1. Writes the random bfloat16 Llama checkpoint of benchmarks/convert_memory.py under --workdir (reused when there;
   --layers and --shards as there) and converts it to a flaxlm export (--tokenizer=byte).
2. Runs `flaxlm-export --format=gguf` on the export for f16, q8_0 and q4_0, and `flaxlm-convert --to_hf` (one 5 GB
   shard), each in its own process: its wall-clock seconds, its peak resident set (VmHWM), the file's size, and the
   ratios of time and peak memory to --to_hf's.

Every figure is printed as `name: value unit`.
"""

import pathlib
import shutil
import time

import convert_memory  # benchmarks/convert_memory.py: the generated checkpoint, its flags and peak_rss
from flaxlm.train.commands import cli

GB = convert_memory.GB
TYPES = ('f16', 'q8_0', 'q4_0')


def timed(code: str, *args: str) -> tuple[float, float]:
  """Returns (seconds, peak resident set GB) of a process running `code` with `args`."""
  start = time.perf_counter()
  peak, _ = convert_memory.peak_rss(code, *args)
  return time.perf_counter() - start, peak


def benchmark() -> None:
  """Generates the model, exports it to GGUF and to Hugging Face, and prints the figures."""
  root = pathlib.Path(convert_memory.WORKDIR.value)
  checkpoint, export = root / 'hf', root / 'export'
  convert_memory.generate(checkpoint, convert_memory.LAYERS.value, convert_memory.SHARDS.value)
  if not export.is_dir():
    convert_memory.convert(f'--from_hf={checkpoint}', f'--output={export}', '--tokenizer=byte')
  print(f'export: {convert_memory.folder_size(export):.3f} GB of bfloat16 params, {convert_memory.LAYERS.value} layers')
  shutil.rmtree(root / 'to_hf', ignore_errors=True)
  seconds, peak = timed('from flaxlm.train.commands import convert; convert.main(sys.argv)',
                        f'--to_hf={root / "to_hf"}', f'--params={export}')
  print(f'to_hf_seconds: {seconds:.1f} s')
  print(f'to_hf_peak_rss: {peak:.3f} GB')
  for gguf_type in TYPES:
    output = root / f'model-{gguf_type}.gguf'
    output.unlink(missing_ok=True)
    took, used = timed('from flaxlm.train.commands import export; export.main(sys.argv)', f'--workdir={export}',
                       '--format=gguf', f'--gguf_type={gguf_type}', f'--output={output}')
    print(f'gguf_{gguf_type}_seconds: {took:.1f} s ({took / seconds:.2f} x to_hf)')
    print(f'gguf_{gguf_type}_peak_rss: {used:.3f} GB ({used / peak:.2f} x to_hf)')
    print(f'gguf_{gguf_type}_file: {output.stat().st_size / GB:.3f} GB')
  if convert_memory.CLEANUP.value:
    shutil.rmtree(root)


if __name__ == '__main__':
  cli.run(benchmark)
