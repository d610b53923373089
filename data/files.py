"""Writing files without damage: a file appears whole or not at all, and a command never replaces a file it did
not create unless the user says so.

A file is written to a hidden sibling and renamed into place, so a reader (or a kill) never sees half of it, and a
symlink at the path is replaced, never written through.

Every path a user gives or a run writes is made here (`to_path`): a local one is a pathlib.Path, a Cloud Storage URL
(gs://bucket/...) an etils.epath.Path, whose writes of a whole object are atomic in themselves (nothing to rename;
Cloud Storage has no renames, links, appends or permissions bits).
"""

import os
import pathlib
from typing import TextIO

from etils import epath

from flaxlm.configs.errors import UserError

CLOUD_PREFIX = 'gs://'
Path = pathlib.Path | epath.Path


def to_path(value: str | os.PathLike) -> Path:
  """Returns `value` as a path: an etils.epath.Path for a gs:// URL, else a pathlib.Path."""
  text = os.fspath(value)
  return epath.Path(text) if is_cloud(text) else pathlib.Path(text)


def is_cloud(value: str | os.PathLike) -> bool:
  """Returns whether `value` is a Cloud Storage URL (gs://bucket/...)."""
  return os.fspath(value).startswith(CLOUD_PREFIX)


def absolute(value: str | os.PathLike) -> Path:
  """Returns the absolute path of `value` (a URL is one already)."""
  return to_path(value) if is_cloud(value) else pathlib.Path(value).absolute()


def resolve(value: str | os.PathLike) -> Path:
  """Returns `value` with symlinks resolved (a URL has none)."""
  return to_path(value) if is_cloud(value) else pathlib.Path(value).resolve()


def exists(value: str | os.PathLike) -> bool:
  """Returns whether something is at `value`, a broken symlink included."""
  return to_path(value).exists() if is_cloud(value) else os.path.lexists(value)


def is_link(value: str | os.PathLike) -> bool:
  """Returns whether `value` is a symlink (on Cloud Storage nothing is)."""
  return not is_cloud(value) and pathlib.Path(value).is_symlink()


def check_bucket(value: str | os.PathLike, flag: str) -> None:
  """Raises UserError, naming `flag`, if the gs:// URL `value` is in a bucket that does not exist."""
  bucket = os.fspath(value).removeprefix(CLOUD_PREFIX).split('/')[0]
  if not epath.Path(CLOUD_PREFIX + bucket).exists():
    raise UserError(f'--{flag}={value} is in the bucket gs://{bucket}, which does not exist (or cannot be seen): '
                    f'create it (gcloud storage buckets create gs://{bucket}), or pass a bucket you can write to.')


def replace(target: str | os.PathLike, data: bytes | str) -> Path:
  """Writes `data` at `target` atomically, replacing what is there (a symlink itself, not its target); returns it."""
  data = data.encode('utf-8') if isinstance(data, str) else data
  if is_cloud(target):
    file = to_path(target)
    file.write_bytes(data)
    return file
  return replace_local(pathlib.Path(target), data)


def replace_local(path: pathlib.Path, data: bytes) -> pathlib.Path:
  """Writes `data` at the local `path` through a hidden sibling renamed into place; returns `path`."""
  partial = path.with_name(f'.{path.name}.partial-{os.getpid()}')
  try:
    partial.write_bytes(data)
    partial.replace(path)
  except BaseException:
    partial.unlink(missing_ok=True)
    raise
  return path


def update(target: str | os.PathLike, data: bytes | str) -> None:
  """Replaces `target` with `data` (atomically) unless it already holds exactly that: a resume writes nothing."""
  data = data.encode('utf-8') if isinstance(data, str) else data
  file = to_path(target)
  if not (file.is_file() and not is_link(file) and file.read_bytes() == data):
    replace(file, data)


class CloudAppender:
  """A text file on Cloud Storage opened for appending, which Cloud Storage cannot do: each write uploads the object
  whole, its text before plus all that was written since (for small files written now and then, as logs)."""

  def __init__(self, path: epath.Path):
    self.path = path
    self.text = path.read_text() if path.exists() else ''

  def write(self, text: str) -> None:
    """Appends `text`: the object holds it once this returns."""
    self.text += text
    self.path.write_text(self.text)

  def flush(self) -> None:
    """Does nothing: every write is uploaded whole."""

  def close(self) -> None:
    """Does nothing: every write is uploaded whole."""


def appender(target: str | os.PathLike) -> TextIO | CloudAppender:
  """Returns `target` opened for appending text: a local file, or a CloudAppender on Cloud Storage."""
  return CloudAppender(to_path(target)) if is_cloud(target) else open(target, 'a')


def check_parent(target: str | os.PathLike, flag: str) -> None:
  """Raises UserError, naming `flag`, if the directory `target` would be written in does not exist (on Cloud
  Storage, where folders are only names' prefixes: its bucket), or `target` is a symlink to nothing (whose target a
  write would create, or fail on, somewhere the user did not name)."""
  if is_cloud(target):
    check_bucket(target, flag)
    return
  if is_link(target) and not os.path.exists(target):
    raise UserError(f'--{flag}={target} is a symlink to {os.readlink(target)}, which does not exist: remove the link, '
                    'or pass another path.')
  parent = pathlib.Path(target).absolute().parent
  if not parent.is_dir():
    raise UserError(f'--{flag}={target} is in {parent}, which is not a directory: create it first, or pass a path in '
                    'a directory that exists.')


def check_new(target: str | os.PathLike, flag: str) -> Path:
  """Returns `target` as a path; raises UserError if something exists there, or its directory does not, naming
  `flag`."""
  path = to_path(target)
  check_parent(path, flag)
  if exists(path):
    raise UserError(f'{path} already exists: pass a new --{flag} path, or add --overwrite to replace it.')
  return path


def write_output(path: str | os.PathLike, data: bytes | str, flag: str, overwrite: bool) -> Path:
  """Writes a command's output file `path` atomically; refuses (naming `flag`) to replace an existing file unless
  `overwrite`, and never replaces a directory."""
  if overwrite and to_path(path).is_dir():
    raise UserError(f'{path} is a directory: pass a file path as --{flag}.')
  if overwrite:
    check_parent(path, flag)
  else:
    check_new(path, flag)
  try:
    return replace(path, data)
  except OSError as e:
    raise UserError(f'cannot write --{flag}={path} ({e.strerror}): pass a path in a writable directory.') from None


def check_regular(path: Path) -> Path:
  """Returns `path`; raises UserError if it exists but is neither a regular file nor a directory: a pipe or a
  device, whose reading could wait for a writer or never end."""
  if path.exists() and not path.is_file() and not path.is_dir():
    raise UserError(f'{path} is not a regular file (a pipe or a device, which could be read forever): pass a file.')
  return path
