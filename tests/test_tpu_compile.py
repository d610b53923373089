"""Tests of train/plan/tpu_compile.py and `flaxlm-info --compile_for`: the tiny preset's train step on its chip, and a
small model's sharded over a slice, compile for TPU and fit its memory; a decode step's weights and cache are counted;
a step that cannot fit is refused in one line. The presets take 3 to 40 s each to compile, so their fit on their
slices is checked by benchmarks/preset_fit.py.

XLA:TPU (libtpu, the `tpu` extra) compiles for compile-only devices: no TPU is used. The compiles run in
subprocesses with their own environment, so this process (and the rest of the suite) stays on the CPU backend.
"""

import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import types

import pytest

from conftest import command
from test_cli import assert_one_line_error
from flaxlm import configs
from flaxlm.configs.errors import UserError
from flaxlm.model.transformer import count_params, param_shapes
from flaxlm.train.plan import estimate, tpu_compile

GiB = 2 ** 30
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec('libtpu') is None,
                                  reason='libtpu is not installed: pip install -e ".[tpu]" (CI installs it)')
VOCAB = estimate.PRESET_VOCAB  # The vocabulary of presets whose tokenizer sets it.

# Compiles the train step of each argument's config for its slice, prints [argument, report lines] for each. An argument
# is a JSON list: [preset, slice, {dotted key: value}].
COMPILE = '''
import json, sys
from flaxlm import configs
from flaxlm.train.plan import tpu_compile
for argument in sys.argv[1:]:
  name, slice_name, overrides = json.loads(argument)
  config = configs.load(name)
  for key, value in overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  print(json.dumps([argument, tpu_compile.train_report(config, slice_name)]), flush=True)
'''


def compiling(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
  """Runs `args` in a subprocess whose JAX has the CPU as its only backend (and `env`); returns what it printed."""
  return subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu', **env})


def preset_config(name: str):
  """Returns the config of the preset `name`, its vocabulary set where its tokenizer would set it."""
  config = configs.load(name)
  config.model.vocab_size = config.model.vocab_size or VOCAB[name]
  return config


def number(lines: list[str], label: str) -> float:
  """Returns the first number on the report line whose text starts with `label`."""
  line = next(line.strip() for line in lines if line.strip().startswith(label))
  return float(re.search(r'\d+\.\d+', line[len(label):])[0])


def arguments(lines: list[str]) -> dict[str, float]:
  """Returns the breakdown on the report's arguments line, GiB per device: {'train state': 1.726, ...}."""
  line = next(line for line in lines if line.strip().startswith('arguments'))
  inside = line[line.index('(') + 1:line.rindex(')')]
  return {part.rsplit(' ', 1)[0]: float(part.rsplit(' ', 1)[1]) for part in inside.split(', ')}


def mesh_sizes(lines: list[str]) -> dict[str, int]:
  """Returns the mesh axes' sizes on the report's mesh line."""
  line = next(line for line in lines if line.strip().startswith('mesh'))
  return {axis: int(size) for axis, size in (word.split('=') for word in line.split()[1:])}


def test_an_unknown_slice_is_refused_naming_the_known_ones():
  with pytest.raises(UserError, match='not a slice flaxlm knows: pass one of v4-8, .*v5e-8, .*v6e-8'):
    tpu_compile.check_slice('v5e-3')


def test_without_libtpu_compile_for_names_the_install(monkeypatch):
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(UserError, match=re.escape('libtpu, which is not installed: pip install -e ".[tpu]"')):
    tpu_compile.prepare_environment('v5e-8')


def test_a_total_beyond_the_devices_memory_is_refused_with_the_excess_and_the_fixes():
  capacity = tpu_compile.SLICES['v5e-4'].hbm_bytes
  assert tpu_compile.fits_line('the step', 'v5e-4', capacity, 'TPU v5 lite', 'fix').split()[:2] == ['fits', 'yes:']
  with pytest.raises(UserError, match=r'the step does not fit v5e-4: .* take 16\.25 GiB per device, 0\.50 GiB more '
                                      r'than the 15\.75 GiB a TPU v5 lite device has: fix'):
    tpu_compile.fits_line('the step', 'v5e-4', capacity + GiB // 2, 'TPU v5 lite', 'fix')


def test_the_total_counts_outputs_written_into_donated_arguments_once():
  stats = types.SimpleNamespace(argument_size_in_bytes=10 * GiB, temp_size_in_bytes=5 * GiB,
                                output_size_in_bytes=8 * GiB, alias_size_in_bytes=7 * GiB,
                                generated_code_size_in_bytes=GiB)
  lines, total = tpu_compile.memory_lines(stats, [('train state', 9 * GiB), ('batch', GiB)])
  assert total == (10 + 5 + (8 - 7) + 1) * GiB  # 7 GiB of the outputs are the donated state, rewritten in place.
  assert number(lines, 'outputs beside donated inputs') == 1 and number(lines, 'total') == 17
  assert arguments(lines) == {'train state': 9, 'batch': 1}


@needs_libtpu
def test_each_slice_has_the_chips_its_cloud_tpu_name_says():
  script = ('import json; from flaxlm.train.plan import tpu_compile\n'
            'print(json.dumps({n: [d.device_kind for d in tpu_compile.slice_devices(n)] for n in tpu_compile.SLICES}))')
  result = compiling([sys.executable, '-c', script], timeout=120)
  assert result.returncode == 0 and result.stderr == '', result.stderr[-3000:]
  kinds = {'v4': 'TPU v4', 'v5e': 'TPU v5 lite', 'v5p': 'TPU v5', 'v6e': 'TPU v6 lite'}
  for name, devices in json.loads(result.stdout).items():
    generation, count = name.split('-')
    chips = int(count) // 2 if generation in ('v4', 'v5p') else int(count)  # v4 and v5p count TensorCores, 2 a chip.
    assert devices == [kinds[generation]] * chips, name


# tiny's shape, grown to split over v5e-8, and made sparse (model/moe.py): every axis of the mesh splits it, and its
# layers compile as XLA:TPU runs them (the experts' grouped matmuls, the tokens exchanged over the expert axis).
SHARDED = {'model.vocab_size': 512, 'model.width': 256, 'model.num_heads': 8, 'model.max_length': 256,
           'model.num_experts': 4, 'model.expert_width': 512, 'train.batch_size': 16, 'mesh.fsdp': 2,
           'mesh.expert': 2, 'mesh.tensor': 2}


def compile_configs(runs: list[tuple[str, str, dict]]) -> list[list[str]]:
  """Compiles the train step of each (preset, slice, overrides) in one subprocess; returns the reports in order."""
  arguments = [json.dumps(run) for run in runs]
  result = compiling([sys.executable, '-c', COMPILE, *arguments], timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  reports = dict(json.loads(line) for line in result.stdout.splitlines())
  return [reports[argument] for argument in arguments]


def assert_fits(config, slice_name: str, lines: list[str]) -> None:
  """Checks the report of `config`'s train step on `slice_name`: its batch, that it fits, and the train state's
  bytes per device against AdamW's 12 bytes a parameter."""
  capacity = tpu_compile.SLICES[slice_name].hbm_bytes / GiB
  assert f'train, {config.train.batch_size:,} x {config.model.max_length:,} tokens' in '\n'.join(lines), lines
  assert lines[-1].split()[:2] == ['fits', 'yes:'] and number(lines, 'total') <= capacity, lines
  # Independently of the compiler: AdamW's state is 12 bytes a parameter (float32 weights and two moments), split
  # over mesh.fsdp x mesh.tensor devices, the experts' over mesh.expert too (every size here divides evenly); the
  # report rounds to 0.001 GiB.
  c = estimate.model_config(config)
  params, experts = count_params(param_shapes(c)), c.num_layers * 3 * c.num_experts * c.width * c.expert_width
  mesh = mesh_sizes(lines)
  per_device = (params - experts + experts / mesh['expert']) / (mesh['fsdp'] * mesh['tensor'])
  assert abs(arguments(lines)['train state'] - 12 * per_device / GiB) <= 6e-4, lines


@needs_libtpu
def test_tiny_on_its_chip_and_a_sparse_model_sharded_over_a_slice_compile_and_fit():
  runs = [('tiny', 'v5e-1', {'model.vocab_size': VOCAB['tiny']}), ('tiny', 'v5e-8', SHARDED)]
  for (name, slice_name, overrides), lines in zip(runs, compile_configs(runs)):
    config = preset_config(name)
    for key, value in overrides.items():
      section, field = key.split('.')
      config[section][field] = value
    assert_fits(config, slice_name, lines)
  assert mesh_sizes(lines) == {'data': 1, 'fsdp': 2, 'expert': 2, 'tensor': 2}


@needs_libtpu
def test_a_step_that_cannot_fit_is_refused_in_one_line_naming_the_excess_and_the_keys():
  result = compiling([command('flaxlm-info'), '--config=tiny', '--config.model.vocab_size=65',
                      '--config.model.width=512', '--config.model.max_length=2048', '--config.train.batch_size=2048',
                      '--config.model.num_experts=4', '--config.mesh.data=4', '--compile_for=v5e-4'])
  assert_one_line_error(result, 'the train step (2048 x 2048 tokens) does not fit v5e-4')
  assert re.search(r'needs [\d.]+ GiB per device, [\d.]+ GiB more than the 15\.75 GiB a TPU v5 lite device has',
                   result.stderr), result.stderr
  for key in ('--config.mesh.expert', '--config.mesh.fsdp', '--config.model.remat', '--config.train.microbatches',
              '--config.train.batch_size'):
    assert key in result.stderr


@needs_libtpu
def test_info_without_compile_for_loads_no_libtpu():
  script = ('import sys; from flaxlm.train.commands import info; sys.argv = ["flaxlm-info", "--config=tiny", '
            '"--config.model.vocab_size=65"]; info.main(sys.argv); print("libtpu" in sys.modules, file=sys.stderr)')
  env = {key: value for key, value in os.environ.items() if key != 'JAX_PLATFORMS'}  # As a user runs it.
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120, env=env)
  assert result.returncode == 0 and result.stderr == 'False\n', result.stderr[-3000:]


@needs_libtpu
def test_decode_step_with_int8_weights_prints_the_weights_and_cache_bytes():
  result = compiling([command('flaxlm-info'), '--config=lm1b', '--config.model.vocab_size=32000', '--compile_for=v5e-4',
                      '--config.model.num_layers=2', '--decode', '--quantize=int8', '--decode_batch=64'])
  assert result.returncode == 0 and result.stderr == '', result.stderr[-3000:]
  lines = result.stdout[result.stdout.index('compiled for v5e-4'):].splitlines()
  config = preset_config('lm1b')
  config.model.num_layers = 2  # As deep as it needs to be: all 6 layers take several times as long to compile.
  c = estimate.model_config(config)
  tensor = mesh_sizes(lines)['tensor']
  assert tensor == 2  # The most devices that split every tensor-parallel size: lm1b's 2 key/value heads.
  # Independently of the compiler, per device: the int8 matrices take a byte a parameter (and their float32 scales
  # under a tenth of that), where bfloat16 takes two; the key/value cache of 64 sequences is layers x (k, v) x
  # 64 x T x G x K bfloat16s, split over the heads. The report rounds to 0.001 GiB.
  bfloat16 = 2 * count_params(param_shapes(c)) / tensor / GiB
  cache = c.num_layers * 2 * 64 * c.max_length * c.num_kv_heads * c.head_dim * 2 / tensor / GiB
  held = arguments(lines)
  assert bfloat16 / 2 - 6e-4 <= held['weights'] <= 0.55 * bfloat16, (held, bfloat16)
  assert abs(held['cache'] - cache) <= 6e-4, (held, cache)
  assert lines[-1].split()[:2] == ['fits', 'yes:']
