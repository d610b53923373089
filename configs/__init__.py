"""Experiment presets: each module's `get_config()` returns an `ml_collections.ConfigDict`.

Commands take a preset by name (`--config=shakespeare_char`) or the path of a config file of the user's own.
"""

import importlib
import importlib.util
import pathlib

import ml_collections

from flaxlm.configs.errors import UserError

FOLDER = pathlib.Path(__file__).parent
NOT_PRESETS = ('__init__', 'base', 'errors', 'options')


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
  elif pathlib.Path(path).is_dir():
    raise UserError(f'config file {path} is a directory: pass a preset ({", ".join(presets())}) or the path of a '
                    'config file (.py) in it.')
  elif not pathlib.Path(path).is_file():
    raise UserError(f'config file {path} does not exist: pass a preset ({", ".join(presets())}) or the path of '
                    'an existing config file.')
  elif not path.endswith('.py'):
    raise UserError(f'config file {path} is not a Python file: pass a preset ({", ".join(presets())}) or a .py '
                    'file whose get_config() returns the config (a run\'s config.json is read from its --workdir).')
  else:
    check_loads(path, argument)
  return path + (f':{argument}' if argument else '')


def check_loads(path: str, argument: str) -> None:
  """Raises UserError unless the user's config file runs and its get_config returns an ml_collections.ConfigDict."""
  spec = importlib.util.spec_from_file_location('flaxlm_user_config', path)
  try:
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, 'get_config', None)
    if not callable(get_config):
      raise UserError(f'config file {path} defines no get_config(): add one returning an ml_collections.ConfigDict, '
                      'e.g. a preset\'s (from flaxlm.configs import tiny; config = tiny.get_config()).')
    config = get_config(*([argument] if argument else []))
  except UserError:
    raise
  except Exception as e:  # A config file is the user's Python: it may fail in any way.
    raise UserError(f'config file {path} failed to run ({type(e).__name__}: {e}): fix the file.') from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f'get_config() in {path} returned {type(config).__name__}, not an ml_collections.ConfigDict: '
                    'return the config.')


def load(name: str) -> ml_collections.ConfigDict:
  """Returns the config of the preset `name`; raises UserError naming the presets if there is no such one."""
  if name not in presets():
    raise UserError(f'there is no preset {name!r}: pass one of {", ".join(presets())}.')
  return importlib.import_module(f'flaxlm.configs.{name}').get_config()
