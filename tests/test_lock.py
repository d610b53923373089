"""Tests of data/lock.py: one writer per folder, a stale lock taken over, a lease renewed, a new folder left as it was
found when the writer fails; and the commands that hold it: two preparations of one store, a run that waits for the
cached store of its text, a refused run that leaves no cached store."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from unittest import mock

import pytest

import commands
from conftest import command, make_corpus
from test_cli import assert_one_line_error, train_args
from flaxlm.configs.errors import UserError
from flaxlm.data import lock, prepare


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
  why = {'dead process': 'which is no longer running', 'another boot': 'written before this host restarted',
         'lease expired': 'whose lease ran out 1 s ago'}.get(stale)
  assert said == ([f'took over the lock of {tmp_path} from {lock.describe(theirs)}, {why}'] if theirs else [])
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
  refusal = r'by process 1 on .*, which runs on this host: stop it first \(--take_over is for a writer known'
  with pytest.raises(UserError, match=refusal):
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


# End to end: the commands that write a workdir (tests/test_resume.py), a token store or the cache take the lock.

def cache_env(tmp_path) -> dict[str, str]:
  """Returns this environment with the token store cache in `tmp_path`/cache."""
  return {**os.environ, 'FLAXLM_CACHE': str(tmp_path / 'cache')}


@pytest.mark.timeout(300)
def test_a_second_prepare_of_a_store_is_refused_while_the_first_finishes_it_whole(tmp_path):
  corpus = make_corpus(tmp_path / 'corpus.txt', num_words=300_000)  # About 2 MB: a second or so of preparing.
  argv = [command('flaxlm-data'), 'prepare', str(corpus), f'--output={tmp_path / "store"}', '--tokenizer=char']
  first = commands.start(*argv)
  while not (tmp_path / 'store' / lock.LOCK).exists():
    assert first.poll() is None, first.output()
    time.sleep(0.002)
  first.send_signal(signal.SIGSTOP)  # Held still, alive, while the second tries.
  try:
    second = commands.run(*argv)
  finally:
    first.send_signal(signal.SIGCONT)
  assert_one_line_error(second, f'{tmp_path / "store"} is being written by process {first.pid} on ')
  assert first.wait(timeout=120) == 0, first.output()
  verified = commands.run(command('flaxlm-data'), 'verify', str(tmp_path / 'store'))
  assert verified.returncode == 0, verified.stderr
  assert not (tmp_path / 'store' / lock.LOCK).exists()


def test_a_run_refused_after_preparing_its_text_leaves_no_cached_store(tmp_path):
  short = tmp_path / 'short.txt'
  short.write_text('only a few words here\n' * 100)
  result = commands.run(command('flaxlm-train'), *train_args(short, tmp_path / 'run', '--config.data.val_fraction=0.5',
                                                             '--config.train.batch_size=128'),
                        env=cache_env(tmp_path))
  assert_one_line_error(result, 'fewer than one batch')
  assert not (tmp_path / 'run').exists() and not (tmp_path / 'cache').exists()


def test_a_run_waits_while_another_holds_the_cached_store_of_its_text(corpus, tmp_path):
  settings = prepare.Settings()
  with mock.patch.dict(os.environ, cache_env(tmp_path)):
    folder = prepare.cache_path(prepare.make_plan(str(corpus), settings, 'char', prepare.GROUP_BYTES))
  folder.mkdir(parents=True)
  write_record(folder, pid=1)  # A live writer here (process 1 always runs) holds it.
  run = commands.start(command('flaxlm-train'), *train_args(corpus, tmp_path / 'run'), env=cache_env(tmp_path))
  line = next(run.lines)
  assert line.startswith(f'waiting for process 1 on {socket.gethostname()} since ') and str(folder) in line, line
  (folder / lock.LOCK).unlink()  # It ends, leaving nothing.
  assert run.wait(timeout=120) == 0, run.output()
  assert (folder / 'manifest.json').is_file() and not (folder / lock.LOCK).exists()


# Run by each process of the test below: waits for the go file, tries to take the lock of the folder, prints whether
# it did, and (if it did) holds it a while, so that no later process finds it stale.
TAKE = '''
import os, sys, time
from flaxlm.configs.errors import UserError
from flaxlm.data import lock
folder = sys.argv[1]
while not os.path.exists(os.path.join(folder, 'go')):
  time.sleep(0.001)
try:
  lock.acquire(lock.files.to_path(folder) / lock.LOCK, '--workdir', False, lambda line: None)
except UserError:
  print('refused', flush=True)
else:
  print('taken', flush=True)
  time.sleep(1)
'''


def test_of_processes_taking_over_one_stale_lock_at_once_one_gets_it(tmp_path):
  write_record(tmp_path, pid=dead_pid())
  processes = [subprocess.Popen([sys.executable, '-c', TAKE, str(tmp_path)], stdout=subprocess.PIPE, text=True)
               for _ in range(6)]
  time.sleep(1)  # Each has imported what it needs.
  (tmp_path / 'go').write_text('')
  said = [process.communicate(timeout=60)[0].strip() for process in processes]
  assert sorted(said) == ['refused'] * 5 + ['taken'], said
