"""Prints what each GGUF type costs in quality: the perplexity flaxlm gives a held-out text, and llama.cpp's with
the run's GGUF file of each type. Needs llama-cpp-python (`pip install ".[llama]"`, built from source).

  flaxlm-train --config=shakespeare_char --workdir=/tmp/run     # the README's quickstart
  python benchmarks/gguf_quality.py --workdir=/tmp/run --output=/tmp/gguf_quality

The text is the first --chars characters of the shipped corpus's validation pieces (those the run held out). Both
score it as flaxlm-score does (model/scoring.py): windows of the model's context starting every half context,
each token after the first scored once. flaxlm computes in float32; llama.cpp runs each file with its defaults (a
float16 key/value cache), as llama-cli would. Every figure is printed as `name: value`, with its ratio to flaxlm's.
"""

import math
import pathlib

import llama_cpp
import numpy as np
from absl import flags

from flaxlm.data import tokenizer as tokenizer_lib, word_order
from flaxlm.model import scoring
from flaxlm.train.commands import cli
from flaxlm.train.use import gguf, pretrained

WORKDIR = flags.DEFINE_string('workdir', None, 'The run (or export) to score.')
OUTPUT = flags.DEFINE_string('output', '/tmp/gguf_quality', 'A folder for the GGUF files (made if missing).')
CHARS = flags.DEFINE_integer('chars', 10_000, 'Characters of held-out text to score.')
TYPES = ('f32', 'f16', 'q8_0', 'q4_0')


def llama_cpp_log_probs(path: pathlib.Path, tokens_N: np.ndarray, length: int) -> np.ndarray:
  """Returns llama.cpp's log p of each token after the first, scored in flaxlm-score's windows."""
  model = llama_cpp.Llama(model_path=str(path), n_ctx=length, n_batch=length, logits_all=True, verbose=False)
  scored = []
  for start, first in scoring.windows(len(tokens_N), length):
    window = tokens_N[start:start + length]
    model.reset()
    model.eval(window.tolist())
    shifted_TxV = np.array(model.scores[:len(window)], np.float64)
    shifted_TxV -= shifted_TxV.max(-1, keepdims=True)
    log_probs_TxV = shifted_TxV - np.log(np.exp(shifted_TxV).sum(-1, keepdims=True))
    rows = np.arange(first - start - 1, min(start + length, len(tokens_N) - 1) - start)  # row r predicts start+r+1
    scored.append(log_probs_TxV[rows, tokens_N[start + rows + 1]])
  model.close()
  return np.concatenate(scored)


def benchmark() -> None:
  """Scores the text with flaxlm and with llama.cpp on each type's file, and prints the perplexities."""
  workdir = cli.required(WORKDIR, 'pass the --workdir of a run.')
  model, params, tokenizer = pretrained.load(workdir, 'float32')
  text = ''.join(word_order.held_out_pieces())[:CHARS.value]
  tokens_N = tokenizer_lib.model_ids(tokenizer, text)
  length = model.config.max_length
  ours = scoring.perplexity(scoring.token_log_probs(model, params, tokens_N)[0])
  print(f'text: {len(text):,} characters, {len(tokens_N):,} tokens, windows of {length}')
  print(f'perplexity_flaxlm_float32: {ours:.4f}')
  folder = pathlib.Path(OUTPUT.value)
  folder.mkdir(parents=True, exist_ok=True)
  for gguf_type in TYPES:
    path = folder / f'model-{gguf_type}.gguf'
    path.unlink(missing_ok=True)
    size = gguf.write(str(path), params, model.config, tokenizer, gguf_type)
    theirs = math.exp(-float(np.mean(llama_cpp_log_probs(path, tokens_N, length))))
    print(f'perplexity_llama_cpp_{gguf_type}: {theirs:.4f} ({theirs / ours:.4f} x flaxlm; file {size:,} bytes)')


if __name__ == '__main__':
  cli.run(benchmark)
