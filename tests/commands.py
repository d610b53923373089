"""Running flaxlm's commands in tests as a user runs them, without paying for a new interpreter each time.

A command's start-up is mostly imports (JAX, Flax, Optax, Orbax, flaxlm: over a second of CPU) and its exit mostly
the interpreter's teardown of those modules (half a second), and the suite runs commands by the hundred. `start` and
`run` hand a console script of this environment (flaxlm-train, flaxlm-sample...) to a command server: a process
that imported those libraries once and forks a fresh child per command. The child is the command's process, as far
as the command can tell: its own pid and process group, the caller's working directory and environment, its own
stdin, stdout and stderr (files), the console script's entry point called as the script calls it, and an exit as the
interpreter's (non-daemon threads joined, atexit handlers run, an uncaught exception's traceback and exit code) but
for the teardown of its modules, which no command can see. No JAX backend has started in the server, so the child
starts its own. Anything else (`python -m`, `python -c`, an environment whose settings read when JAX is imported
differ from the server's) runs in a new interpreter through `subprocess.Popen`.

Run as a script, this file is the server: it reads one job a line (JSON) from stdin, and answers on stdout with the
child's pid once it has forked, then with its exit code once it has ended.
"""

import atexit
import contextlib
import json
import os
import pathlib
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Iterator

PRELOADED = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'grain', 'flaxlm.train.loop', 'flaxlm.train.use.pretrained',
             'flaxlm.model.hf', 'flaxlm.model.hf_families', 'flaxlm.model.sampling')
IMPORT_TIME_ENV = ('JAX_', 'XLA_', 'TF_', 'TPU_', 'LIBTPU', 'PYTHON')  # Read at import: the server's must hold.
BIN = os.path.dirname(sys.executable)
STREAMS = ('stdin', 'stdout', 'stderr')


# The client: the test process's side.

class Server:
  """One command server process, running one command at a time."""

  def __init__(self):
    self.log = tempfile.TemporaryFile()
    self.env = os.environ.copy()
    # Unbuffered: `ready` selects on the pipe itself, so `answer` must never read ahead into a buffer (a command that
    # ends at once puts its pid and exit lines on the pipe together; a buffered readline would take both, and the
    # exit's answer would sit unseen in the buffer while select waits on the empty pipe).
    self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=self.log, env=self.env, bufsize=0)

  def send(self, job: dict) -> None:
    """Hands the server a job."""
    self.process.stdin.write(json.dumps(job).encode() + b'\n')
    self.process.stdin.flush()

  def ready(self, timeout: float) -> bool:
    """Says whether an answer arrives within `timeout` seconds."""
    return bool(select.select([self.process.stdout], [], [], timeout)[0])

  def answer(self) -> dict:
    """Returns the server's next answer."""
    line = self.process.stdout.readline()
    if not line:
      self.log.seek(0)
      raise RuntimeError('the command server died: ' + self.log.read().decode(errors='replace')[-3000:])
    return json.loads(line)

  def close(self) -> None:
    """Ends the server: it exits when its stdin closes."""
    self.process.stdin.close()
    self.process.wait(timeout=60)


idle: list[Server] = []  # Servers with no command: a command started beside a running one takes another.
running: set['Process'] = set()
lock = threading.Lock()


@atexit.register
def close_all() -> None:
  """Kills the commands still running and ends every server."""
  for process in list(running):
    process.kill()
    process.wait(60)
  while idle:
    idle.pop().close()


def console_script(argv: list[str]) -> bool:
  """Says whether `argv` runs a flaxlm console script of this environment."""
  return os.path.dirname(argv[0]) == BIN and os.path.basename(argv[0]).startswith('flaxlm-')


def same_at_import(env: dict[str, str], server_env: dict[str, str]) -> bool:
  """Says whether `env` holds every setting read when JAX is imported as the server's environment does."""
  changed = {k for k in env.keys() | server_env.keys() if env.get(k) != server_env.get(k)}
  return not any(k.startswith(IMPORT_TIME_ENV) for k in changed)


def take_server(env: dict[str, str]) -> Server:
  """Returns an idle server whose environment suits `env`, or a new one."""
  with lock:
    server = next((s for s in idle if same_at_import(env, s.env)), None)
    if server:
      idle.remove(server)
  return server or Server()


class Process:
  """A command started by `start`, much as `subprocess.Popen` with stdout and stderr in files: `lines` yields what
  it prints as it prints it; `send_signal`, `kill`, `poll` and `wait` as Popen's; `output` what it printed."""

  def __init__(self, argv: list[str], cwd: str, env: dict[str, str], stdin: str):
    self.argv, self.returncode, self.server, self.popen = argv, None, None, None
    self.scratch = pathlib.Path(tempfile.mkdtemp(prefix='flaxlm-command-'))
    self.paths = {name: str(self.scratch / name) for name in STREAMS}
    for name, text in zip(STREAMS, (stdin, '', '')):  # Made here, so that `lines` can open stdout at once.
      pathlib.Path(self.paths[name]).write_text(text)
    if console_script(argv) and same_at_import(env, os.environ):
      self.server = take_server(env)
      self.server.send({'argv': argv, 'cwd': cwd, 'env': env, 'paths': self.paths})
      self.pid = self.server.answer()['pid']
    else:
      with open(self.paths['stdin']) as i, open(self.paths['stdout'], 'w') as o, open(self.paths['stderr'], 'w') as e:
        self.popen = subprocess.Popen(argv, cwd=cwd, env=env, stdin=i, stdout=o, stderr=e, start_new_session=True)
      self.pid = self.popen.pid
    running.add(self)
    self.lines = self.follow()

  def ended(self, code: int) -> int:
    """Records the exit code and gives the server back."""
    self.returncode = code
    running.discard(self)
    if self.server:
      with lock:
        idle.append(self.server)
      self.server = None
    return code

  def poll(self) -> int | None:
    """Returns the exit code if the command has ended, else None."""
    if self.returncode is None:
      if self.popen and self.popen.poll() is not None:
        self.ended(self.popen.returncode)
      elif self.server and self.server.ready(0):
        self.ended(self.server.answer()['code'])
    return self.returncode

  def wait(self, timeout: float) -> int:
    """Returns the exit code once the command has ended; past `timeout` seconds kills its process group and raises
    subprocess.TimeoutExpired."""
    deadline = time.monotonic() + timeout
    while self.poll() is None:
      if time.monotonic() > deadline:
        self.kill()
        self.wait(60)
        raise subprocess.TimeoutExpired(self.argv, timeout, *self.output())
      if self.server:
        self.server.ready(min(1.0, max(0.0, deadline - time.monotonic())))
      else:
        time.sleep(0.01)
    return self.returncode

  def send_signal(self, sig: int) -> None:
    """Sends `sig` to the command's process."""
    if self.returncode is None:
      os.kill(self.pid, sig)

  def kill(self) -> None:
    """Kills the command's whole process group."""
    if self.returncode is None:
      with contextlib.suppress(ProcessLookupError):  # Ended since it was last polled.
        os.killpg(self.pid, signal.SIGKILL)

  def follow(self) -> Iterator[str]:
    """Yields the lines the command prints, each once it is whole, until it has ended and every line is read."""
    with open(self.paths['stdout'], errors='replace') as out:
      partial = ''
      while True:
        partial += out.readline()
        if partial.endswith('\n'):
          yield partial
          partial = ''
        elif self.poll() is not None:
          yield from (partial + out.read()).splitlines(keepends=True)
          return
        else:
          time.sleep(0.01)

  def output(self) -> tuple[str, str]:
    """Returns what the command printed on stdout and stderr."""
    return tuple(pathlib.Path(self.paths[name]).read_text(errors='replace') for name in STREAMS[1:])

  def __del__(self):
    shutil.rmtree(self.scratch, ignore_errors=True)


def start(*argv: str, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None,
          stdin: str = '') -> Process:
  """Starts a command with `stdin` as its input (and the caller's environment unless `env` is given)."""
  return Process([str(a) for a in argv], os.path.abspath(cwd or os.getcwd()), dict(os.environ if env is None else env),
                 stdin)


def run(*argv: str, cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None, stdin: str = '',
        timeout: float = 300) -> subprocess.CompletedProcess:
  """Runs a command to its end and returns it as `subprocess.run(..., capture_output=True, text=True)` does;
  raises subprocess.TimeoutExpired past `timeout` seconds, its process group killed."""
  process = start(*argv, cwd=cwd, env=env, stdin=stdin)
  code = process.wait(timeout)
  return subprocess.CompletedProcess(process.argv, code, *process.output())


# The server: this file run as a script.

def become(job: dict):
  """Makes this forked child the job's command process and returns its console script's entry point."""
  from importlib import metadata
  os.setsid()  # Its own process group, so that a command past its timeout is killed whole.
  os.chdir(job['cwd'])
  os.environ.clear()
  os.environ.update(job['env'])
  for fd, name, flags in ((0, 'stdin', os.O_RDONLY), (1, 'stdout', os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                          (2, 'stderr', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
    os.dup2(os.open(job['paths'][name], flags), fd)  # Replaces the server's pipes: the command never sees them.
  sys.argv = list(job['argv'])
  (entry,) = metadata.entry_points(group='console_scripts', name=os.path.basename(job['argv'][0]))
  return entry.load()


def serve():
  """Answers jobs from stdin until it closes. Returns in a forked child only, once it has become the command, with
  the command's entry point."""
  for name in PRELOADED:  # Imported once here, inherited by every child.
    __import__(name)
  from jax._src import xla_bridge
  assert not xla_bridge._backends, 'a preloaded module started a JAX backend: forked children would share it'
  jobs = os.fdopen(0, 'rb', buffering=0)  # Unbuffered: no job is left in a buffer that a child inherits.
  answer = lambda **fields: os.write(1, json.dumps(fields).encode() + b'\n')
  while line := jobs.readline():
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
      return become(job)
    answer(pid=pid)
    answer(code=wait(pid, jobs))


def wait(pid: int, jobs) -> int:
  """Returns the exit code of the child `pid` once it has ended. If the client goes away first (its end of `jobs`
  closes: a test process that ended without waiting), kills the child's process group and exits."""
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status)
    if select.select([jobs], [], [], 0.05)[0] and not jobs.read(1):
      os.killpg(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      sys.exit(0)


def exit_as_the_interpreter(entry) -> None:
  """Runs the command's entry point as its console script does (`sys.exit(entry())`) and exits as the interpreter
  then would, without tearing its modules down."""
  try:
    code = entry()
  except SystemExit as e:
    code = e.code
  except KeyboardInterrupt:
    code = -signal.SIGINT
  except BaseException:
    sys.excepthook(*sys.exc_info())
    code = 1
  if code is not None and not isinstance(code, int):
    print(code, file=sys.stderr)
    code = 1
  threading._shutdown()  # The interpreter's first step at exit: wait for the non-daemon threads.
  atexit._run_exitfuncs()
  sys.stdout.flush()
  sys.stderr.flush()
  if code == -signal.SIGINT:  # Python ends on an uncaught KeyboardInterrupt by SIGINT's default action.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)
  os._exit(code or 0)


if __name__ == '__main__':
  warnings.filterwarnings('ignore', 'This process .* is multi-threaded, use of fork', DeprecationWarning)
  if entry := serve():
    exit_as_the_interpreter(entry)
