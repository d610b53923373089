"""Experiment presets: each module's `get_config()` returns an `ml_collections.ConfigDict`.

Commands take a preset by name (`--config=shakespeare_char`) or the path of a config file of the user's own.
"""

import importlib
import pathlib

import ml_collections

from flaxlm.configs.errors import UserError

FOLDER = pathlib.Path(__file__).parent
NOT_PRESETS = ('__init__', 'base', 'errors')


def presets() -> list[str]:
  """Returns the names of the presets flaxlm ships, sorted."""
  return sorted(path.stem for path in FOLDER.glob('*.py') if path.stem not in NOT_PRESETS)


def config_file(value: str) -> str:
  """Returns the config file a --config value names: a preset's file for a bare name, else the value (a path).

  Raises UserError for an unknown preset name or a config file that does not exist.
  """
  path, _, argument = value.partition(':')  # ml_collections passes FILE:ARG on to get_config(ARG).
  if '/' not in path and not path.endswith('.py'):
    if path not in presets():
      raise UserError(f'there is no preset {path!r}: pass one of {", ".join(presets())}, or the path of a config '
                      'file (.py).')
    path = str(FOLDER / f'{path}.py')
  elif not pathlib.Path(path).is_file():
    raise UserError(f'config file {path} does not exist: pass a preset ({", ".join(presets())}) or the path of '
                    'an existing config file.')
  return path + (f':{argument}' if argument else '')


def load(name: str) -> ml_collections.ConfigDict:
  """Returns the config of the preset `name`; raises UserError naming the presets if there is no such one."""
  if name not in presets():
    raise UserError(f'there is no preset {name!r}: pass one of {", ".join(presets())}.')
  return importlib.import_module(f'flaxlm.configs.{name}').get_config()
