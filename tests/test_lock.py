"""Tests of data/lock.py: one writer per folder, a stale lock taken over, a lease renewed, a new folder left as it was
found when the writer fails."""

import json
import socket
import subprocess
import sys
import time

import pytest

from flaxlm.configs.errors import UserError
from flaxlm.data import lock


def write_record(folder, **fields) -> dict:
  """Writes a lock record into `folder`: this process's, with `fields` changed; returns it."""
  record = {**lock.new_record(), **fields}
  (folder / lock.LOCK).write_text(json.dumps(record))
  return record


def dead_pid() -> int:
  """Returns the process id of a process that has ended."""
  process = subprocess.Popen([sys.executable, '-c', ''])
  process.wait()
  return process.pid


def test_a_second_writer_is_refused_naming_the_first_and_the_lock_is_removed_at_exit(tmp_path):
  with lock.held(tmp_path, '--workdir') as new:
    assert not new and lock.read(tmp_path / lock.LOCK)['pid'] == lock.os.getpid()
    with pytest.raises(UserError, match=rf'{tmp_path} is being written by process {lock.os.getpid()} on '
                                        rf'{socket.gethostname()} since 20\d\d-.* UTC: .*pass --take_over'):
      with lock.held(tmp_path, '--workdir'):
        pass
    assert (tmp_path / lock.LOCK).is_file()  # The refused writer took nothing away.
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('stale', ['dead process', 'another boot', 'lease expired', 'garbled'])
def test_a_stale_lock_is_taken_over_with_a_line_naming_its_writer(tmp_path, stale):
  theirs = None
  if stale == 'garbled':  # A writer killed while writing it, say: no writer's.
    (tmp_path / lock.LOCK).write_text('{"pid": ')
  else:
    changes = {'dead process': {'pid': dead_pid()}, 'another boot': {'boot': 'another', 'pid': 1},
               'lease expired': {'host': 'elsewhere', 'renewed': time.time() - lock.LEASE_SECONDS - 1}}
    theirs = write_record(tmp_path, **changes[stale])
  said = []
  with lock.held(tmp_path, '--workdir', report=said.append):
    assert lock.read(tmp_path / lock.LOCK)['pid'] == lock.os.getpid()
  assert said == ([f'took over the lock of {tmp_path} from {lock.describe(theirs)}, which is no longer running']
                  if theirs else [])
  assert not (tmp_path / lock.LOCK).exists()


def test_a_live_lock_from_another_host_is_refused_unless_taken_over(tmp_path):
  theirs = write_record(tmp_path, host='elsewhere', pid=4321)
  with pytest.raises(UserError, match='being written by process 4321 on elsewhere since'):
    with lock.held(tmp_path, '--workdir'):
      pass
  assert lock.read(tmp_path / lock.LOCK) == theirs
  said = []
  with lock.held(tmp_path, '--workdir', take_over=True, report=said.append):
    pass
  assert said == [f'took over the lock of {tmp_path} from {lock.describe(theirs)}, as --take_over asked']


def test_a_writer_running_on_this_host_keeps_its_lock_even_against_take_over(tmp_path):
  write_record(tmp_path, pid=1)  # Process 1 always runs.
  with pytest.raises(UserError, match=r'by process 1 on .*, which runs on this host: stop it first \(--take_over is for a writer known'):
    with lock.held(tmp_path, '--workdir', take_over=True):
      pass


def test_the_lease_is_renewed_while_the_writer_runs(tmp_path, monkeypatch):
  monkeypatch.setattr(lock, 'RENEW_SECONDS', 0.05)
  with lock.held(tmp_path, '--workdir'):
    first = lock.read(tmp_path / lock.LOCK)['renewed']
    time.sleep(0.3)
    assert lock.read(tmp_path / lock.LOCK)['renewed'] > first


def test_a_new_folder_is_made_and_removed_again_with_its_new_parents_if_the_writer_leaves_it_empty(tmp_path):
  folder = tmp_path / 'a' / 'b'
  with pytest.raises(ValueError):
    with lock.held(folder, '--workdir') as new:
      assert new and folder.is_dir()
      raise ValueError
  assert list(tmp_path.iterdir()) == []
  with lock.held(folder, '--workdir'):
    (folder / 'kept').write_text('x')
  assert [p.name for p in folder.iterdir()] == ['kept']


def test_a_lock_path_that_is_not_a_file_is_refused_untouched(tmp_path):
  (tmp_path / lock.LOCK).mkdir()
  with pytest.raises(UserError, match='is not a lock file flaxlm wrote .*: remove it'):
    with lock.held(tmp_path, '--workdir'):
      pass
  assert (tmp_path / lock.LOCK).is_dir()


def test_an_uncreatable_folder_is_refused_in_one_line(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(UserError, match=r'cannot create --workdir=.*file/run \(Not a directory\)'):
    with lock.held(tmp_path / 'file' / 'run', '--workdir'):
      pass
