"""Hugging Face checkpoints: a whole model's HF tensors to flaxlm params and back, with a model type's `Family`.

Pure: {name: array} dicts in and out; the families (model/hf_families.py) say how each model type's names and shapes
map, and train/commands/convert.py reads and writes the files.
"""

import jax
import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.model.hf_families import Tensors, Tree, family_of
from flaxlm.model.transformer import ModelConfig, param_shapes

def within(t: Tensors, prefix: str) -> Tensors:
  """Returns the tensors whose names start with `prefix`, with the prefix removed."""
  return {name[len(prefix):]: x for name, x in t.items() if name.startswith(prefix)}


def hf_shapes(c: ModelConfig, prefix: str) -> dict[str, tuple[int, ...]]:
  """Returns {name: shape} of model `c`'s HF tensors as `params_to_hf` names them, the body's under `prefix`."""
  _, family = family_of(c)
  views = jax.tree.map(lambda s: np.broadcast_to(np.float32(0), s.shape), param_shapes(c))  # Nothing is allocated.
  layer = {name: x.shape for name, x in family.layer_to_hf(unstack(views['stack'], c)[0], c).items()}
  shapes = {f'{prefix}{name}': x.shape for name, x in family.outer_to_hf(views).items()}
  shapes.update({f'{prefix}{family.layers}.{i}.{name}': s for i in range(c.num_layers) for name, s in layer.items()})
  if not c.tie_embeddings:
    shapes['lm_head.weight'] = views['head']['kernel'].T.shape
  return shapes


def first(names: list[str], most: int = 3) -> str:
  """Returns the first `most` of `names`, comma-separated, with the count of the rest."""
  return ', '.join(names[:most]) + (f' and {len(names) - most} more' if len(names) > most else '')


def check_tensors(tensors: Tensors, shapes: dict[str, tuple[int, ...]], ignored: set[str], model_type: str) -> None:
  """Raises UserError naming tensors that are missing, unknown (less `ignored`), misshapen, not float or not finite."""
  missing = [name for name in shapes if name not in tensors]
  if missing:
    raise UserError(f'the safetensors files lack the tensor {missing[0]!r} of a {model_type} model '
                    f'({len(missing)} missing): pass a folder with the complete checkpoint.')
  extra = [name for name in tensors if name not in shapes and name not in ignored]
  if extra:
    raise UserError(f'the safetensors files hold tensors a {model_type} model does not have '
                    f'({first(extra)}): the checkpoint is probably of another architecture; pass a {model_type} one.')
  wrong = [f'{name} is {tensors[name].shape}, not {shape}' for name, shape in shapes.items()
           if tensors[name].shape != shape]
  if wrong:
    raise UserError(f'the tensors do not fit config.json ({first(wrong)}): '
                    'pass a folder whose weights were saved with its config.json.')
  for name in shapes:
    if not jax.numpy.issubdtype(tensors[name].dtype, jax.numpy.floating):
      raise UserError(f'the tensor {name} holds {tensors[name].dtype}, not floating-point weights: pass a checkpoint '
                      'of float32, bfloat16 or float16 weights (flaxlm does not convert quantized ones).')
    if not np.isfinite(tensors[name]).all():
      raise UserError(f'the tensor {name} holds NaN or infinite values: the checkpoint is broken (a diverged run, or '
                      'a damaged file); pass a sound one.')


def params_from_hf(tensors: Tensors, c: ModelConfig) -> Tree:
  """Returns the flaxlm params of model `c` (from `model_config`) from its HF tensors, as float32 numpy arrays.

  Raises UserError if the tensors are not exactly model `c`'s (names, shapes, floating point and finite), less the
  non-weights older transformers saved: the family's buffers, and a tied output head.
  """
  model_type, family = family_of(c)
  prefix = family.prefix if any(name.startswith(family.prefix) for name in tensors) else ''  # GPT-2's own lacks it.
  ignored = {f'{prefix}{family.layers}.{i}.{name}' for i in range(c.num_layers) for name in family.buffers}
  check_tensors(tensors, hf_shapes(c, prefix), ignored | ({'lm_head.weight'} if c.tie_embeddings else set()),
                model_type)
  body = within(tensors, prefix)
  layers = [family.layer_from_hf(within(body, f'{family.layers}.{i}.'), c) for i in range(c.num_layers)]
  params = {**family.outer_from_hf(body), 'stack': stack(layers, c.scan_layers)}
  if not c.tie_embeddings:
    params['head'] = {'kernel': tensors['lm_head.weight'].T}
  return jax.tree.map(lambda x: np.asarray(x, np.float32), params)


def params_to_hf(params: Tree, c: ModelConfig) -> Tensors:
  """Returns the float32 HF tensors (named as the model type's save_pretrained names them) of flaxlm `params`."""
  _, family = family_of(c)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  tensors = {f'{family.prefix}{name}': x for name, x in family.outer_to_hf(params).items()}
  for i, layer in enumerate(unstack(params['stack'], c)):
    tensors.update({f'{family.prefix}{family.layers}.{i}.{n}': x for n, x in family.layer_to_hf(layer, c).items()})
  if not c.tie_embeddings:
    tensors['lm_head.weight'] = params['head']['kernel'].T
  return {name: np.ascontiguousarray(x) for name, x in tensors.items()}


def stack(layers: list[Tree], scan_layers: bool) -> Tree:
  """Returns the 'stack' params of L layers: stacked on a leading axis under 'layers', or as 'layer_{i}'."""
  if scan_layers:
    return {'layers': jax.tree.map(lambda *xs: np.stack(xs), *layers)}
  return {f'layer_{i}': layer for i, layer in enumerate(layers)}


def unstack(stack_params: Tree, c: ModelConfig) -> list[Tree]:
  """Returns the L layers' params of the 'stack' params, whichever way `c.scan_layers` stores them."""
  if c.scan_layers:
    return [jax.tree.map(lambda x: x[i], stack_params['layers']) for i in range(c.num_layers)]
  return [stack_params[f'layer_{i}'] for i in range(c.num_layers)]
