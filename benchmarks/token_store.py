"""Prints what a token store costs at scale: preparing a generated corpus, training on it, and reading it.

  python benchmarks/token_store.py --corpus_gb=2 --workdir=/tmp/token_store_bench

1. Generates --corpus_gb GiB of JSONL text in --files files under --workdir (reused when already there): documents
   of words drawn, seeded, from a made-up vocabulary of --words syllable words with a Zipf-like distribution, with
   commas, full stops and line breaks.
2. Trains a SentencePiece BPE tokenizer (--vocab_size) on the first --sample_mb of the corpus (timed apart), then
   prepares the corpus with `flaxlm-data prepare --workers=<cores>` twice, with the byte tokenizer and with that
   one, each in its own process: wall time, tokens/s, the store's size, and peak memory: the high-water resident
   set of the preparing process and of its largest worker, and the largest sum over all of them (sampled).
3. Prepares the first --small_mb of the same text with the same tokenizer, and times `flaxlm-train --config=tiny`
   for --steps steps on the small store and on the big one, alternately, --repeats times: the start (launch to
   the first `step` line), the whole run and the run's peak RSS (its high-water mark); each run's, and their
   medians. Targets: the big store's start within 1.5x and RSS within +200 MB of the small store's.
4. Reads the big stores' train split with `PackedExamples.gather` on one core (the reading thread pinned to one CPU),
   batches of --batch_size random examples of T = 1024 and T = 64, for --read_seconds each (target at T = 1024:
   at least 1M tokens/s; the store's files are in the page cache after preparing them).

Every figure is printed as `name: value unit`. The stores, runs and corpus stay under --workdir unless --cleanup.
"""

import dataclasses
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
from absl import flags

from flaxlm.data import pipeline, store
from flaxlm.train.commands import cli

WORKDIR = flags.DEFINE_string('workdir', '/tmp/token_store_bench', 'Where the corpus, stores and runs are written.')
CORPUS_GB = flags.DEFINE_float('corpus_gb', 2, 'GiB of generated JSONL text.')
FILES = flags.DEFINE_integer('files', 8, 'Files the corpus is written as.')
WORDS = flags.DEFINE_integer('words', 50_000, 'Words in the generated vocabulary.')
SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generated vocabulary and text.')
SAMPLE_MB = flags.DEFINE_integer('sample_mb', 20, 'MiB of the corpus the SentencePiece tokenizer is trained on.')
VOCAB_SIZE = flags.DEFINE_integer('vocab_size', 8000, 'Vocabulary of the SentencePiece tokenizer.')
SMALL_MB = flags.DEFINE_float('small_mb', 1, 'MiB of the corpus in the small store trained on for comparison.')
STEPS = flags.DEFINE_integer('steps', 20, 'Training steps of each run.')
REPEATS = flags.DEFINE_integer('repeats', 2, 'Pairs of training runs (small store, then big) per tokenizer.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Examples per batch the reader gathers.')
READ_SECONDS = flags.DEFINE_float('read_seconds', 5, 'Seconds the reader is timed at each sequence length.')
CLEANUP = flags.DEFINE_bool('cleanup', False, 'Delete --workdir (corpus included) at the end.')

MIB = 2**20
CHUNK_WORDS = 1 << 20  # Words generated per write.
PUNCTUATION = {',': 0.06, '.': 0.05, r'.\n': 0.012}  # Shares of the drawn words; r'\n' is a line break in JSON.
DOCUMENT_WORDS = 400  # Mean words per document.
OPEN, BETWEEN, CLOSE = b'{"text": "', b'"}\n{"text": "', b'"}\n'  # JSONL around the drawn text.
SYLLABLES = [c + v for c in ('', 'b', 'd', 'f', 'g', 'k', 'l', 'm', 'n', 'p', 'r', 's', 't', 'v', 'th', 'st', 'ch')
             for v in ('a', 'e', 'i', 'o', 'u', 'ea', 'ou')]
READ_LENGTHS = (1024, 64)


def figure(name: str, value: float, unit: str) -> None:
  """Prints one figure as `name: value unit`."""
  print(f'{name}: {value:,}' if isinstance(value, int) else f'{name}: {value:,.3f}', unit, flush=True)


def vocabulary(words: int, seed: int) -> list[str]:
  """Returns `words` made-up words, the frequent (first) ones shorter, as a language's are."""
  rng = np.random.default_rng(seed)
  counts = 1 + rng.binomial(3, np.minimum(0.9, 0.05 + np.log10(np.arange(words) + 2) / 6))
  return [''.join(rng.choice(SYLLABLES, count)) for count in counts]


def table(words: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns the byte strings drawn (each word after a space, the punctuation, a document break) as rows of a
  zero-padded uint8 matrix, their lengths, and the probability of drawing each."""
  rows = [f' {word}'.encode() for word in words] + [mark.encode() for mark in PUNCTUATION] + [BETWEEN]
  zipf = 1 / (np.arange(len(words)) + 2.7) ** 1.07  # Zipf-Mandelbrot: the shape of word frequencies in text.
  marks = np.asarray([*PUNCTUATION.values(), 1 / DOCUMENT_WORDS])
  probabilities = np.concatenate([zipf / zipf.sum() * (1 - marks.sum()), marks])
  lengths = np.asarray([len(row) for row in rows])
  matrix = np.zeros((len(rows), lengths.max()), np.uint8)
  for i, row in enumerate(rows):
    matrix[i, :len(row)] = np.frombuffer(row, np.uint8)
  return matrix, lengths, probabilities


def text_chunk(rng: np.random.Generator, matrix: np.ndarray, lengths: np.ndarray, cdf: np.ndarray,
               limit: int) -> bytes:
  """Returns the first of CHUNK_WORDS rows drawn from the table that fit in `limit` bytes, joined."""
  ids = np.minimum(np.searchsorted(cdf, rng.random(CHUNK_WORDS)), len(cdf) - 1)
  ends = np.cumsum(lengths[ids])
  ids = ids[:np.searchsorted(ends, limit, side='right')]
  sizes = lengths[ids]
  columns = np.arange(int(sizes.sum())) - np.repeat(ends[:len(ids)] - sizes, sizes)
  return matrix[np.repeat(ids, sizes), columns].tobytes()


def write_corpus_file(path: pathlib.Path, size: int, seed: list[int], corpus: tuple) -> None:
  """Writes one JSONL file of about `size` bytes drawn from `corpus` (a table) with `seed`; appears when whole."""
  matrix, lengths, probabilities = corpus
  rng, cdf = np.random.default_rng(seed), np.cumsum(probabilities)
  partial = path.with_name(path.name + '.partial')
  with partial.open('wb') as f:
    f.write(OPEN)
    while chunk := text_chunk(rng, matrix, lengths, cdf, size - len(CLOSE) - f.tell()):
      f.write(chunk)
    f.write(CLOSE)
  partial.replace(path)


def generate_corpus(folder: pathlib.Path) -> list[pathlib.Path]:
  """Returns the corpus's files in `folder`, writing those not there yet."""
  folder.mkdir(parents=True, exist_ok=True)
  paths = [folder / f'text-{i:05d}.jsonl' for i in range(FILES.value)]
  missing = [(i, path) for i, path in enumerate(paths) if not path.exists()]
  if missing:
    start, corpus = time.perf_counter(), table(vocabulary(WORDS.value, SEED.value))
    for i, path in missing:
      write_corpus_file(path, -(-int(CORPUS_GB.value * 2**30) // FILES.value), [SEED.value, i], corpus)
    figure('corpus_generation_seconds', time.perf_counter() - start, 's')
  figure('corpus_bytes', sum(path.stat().st_size for path in paths), 'bytes')
  return paths


def head(source: pathlib.Path, size: int, output: pathlib.Path) -> pathlib.Path:
  """Returns `output`, written (if not there yet) with the whole lines of `source`'s first `size` bytes."""
  if not output.exists():
    with source.open('rb') as f:
      data = f.read(size)
    output.write_bytes(data[:data.rfind(b'\n') + 1])
  return output


def high_water(process: psutil.Process) -> int:
  """Returns the peak resident set size in bytes of a live process so far (VmHWM in /proc; 0 once it has exited)."""
  for line in pathlib.Path(f'/proc/{process.pid}/status').read_text().splitlines():
    if line.startswith('VmHWM:'):
      return int(line.split()[1]) * 1024
  return 0


@dataclasses.dataclass
class Peaks:
  """Peak resident sets in bytes: of a process and of its largest descendant (their high-water marks, exact up to
  the last sample), and of all of them together (the largest sum of the sampled current sizes)."""
  process: int = 0
  descendant: int = 0
  tree: int = 0

  def sample(self, process: psutil.Process) -> None:
    """Adds one sample of `process` and its descendants (a sample that meets an exiting process is skipped)."""
    try:
      children = process.children(recursive=True)
      own, others = high_water(process), [high_water(child) for child in children]
      current = process.memory_info().rss + sum(child.memory_info().rss for child in children)
    except (psutil.Error, OSError):
      return
    self.process, self.descendant = max(self.process, own), max([self.descendant, *others])
    self.tree = max(self.tree, current)


@dataclasses.dataclass
class Launch:
  """A finished command: seconds to its first marked line and to its end, its memory peaks, and its output."""
  first_seconds: float | None
  seconds: float
  peaks: Peaks
  output: list[str]


def sample_until(process: psutil.Process, peaks: Peaks, done: threading.Event) -> None:
  """Samples `process`'s memory into `peaks` every 100 ms until `done` is set."""
  while not done.wait(0.1):
    peaks.sample(process)


def launch(argv: list[str], marker: str = '') -> Launch:
  """Runs `argv` to completion, echoing its output; raises RuntimeError with its last lines if it fails.

  Memory is read from /proc while the command runs: getrusage's ru_maxrss of a child counts the memory of this
  process, which it was forked from (Linux keeps the larger of the two across exec).
  """
  start, first, output = time.perf_counter(), None, []
  peaks, done = Peaks(), threading.Event()
  with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as child:
    sampler = threading.Thread(target=sample_until, args=(psutil.Process(child.pid), peaks, done))
    sampler.start()
    for line in child.stdout:
      if first is None and marker and line.startswith(marker):
        first = time.perf_counter() - start
      output.append(line.rstrip('\n'))
      print('  |', output[-1], flush=True)
    done.set()  # The command closed its output: it is exiting.
    sampler.join()
  seconds = time.perf_counter() - start
  if child.returncode:
    raise RuntimeError(f'{argv[0]} exited with {child.returncode}: ' + '\n'.join(output[-20:]))
  return Launch(first, seconds, peaks, output)


def command(name: str) -> str:
  """Returns the path of flaxlm's console script `name` in this Python's environment."""
  return str(pathlib.Path(sys.executable).parent / name)


def train_tokenizer(corpus: pathlib.Path) -> str:
  """Returns the SentencePiece model trained on the corpus's first SAMPLE_MB (trained once, then reused)."""
  model = corpus / f'tok-{VOCAB_SIZE.value}.model'
  if not model.exists():
    sample = head(corpus / 'text-00000.jsonl', SAMPLE_MB.value * MIB, corpus / f'sample-{SAMPLE_MB.value}mb.jsonl')
    run = launch([command('flaxlm-tokenizer'), 'train', f'--input={sample}', f'--output={model}',
                  f'--vocab_size={VOCAB_SIZE.value}'])
    figure('tokenizer_training_seconds', run.seconds, 's')
  return str(model)


def prepare(inputs: str, output: pathlib.Path, tokenizer: str) -> Launch:
  """Returns the run of `flaxlm-data prepare` of `inputs` into a new store at `output` with one worker per core."""
  shutil.rmtree(output, ignore_errors=True)  # A finished store would be reopened, not prepared.
  return launch([command('flaxlm-data'), 'prepare', inputs, f'--output={output}', f'--tokenizer={tokenizer}',
                 f'--workers={os.cpu_count()}'])


def report_preparation(name: str, run: Launch, output: pathlib.Path, text_bytes: int) -> None:
  """Prints a preparation's time, speed, store size and memory."""
  tokens = sum(split['tokens'] for split in store.open_store(str(output)).manifest['splits'].values())
  size = sum(path.stat().st_size for path in output.iterdir())
  figure(f'prepare_{name}_seconds', run.seconds, 's')
  figure(f'prepare_{name}_tokens', tokens, 'tokens')
  figure(f'prepare_{name}_tokens_per_second', tokens / run.seconds, 'tokens/s')
  figure(f'prepare_{name}_text_mib_per_second', text_bytes / MIB / run.seconds, 'MiB/s')
  figure(f'prepare_{name}_store_bytes', size, 'bytes')
  figure(f'prepare_{name}_peak_rss_main', run.peaks.process / MIB, 'MiB')
  figure(f'prepare_{name}_peak_rss_largest_worker', run.peaks.descendant / MIB, 'MiB')
  figure(f'prepare_{name}_peak_rss_all_processes', run.peaks.tree / MIB, 'MiB')


def train(path: pathlib.Path, workdir: pathlib.Path) -> Launch:
  """Returns a fresh `flaxlm-train --config=tiny` run of STEPS steps on the store at `path`, on one CPU device."""
  shutil.rmtree(workdir, ignore_errors=True)
  return launch([command('flaxlm-train'), '--config=tiny', f'--workdir={workdir}', f'--config.data.path={path}',
                 f'--config.train.steps={STEPS.value}', '--config.mesh.cpu_devices=1'], marker='step ')


def training_figures(run: Launch) -> tuple[float, float, float]:
  """Returns a training run's start and total seconds and its peak RSS in MiB."""
  return run.first_seconds, run.seconds, max(run.peaks.process, run.peaks.descendant) / MIB


def report_training(name: str, figures: tuple[float, float, float]) -> None:
  """Prints a training run's (or the median run's) start, total seconds and peak RSS, named `name`."""
  for value, (metric, unit) in zip(figures, (('start', 's'), ('run', 's'), ('peak_rss', 'MiB'))):
    figure(f'{name}_{metric}', value, unit)


def compare_training(name: str, small: pathlib.Path, big: pathlib.Path, runs: pathlib.Path) -> None:
  """Prints the start, run time and peak RSS of training on the small store and the big one (each run's and their
  medians), and how the big store's medians compare with the small one's."""
  figures = {'small': [], 'big': []}
  for repeat in range(REPEATS.value):
    for size, path in (('small', small), ('big', big)):
      figures[size].append(training_figures(train(path, runs / f'{name}-{size}')))
      report_training(f'train_{name}_{size}_store_repeat{repeat}', figures[size][-1])
  medians = {size: [statistics.median(values) for values in zip(*runs)] for size, runs in figures.items()}
  for size, values in medians.items():
    report_training(f'train_{name}_{size}_store_median', values)
  figure(f'train_{name}_start_ratio_big_to_small', medians['big'][0] / medians['small'][0], 'x (target <= 1.5)')
  figure(f'train_{name}_peak_rss_big_minus_small', medians['big'][2] - medians['small'][2], 'MiB (target <= +200)')


def read_speed(examples: pipeline.PackedExamples, seconds: float) -> float:
  """Returns the tokens/s of gathering batches of random examples for `seconds` on one core."""
  rng, cpus = np.random.default_rng(0), os.sched_getaffinity(0)
  os.sched_setaffinity(0, {min(cpus)})
  try:
    examples.gather(rng.integers(0, len(examples), BATCH_SIZE.value))  # Opens the shards.
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
      examples.gather(rng.integers(0, len(examples), BATCH_SIZE.value))
      batches += 1
    return batches * BATCH_SIZE.value * examples.length / (time.perf_counter() - start)
  finally:
    os.sched_setaffinity(0, cpus)


def report_reading(name: str, path: pathlib.Path) -> None:
  """Prints the reader's tokens/s on the train split of the store at `path`, at each of READ_LENGTHS."""
  opened = store.open_store(str(path))
  for length in READ_LENGTHS:
    examples = pipeline.PackedExamples(opened.split('train'), length, opened.tokenizer.pad_id or 0)
    target = ' (target >= 1,000,000)' if length == READ_LENGTHS[0] else ''
    figure(f'read_{name}_T{length}_tokens_per_second', read_speed(examples, READ_SECONDS.value), f'tokens/s{target}')


def benchmark() -> None:
  """Generates the corpus, then prepares, trains on and reads a store of it with each tokenizer."""
  workdir = pathlib.Path(WORKDIR.value)
  corpus = workdir / f'corpus-{CORPUS_GB.value:g}gib-{FILES.value}files-seed{SEED.value}'
  paths = generate_corpus(corpus)
  small_text = head(paths[0], int(SMALL_MB.value * MIB), corpus / f'small-{SMALL_MB.value:g}mb.jsonl')
  specs = {'byte': 'byte', 'sentencepiece': train_tokenizer(corpus)}
  figure('cores', os.cpu_count(), 'cores')
  for name, spec in specs.items():
    big, small = workdir / 'stores' / name, workdir / 'stores' / f'{name}-small'
    report_preparation(name, prepare(str(corpus / 'text-*.jsonl'), big, spec), big,
                       sum(path.stat().st_size for path in paths))
    prepare(str(small_text), small, spec)
    compare_training(name, small, big, workdir / 'runs')
    report_reading(name, big)
  if CLEANUP.value:
    shutil.rmtree(workdir)


if __name__ == '__main__':
  cli.run(benchmark)
