"""A campaign of bad inputs: each case runs one flaxlm command, exactly as its console script does, and must end
with a non-zero exit, one line on stderr that names the problem (never a traceback) and every file around it
unchanged: none written, replaced, removed or added.

A module of cases (tests/test_campaign_*.py) declares them as `Case`s, builds a sandbox folder holding what they
use, and calls `run_campaign` once. The cases run in one runner process (this file run as a script) that imports
JAX, Orbax and flaxlm once and forks a fresh child per case: a new interpreter per case would spend seconds on
imports alone. The child looks the command up among the installed console scripts, as the shell would.
"""

import dataclasses
import hashlib
import importlib
import json
import os
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from typing import Callable

PRELOADED = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'flaxlm.train.loop', 'flaxlm.train.use.pretrained',
             'flaxlm.model.hf', 'flaxlm.model.hf_families')
CLASSES = ('damage', 'message', 'traceback', 'accepted', 'hang')  # What each case would have been, unfixed.


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: `argv` is the command's name and arguments, with `{name}` for the sandbox's paths (`{root}`,
  `{case}` for this case's own folder, and whatever the module's sandbox provides); `fragment` must appear in the
  one error line. `setup(case_dir, paths)`, if given, makes the case's own files first (a damaged copy, say)."""
  id: str
  kind: str
  argv: tuple[str, ...]
  fragment: str
  setup: Callable[[pathlib.Path, dict], None] | None = None
  stdin: str = ''
  timeout: float = 120

  def __post_init__(self):
    assert self.kind in CLASSES, self.kind


def digest(root: pathlib.Path) -> dict[str, str]:
  """Returns what every entry below `root` is: a file's SHA-256 and mode, a symlink's target, a folder's mode."""
  out = {}
  for path in sorted(root.rglob('*')):
    key, mode = str(path.relative_to(root)), path.lstat().st_mode
    if stat.S_ISLNK(mode):
      out[key] = 'link ' + os.readlink(path)
    elif stat.S_ISREG(mode):
      out[key] = f'file {oct(mode)} ' + hashlib.sha256(path.read_bytes()).hexdigest()
    else:
      out[key] = f'dir {oct(mode)}'
  return out


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
  """Returns the paths added, removed or changed between two digests."""
  return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def build_sandbox(root: pathlib.Path) -> dict[str, str]:
  """Makes what the cases use, below `root`, and returns their paths by name: `corpus` (a text), `jsonl` (records
  with a "text" field), `run` (a finished 10-step tiny training run, one device), `export` (its flaxlm-export),
  `tokenizer` (its tokenizer.json), `hf_gpt2` and `hf_llama` (copies of the Hugging Face fixtures)."""
  from conftest import command, make_corpus
  corpus = make_corpus(root / 'corpus.txt')
  jsonl = root / 'texts.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': line}) + '\n' for line in corpus.read_text().splitlines()))
  run = root / 'run'
  for argv in ([command('flaxlm-train'), '--config=tiny', f'--workdir={run}', f'--config.data.path={corpus}',
                '--config.train.steps=10', '--config.train.checkpoint_every=5', '--config.mesh.cpu_devices=1'],
               [command('flaxlm-export'), f'--workdir={run}', f'--output={root / "export"}']):
    made = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
  fixtures = pathlib.Path(__file__).parent / 'fixtures'
  for name in ('hf_gpt2', 'hf_llama'):
    shutil.copytree(fixtures / name, root / name)
  return {'corpus': str(corpus), 'jsonl': str(jsonl), 'run': str(run), 'export': str(root / 'export'),
          'tokenizer': str(run / 'tokenizer.json'), 'hf_gpt2': str(root / 'hf_gpt2'),
          'hf_llama': str(root / 'hf_llama')}


def run_campaign(cases: list[Case], root: pathlib.Path, paths: dict[str, str], timeout: float = 900) -> dict:
  """Sets up and runs `cases` in the sandbox `root` and returns each one's result by id: its exit code (None if it
  hung), stderr, and the paths below `root` it changed."""
  assert len({c.id for c in cases}) == len(cases), 'case ids must be unique'
  jobs = []
  for case in cases:
    case_dir = root / 'cases' / case.id
    case_dir.mkdir(parents=True)
    names = {**paths, 'root': str(root), 'case': str(case_dir)}
    if case.setup:
      case.setup(case_dir, names)
    jobs.append({'id': case.id, 'argv': [a.format(**names) for a in case.argv], 'stdin': case.stdin,
                 'timeout': case.timeout, 'cwd': str(case_dir)})
  spec = root / 'campaign.json'
  spec.write_text(json.dumps({'root': str(root), 'jobs': jobs}))
  runner = subprocess.run([sys.executable, __file__, str(spec)], capture_output=True, text=True, timeout=timeout)
  assert runner.returncode == 0, runner.stderr
  return json.loads(runner.stdout)


def assert_refused(case: Case, result: dict) -> None:
  """Checks a case's result: it ended (no hang) with a non-zero exit, printed one error line containing the
  case's fragment (no traceback), and changed no file."""
  assert result['code'] is not None, f'hung for {case.timeout} s: {result["stderr"][-2000:]}'
  lines = result['stderr'].strip().splitlines()
  assert result['code'] != 0 and len(lines) == 1, (result['code'], result['stderr'][-4000:])
  assert lines[0].startswith(f'{case.argv[0]}: error: ') and case.fragment in lines[0], lines[0]
  assert not result['changed'], f'changed {result["changed"]}; said {lines[0]}'


def run_one(job: dict, scratch: pathlib.Path) -> tuple[int | None, str]:
  """Runs one job in a forked child and returns its exit code (None if it ran past its timeout) and stderr."""
  from importlib import metadata
  (scratch / 'stdin').write_text(job['stdin'])
  err = scratch / 'stderr'
  pid = os.fork()
  if pid == 0:  # The child: a fresh command process, as far as the command can tell.
    code = 1
    try:
      os.chdir(job['cwd'])
      os.setsid()  # Its own process group, so a hang is killed whole.
      for fd, name, flags in ((0, 'stdin', os.O_RDONLY), (1, 'stdout', os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                              (2, 'stderr', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        os.dup2(os.open(scratch / name, flags), fd)
      sys.argv = list(job['argv'])
      (entry,) = metadata.entry_points(group='console_scripts', name=job['argv'][0])
      entry.load()()
      code = 0
    except SystemExit as e:
      code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
    except BaseException:
      import traceback
      traceback.print_exc()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(code)
  deadline = time.monotonic() + job['timeout']
  while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status), err.read_text(errors='replace')
    time.sleep(0.02)
  os.killpg(pid, signal.SIGKILL)
  os.waitpid(pid, 0)
  return None, err.read_text(errors='replace')


def main(spec_path: str) -> None:
  """Runs the jobs of a campaign file and prints their results as JSON."""
  for name in PRELOADED:  # Imported once here, inherited by every forked child.
    importlib.import_module(name)
  spec = json.loads(pathlib.Path(spec_path).read_text())
  root, scratch = pathlib.Path(spec['root']), pathlib.Path(tempfile.mkdtemp())  # Outside the sandbox.
  results = {}
  for job in spec['jobs']:
    before, start = digest(root), time.monotonic()
    code, stderr = run_one(job, scratch)
    results[job['id']] = {'code': code, 'stderr': stderr, 'changed': changes(before, digest(root)),
                          'seconds': round(time.monotonic() - start, 2)}
  print(json.dumps(results))


if __name__ == '__main__':
  main(sys.argv[1])
