"""The GGUF fixture cases: the models tests/fixtures/make_gguf_fixtures.py exports with flaxlm and runs in llama.cpp
(and converts with llama.cpp's own converter), and tests/test_gguf.py checks against what it stored.

Run as a script with flaxlm's Python, it writes one case's GGUF files, one per type (the fixture script does this):
  python tests/gguf_cases.py CASE OUTPUT_FOLDER

Each Hugging Face case is a fixture folder with a tokenizer: the tiny models of tests/fixtures/hf_* with the
SentencePiece model of hf_llama (128 pieces, as their vocabulary), and the lm_eval fixtures with their own
tokenizer.json (SentencePiece's kind for llama and gemma, byte-level BPE for gpt2 and qwen2). The flaxlm cases are
flaxlm's own model (rotary, RMSNorm, SwiGLU: llama.cpp's llama), seeded numpy params, with a SentencePiece model,
flaxlm's char tokenizer (an alphabet with multi-byte characters) and its byte tokenizer. Only the standard library
is imported at the top: the fixture script, which has no flaxlm, reads CASES, TEXTS and TYPES from here.
"""

import pathlib
import shutil
import sys

FIXTURES = pathlib.Path(__file__).resolve().parent / 'fixtures'
SENTENCEPIECE = FIXTURES / 'hf_llama' / 'tokenizer.model'
OUT = FIXTURES / 'gguf'
TYPES = ('f32', 'f16', 'q8_0', 'q4_0')
# name: (the Hugging Face fixture folder, a tokenizer file copied into it or None), or None for a flaxlm case.
HF_CASES = {
    'llama': ('hf_llama', None),
    'llama3': ('hf_llama3', SENTENCEPIECE),
    'mistral': ('hf_mistral', SENTENCEPIECE),
    'qwen3': ('hf_qwen3', SENTENCEPIECE),
    'gemma': ('hf_gemma', SENTENCEPIECE),
    'phi3': ('hf_phi3', SENTENCEPIECE),
    'llama_tokenizer_json': ('lm_eval/llama', None),
    'gemma_tokenizer_json': ('lm_eval/gemma', None),
    'gpt2': ('lm_eval/gpt2', None),
    'qwen2': ('lm_eval/qwen2', None),
}
FLAXLM_CASES = ('flaxlm_sentencepiece', 'flaxlm_char', 'flaxlm_byte')
CASES = (*HF_CASES, *FLAXLM_CASES)
# Each fits the fixture models' 64 positions in any of their tokenizers (flaxlm_byte: a token per UTF-8 byte).
TEXTS = ['the king and queen of the north sent word', 'Héllo wörld,\n\tindented  twice  \n😀 naïve café',
         '日本語のテキスト 2026\n  trailing  ', 'where does the river run? over the stone, into the sea']
# The texts of the cases whose tokenizer is hf_llama's SentencePiece model: it has no byte pieces, and llama.cpp
# stops at a character outside a SentencePiece vocabulary that has none, so their characters are all pieces.
PLAIN_TEXTS = ['the king and queen of the north sent word', 'every farmer should be ready to plant this year']
CHARS = sorted(set(''.join(TEXTS)))  # flaxlm_char's alphabet: every character of the texts
GGUF_NAME = 'model'  # every file's general.name (the file's stem), so that the bytes do not depend on a path


def texts(case: str) -> list[str]:
  """Returns the fixture texts of `case`."""
  return PLAIN_TEXTS if case in HF_CASES and (HF_CASES[case][1] or case == 'llama') else TEXTS


def hf_folder(case: str, root: pathlib.Path) -> pathlib.Path:
  """Returns a copy of the Hugging Face folder of `case` under `root`, with its tokenizer file where it lacks one."""
  source, tokenizer = HF_CASES[case]
  folder = root / f'hf_{case}'
  shutil.copytree(FIXTURES / source, folder, ignore=shutil.ignore_patterns('reference.*'))
  if tokenizer is not None:
    shutil.copy(tokenizer, folder / tokenizer.name)
  return folder


def flaxlm_tokenizer(case: str):
  """Returns the tokenizer of the flaxlm `case`."""
  from flaxlm.data import tokenizer as tokenizer_lib
  if case == 'flaxlm_char':
    return tokenizer_lib.CharTokenizer(CHARS)
  if case == 'flaxlm_byte':
    return tokenizer_lib.ByteTokenizer()
  return tokenizer_lib.load(FIXTURES / 'hf_sentencepiece' / 'tokenizer.model')


def seeded_params(c, seed: int = 0):
  """Returns params of model `c` drawn from a seeded numpy generator (the same bits on every machine): norm scales
  1 + N(0, 0.1^2), other weights N(0, 0.1^2)."""
  import jax
  import numpy as np
  from flaxlm.model.transformer import param_shapes
  rng = np.random.default_rng(seed)
  draw = lambda path, s: (1.0 * ('scale' in jax.tree_util.keystr(path)) + 0.1 * rng.standard_normal(s.shape)).astype(
      np.float32)
  return jax.tree_util.tree_map_with_path(draw, param_shapes(c))


def flaxlm_export(case: str, root: pathlib.Path) -> pathlib.Path:
  """Writes the export of the flaxlm `case` (a tiny rotary model, seeded params) under `root`; returns its path."""
  from flaxlm.configs import base
  from flaxlm.model.config import ModelConfig
  from flaxlm.train.use import export
  tokenizer = flaxlm_tokenizer(case)
  config = base.get_config()
  config.model.update(width=64, num_heads=4, num_kv_heads=2, num_layers=2, max_length=64, dtype='float32')
  config.data.tokenizer = {'flaxlm_char': 'char', 'flaxlm_byte': 'byte'}.get(case, 'tokenizer.model')
  c = ModelConfig.from_config(config.model, tokenizer.vocab_size)
  return export.write(root / case, seeded_params(c), config, tokenizer, 'float32')


def export_of(case: str, root: pathlib.Path) -> pathlib.Path:
  """Writes the flaxlm export of `case` under `root` (converted from its HF folder, or made); returns its path."""
  if case in FLAXLM_CASES:
    return flaxlm_export(case, root)
  from flaxlm.train.use import convert
  convert.from_hf(str(hf_folder(case, root)), str(root / case), None, 'float32')
  return root / case


def write_ggufs(export: pathlib.Path, folder: pathlib.Path) -> None:
  """Writes the GGUF file of each type of the export at `export` as folder/<type>/model.gguf."""
  from flaxlm.train.use import gguf, pretrained
  model, params, tokenizer = pretrained.load(export, 'float32')
  for gguf_type in TYPES:
    (folder / gguf_type).mkdir(parents=True, exist_ok=True)
    gguf.write(str(folder / gguf_type / f'{GGUF_NAME}.gguf'), params, model.config, tokenizer, gguf_type)


def main(case: str, out: str) -> None:
  """Writes `case`'s export and its GGUF file of each type under `out`."""
  write_ggufs(export_of(case, pathlib.Path(out)), pathlib.Path(out))


if __name__ == '__main__':
  main(*sys.argv[1:])
