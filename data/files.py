"""Writing files without damage: a file appears whole or not at all, and a command never replaces a file it did
not create unless the user says so.

A file is written to a hidden sibling and renamed into place, so a reader (or a kill) never sees half of it, and a
symlink at the path is replaced, never written through.
"""

import os
import pathlib

from flaxlm.configs.errors import UserError


def replace(path: str | pathlib.Path, data: bytes | str) -> pathlib.Path:
  """Writes `data` at `path` atomically, replacing what is there (a symlink itself, not its target); returns it."""
  path = pathlib.Path(path)
  partial = path.with_name(f'.{path.name}.partial-{os.getpid()}')
  try:
    partial.write_bytes(data.encode('utf-8') if isinstance(data, str) else data)
    partial.replace(path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  return path


def update(path: str | pathlib.Path, data: bytes | str) -> None:
  """Replaces `path` with `data` (atomically) unless it already holds exactly that: a resume writes nothing."""
  data = data.encode('utf-8') if isinstance(data, str) else data
  path = pathlib.Path(path)
  if not (path.is_file() and not path.is_symlink() and path.read_bytes() == data):
    replace(path, data)


def check_parent(path: str | pathlib.Path, flag: str) -> None:
  """Raises UserError, naming `flag`, if the directory `path` would be written in does not exist."""
  parent = pathlib.Path(path).absolute().parent
  if not parent.is_dir():
    raise UserError(f'--{flag}={path} is in {parent}, which is not a directory: create it first, or pass a path in '
                    'a directory that exists.')


def check_new(path: str | pathlib.Path, flag: str) -> pathlib.Path:
  """Returns `path`; raises UserError if something exists there, or its directory does not, naming `flag`."""
  path = pathlib.Path(path)
  if os.path.lexists(path):
    raise UserError(f'{path} already exists: pass a new --{flag} path, or add --overwrite to replace it.')
  check_parent(path, flag)
  return path


def write_output(path: str | pathlib.Path, data: bytes | str, flag: str, overwrite: bool) -> pathlib.Path:
  """Writes a command's output file `path` atomically; refuses (naming `flag`) to replace an existing file unless
  `overwrite`, and never replaces a directory."""
  if overwrite and pathlib.Path(path).is_dir():
    raise UserError(f'{path} is a directory: pass a file path as --{flag}.')
  if not overwrite:
    check_new(path, flag)
  try:
    return replace(path, data)
  except OSError as e:
    raise UserError(f'cannot write --{flag}={path} ({e.strerror}): pass a path in a writable directory.') from None


def check_regular(path: pathlib.Path) -> pathlib.Path:
  """Returns `path`; raises UserError if it exists but is neither a regular file nor a directory: a pipe or a
  device, whose reading could wait for a writer or never end."""
  if path.exists() and not path.is_file() and not path.is_dir():
    raise UserError(f'{path} is not a regular file (a pipe or a device, which could be read forever): pass a file.')
  return path
