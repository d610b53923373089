"""One writer per folder: a run's workdir, or a token store, is written by one process at a time.

The writer holds the lock file `LOCK` in the folder: a JSON record of its host, process id, boot, start time and the
time it last renewed the record. The file is created atomically (a local file opened with O_EXCL, a Cloud Storage
object written with ifGenerationMatch=0), so of two writers starting together one gets it and the other is refused
in one line naming the first. While the writer runs, a thread renews the record every RENEW_SECONDS: its lease. At
exit the file is removed. Readers (sampling, scoring, exports, plots, evaluations) take no lock.

A writer that died without removing its lock left it stale. On the host that wrote it, a lock whose process no
longer runs, or that was written before the host restarted, is stale; from another host, or in a bucket, a lock
whose lease was not renewed for LEASE_SECONDS is. A stale lock is taken over with a line saying whose it was; a
live-looking lock written elsewhere only when the user says its writer is gone (`take_over`, the commands'
--take_over); the lock of a writer running on this host never is. Of several processes taking over one stale lock
at once, one gets it (`replace_stale`).
"""

import contextlib
import datetime
import json
import os
import pathlib
import socket
import threading
import time
import uuid
from typing import Callable, Iterator

from flaxlm.configs.errors import UserError
from flaxlm.data import files

LOCK = '.flaxlm-lock.json'
RENEW_SECONDS = 60.0
LEASE_SECONDS = 300.0  # Five missed renewals: a writer this late is gone (or its host's clock is far off).


class Busy(UserError):
  """The folder is locked by another live writer, `holder` (its lock record)."""

  def __init__(self, message: str, holder: dict):
    super().__init__(message)
    self.holder = holder


def boot_id() -> str:
  """Returns this machine's boot id ('' where the system has none): a process id names a process within a boot."""
  try:
    return pathlib.Path('/proc/sys/kernel/random/boot_id').read_text().strip()
  except OSError:
    return ''


def new_record() -> dict:
  """Returns the lock record of this process, started and renewed now."""
  now = time.time()
  return {'host': socket.gethostname(), 'pid': os.getpid(), 'boot': boot_id(), 'started': now, 'renewed': now,
          'token': uuid.uuid4().hex}


def describe(record: dict) -> str:
  """Returns who holds a lock, for a person: 'process 123 on host-a since 2026-12-07 08:01:02 UTC'."""
  since = datetime.datetime.fromtimestamp(record['started'], datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')
  return f'process {record["pid"]} on {record["host"]} since {since}'


def read(path: files.Path) -> dict | None:
  """Returns the lock record at `path`; None if there is none, or it is not one (a garbled file is no writer's)."""
  return parse(read_bytes(path))


def read_bytes(path: files.Path) -> bytes:
  """Returns the bytes of the lock file `path`; none if it is gone or unreadable."""
  try:
    return path.read_bytes()
  except OSError:
    return b''


def parse(data: bytes) -> dict | None:
  """Returns the lock record `data` holds; None if it holds none (empty, garbled, or of the wrong fields)."""
  try:
    record = json.loads(data)
  except (ValueError, UnicodeDecodeError):
    return None
  fields = {'host': str, 'pid': int, 'boot': str, 'started': float, 'renewed': float, 'token': str}
  valid = isinstance(record, dict) and all(isinstance(record.get(k), t if t is not float else (int, float))
                                           for k, t in fields.items())
  return record if valid else None


def is_running(pid: int) -> bool:
  """Returns whether a process `pid` runs on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def is_local(record: dict) -> bool:
  """Returns whether the lock `record` was written on this host since it last started."""
  return record['host'] == socket.gethostname() and record['boot'] == boot_id()


def is_stale(record: dict | None) -> bool:
  """Returns whether the lock `record` holds nothing (see `staleness`)."""
  return record is None or staleness(record) is not None


def staleness(record: dict) -> str | None:
  """Returns why the lock `record` holds nothing, for a person ('which is no longer running'), None while its writer
  may live: its process gone from this host, its host restarted since, or (from another host) its lease expired."""
  if is_local(record):
    return None if record['pid'] == os.getpid() or is_running(record['pid']) else 'which is no longer running'
  if record['host'] == socket.gethostname():  # Restarted since (a preempted TPU VM): its processes are gone.
    return 'written before this host restarted'
  late = time.time() - record['renewed'] - LEASE_SECONDS
  return f'whose lease ran out {late:.0f} s ago' if late > 0 else None


def create(path: files.Path, data: bytes) -> bool:
  """Creates the file `path` holding `data` unless something is there; returns whether it did (atomically: the file
  appears whole, so no reader ever finds it empty and takes it for a stale lock)."""
  if files.is_cloud(path):
    import gcsfs  # etils.epath reaches Cloud Storage through gcsfs; only its own call takes a precondition.
    try:
      gcsfs.GCSFileSystem().pipe_file(os.fspath(path), data, mode='create')
    except FileExistsError:
      return False
    return True
  whole = path.with_name(f'.{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}')
  try:
    whole.write_bytes(data)  # A write cut short (a full disk) raises, and leaves no sibling behind.
    return link(whole, path, data)
  finally:
    whole.unlink(missing_ok=True)


def link(whole: pathlib.Path, path: pathlib.Path, data: bytes) -> bool:
  """Makes the written file `whole` (holding `data`) also the file `path` unless something is there; returns whether
  it did."""
  try:
    os.link(whole, path)  # Fails if anything is at `path`.
  except FileExistsError:
    return False
  except OSError:  # A file system without hard links (some FUSE mounts): create it exclusively, then fill it.
    return create_exclusively(path, data)
  return True


def create_exclusively(path: pathlib.Path, data: bytes) -> bool:
  """Creates the local file `path` holding `data` unless something is there; returns whether it did (for a moment
  it is empty)."""
  try:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(descriptor, 'wb') as f:
    f.write(data)
  return True


def acquire(path: files.Path, flag: str, take_over: bool, report: Callable[[str], None]) -> dict:
  """Takes the lock file `path` and returns its record; raises UserError naming the holder if another writer has it."""
  record = new_record()
  data = json.dumps(record).encode()
  if create(path, data):
    return record
  if files.is_link(path) or not path.is_file():
    raise UserError(f'{path} is not a lock file flaxlm wrote (a folder or a link): remove it, then run again.')
  seen = read_bytes(path)
  holder = parse(seen)
  if is_stale(holder):
    take_over = False  # Nothing to ask: the lock is no one's.
  elif take_over and is_local(holder):
    raise UserError(f'{path.parent} is being written by {describe(holder)}, which runs on this host: stop it first '
                    '(--take_over is for a writer known to be gone).')
  elif not take_over:
    raise Busy(f'{path.parent} is being written by {describe(holder)}: wait for it to end or stop it; if it is gone '
               f'(a crashed host), pass --take_over to take its lock ({flag} has one writer at a time).', holder)
  if not replace_stale(path, seen, data):
    raise UserError(f'{path.parent} was just locked by another process: only one may write it; try again.')
  if holder is not None:
    report(f'took over the lock of {path.parent} from {describe(holder)}, '
           f'{"as --take_over asked" if take_over else staleness(holder)}')
  return record


def replace_stale(path: files.Path, seen: bytes, data: bytes) -> bool:
  """Replaces the lock file `path`, which held `seen` when it was judged stale, with `data`; returns whether this
  process did: of several taking it over at once, one does. Locally the takers first create `path`.takeover (one
  can), and its creator replaces the lock only if it still holds `seen` (no other taker got there first); the lock
  file is never moved or missing meanwhile. A `.takeover` left by a taker that died in those microseconds is removed
  once a minute old. In a bucket, where nothing renames, the new lock is written and read back (a second writer in
  the same instant may also see its own: a far narrower window)."""
  if files.is_cloud(path):
    files.replace(path, data)
    return read_bytes(path) == data
  mutex = path.with_name(f'{path.name}.takeover')
  if not create(mutex, str(os.getpid()).encode()):
    with contextlib.suppress(OSError):
      if time.time() - mutex.stat().st_mtime > 60:
        mutex.unlink()
    return False
  try:
    if read_bytes(path) != seen:  # Another taker replaced it first.
      return False
    files.replace(path, data)
    return True
  finally:
    mutex.unlink()


def renew_until(path: files.Path, record: dict, stop: threading.Event) -> None:
  """Renews the lock `record` at `path` every RENEW_SECONDS until `stop` is set, while it is still this process's."""
  while not stop.wait(RENEW_SECONDS):
    if (read(path) or {}).get('token') != record['token']:
      return
    record['renewed'] = time.time()
    with contextlib.suppress(OSError):  # A missed renewal is one of five before the lease ends.
      files.replace(path, json.dumps(record).encode())


def release(path: files.Path, record: dict) -> None:
  """Removes the lock file `path` if it still holds `record`."""
  if (read(path) or {}).get('token') == record['token']:
    path.unlink()


def first_missing(path: pathlib.Path) -> pathlib.Path | None:
  """Returns the outermost folder of the absolute `path` that does not exist (`path` itself, or an ancestor), None if
  it exists."""
  missing = None
  while not os.path.lexists(path):
    missing, path = path, path.parent
  return missing


def remove_empty(path: files.Path, top: pathlib.Path | None) -> None:
  """Removes the folders from `path` up to `top` (made by `held`) that are empty: a failed start leaves none."""
  if top is None:
    return
  for folder in [path.absolute(), *path.absolute().parents]:
    if any(folder.iterdir()):
      return
    folder.rmdir()
    if folder == top:
      return


@contextlib.contextmanager
def held(folder: str | os.PathLike, flag: str, take_over: bool = False,
         report: Callable[[str], None] = lambda line: print(line, flush=True)) -> Iterator[bool]:
  """Holds the lock of `folder` while the block runs, and yields whether the folder is new (made now); `flag` names
  it in messages ('--workdir'). A new local folder is removed again if the block fails and leaves it empty.

  Raises UserError, before anything is written, if another live writer holds it.
  """
  path = files.to_path(folder)
  top = None if files.is_cloud(path) else first_missing(path.absolute())
  if top:
    try:
      path.mkdir(parents=True)
    except OSError as e:
      raise UserError(f'cannot create {flag}={folder} ({e.strerror}): pass a path in a writable directory.') from None
  try:
    record = acquire(path / LOCK, flag, take_over, report)
  except OSError as e:
    remove_empty(path, top)
    raise UserError(f'cannot write in {flag} {folder} ({e.strerror}): pass a directory you can write.') from None
  except BaseException:
    remove_empty(path, top)
    raise
  stop = threading.Event()
  renewer = threading.Thread(target=renew_until, args=(path / LOCK, record, stop), daemon=True)
  renewer.start()
  try:
    yield top is not None
  finally:
    stop.set()
    renewer.join()
    release(path / LOCK, record)
    remove_empty(path, top)
