"""Compiles every preset's train step for the TPU slice it names (its TPU_SLICE) and prints the memory per device
that XLA:TPU plans for it: the target is that each fits. Compile-time figures: no TPU runs anything.

  python benchmarks/preset_fit.py                       # every preset (about 2 minutes of CPU on 2 cores)
  python benchmarks/preset_fit.py --presets=llama_1b,llama2_7b

Needs the `tpu` extra (libtpu). The test suite compiles the one-chip presets and a sharded small model
(tests/test_tpu_compile.py); the large presets' compiles take 20 to 40 s each, so their fit is checked here.
"""

import importlib
import re
import time

from absl import app, flags

from flaxlm import configs
from flaxlm.train.plan import estimate, tpu_compile

PRESETS = flags.DEFINE_list('presets', None, 'Presets to compile; default every one.')
VOCAB = {'finetune_shakespeare': 65, **estimate.PRESET_VOCAB}  # Presets whose tokenizer sets the vocabulary.


def report_value(lines: list[str], label: str) -> str:
  """Returns the text after `label` on the report line that starts with it."""
  return next(line.strip()[len(label):].strip() for line in lines if line.strip().startswith(label))


def preset_row(name: str) -> str:
  """Compiles the train step of preset `name` for its slice and returns its table row."""
  config = configs.load(name)
  config.model.vocab_size = config.model.vocab_size or VOCAB.get(name, 0)
  slice_name = importlib.import_module(f'flaxlm.configs.{name}').TPU_SLICE
  start = time.perf_counter()
  lines = tpu_compile.train_report(config, slice_name)
  seconds = time.perf_counter() - start
  state = re.search(r'train state ([\d.]+)', report_value(lines, 'arguments'))[1]
  return (f'| {name} | {slice_name} | {report_value(lines, "mesh")} | {state} | {report_value(lines, "total")} | '
          f'{report_value(lines, "fits")} | {seconds:.1f} |')


def main(argv: list[str]) -> None:
  """Prints one table row per preset."""
  del argv
  print('| preset | slice | mesh | train state GiB | total GiB | fits | compile s |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name in PRESETS.value or configs.presets():
    print(preset_row(name), flush=True)


if __name__ == '__main__':
  app.run(main)
