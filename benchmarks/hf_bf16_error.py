"""Prints, for each Hugging Face fixture that holds transformers' bfloat16 logits, the bfloat16 error of flaxlm and
of transformers against transformers' float32 logits, each as a fraction of those logits' largest magnitude.

  python benchmarks/hf_bf16_error.py

flaxlm's side is the fixture converted, its params rounded to bfloat16 and computed with model.dtype=bfloat16, as a
bfloat16 checkpoint runs; transformers' side is what tests/fixtures/make_hf_fixtures.py recorded (the same weights
rounded to bfloat16, computed in bfloat16). Both round at different places, so neither is the other's reference:
the target is that flaxlm's error is of the size of transformers' own.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from absl import app

from flaxlm.configs import base
from flaxlm.model import hf, hf_families
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures'


def bfloat16_logits(folder: pathlib.Path, tokens_BxT: np.ndarray) -> np.ndarray:
  """Returns the float32 logits flaxlm computes for the HF model in `folder` held and computed in bfloat16."""
  section = base.model_config()
  section.update(hf_families.model_config(json.loads((folder / 'config.json').read_text())), dtype='bfloat16')
  c = ModelConfig.from_config(section, 0)
  params = hf.params_from_hf(safetensors.numpy.load_file(folder / 'model.safetensors'), c)
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.bfloat16), params)
  return np.asarray(jax.jit(Transformer(c).apply)({'params': params}, tokens_BxT))


def main(argv: list[str]) -> None:
  """Prints one table row per fixture."""
  del argv
  print('| fixture | flaxlm bfloat16 error | transformers bfloat16 error | ratio |')
  print('| --- | --- | --- | --- |')
  for reference in sorted(FIXTURES.glob('hf_*/reference.npz')):
    with np.load(reference, allow_pickle=False) as data:
      if 'bfloat16_logits_BxTxV' not in data:
        continue
      float32, theirs = data['logits_BxTxV'], data['bfloat16_logits_BxTxV']
      ours = bfloat16_logits(reference.parent, data['tokens_BxT'])
    scale = np.abs(float32).max()
    mine, other = np.abs(ours - float32).max() / scale, np.abs(theirs - float32).max() / scale
    print(f'| {reference.parent.name} | {mine:.2e} | {other:.2e} | {mine / other:.2f} |')


if __name__ == '__main__':
  app.run(main)
