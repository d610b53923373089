"""Preparing a token store: a corpus read in groups, tokenized in worker processes, written as shards (data/store.py).

The input is cut into groups: byte ranges of plain text and JSONL files (a compressed file is one group), runs of
Parquet row groups, and ranges of a TFDS split's records. A worker reads its group alone, tokenizes it piece by
piece and writes the group's shard of each split, so memory stays bounded however large the corpus, and the
store's content does not depend on how many workers made it. Within a group, documents (and the pieces, of at
most a megabyte, of a long text file) go to the validation split evenly, `val_fraction` of them (TFDS datasets
bring their own split). A document begins with BOS where the tokenizer adds it (tokenizer.model_ids) and is
followed by EOS where the tokenizer has one. A stopped preparation (Ctrl-C, SIGTERM) resumes after the groups it
finished, each trusted only if its shards are on disk as its record says (size and SHA-256); the manifest is
written last, so the store is complete or not at all. A preparation that fails leaves nothing it made behind: a new
store's folder is removed, a stopped one keeps only its finished groups.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import math
import multiprocessing
import os
import signal
import time
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from flaxlm.configs.errors import UserError
from flaxlm.data import files, lock, sources, store, tokenizer as tokenizer_lib

GROUP_BYTES = 256 * 2**20  # Input bytes per group (a shard of each split); compressed files are one group each.
TFDS_GROUP = 65_536  # TFDS records per group.
PIECE_BYTES = (1024, 2**20)  # A long text is tokenized in pieces of lines: group bytes / 1000, within these bounds.
INLINE_BYTES = 16 * 2**20  # Inputs smaller than this are prepared in this process (a worker's start costs more).
COMPRESSED = ('.gz', '.zst')


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a corpus becomes a store: read by all workers."""
  text_field: str = 'text'
  val_fraction: float = 0.1
  tfds_dir: str = ''
  max_documents: int = 0


@dataclasses.dataclass(frozen=True)
class Unit:
  """A document, or a piece of a long text file, with whether it begins and ends its document."""
  text: str
  begins: bool
  ends: bool


def kind_of(path: str) -> str:
  """Returns how a file is read: 'parquet', 'jsonl' (also .jsonl.gz/.jsonl.zst) or 'text'."""
  name = path
  for suffix in COMPRESSED:
    name = name.removesuffix(suffix)
  return 'parquet' if name.endswith('.parquet') else 'jsonl' if name.endswith('.jsonl') else 'text'


def file_groups(path: str, group_bytes: int) -> list[dict]:
  """Returns the groups of one file: byte ranges of an uncompressed text or JSONL file, else row groups or all."""
  kind, size = kind_of(path), os.path.getsize(path)
  if kind == 'parquet':
    metadata = parquet_file(path).metadata
    cuts, size = [0], 0
    for row_group in range(metadata.num_row_groups):  # A group ends once it holds group_bytes.
      size += metadata.row_group(row_group).total_byte_size
      if size >= group_bytes or row_group == metadata.num_row_groups - 1:
        cuts, size = cuts + [row_group + 1], 0
    return [{'kind': kind, 'path': path, 'start': a, 'stop': b} for a, b in zip(cuts, cuts[1:])]
  if path.endswith(COMPRESSED):
    return [{'kind': kind, 'path': path, 'start': 0, 'stop': None}]
  return [{'kind': kind, 'path': path, 'start': start, 'stop': min(start + group_bytes, size)}
          for start in range(0, max(size, 1), group_bytes)]


def tfds_groups(name: str, settings: Settings) -> list[dict]:
  """Returns the groups of a TFDS dataset's train split and held-out (validation, else test) split."""
  splits = sources.prepared_builder(name, settings.tfds_dir).info.splits
  held_out = 'validation' if 'validation' in splits else 'test'
  if 'train' not in splits or held_out not in splits:
    raise UserError(f'TFDS dataset {name} has splits {sorted(splits)}: flaxlm needs train and validation or test.')
  groups = []
  for tfds_split, split in (('train', 'train'), (held_out, 'validation')):
    count = splits[tfds_split].num_examples
    count = min(count, settings.max_documents) if settings.max_documents else count
    groups += [{'kind': 'tfds', 'path': name, 'split': split, 'tfds_split': tfds_split, 'start': start,
                'stop': min(start + TFDS_GROUP, count)} for start in range(0, count, TFDS_GROUP)]
  return groups


def plan_groups(inputs: str, settings: Settings, group_bytes: int = GROUP_BYTES) -> list[dict]:
  """Returns the groups of the input: files, globs or `flaxlm:NAME` (comma-separated), or `tfds:NAME`."""
  if inputs.startswith(sources.TFDS_PREFIX):
    return tfds_groups(inputs[len(sources.TFDS_PREFIX):], settings)
  paths = [str(path.absolute()) for path in sources.expand(inputs)]
  for path in paths:
    check_field(path, settings.text_field)
  return [group for path in paths for group in file_groups(path, group_bytes)]


def parquet_file(path: str) -> pq.ParquetFile:
  """Returns the Parquet file at `path`; raises UserError if it is not one."""
  try:
    return pq.ParquetFile(path)
  except Exception as e:  # pyarrow raises ArrowInvalid and OSError kinds for a file that is not Parquet.
    raise UserError(f'{path} is not a Parquet file ({str(e).splitlines()[0]}): check the file.') from None


def is_text(kind: pa.DataType) -> bool:
  """Returns whether a Parquet column of Arrow type `kind` holds text (strings, dictionary-encoded or not, or nulls)."""
  kind = kind.value_type if pa.types.is_dictionary(kind) else kind
  return any(test(kind) for test in (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view,
                                     pa.types.is_null))


def check_field(path: str, field: str) -> None:
  """Raises UserError if a Parquet file has no text column `field`, or a JSONL file's first record no text `field`."""
  kind = kind_of(path)
  fix = 'set the text field (--text_field in flaxlm-data prepare, --config.data.text_field in flaxlm-train).'
  if kind == 'parquet':
    schema = parquet_file(path).schema_arrow
    if field not in schema.names:
      raise UserError(f'{path} has no column {field!r} (it has {schema.names}): {fix}')
    if not is_text(schema.field(field).type):
      raise UserError(f'{path} column {field!r} holds {schema.field(field).type}, not text: {fix}')
  elif kind == 'jsonl':
    next(jsonl_units({'path': path, 'start': 0, 'stop': None}, field), None)


def lines(group: dict) -> Iterator[tuple[str, bytes]]:
  """Yields (where, line) for the lines that begin in the group's byte range; `where` names the line for a person:
  'FILE:NUMBER', or 'FILE (the line at byte N)' in a group that starts inside the file."""
  with sources.reading(epath.Path(group['path'])), sources.open_binary(group['path']) as f:
    if group['start']:
      f.seek(group['start'] - 1)
      f.readline()  # The rest of the line that began before the range: the previous group's.
    number = 0
    while group['stop'] is None or f.tell() < group['stop']:  # Compressed files (no tell) are read whole.
      offset, line = f.tell() if group['start'] else 0, f.readline()
      if not line:
        return
      number += 1
      yield (f'{group["path"]} (the line at byte {offset})' if group['start'] else f'{group["path"]}:{number}'), line


def text_units(group: dict, piece_bytes: int) -> Iterator[Unit]:
  """Yields a text file's range as pieces of whole lines of about `piece_bytes`: one document, begun at byte 0 and
  ended at the file's end."""
  piece, size, begins = [], 0, group['start'] == 0
  for _, line in lines(group):
    piece.append(line)
    size += len(line)
    if size >= piece_bytes:
      yield Unit(decode(b''.join(piece), group['path']), begins, False)
      piece, size, begins = [], 0, False
  ends = group['stop'] is None or group['stop'] >= os.path.getsize(group['path'])
  if piece or ends:
    yield Unit(decode(b''.join(piece), group['path']), begins, ends)


def decode(data: bytes, path: str) -> str:
  """Returns `data` as text; raises UserError naming `path` if it is not UTF-8."""
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise UserError(f'{path} is not UTF-8 text ({e.reason}): convert it to UTF-8.') from None


def jsonl_units(group: dict, field: str) -> Iterator[Unit]:
  """Yields the `field` of each JSON record that begins in the group's range, as a whole document."""
  for where, line in lines(group):
    if line.strip():
      record = sources.json_record(decode(line, where), where)
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise UserError(f'{where} has no text field {field!r}: set the text field (--text_field in flaxlm-data '
                        'prepare, --config.data.text_field in flaxlm-train).')
      yield Unit(record[field], True, True)


def parquet_units(group: dict, field: str) -> Iterator[Unit]:
  """Yields the `field` of each row in the group's row groups of a Parquet file."""
  batches = parquet_file(group['path']).iter_batches(row_groups=range(group['start'], group['stop']), columns=[field])
  for batch in batches:
    for text in batch.column(0).to_pylist():
      yield Unit(text or '', True, True)


def tfds_units(group: dict, settings: Settings) -> Iterator[Unit]:
  """Yields the text field of the group's records of a TFDS split."""
  source = sources.tfds_builder(group['path'], settings.tfds_dir).as_data_source(split=group['tfds_split'])
  for index in range(group['start'], group['stop']):
    yield Unit(sources.decode_field(source[index], settings.text_field, group['path']), True, True)


def units(group: dict, settings: Settings) -> Iterator[Unit]:
  """Yields the documents (or pieces of them) of one group, in order."""
  if group['kind'] == 'tfds':
    return tfds_units(group, settings)
  if group['kind'] == 'parquet':
    return parquet_units(group, settings.text_field)
  if group['kind'] == 'jsonl':
    return jsonl_units(group, settings.text_field)
  length = (group['stop'] or os.path.getsize(group['path'])) - group['start']
  return text_units(group, min(max(length // 1000, PIECE_BYTES[0]), PIECE_BYTES[1]))


def held_out(index: int, fraction: float) -> bool:
  """Returns whether unit `index` of a group is validation: `fraction` of the units, evenly spread."""
  return math.floor((index + 1) * fraction) > math.floor(index * fraction)


def split_of(group: dict, index: int, settings: Settings) -> str:
  """Returns the split a group's unit `index` goes to."""
  if 'split' in group:
    return group['split']
  return 'validation' if held_out(index, settings.val_fraction) else 'train'


@functools.lru_cache(maxsize=2)
def tokenizer_from(saved: tuple[tuple[str, bytes], ...]) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer of a store's tokenizer files, (name, bytes) each (loaded once per worker process)."""
  return tokenizer_lib.from_saved(dict(saved))


def write_group(output: str, index: int, group: dict, settings: Settings,
                saved: tuple[tuple[str, bytes], ...]) -> dict:
  """Tokenizes group `index` into its shard of each split, then records it done; returns the record."""
  tokenizer = tokenizer_from(saved)
  folder, dtype = epath.Path(output), store.dtype_for(tokenizer.vocab_size)
  writers = {split: store.ShardWriter(folder / store.shard_name(split, index), dtype) for split in store.SPLITS}
  previous = None  # The split of the unit before, in the input's order.
  for number, unit in enumerate(units(group, settings)):
    split = split_of(group, number, settings)
    ids = tokenizer_lib.model_ids(tokenizer, unit.text) if unit.begins else tokenizer.encode(unit.text)
    if unit.ends and tokenizer.eos_id is not None:
      ids = np.append(ids, tokenizer.eos_id)
    writers[split].add(ids, unit.begins or previous != split)  # A split's stream jumps over the other's units.
    previous = split
  record = {'group': group, 'shards': {split: writer.close() for split, writer in writers.items()}}
  files.replace(folder / store.group_name(index), json.dumps(record).encode())
  return record


def group_alphabet(group: dict, settings: Settings) -> set[str]:
  """Returns the characters of a group's text (a char tokenizer's alphabet is that of the whole corpus)."""
  alphabet = set()
  for unit in units(group, settings):
    alphabet.update(unit.text)
  return alphabet


def run_all(function: Callable, calls: list[tuple], workers: int) -> list:
  """Returns `function(*call)` for each call, in order: here if `workers` is 0, else in that many processes.

  The workers ignore Ctrl-C (sent to the whole process group): this process decides. If a call fails or this
  process is interrupted, the workers are ended at once, their calls unfinished, rather than waited for.
  """
  if not workers or len(calls) < 2:
    return [function(*call) for call in calls]
  spawn = multiprocessing.get_context('spawn')  # Forking a process that runs JAX's threads is unsafe.
  pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(calls)), mp_context=spawn,
                                                initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
  try:
    return list(pool.map(function, *zip(*calls)))
  except BaseException:
    for process in list((pool._processes or {}).values()):  # The executor would wait for their calls to end.
      process.terminate()
    raise
  finally:
    pool.shutdown(cancel_futures=True)


def source_sizes(groups: list[dict]) -> list[dict]:
  """Returns each input file (or TFDS dataset) once, with its size in bytes (records for TFDS)."""
  sizes = {}
  for group in groups:
    sizes[group['path']] = (sizes.get(group['path'], 0) + group['stop'] - group['start'] if group['kind'] == 'tfds'
                            else os.path.getsize(group['path']))
  return [{'path': path, 'size': size} for path, size in sizes.items()]


def tokenizer_key(tokenizer: str | tokenizer_lib.Tokenizer) -> str:
  """Returns how a plan names its tokenizer: 'char' or 'byte', else the SHA-256 of the tokenizer's files (its own
  file's alone where it has no special-token files)."""
  if tokenizer in ('char', 'byte'):
    return tokenizer
  spec = tokenizer_lib.for_corpus(tokenizer, '') if isinstance(tokenizer, str) else tokenizer
  return store.digest(b''.join(tokenizer_lib.files_of(spec).values()))


def make_plan(inputs: str, settings: Settings, tokenizer: str | tokenizer_lib.Tokenizer, group_bytes: int) -> dict:
  """Returns what a store is prepared from: the groups of the input, with the settings (checks the input first)."""
  key = tokenizer_key(tokenizer)  # Checks a tokenizer file before the input is read.
  groups = plan_groups(inputs, settings, group_bytes)
  sources = source_sizes(groups)
  if not sum(source['size'] for source in sources):
    raise UserError(f'{inputs} is empty: give it some text to train on.')
  return {'version': store.VERSION, 'inputs': inputs, 'tokenizer': key, 'settings': dataclasses.asdict(settings),
          'sources': sources, 'groups': groups}


def check_resumable(folder: epath.Path, plan: dict) -> None:
  """Raises UserError if `folder` exists but is not an unfinished preparation of exactly `plan`."""
  if not folder.exists():
    return
  if not folder.is_dir():
    raise UserError(f'{folder} is a file: pass a new directory as the store\'s path.')
  if not (folder / store.PLAN).exists():
    if any(path.name != lock.LOCK for path in folder.iterdir()):
      raise UserError(f'{folder} is a directory that holds no token store: pass a new directory as the store\'s path.')
    return
  try:
    existing = json.loads((folder / store.PLAN).read_text())
  except ValueError as e:
    existing = e
  if not isinstance(existing, dict):
    raise UserError(f'{folder / store.PLAN} is not a plan flaxlm wrote ({existing}): pass a new directory as the '
                    'store\'s path, or delete that one.')
  if existing.get('version') != plan['version']:
    raise UserError(f'{folder} holds a token store of another flaxlm (store version {existing.get("version")}, this '
                    f'one writes {plan["version"]}): pass a new directory as the store\'s path, or delete that one.')
  if existing != plan:
    raise UserError(f'{folder} holds a token store of other inputs or settings (or its inputs changed since): pass '
                    'a new directory, or the same inputs and settings to finish it.')


def store_tokenizer(tokenizer: str | tokenizer_lib.Tokenizer, plan: dict, workers: int) -> tokenizer_lib.Tokenizer:
  """Returns the tokenizer to prepare with: the one given, the one a file or 'byte' names, or for 'char' the
  corpus's own alphabet."""
  if not isinstance(tokenizer, str):
    return tokenizer
  if tokenizer != 'char':
    return tokenizer_lib.for_corpus(tokenizer, '')
  settings = Settings(**plan['settings'])
  alphabets = run_all(group_alphabet, [(group, settings) for group in plan['groups']], workers)
  return tokenizer_lib.CharTokenizer(sorted(set().union(*alphabets)))


def tokenizer_in(folder: epath.Path, tokenizer: str | tokenizer_lib.Tokenizer, plan: dict,
                 workers: int) -> tokenizer_lib.Tokenizer:
  """Returns the store's tokenizer: the one an unfinished preparation wrote, else `tokenizer`'s, written now."""
  for name in (tokenizer_lib.SentencePieceTokenizer.filename, tokenizer_lib.CharTokenizer.filename):
    if (folder / name).exists():
      return tokenizer_lib.load(folder / name)
  spec = store_tokenizer(tokenizer, plan, workers)
  tokenizer_lib.save(spec, folder)
  return spec


def check_splits(plan: dict, splits: dict) -> None:
  """Raises UserError if a split of the store would be empty: a run needs tokens to train on and to validate with."""
  fraction = plan['settings']['val_fraction']
  if not splits['validation']['tokens']:
    raise UserError(f'{plan["inputs"]} leaves the validation split empty: --val_fraction={fraction} holds out none '
                    'of its documents (nor of the pieces of a text, about a thousandth of a file, 1 KB at least): '
                    'raise --val_fraction (--config.data.val_fraction in flaxlm-train), or give more text.')
  if not splits['train']['tokens']:
    raise UserError(f'{plan["inputs"]} leaves the training split empty (--val_fraction={fraction}): lower '
                    '--val_fraction (--config.data.val_fraction in flaxlm-train), or give more text.')


def manifest(plan: dict, tokenizer: tokenizer_lib.Tokenizer, records: list[dict]) -> dict:
  """Returns a finished store's manifest: sources, tokenizer, counts, and each split's non-empty shards in order;
  raises UserError if a split is empty."""
  splits = {}
  for split in store.SPLITS:
    shards = [record['shards'][split] for record in records if record['shards'][split]['tokens']]
    splits[split] = {'tokens': sum(s['tokens'] for s in shards), 'documents': sum(s['documents'] for s in shards),
                     'shards': shards}
  check_splits(plan, splits)
  return {'version': store.VERSION, 'sources': plan['sources'], 'settings': plan['settings'],
          'dtype': store.dtype_for(tokenizer.vocab_size).name, 'chunk_tokens': store.CHUNK,
          'tokenizer': {'file': tokenizer.filename, 'sha256': store.digest(tokenizer.serialized()),
                        'vocab_size': tokenizer.vocab_size},
          'splits': splits}


def default_workers(plan: dict) -> int:
  """Returns how many worker processes prepare a plan: none for a small input, else one per core."""
  small = sum(source['size'] for source in plan['sources'] if plan['groups'][0]['kind'] != 'tfds') < INLINE_BYTES
  return 0 if small or len(plan['groups']) < 2 else os.cpu_count()


def prepare(inputs: str, output: str, tokenizer: str | tokenizer_lib.Tokenizer, settings: Settings,
            workers: int | None = None, group_bytes: int = GROUP_BYTES,
            report: Callable[[str], None] = lambda line: None, take_over: bool = False) -> store.Store:
  """Prepares (or finishes preparing) the store at `output` from `inputs` and returns it.

  `tokenizer` is 'char', 'byte', a tokenizer file or a tokenizer; `workers` None picks by the input's size. The
  input is checked (files exist, text fields are there) before anything is written; `report` gets progress lines;
  `take_over` takes the store's lock from a writer known to be gone.
  """
  return prepare_plan(make_plan(inputs, settings, tokenizer, group_bytes), output, tokenizer, workers, report,
                      take_over)


def prepare_plan(plan: dict, output: str, tokenizer: str | tokenizer_lib.Tokenizer, workers: int | None = None,
                 report: Callable[[str], None] = lambda line: None, take_over: bool = False) -> store.Store:
  """Prepares the store of `plan` at `output` (see `prepare`), keeping the groups a stopped preparation finished;
  returns a complete one as it is. Its lock (data/lock.py) is held while it is written: another writer is refused,
  and `take_over` takes a lock whose writer is gone."""
  folder = epath.Path(output)
  check_resumable(folder, plan)
  if (folder / store.MANIFEST).exists():
    return store.open_store(output)
  new = not folder.exists()
  with lock.held(folder, 'the token store', take_over, report):
    return finish(plan, folder, tokenizer, workers, report, new)


def finish(plan: dict, folder: epath.Path, tokenizer: str | tokenizer_lib.Tokenizer, workers: int | None,
           report: Callable[[str], None], new: bool) -> store.Store:
  """Prepares the store of `plan` in `folder`, whose lock this process holds, unless it is complete; returns it.

  A failure leaves nothing it made: a `new` folder is emptied, but for the finished groups of a stopped preparation
  (KeyboardInterrupt: Ctrl-C, or SIGTERM as the commands raise it; raised again saying what was kept), which a rerun
  finishes.
  """
  check_resumable(folder, plan)  # Again: another writer may have finished or begun it before this one had the lock.
  if (folder / store.MANIFEST).exists():
    return store.open_store(str(folder))
  try:
    return write_store(plan, folder, tokenizer, default_workers(plan) if workers is None else workers, report)
  except BaseException as error:
    kept = forget_unfinished(folder, len(plan['groups']))
    stopped = isinstance(error, KeyboardInterrupt)
    if new and not (stopped and kept):
      empty(folder)
    if stopped:
      raise KeyboardInterrupt(stop_message(str(folder), kept, len(plan['groups']), removed=new and not kept)) from None
    raise


def empty(folder: epath.Path) -> None:
  """Removes everything in `folder` but its lock (whose holder removes it, and the folder with it)."""
  for path in folder.iterdir():
    if path.name != lock.LOCK:
      path.rmtree() if path.is_dir() else path.unlink()


def stop_message(output: str, kept: int, count: int, removed: bool) -> str:
  """Returns what a stopped preparation says: what it kept of `output`, and how to finish it."""
  if removed:
    return f'stopped before any of the {count} input groups was prepared: {output} is removed.'
  return f'{kept} of {count} input groups prepared and kept in {output}: run the same command to finish.'


def group_files(folder: epath.Path, index: int) -> list[epath.Path]:
  """Returns every file group `index` may have written: its record and shards, whole or partial."""
  names = [store.group_name(index), *(store.shard_name(split, index) for split in store.SPLITS)]
  return [folder / name for name in names] + [path for name in names for path in folder.glob(f'.{name}.partial*')]


def forget_unfinished(folder: epath.Path, count: int) -> int:
  """Removes what the groups without a record wrote (a stopped group's shards) and returns how many have one."""
  unfinished = [index for index in range(count) if not (folder / store.group_name(index)).exists()]
  for index in unfinished:
    for path in group_files(folder, index):
      path.unlink(missing_ok=True)
  return count - len(unfinished)


def intact(folder: epath.Path, split: str, index: int, shard: object) -> bool:
  """Returns whether a group record's `shard` of `split` is what group `index` wrote, and on disk as recorded."""
  path = folder / store.shard_name(split, index)
  if not isinstance(shard, dict) or shard.get('file') != path.name:
    return False
  if not shard.get('records'):  # No token, no file.
    return shard.get('tokens') == 0
  try:
    store.check_shard(split, shard)
  except ValueError:
    return False
  return path.is_file() and path.stat().length == shard['bytes'] and store.file_digest(path) == shard['sha256']


def trusted(folder: epath.Path, index: int, group: dict) -> bool:
  """Returns whether group `index` is finished: its record parses, describes `group`, and its shards are intact."""
  try:
    record = json.loads((folder / store.group_name(index)).read_text())
  except (FileNotFoundError, ValueError):
    return False
  return (isinstance(record, dict) and record.get('group') == group and isinstance(record.get('shards'), dict) and
          all(intact(folder, split, index, record['shards'].get(split)) for split in store.SPLITS))


def write_store(plan: dict, folder: epath.Path, tokenizer: str | tokenizer_lib.Tokenizer, workers: int,
                report: Callable[[str], None]) -> store.Store:
  """Writes the plan, the tokenizer, the groups not yet written (or damaged since), then the manifest; returns the
  store."""
  output = str(folder)
  files.replace(folder / store.PLAN, json.dumps(plan).encode())
  spec = tokenizer_in(folder, tokenizer, plan, workers)
  groups, settings, saved = plan['groups'], Settings(**plan['settings']), tuple(tokenizer_lib.files_of(spec).items())
  todo = [i for i, group in enumerate(groups) if not trusted(folder, i, group)]
  redone = sum((folder / store.group_name(i)).exists() for i in todo)
  for path in (path for i in todo for path in group_files(folder, i)):
    path.unlink(missing_ok=True)
  report(f'{len(groups) - len(todo)} of {len(groups)} input groups already prepared; preparing {len(todo)} with '
         f'{workers or "no"} worker processes' + (f' ({redone} of them again: their record or shards were damaged)'
                                                  if redone else ''))
  run_all(write_group, [(output, i, groups[i], settings, saved) for i in todo], workers)
  records = [json.loads((folder / store.group_name(i)).read_text()) for i in range(len(groups))]
  files.replace(folder / store.MANIFEST, json.dumps(manifest(plan, spec, records), indent=1).encode())
  return store.open_store(output)


def cache_path(plan: dict) -> epath.Path:
  """Returns where the store of `plan` is cached: under $FLAXLM_CACHE (default ~/.cache/flaxlm), named by a digest
  of the plan and of its files' modification times (an edited file is prepared anew)."""
  times = [os.stat(source['path']).st_mtime_ns for source in plan['sources'] if os.path.isfile(source['path'])]
  name = store.digest(json.dumps([plan, times]).encode())[:24]
  return epath.Path(os.environ.get('FLAXLM_CACHE', '~/.cache/flaxlm')).expanduser() / 'stores' / name


def hold_when_free(stack: contextlib.ExitStack, folder: epath.Path, report: Callable[[str], None]) -> None:
  """Takes the lock of `folder` into `stack` once no other live writer holds it, waiting (and saying so) meanwhile."""
  waiting = False
  while True:
    try:
      stack.enter_context(lock.held(folder, '$FLAXLM_CACHE', report=report))
      return
    except lock.Busy as busy:
      if not waiting:
        report(f'waiting for {lock.describe(busy.holder)} to finish with the cached token store {folder}')
        waiting = True
      time.sleep(1)


@contextlib.contextmanager
def cached(inputs: str, tokenizer: str | tokenizer_lib.Tokenizer, settings: Settings,
           report: Callable[[str], None] = lambda line: print(line, flush=True)) -> Iterator[store.Store]:
  """Yields the store of `inputs` from the cache, prepared there the first time (how a run trains on plain text), its
  lock held while the block runs: a run starting meanwhile on the same inputs waits (saying so), and a store made
  here is removed if the block fails (a run that does not start leaves no cache entry)."""
  plan = make_plan(inputs, settings, tokenizer, GROUP_BYTES)
  folder = cache_path(plan)
  check_resumable(folder, plan)
  new = not folder.exists()
  with contextlib.ExitStack() as holding:
    hold_when_free(holding, folder, report)
    made = not (folder / store.MANIFEST).exists()
    prepared = finish(plan, folder, tokenizer, None, lambda line: None, new)
    try:
      yield prepared
    except BaseException:
      if made:
        empty(folder)
      raise


def open_cached(inputs: str, tokenizer: str | tokenizer_lib.Tokenizer, settings: Settings) -> store.Store:
  """Returns the store of `inputs` from the cache, prepared there if it is not (under its lock), holding no lock
  once it is complete: how the other processes of a multi-host run find the store process 0 prepared."""
  plan = make_plan(inputs, settings, tokenizer, GROUP_BYTES)
  return prepare_plan(plan, str(cache_path(plan)), tokenizer)
