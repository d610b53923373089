"""Hugging Face checkpoints: a whole model's HF tensors to flaxlm params and back, a layer at a time, in their dtype.

A model type's `Family` (model/hf_families.py) says how its names and shapes map; this file converts a whole
checkpoint with one. Import reads *.safetensors files lazily (`Checkpoint`: every tensor's name, shape and dtype from
the files' headers, its data only when it is converted), checks them all against the model before reading any data,
then fills params allocated once in the checkpoint's dtype, layer by layer. Export yields the HF tensors a layer at
a time (`hf_groups`), and `write_shards` writes them into *.safetensors files of at most a given size, one file at a
time. Neither direction casts a tensor that fits: bfloat16 weights stay bfloat16.
"""

import json
import os
import pathlib
from typing import Iterable, Iterator, Mapping

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from flaxlm.configs.errors import UserError
from flaxlm.model.hf_families import Family, Tensors, Tree, family_of
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import param_shapes, unstack

Spec = tuple[tuple[int, ...], str]  # a tensor's shape and numpy dtype name, known without reading its data
# safetensors' dtype codes, by the names numpy gives them; codes numpy lacks (float8, ...) keep their code.
DTYPE_NAMES = {'F64': 'float64', 'F32': 'float32', 'F16': 'float16', 'BF16': 'bfloat16', 'I64': 'int64',
               'I32': 'int32', 'I16': 'int16', 'I8': 'int8', 'U64': 'uint64', 'U32': 'uint32', 'U16': 'uint16',
               'U8': 'uint8', 'BOOL': 'bool'}
FLOATS = ('float32', 'bfloat16', 'float16', 'float64')  # what weights may be held in
KEPT = {'float32': np.float32, 'bfloat16': ml_dtypes.bfloat16}  # dtypes params are kept in; others become float32
INDEX = 'model.safetensors.index.json'  # names the shard of each tensor when there are several


def damaged(file: os.PathLike, error: Exception) -> UserError:
  """Returns the error to raise when the safetensors `file` does not read (`error`)."""
  return UserError(f'{file} does not read as safetensors ({error}): it is cut short or damaged; download it again.')


def header(file: pathlib.Path) -> dict[str, Spec]:
  """Returns {name: (shape, dtype)} of the tensors in a *.safetensors `file`, read from its header alone.

  Raises UserError if it is not a regular file, or does not read as safetensors.
  """
  if not file.is_file():  # A directory, or a pipe (opening one waits for a writer forever).
    raise UserError(f'{file} is not a regular file: pass a folder whose weights are *.safetensors files.')
  try:
    with safetensors.safe_open(file, framework='numpy', backend='pread') as f:
      slices = {name: f.get_slice(name) for name in f.keys()}
      return {name: (tuple(s.get_shape()), DTYPE_NAMES.get(s.get_dtype(), s.get_dtype())) for name, s in slices.items()}
  except (safetensors.SafetensorError, OSError) as e:
    raise damaged(file, e) from None


class Checkpoint(Mapping[str, np.ndarray]):
  """The tensors of *.safetensors files (the shards of one checkpoint), each read from disk when it is looked up.

  `specs` holds every tensor's shape and dtype, from the headers. Nothing is cached: a tensor's array lives as long
  as its caller keeps it, and files are read with pread, never mapped (mapped pages would count as held memory).
  """

  def __init__(self, shards: Iterable[pathlib.Path]):
    """Reads the headers of `shards`; raises UserError if one is damaged or two hold a tensor of the same name."""
    self.specs: dict[str, Spec] = {}
    self.shard_of: dict[str, pathlib.Path] = {}
    for file in shards:
      for name, spec in header(file).items():
        if name in self.specs:
          raise UserError(f'{file} holds the tensor {name}, which {self.shard_of[name].name} holds too: pass a folder '
                          'with one checkpoint.')
        self.specs[name], self.shard_of[name] = spec, file

  def __getitem__(self, name: str) -> np.ndarray:
    """Returns the tensor `name`, read from its shard now; raises UserError if its data does not read."""
    file = self.shard_of[name]
    try:
      with safetensors.safe_open(file, framework='numpy', backend='pread') as f:
        return f.get_tensor(name)
    except (safetensors.SafetensorError, OSError) as e:
      raise damaged(file, e) from None

  def __iter__(self) -> Iterator[str]:
    return iter(self.specs)

  def __len__(self) -> int:
    return len(self.specs)


def specs_of(tensors: Mapping[str, np.ndarray]) -> dict[str, Spec]:
  """Returns {name: (shape, dtype)} of `tensors`: a Checkpoint's from its headers, without reading any data."""
  if isinstance(tensors, Checkpoint):
    return tensors.specs
  return {name: (x.shape, np.dtype(x.dtype).name) for name, x in tensors.items()}


def hf_shapes(c: ModelConfig, prefix: str) -> dict[str, tuple[int, ...]]:
  """Returns {name: shape} of model `c`'s HF tensors as `params_to_hf` names them, the body's under `prefix`."""
  _, family = family_of(c)
  views = shape_views(c)
  shapes = {f'{prefix}{name}': x.shape for name, x in family.outer_to_hf(views).items()}
  for i, layer in enumerate(unstack(views['stack'], c)):  # a sparse model's dense layers differ from its sparse ones
    shapes.update({f'{prefix}{family.layers}.{i}.{name}': x.shape for name, x in family.layer_to_hf(layer, c).items()})
  if not c.tie_embeddings:
    shapes['lm_head.weight'] = views['head']['kernel'].T.shape
  return shapes


def shape_views(c: ModelConfig) -> Tree:
  """Returns params of model `c` as numpy views of one int8 zero: their shapes, and nothing allocated."""
  return jax.tree.map(lambda s: np.broadcast_to(np.int8(0), s.shape), param_shapes(c))


def first(names: list[str], most: int = 3) -> str:
  """Returns the first `most` of `names`, comma-separated, with the count of the rest."""
  return ', '.join(names[:most]) + (f' and {len(names) - most} more' if len(names) > most else '')


def check_specs(specs: dict[str, Spec], shapes: dict[str, tuple[int, ...]], ignored: set[str],
                model_type: str) -> None:
  """Raises UserError naming tensors that are missing, unknown (less `ignored`), misshapen or not floating point."""
  missing = [name for name in shapes if name not in specs]
  if missing:
    raise UserError(f'the safetensors files lack the tensor {missing[0]!r} of a {model_type} model '
                    f'({len(missing)} missing): pass a folder with the complete checkpoint.')
  extra = [name for name in specs if name not in shapes and name not in ignored]
  if extra:
    raise UserError(f'the safetensors files hold tensors a {model_type} model does not have '
                    f'({first(extra)}): the checkpoint is probably of another architecture; pass a {model_type} one.')
  wrong = [f'{name} is {specs[name][0]}, not {shape}' for name, shape in shapes.items() if specs[name][0] != shape]
  if wrong:
    raise UserError(f'the tensors do not fit config.json ({first(wrong)}): '
                    'pass a folder whose weights were saved with its config.json.')
  for name in shapes:
    if specs[name][1] not in FLOATS:
      raise UserError(f'the tensor {name} holds {specs[name][1]}, not floating-point weights: pass a checkpoint of '
                      'float32, bfloat16 or float16 weights (flaxlm does not convert quantized ones).')


def check_layer_count(specs: dict[str, Spec], layers: str, count: int, key: str) -> None:
  """Raises UserError, naming the first missing layer, if the tensors (`specs`; layer i's are named `layers`i.*) hold
  fewer than the `count` layers config.json's `key` says: checked before anything is done once per layer, which for a
  count of millions would take hours and all memory."""
  found = {name[len(layers):].split('.')[0] for name in specs if name.startswith(layers)}
  missing = next(i for i in range(len(found) + 1) if str(i) not in found)
  if missing < count:
    raise UserError(f'config.json has {key}={count:,}, and the safetensors files lack the tensors of layer {missing} '
                    f'({layers}{missing}.*; they hold {len(found)} layers): fix {key}, or pass a folder with the '
                    'complete checkpoint.')


def read(tensors: Mapping[str, np.ndarray], name: str) -> np.ndarray:
  """Returns the tensor `name` of `tensors`; raises UserError if it holds NaN or infinite values."""
  x = tensors[name]
  if not np.isfinite(x).all():
    raise UserError(f'the tensor {name} holds NaN or infinite values: the checkpoint is broken (a diverged run, or '
                    'a damaged file); pass a sound one.')
  return x


def kept_dtype(dtypes: Iterable[str]) -> type:
  """Returns the dtype params converted from tensors of `dtypes` are kept in: theirs if they all share float32 or
  bfloat16, else float32 (which holds float16 exactly)."""
  found = set(dtypes)
  return KEPT[found.pop()] if len(found) == 1 and found <= KEPT.keys() else np.float32


def fill(slots: Tree, values: Tree) -> None:
  """Copies each leaf of `values` into its place in the arrays `slots` (a tree of the same structure)."""
  jax.tree.map(np.copyto, slots, values)


def fill_outer(params: Tree, outer: Tree) -> None:
  """Copies the embeddings and final norm `outer` into their places in `params` (a call of its own, so that nothing
  holds `outer`'s arrays once they are copied)."""
  fill({key: params[key] for key in outer}, outer)


def body_prefix(family: Family, specs: Mapping[str, Spec]) -> str:
  """Returns the prefix of the body's tensor names in `specs`: the family's, another it may have (a multimodal
  folder's language model), or none (GPT-2's own checkpoints)."""
  found = [p for p in (*family.also_prefixes, family.prefix) if any(name.startswith(p) for name in specs)]
  return found[0] if found else ''


def params_from_hf(tensors: Mapping[str, np.ndarray], c: ModelConfig) -> Tree:
  """Returns the flaxlm params of model `c` (from `model_config`) from its HF tensors, as numpy arrays in the
  checkpoint's dtype (`kept_dtype`), reading the tensors of one layer at a time (`tensors` may be a Checkpoint).

  Raises UserError, before any data is read, if the tensors are not exactly model `c`'s (names, shapes and floating
  point), less the non-weights older transformers saved (the family's buffers, and a tied output head); and while
  converting, if a tensor is not finite.
  """
  model_type, family = family_of(c)
  specs = specs_of(tensors)
  prefix = body_prefix(family, specs)
  check_layer_count(specs, f'{prefix}{family.layers}.', c.num_layers, family.layers_key)
  ignored = {f'{prefix}{family.layers}.{i}.{name}' for i in range(c.num_layers) for name in family.buffers}
  ignored |= {name for name in specs if name.startswith(family.skipped)} if family.skipped else set()
  shapes = hf_shapes(c, prefix)
  check_specs(specs, shapes, ignored | ({'lm_head.weight'} if c.tie_embeddings else set()), model_type)
  dtype = kept_dtype(specs[name][1] for name in shapes)
  params = jax.tree.map(lambda s: np.empty(s.shape, dtype), param_shapes(c))
  layers = f'{prefix}{family.layers}.'
  fill_outer(params, family.outer_from_hf({name[len(prefix):]: read(tensors, name) for name in shapes
                                           if not name.startswith(layers) and name != 'lm_head.weight'}))
  for i, slots in enumerate(unstack(params['stack'], c)):
    layer = f'{layers}{i}.'
    fill(slots, family.layer_from_hf({name[len(layer):]: read(tensors, name) for name in shapes
                                      if name.startswith(layer)}, c))
  if not c.tie_embeddings:
    np.copyto(params['head']['kernel'], read(tensors, 'lm_head.weight').T)
  return params


def hf_groups(params: Tree, c: ModelConfig) -> Iterator[Tensors]:
  """Yields the HF tensors of flaxlm `params` (named as the model type's save_pretrained names them, in the params'
  dtype) a group at a time: the embeddings and final norm, then each layer, then an untied output head."""
  _, family = family_of(c)
  yield {f'{family.prefix}{name}': x for name, x in family.outer_to_hf(params).items()}
  for i, layer in enumerate(unstack(params['stack'], c)):
    yield {f'{family.prefix}{family.layers}.{i}.{name}': x for name, x in family.layer_to_hf(layer, c).items()}
  if not c.tie_embeddings:
    yield {'lm_head.weight': params['head']['kernel'].T}


def params_to_hf(params: Tree, c: ModelConfig) -> Tensors:
  """Returns all the HF tensors of flaxlm `params` at once, contiguous, in the params' dtype (see `hf_groups`)."""
  groups = hf_groups(jax.tree.map(np.asarray, params), c)
  return {name: np.ascontiguousarray(x) for group in groups for name, x in group.items()}


def write_shards(directory: pathlib.Path, groups: Iterable[Tensors], max_shard_bytes: int) -> list[str]:
  """Writes the tensors of `groups` into *.safetensors files in `directory`, one file at a time, each of at most
  `max_shard_bytes` (or one tensor larger than that): model.safetensors, or several model-0000i-of-0000n.safetensors
  and the model.safetensors.index.json naming each tensor's file. Returns the names of the files written."""
  shards: list[dict[str, int]] = []  # {name: bytes} of the tensors of each file written
  shard, size = {}, 0  # the tensors of the file being filled, and their bytes
  for name, x in ((name, x) for group in groups for name, x in group.items()):
    if shard and size + x.nbytes > max_shard_bytes:
      shards.append(save_shard(directory, shard, len(shards)))
      shard, size = {}, 0
    shard[name], size = np.ascontiguousarray(x), size + x.nbytes
  shards.append(save_shard(directory, shard, len(shards)))
  return name_shards(directory, shards)


def save_shard(directory: pathlib.Path, tensors: Tensors, number: int) -> dict[str, int]:
  """Writes `tensors` as the safetensors file `directory`/shard-`number` (renamed by `name_shards`); returns
  {name: bytes} of them."""
  safetensors.numpy.save_file(tensors, directory / f'shard-{number}', metadata={'format': 'pt'})
  return {name: x.nbytes for name, x in tensors.items()}


def name_shards(directory: pathlib.Path, shards: list[dict[str, int]]) -> list[str]:
  """Renames the files `save_shard` wrote as transformers names them, writes the index of several; returns their
  names."""
  n = len(shards)
  names = ['model.safetensors'] if n == 1 else [f'model-{i + 1:05d}-of-{n:05d}.safetensors' for i in range(n)]
  for i, name in enumerate(names):
    (directory / f'shard-{i}').rename(directory / name)
  if n > 1:
    total = sum(sum(shard.values()) for shard in shards)
    weight_map = {tensor: name for name, shard in zip(names, shards) for tensor in shard}
    (directory / INDEX).write_text(json.dumps({'metadata': {'total_size': total}, 'weight_map': weight_map},
                                              indent=2))
    names.append(INDEX)
  return names

