"""A campaign of bad inputs: each case runs one flaxlm command, exactly as its console script does, and must end
with a non-zero exit, one line on stderr that names the problem (never a traceback) and every file around it
unchanged: none written, replaced, removed or added.

A module of cases (tests/test_campaign_*.py) declares them as `Case`s, makes a sandbox folder holding what they
use (its copy of the test session's, `shared_sandbox`, or one of its own), and calls `run_campaign` once. The cases
run one at a time through tests/commands.py, each in a fresh process of its own running the installed console
script, as the shell would.
"""

import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import stat
import subprocess
from typing import Callable

import commands
from conftest import command, make_corpus

CLASSES = ('damage', 'message', 'traceback', 'accepted', 'hang')  # What each case would have been, unfixed.


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input: `argv` is the command's name and arguments, with `{name}` for the sandbox's paths (`{root}`,
  `{case}` for this case's own folder, and whatever the module's sandbox provides); `fragment` must appear in the
  one error line. `setup(case_dir, paths)`, if given, makes the case's own files first (a damaged copy, say); `env`
  sets environment variables for the command (with `{name}`s as argv)."""
  id: str
  kind: str
  argv: tuple[str, ...]
  fragment: str
  setup: Callable[[pathlib.Path, dict], None] | None = None
  stdin: str = ''
  timeout: float = 120
  env: tuple[tuple[str, str], ...] = ()

  def __post_init__(self):
    assert self.kind in CLASSES, self.kind


def digest(root: pathlib.Path) -> dict[str, str]:
  """Returns what every entry below `root` is: a file's SHA-256 and mode, a symlink's target (not followed), a
  folder's (or other entry's) mode."""
  out = {}

  def visit(folder: str, prefix: str) -> None:
    for entry in os.scandir(folder):
      key, info = prefix + entry.name, entry.stat(follow_symlinks=False)
      if stat.S_ISLNK(info.st_mode):
        out[key] = 'link ' + os.readlink(entry.path)
      elif stat.S_ISREG(info.st_mode):
        out[key] = f'file {oct(info.st_mode)} ' + sha256(entry.path, info)
      else:
        out[key] = f'dir {oct(info.st_mode)}'
        if stat.S_ISDIR(info.st_mode):
          visit(entry.path, key + '/')

  visit(str(root), '')
  return out


HASHED: dict[tuple, str] = {}


def sha256(path: str, info: os.stat_result) -> str:
  """Returns the SHA-256 of the file `path`, hashed again only if its inode, size, mtime or ctime changed (no write
  to a file leaves all four as they were: the kernel sets its ctime, which no program can set back)."""
  key = (path, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
  if key not in HASHED:
    with open(path, 'rb') as f:
      HASHED[key] = hashlib.sha256(f.read()).hexdigest()
  return HASHED[key]


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
  """Returns the paths added, removed or changed between two digests."""
  return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def build_sandbox(root: pathlib.Path) -> dict[str, str]:
  """Makes what the cases use, below `root`, and returns their paths by name: `corpus` (a text), `jsonl` (records
  with a "text" field), `run` (a finished 10-step tiny training run, one device), `export` (its flaxlm-export),
  `tokenizer` (its tokenizer.json), `hf_gpt2` and `hf_llama` (copies of the Hugging Face fixtures)."""
  corpus = make_corpus(root / 'corpus.txt')
  jsonl = root / 'texts.jsonl'
  jsonl.write_text(''.join(json.dumps({'text': line}) + '\n' for line in corpus.read_text().splitlines()))
  run = root / 'run'
  for argv in ([command('flaxlm-train'), '--config=tiny', f'--workdir={run}', f'--config.data.path={corpus}',
                '--config.train.steps=10', '--config.train.checkpoint_every=5', '--config.mesh.cpu_devices=1'],
               [command('flaxlm-export'), f'--workdir={run}', f'--output={root / "export"}']):
    made = commands.run(*argv)
    assert made.returncode == 0, made.stderr
  fixtures = pathlib.Path(__file__).parent / 'fixtures'
  for name in ('hf_gpt2', 'hf_llama'):
    shutil.copytree(fixtures / name, root / name)
  return {'corpus': str(corpus), 'jsonl': str(jsonl), 'run': str(run), 'export': str(root / 'export'),
          'tokenizer': str(run / 'tokenizer.json'), 'hf_gpt2': str(root / 'hf_gpt2'),
          'hf_llama': str(root / 'hf_llama')}


def shared_sandbox(root: pathlib.Path) -> dict[str, str]:
  """Returns the paths by name of a sandbox as build_sandbox(root)'s: a copy below `root` of the test session's,
  built by the first process to ask (in tests/conftest.py's FLAXLM_TEST_SESSION folder) while any other waits. The
  corpus is not copied: the run's config and its token store's digest name it where it was built, and there
  run_campaign watches it."""
  session = pathlib.Path(os.environ['FLAXLM_TEST_SESSION'])
  built, names = session / 'campaign_sandbox', session / 'campaign_sandbox.json'
  with open(session / 'campaign_sandbox.lock', 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # Released as the file closes.
    if not names.exists():  # Written once the build is whole.
      shutil.rmtree(built, ignore_errors=True)  # What a failed build left.
      built.mkdir()
      names.write_text(json.dumps(build_sandbox(built)))
  paths = {name: pathlib.Path(path).relative_to(built) for name, path in json.loads(names.read_text()).items()}
  shutil.copytree(built, root, symlinks=True, dirs_exist_ok=True,
                  ignore=lambda folder, _: [str(paths['corpus'])] if folder == str(built) else [])
  return {name: str((built if name == 'corpus' else root) / path) for name, path in paths.items()}


def snapshot(folders: set[pathlib.Path]) -> dict[str, str]:
  """Returns what every entry below each of `folders` is, as `digest`, by its path."""
  return {str(folder / key): value for folder in folders for key, value in digest(folder).items()}


def run_campaign(cases: list[Case], root: pathlib.Path, paths: dict[str, str]) -> dict:
  """Sets up and runs `cases` in the sandbox `root`, one at a time, and returns each one's result by id: its exit
  code (None if it hung), stderr, and the paths it changed below `root` or the folder of any of `paths` outside it."""
  assert len({c.id for c in cases}) == len(cases), 'case ids must be unique'
  watched = {root, *(pathlib.Path(p).parent for p in paths.values() if not pathlib.Path(p).is_relative_to(root))}
  results = {}
  for case in cases:
    case_dir = root / 'cases' / case.id
    case_dir.mkdir(parents=True)
    names = {**paths, 'root': str(root), 'case': str(case_dir)}
    if case.setup:
      case.setup(case_dir, names)
    argv = [command(case.argv[0]), *(a.format(**names) for a in case.argv[1:])]
    before = snapshot(watched)
    try:
      env = {**os.environ, **{name: value.format(**names) for name, value in case.env}}
      done = commands.run(*argv, cwd=case_dir, stdin=case.stdin, timeout=case.timeout, env=env)
      code, stderr = done.returncode, done.stderr
    except subprocess.TimeoutExpired as e:
      code, stderr = None, e.stderr or ''
    results[case.id] = {'code': code, 'stderr': stderr, 'changed': changes(before, snapshot(watched))}
  return results


def assert_refused(case: Case, result: dict) -> None:
  """Checks a case's result: it ended (no hang) with a non-zero exit, printed one error line containing the
  case's fragment (no traceback), and changed no file."""
  assert result['code'] is not None, f'hung for {case.timeout} s: {result["stderr"][-2000:]}'
  lines = result['stderr'].strip().splitlines()
  assert result['code'] != 0 and len(lines) == 1, (result['code'], result['stderr'][-4000:])
  assert lines[0].startswith(f'{case.argv[0]}: error: ') and case.fragment in lines[0], lines[0]
  assert not result['changed'], f'changed {result["changed"]}; said {lines[0]}'
