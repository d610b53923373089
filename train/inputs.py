"""A run's inputs: its tokenizer and its (train, validation) token streams, from the token store `data.path` names
(prepared once, in the cache, from text, JSONL, Parquet or TFDS) or from a file of fine-tuning examples."""

import contextlib
import pathlib

import jax
import ml_collections
from jax.experimental import multihost_utils

from flaxlm.configs.errors import UserError
from flaxlm.data import examples as examples_lib, pipeline, prepare as prepare_lib, store, tokenizer as tokenizer_lib
from flaxlm.train import workdir as workdir_lib

Streams = tuple[tokenizer_lib.Tokenizer, list[pipeline.Stream], str]


def streams(config: ml_collections.ConfigDict, holding: contextlib.ExitStack) -> Streams:
  """Returns the run's tokenizer, its (train, validation) streams, and the digest of its token store ('' for
  examples, read anew each time), as `data.format` says; a token store prepared into the cache stays locked until
  `holding` closes, and is removed if it closes on an error."""
  return FORMATS[config.data.format](config, holding)


def run_tokenizer(config: ml_collections.ConfigDict, text: str) -> tokenizer_lib.Tokenizer:
  """Returns the pretrained model's tokenizer with `train.init_from`, else the one `data.tokenizer` names."""
  if config.train.init_from:
    return workdir_lib.load_tokenizer(config.train.init_from)
  return tokenizer_lib.for_corpus(config.data.tokenizer, text)


def prepared_store(config: ml_collections.ConfigDict, holding: contextlib.ExitStack) -> store.Store:
  """Returns the token store `data.path` names, or the one its text is prepared into (in the cache, once: see
  prepare.cached, whose lock `holding` holds).

  The first process prepares while the others wait, then finds the store there (or, on a host of its own, prepares
  its own copy: preparation is deterministic).
  """
  d = config.data
  if not d.path:
    raise UserError('no training text given: set --config.data.path to a token store, text, JSONL or Parquet files, '
                    'or tfds:NAME.')
  if store.is_store(d.path):
    return store.open_store(d.path)
  tokenizer = workdir_lib.load_tokenizer(config.train.init_from) if config.train.init_from else d.tokenizer
  settings = prepare_lib.Settings(d.text_field, d.val_fraction, d.tfds_dir, d.max_documents)
  if jax.process_index() == 0:
    prepared = holding.enter_context(prepare_lib.cached(d.path, tokenizer, settings))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices('flaxlm: token store prepared')
  return prepared if jax.process_index() == 0 else prepare_lib.open_cached(d.path, tokenizer, settings)


def store_tokenizer(config: ml_collections.ConfigDict, prepared: store.Store) -> tokenizer_lib.Tokenizer:
  """Returns the store's tokenizer; raises UserError if the run names another (a pretrained model's, or a file).

  Tokenizers are compared by all their files (`tokenizer_lib.files_of`): the same tokenizer.json with another BOS or
  EOS setting gives other ids, and the run keeps the store's files (its chat template too) as its own.
  """
  d, saved = config.data, tokenizer_lib.files_of(prepared.tokenizer)
  if config.train.init_from and tokenizer_lib.files_of(workdir_lib.load_tokenizer(config.train.init_from)) != saved:
    raise UserError(f'token store {d.path} holds the ids of another tokenizer than train.init_from\'s: prepare the '
                    f'store with that model\'s tokenizer (flaxlm-data prepare --tokenizer=...).')
  if d.tokenizer != 'char' and tokenizer_lib.files_of(tokenizer_lib.for_corpus(d.tokenizer, '')) != saved:
    raise UserError(f'token store {d.path} holds the ids of another tokenizer than data.tokenizer={d.tokenizer}: '
                    'prepare the store with it, or leave data.tokenizer at char to take the store\'s.')
  return prepared.tokenizer


def text_streams(config: ml_collections.ConfigDict, holding: contextlib.ExitStack) -> Streams:
  """Returns the tokenizer, the (train, validation) splits of `data.path`'s token store, and the store's digest."""
  prepared = prepared_store(config, holding)
  return store_tokenizer(config, prepared), [prepared.split(name) for name in store.SPLITS], prepared.digest


def example_streams(config: ml_collections.ConfigDict, holding: contextlib.ExitStack) -> Streams:
  """Returns the tokenizer and the (train, validation) streams of `data.path`'s examples (responses learned), and
  no store digest: the examples file is read anew each time (`holding` holds nothing of it)."""
  split = examples_lib.split(examples_lib.read(pathlib.Path(config.data.path)), config.data.val_fraction)
  text = ''.join(text for example in split.train + split.validation for _, text in example.pieces)
  tokenizer = run_tokenizer(config, text)
  return tokenizer, [examples_lib.token_stream(part, tokenizer, config.model.max_length)
                     for part in (split.train, split.validation)], ''


FORMATS = {'text': text_streams, 'examples': example_streams}
