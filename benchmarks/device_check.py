"""Measures on a GPU or TPU the figures RESULTS.md lists as not measured, and writes them as JSON and markdown.

  python benchmarks/device_check.py --output=device_check.json --markdown=device_check.md
  python benchmarks/device_check.py --allow_cpu   # without an accelerator: tiny settings, a smoke test of the script

Each part is one run of an existing benchmark script in a process of its own, stopped at its own timeout and at
--budget_s for the whole check, so a hang costs its own part alone:
  mfu         benchmarks/mfu.py, once per preset: gpt2_124m and llama_1b (both compute in bfloat16 and keep
              model.attention=auto: cuDNN flash attention on NVIDIA, splash on TPU), 16 sequences a step.
  decode      benchmarks/decode.py --config=llama_1b in bfloat16, batches 1 and 8, with the cache, against the
              memory-bandwidth bound; then with int8 and int4 weights (--quantize), where decode.py has the flag.
  checkpoint  benchmarks/checkpoint_stall.py --presets=gpt2_124m, mfu's batch: the step that saves against a
              normal step.
  tests       FLAXLM_TEST_DEVICE=1 python -m pytest -q tests/test_device.py: the device's attention kernel, bfloat16
              training and int8 decoding against XLA on the same device; its counts of passed, failed and skipped.
Every figure is printed as its part ends. A part that fails is recorded with the last lines of its output and the
check goes on; it exits 1 at the end if any part failed. This process never imports jax (only one process may hold
a TPU, and a GPU's memory is taken by the first to start): a child process names the device.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import time
from typing import Callable

from absl import app, flags

OUTPUT = flags.DEFINE_string('output', 'device_check.json', 'Where to write every figure, as JSON.')
MARKDOWN = flags.DEFINE_string('markdown', 'device_check.md', 'Where to write the figures as markdown tables in '
                               'RESULTS.md\'s shape.')
ALLOW_CPU = flags.DEFINE_bool('allow_cpu', False, 'Without a GPU or TPU, run tiny settings (a smoke test of this '
                              'script) instead of refusing.')
BUDGET_S = flags.DEFINE_integer('budget_s', 460, 'Seconds for the whole check; a part not started with less than '
                                'a minute of it left fails.')

REPO = pathlib.Path(__file__).resolve().parents[1]
MIN_PART_S = 60  # Below this a part could not even compile: it is recorded as failed rather than started.
TAIL_LINES = 15  # Lines of output kept from a failed part.
PROBE = ('import json, jax; print(json.dumps({"backend": jax.default_backend(), "device_kind": '
         'jax.devices()[0].device_kind, "devices": jax.device_count(), "jax": jax.__version__}))')
QUANTIZE_FLAG = re.compile(r'^\s+--quantize:', re.MULTILINE)  # As `decode.py --help` would list it.
PERCENT_KEYS = ('MFU', 'of_bound')  # Figures kept as fractions, printed as percentages.
TESTS = ('-m', 'pytest', '-q', 'tests/test_device.py')
TESTS_ENV = (('FLAXLM_TEST_DEVICE', '1'),)  # conftest.py then leaves JAX on the device instead of forcing the CPU.
PYTEST_SUMMARY = re.compile(r'^=*\s*(?P<counts>\d+ \w+(?:, \d+ \w+)*) in [\d.]+s', re.MULTILINE)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the parts run: sizes for an accelerator, or tiny ones for a CPU."""
  presets: tuple[str, ...]  # mfu.py, one process each.
  train: tuple[str, ...]  # mfu.py's batch, length and step flags.
  decode: tuple[str, ...]  # decode.py's flags, the bfloat16 model's config among them.


ACCELERATOR = Settings(
    presets=('gpt2_124m', 'llama_1b'),
    train=('--batch_size=16', '--steps=20'),
    decode=('--config=llama_1b', '--config.model.dtype=bfloat16', '--batches=1,8', '--recompute=False'))
# mfu.py takes presets that set their vocabulary, with no overrides: gpt2_124m is the smallest, in short sequences.
CPU = Settings(
    presets=('gpt2_124m',),
    train=('--batch_size=2', '--max_length=16', '--steps=1'),
    decode=('--config=tiny', '--config.model.vocab_size=65', '--config.model.dtype=bfloat16', '--batches=1,8',
            '--recompute=False', '--prompt_length=4', '--new_tokens=8'))


@dataclasses.dataclass(frozen=True)
class Part:
  """One run of a benchmark script: the table and row its figures go to, its flags, timeout and output parser."""
  table: str
  label: str
  argv: tuple[str, ...]  # The script and its flags, after the interpreter.
  timeout_s: int
  parse: Callable[[str], dict]
  not_run: str = ''  # Why the part cannot run with the scripts as they are; '' runs it.
  env: tuple[tuple[str, str], ...] = ()  # Environment variables set for its process.


def number(text: str) -> int | float | str:
  """Returns a printed figure as a number ('1,234' 1234, '5.2' 5.2, '45.3%' 0.453), or the text if it is none."""
  plain = text.replace(',', '')
  if re.fullmatch(r'-?\d+', plain):
    return int(plain)
  if re.fullmatch(r'-?\d+(\.\d*)?%?', plain):
    return float(plain.rstrip('%')) / (100 if plain.endswith('%') else 1)
  return text


def named_figures(*patterns: re.Pattern) -> Callable[[str], dict]:
  """Returns a parser of a script's output: the named groups of each pattern's first match, as numbers."""
  def parse(stdout: str) -> dict:
    figures = {}
    for pattern in patterns:
      match = pattern.search(stdout)
      figures.update({key: number(value) for key, value in (match.groupdict() if match else {}).items()})
    return figures
  return parse


def mfu_row(preset: str) -> Callable[[str], dict]:
  """Returns a parser of mfu.py's output: the preset's row, keyed by the table's own column names."""
  def parse(stdout: str) -> dict:
    lines = stdout.splitlines()
    header = next((line.split(' | ') for line in lines if line.startswith('preset | ')), [])
    row = next((line.split(' | ') for line in lines if line.startswith(f'{preset} | ')), [])
    return {key: number(value) for key, value in zip(header[1:], row[1:])}
  return parse


def pytest_counts(stdout: str) -> dict:
  """Returns pytest's final counts (passed, failed, skipped, errors; others it prints too), or {} without them."""
  matches = list(PYTEST_SUMMARY.finditer(stdout))
  if not matches:
    return {}
  counts = {'passed': 0, 'failed': 0, 'skipped': 0, 'errors': 0}
  for count, name in re.findall(r'(\d+) (\w+)', matches[-1]['counts']):
    counts[{'error': 'errors', 'warning': 'warnings'}.get(name, name)] = int(count)
  return counts


DECODE = named_figures(
    re.compile(r'(?P<model>\d+ layers, width \d+, context \d+, \w+)'),
    re.compile(r'^weights: \w+, (?P<weight_bytes>[\d,]+) bytes', re.MULTILINE),
    re.compile(r'^batch 1: with the cache (?P<batch_1>[\d,]+) tokens/s', re.MULTILINE),
    re.compile(r'^batch 8: with the cache (?P<batch_8>[\d,]+) tokens/s', re.MULTILINE),
    re.compile(r'^bandwidth bound: (?P<bound>.*)$', re.MULTILINE),
    re.compile(r'= (?P<bound_tokens>[\d,]+) tokens/s; batch 1 reaches (?P<of_bound>\d+%) of it'))
CHECKPOINT = named_figures(
    re.compile(r'state (?P<state_gib>[\d.]+) GiB, .* batch (?P<batch>\d+ x \d+)'),
    re.compile(r'^normal step \(median of \d+\): (?P<normal_ms>[\d.]+) ms', re.MULTILINE),
    re.compile(r'^step that saves: (?P<saving_ms>[\d.]+) ms = (?P<saving_x>[\d.]+)x a normal step '
               r'\(of which the save call: (?P<save_call_ms>[\d.]+) ms\)', re.MULTILINE),
    re.compile(r'written in the background \((?P<steps_writing>\d+), (?P<write_s>[\d.]+) s\): '
               r'max (?P<max_writing_ms>[\d.]+) ms = (?P<max_writing_x>[\d.]+)x'))


def python(argv: tuple[str, ...], timeout_s: float, env: tuple[tuple[str, str], ...] = ()
           ) -> subprocess.CompletedProcess:
  """Returns the finished run of `python ARGV` in the repository's root, with `env` added to this process's
  environment; raises TimeoutExpired after timeout_s."""
  return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
                        env={**os.environ, **dict(env)})


def probe_device() -> dict:
  """Returns jax's default backend, device kind, device count and version, read by a child process."""
  try:
    done = python(('-c', PROBE), 180)
  except subprocess.TimeoutExpired:
    sys.exit('device_check.py: error: jax did not start within 180 s: check the device with `python -c "import jax; '
             'print(jax.devices())"`.')
  if done.returncode:
    sys.exit(f'device_check.py: error: jax did not start: {" / ".join(tail(done.stderr)[-3:])}')
  return json.loads(done.stdout.splitlines()[-1])


def decode_quantizes() -> bool:
  """Returns whether benchmarks/decode.py lists a --quantize flag in its --help."""
  return bool(QUANTIZE_FLAG.search(python(('benchmarks/decode.py', '--help'), 120).stdout))


def plan(settings: Settings, quantizes: bool) -> list[Part]:
  """Returns the parts to run, in order of importance: MFU of each preset, decoding, the checkpoint stall, the
  device's tests."""
  parts = [Part('mfu', preset, ('benchmarks/mfu.py', f'--presets={preset}', *settings.train), 180, mfu_row(preset))
           for preset in settings.presets]
  for weights in ('bfloat16', 'int8', 'int4'):
    quantize = () if weights == 'bfloat16' else (f'--quantize={weights}',)
    missing = '' if quantizes or not quantize else 'benchmarks/decode.py has no --quantize flag'
    parts.append(Part('decode', weights, ('benchmarks/decode.py', *settings.decode, *quantize), 120, DECODE, missing))
  preset = settings.presets[0]
  parts.append(Part('checkpoint', preset, ('benchmarks/checkpoint_stall.py', f'--presets={preset}', *settings.train),
                    120, CHECKPOINT))
  parts.append(Part('tests', TESTS[-1], TESTS, 240, pytest_counts, env=TESTS_ENV))
  return parts


def tail(text: str) -> list[str]:
  """Returns the last TAIL_LINES non-empty lines of a process's output."""
  return [line for line in text.splitlines() if line.strip()][-TAIL_LINES:]


def as_text(output: str | bytes | None) -> str:
  """Returns what a process printed as text: a timed-out run's partial output comes as bytes, or None."""
  return output.decode(errors='replace') if isinstance(output, bytes) else output or ''


def run_part(part: Part, seconds_left: float) -> dict:
  """Returns the part's record: its command, status, seconds, figures, output, and on failure why and its tail."""
  assignments = [f'{name}={shlex.quote(value)}' for name, value in part.env]
  command = ' '.join([*assignments, shlex.join(('python', *part.argv))])
  record = {'table': part.table, 'label': part.label, 'command': command,
            'status': 'failed', 'reason': '', 'seconds': 0.0, 'figures': {}, 'output': [], 'tail': []}
  if part.not_run:
    return {**record, 'status': 'not run', 'reason': part.not_run}
  if seconds_left < MIN_PART_S:
    return {**record, 'reason': f'not started: {seconds_left:.0f} s of --budget_s left'}
  timeout_s, start = min(part.timeout_s, seconds_left), time.monotonic()
  try:
    done = python(part.argv, timeout_s, part.env)
    stdout, stderr = done.stdout, done.stderr
    reason = f'exit status {done.returncode}' if done.returncode else ''
  except subprocess.TimeoutExpired as e:
    stdout, stderr, reason = as_text(e.stdout), as_text(e.stderr), f'timed out after {timeout_s:.0f} s'
  figures = part.parse(stdout)
  reason = reason or ('' if figures else 'printed no figures')
  return {**record, 'status': 'failed' if reason else 'ok', 'reason': reason,
          'seconds': round(time.monotonic() - start, 1), 'figures': figures, 'output': stdout.splitlines(),
          'tail': tail(stdout + '\n' + stderr) if reason else []}


def show(record: dict) -> None:
  """Prints a part's command, status and figures (and the tail of its output if it failed)."""
  status = ', '.join(filter(None, (record['status'], record['reason'])))
  print(f'[{record["table"]} {record["label"]}] {status} ({record["seconds"]:.0f} s): {record["command"]}', flush=True)
  for key, value in record['figures'].items():
    print(f'  {key}: {cell(key, value)}', flush=True)
  for line in record['tail']:
    print(f'  | {line}', flush=True)


def run_parts(parts: list[Part], deadline: float) -> list[dict]:
  """Returns the records of the parts, run one after the other, each within what is left before `deadline`."""
  records = []
  for part in parts:
    records.append(run_part(part, deadline - time.monotonic()))
    show(records[-1])
  return records


def cell(key: str, value: int | float | str) -> str:
  """Returns a figure as a markdown table prints it: thousands separated, fractions of PERCENT_KEYS as percentages."""
  if isinstance(value, str):
    return value.replace('|', '\\|')
  if key in PERCENT_KEYS:
    return f'{value:.1%}'
  return f'{value:,}' if isinstance(value, int) else f'{value:,.6g}'


def failure(record: dict) -> str:
  """Returns why a part did not finish well, as a table cell ('' if it did): its status, reason and last line."""
  if record['status'] == 'ok':
    return ''
  return cell('', f'{record["status"]}: {record["reason"]}' + (f' ({record["tail"][-1]})' if record['tail'] else ''))


def table(first: str, columns: tuple[tuple[str, str], ...], records: list[dict]) -> list[str]:
  """Returns a markdown table of the records, one row each. A failed or unrun part's row says why: in place of its
  figures if it printed none, else after its label, its figures kept (a failed test run's counts)."""
  header = (first, *(title for title, _ in columns))
  lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join('---' for _ in header) + ' |']
  for r in records:
    why = failure(r)
    if r['figures']:
      figures = [cell(key, r['figures'].get(key, 'n/a')) for _, key in columns]
      row = [r['label'] + (f' ({why})' if why else ''), *figures]
    else:
      row = [r['label'], why, *([''] * (len(columns) - 1))]
    lines.append('| ' + ' | '.join(row) + ' |')
  return lines


MFU_COLUMNS = tuple((name, name) for name in ('device', 'devices', 'params', 'ms/step', 'tokens/s',
                                              'tokens/s/device', 'MFU'))
DECODE_COLUMNS = (('model', 'model'), ('weight bytes', 'weight_bytes'), ('batch 1, tokens/s', 'batch_1'),
                  ('batch 8, tokens/s', 'batch_8'),
                  ('bandwidth bound, tokens/s', 'bound_tokens'), ('batch 1 of the bound', 'of_bound'))
CHECKPOINT_COLUMNS = (('batch', 'batch'), ('state GiB', 'state_gib'), ('normal step (median), ms', 'normal_ms'),
                      ('step that saves, ms', 'saving_ms'), ('saving / normal', 'saving_x'),
                      ('of which the save call, ms', 'save_call_ms'),
                      ('slowest step while written, ms', 'max_writing_ms'), ('slowest / normal', 'max_writing_x'))
TEST_COLUMNS = tuple((name, name) for name in ('passed', 'failed', 'skipped', 'errors'))
TABLES = (  # table, heading, first column, columns
    ('mfu', 'MFU of the bfloat16 presets, attention=auto (cuDNN on NVIDIA, splash on TPU)', 'preset', MFU_COLUMNS),
    ('decode', 'Decoding with the key/value cache, greedy, random weights', 'weights', DECODE_COLUMNS),
    ('checkpoint', 'An asynchronous checkpoint save during training', 'preset', CHECKPOINT_COLUMNS),
    ('tests', 'Tests on the device: its attention kernel, bfloat16 training and int8 decoding against XLA', 'file',
     TEST_COLUMNS))


def markdown(report: dict) -> str:
  """Returns the report as a RESULTS.md fragment: the device and command, then per table its commands and rows."""
  d = report['device']
  lines = [f'### Device check: {d["devices"]} x {d["device_kind"]}, jax {d["jax"]}', '', '```', report['command'],
           '```', '', f'{d["devices"]} x {d["device_kind"]} ({d["backend"]}), jax {d["jax"]}, {report["date"]}, '
           f'{report["seconds"]:.0f} s in all.']
  for name, heading, first, columns in TABLES:
    records = [r for r in report['parts'] if r['table'] == name]
    commands = [r['command'] for r in records if r['status'] != 'not run']
    lines += ['', f'#### {heading}', '', '```', *commands, '```', '']
    lines += table(first, columns, records)
  return '\n'.join(lines) + '\n'


def settings_for(device: dict) -> Settings:
  """Returns the settings for the device; exits with one line if it is a CPU and --allow_cpu was not given."""
  if device['backend'] != 'cpu':
    return ACCELERATOR
  if not ALLOW_CPU.value:
    sys.exit('device_check.py: error: it needs a GPU or TPU, and jax\'s default backend here is cpu: run it on an '
             'accelerator, or pass --allow_cpu for a smoke test with tiny settings.')
  return CPU


def write(report: dict) -> None:
  """Writes the report to --output (JSON) and --markdown, and says where."""
  pathlib.Path(OUTPUT.value).write_text(json.dumps(report, indent=2) + '\n')
  pathlib.Path(MARKDOWN.value).write_text(markdown(report))
  print(f'wrote {OUTPUT.value} and {MARKDOWN.value}')


def main(argv: list[str]) -> None:
  """Runs the parts on this machine's device, writes the figures, and exits 1 if any part failed."""
  del argv  # Flags only.
  start = time.monotonic()
  device = probe_device()
  settings = settings_for(device)
  print(f'{device["devices"]} x {device["device_kind"]} ({device["backend"]}), jax {device["jax"]}', flush=True)
  records = run_parts(plan(settings, decode_quantizes()), start + BUDGET_S.value)
  write({'command': shlex.join(('python', *sys.argv)), 'device': device, 'date': datetime.date.today().isoformat(),
         'seconds': round(time.monotonic() - start, 1), 'parts': records})
  sys.exit(1 if any(r['status'] == 'failed' for r in records) else 0)


if __name__ == '__main__':
  app.run(main)
