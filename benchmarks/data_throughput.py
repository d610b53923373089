"""Prints the input pipeline's tokens per second: tokenizing a corpus once, then packing, shuffling and batching.

  python benchmarks/data_throughput.py --input=flaxlm:tinyshakespeare --tokenizer=tok.model

Without --tokenizer, a SentencePiece BPE model of --vocab_size is trained on the input first (and timed).
"""

import time

from absl import flags

from flaxlm.data import pipeline, sources, text, tokenizer as tokenizer_lib
from flaxlm.train.commands import cli

INPUT = flags.DEFINE_string('input', None, 'A UTF-8 text file.')
TOKENIZER = flags.DEFINE_string('tokenizer', None, 'A tokenizer file; default: train SentencePiece BPE on the input.')
VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 2000, 'Vocabulary of the tokenizer trained when none is given.')
LENGTH = flags.DEFINE_integer('length', 1024, 'Sequence length T of each example.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 32, 'Examples per batch.')
BATCHES = flags.DEFINE_integer('batches', 2000, 'Batches to time.')
THREADS = flags.DEFINE_integer('threads', 0, 'Grain read threads (0: the calling thread).')


def timed(fn, *args):
  """Returns (fn(*args), seconds it took)."""
  start = time.perf_counter()
  result = fn(*args)
  return result, time.perf_counter() - start


def benchmark() -> None:
  """Prints tokenizer training, tokenization and batching speeds."""
  path = cli.required(INPUT, 'pass --input=FILE.txt.')
  corpus = text.read_text(path)
  if TOKENIZER.value:
    tokenizer = tokenizer_lib.load(TOKENIZER.value)
  else:
    tokenizer, seconds = timed(tokenizer_lib.train_sentencepiece, sources.lines(path), VOCAB_SIZE.value)
    print(f'trained SentencePiece BPE ({tokenizer.vocab_size:,} tokens) in {seconds:.1f} s')
  tokens, seconds = timed(tokenizer.encode, corpus)
  print(f'tokenized {len(corpus):,} characters into {len(tokens):,} tokens in {seconds:.2f} s: '
        f'{len(tokens) / seconds:,.0f} tokens/s (once per run)')
  examples = pipeline.PackedExamples(pipeline.TokenStream.from_documents([tokens], tokenizer.eos_id),
                                     LENGTH.value, tokenizer.pad_id or 0)
  data = pipeline.train_iterator(examples, BATCH_SIZE.value, seed=0, threads=THREADS.value)
  next(data)
  start = time.perf_counter()
  for _ in range(BATCHES.value):
    next(data)
  seconds = time.perf_counter() - start
  rate = BATCHES.value * BATCH_SIZE.value * LENGTH.value / seconds
  print(f'{BATCHES.value} batches of {BATCH_SIZE.value} x {LENGTH.value} ({len(examples):,} examples an epoch, '
        f'padding {examples.padding_fraction():.2%}): {seconds / BATCHES.value * 1e3:.2f} ms/batch, '
        f'{rate:,.0f} tokens/s with {THREADS.value} read threads')


if __name__ == '__main__':
  cli.run(benchmark)
