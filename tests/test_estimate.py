"""Tests of train/plan/estimate.py and flaxlm-estimate: published FLOP counts, time, memory, the presets table of
docs/estimating.md, bad input."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, command
from flaxlm.configs.errors import UserError
from test_cli import run
from flaxlm.train.plan import estimate, hardware

# Runs flaxlm-estimate's main once per argv in one interpreter (in-process, as tests/test_info_command.py runs
# flaxlm-info) and prints [exit code, stdout, stderr] of each as JSON. It is a separate interpreter because
# flaxlm-estimate and flaxlm-info both define --config, and one process cannot hold both.
RUNNER = """
import contextlib, io, json, sys
from absl import flags
from flaxlm.train.commands import estimate as estimate_command
results = []
for argv in json.loads(sys.argv[1]):
  sys.argv = argv  # ml_collections finds --config.KEY overrides in sys.argv.
  flags.FLAGS.unparse_flags()
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      estimate_command.main(argv)
      code = 0
    except SystemExit as e:
      code = e.code
  results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""
GPT3 = ['--params=175e9', '--tokens=300e9', '--device=a100', '--chips=1024', '--mfu=0.4']
LLAMA = ['--config=llama2_7b', '--device=tpu-v5p', '--chips=512', '--mfu=0.5']
TINY = '--config=tiny'
RUNS = {  # Workdirs the estimates read ({runs} in the arguments): one that measured its MFU on a chip, one on a CPU.
    'chip_run': [{'step': s, 'loss': 2.0, 'mfu': m} for s, m in ((10, 0.05), (20, 0.31), (30, 0.33))],
    'cpu_run': [{'step': 10, 'loss': 2.0}],  # A CPU logs no mfu.
}
GOOD = {
    'gpt3': GPT3,
    'llama2_7b': LLAMA + ['--tokens=2e12'],
    'llama2_7b_two_epochs': LLAMA + ['--dataset_tokens=1e12', '--epochs=2'],
    'measured': GPT3[:4] + ['--workdir={runs}/chip_run'],
    'no_device': GPT3[:2],
    'mixtral': ['--config=mixtral_8x7b', '--tokens=1e12'],
}
BAD = {  # name: (arguments, what the error line says)
    'unknown_device': (GPT3[:2] + ['--device=tpu-v9', '--mfu=0.4'],
                       'unknown --device=tpu-v9: pass one of tpu-v4, tpu-v5e, tpu-v5p, tpu-v6e, a100, h100'),
    'workdir_without_metrics': (GPT3[:3] + ['--workdir={runs}/empty'], 'has no metrics.jsonl to take the MFU from'),
    'workdir_without_mfu': (GPT3[:3] + ['--workdir={runs}/cpu_run'], 'has no mfu records'),
    'zero_params': (['--params=0'] + GPT3[1:], '--params=0 must be positive'),
    'negative_params': (['--params=-7e9'] + GPT3[1:], '--params=-7e+09 must be positive'),
    'negative_tokens': (GPT3[:1] + ['--tokens=-1'] + GPT3[2:], '--tokens=-1 must be positive'),
    'zero_dataset_tokens': (GPT3[:1] + ['--dataset_tokens=0'] + GPT3[2:], '--dataset_tokens=0 must be positive'),
    'zero_epochs': (GPT3[:1] + ['--dataset_tokens=1e9', '--epochs=0'] + GPT3[2:], '--epochs=0 must be positive'),
    'zero_chips': (GPT3[:3] + ['--chips=0', '--mfu=0.4'], '--chips=0 must be positive'),
    'zero_mfu': (GPT3[:4] + ['--mfu=0'], '--mfu=0 must be in (0, 1]'),
    'mfu_above_one': (GPT3[:4] + ['--mfu=1.5'], '--mfu=1.5 must be in (0, 1]'),
    'no_mfu': (GPT3[:4], 'pass exactly one of --mfu and --workdir'),
    'mfu_and_workdir': (GPT3 + ['--workdir={runs}/chip_run'], 'pass exactly one of --mfu and --workdir'),
    'no_model': (GPT3[1:], 'pass exactly one of --params and --config'),
    'params_and_config': ([TINY] + GPT3, 'pass exactly one of --params and --config'),
    'no_tokens': (GPT3[:1] + GPT3[2:], 'pass exactly one of --tokens and --dataset_tokens'),
    'epochs_with_tokens': (GPT3 + ['--epochs=2'], '--epochs multiplies --dataset_tokens'),
    'char_vocabulary_unknown': ([TINY] + GPT3[1:], '--config.model.vocab_size=N'),
    'mfu_without_device': (GPT3[:2] + ['--mfu=0.4'], 'time the run on a device: pass --device too'),
    'chips_without_device': (GPT3[:2] + ['--chips=8'], 'time the run on a device: pass --device too'),
    **{f'{value}_{flag}': (GPT3[:1] + [f'--{flag}={value}'] + GPT3[2:], f'--{flag}={value} must be positive and finite')
       for flag in ('tokens', 'dataset_tokens') for value in ('inf', 'nan')},
    **{f'{value}_params': ([f'--params={value}'] + GPT3[1:], f'--params={value} must be positive and finite')
       for value in ('inf', 'nan', '-inf')},
    **{f'{value}_epochs': (GPT3[:1] + ['--dataset_tokens=1e9', f'--epochs={value}'] + GPT3[2:],
                           f'--epochs={value} must be positive and finite') for value in ('inf', 'nan')},
    **{f'{value}_mfu': (GPT3[:4] + [f'--mfu={value}'], f'--mfu={value} must be in (0, 1]') for value in ('inf', 'nan')},
    'negative_vocabulary': ([TINY, '--config.model.vocab_size=-5'] + GPT3[1:], 'model.vocab_size=-5'),
    **{f'presets_table_with_{"_".join(given)}': (['--presets_table'] + [f'--{flag}=1e9' for flag in given],
                                                 f'takes no other flag: drop {", ".join("--" + f for f in given)}, '
                                                 'or drop --presets_table')
       for given in (('params',), ('tokens',), ('params', 'tokens'), ('dataset_tokens', 'epochs'), ('mfu',))},
    'presets_table_with_config': (['--presets_table', TINY], 'takes no other flag: drop --config, or drop'),
    'presets_table_with_device': (['--presets_table', '--device=h100', '--chips=8'], 'drop --device, --chips'),
}


def estimate_cli(*argvs: list[str]) -> list[tuple[int, str, str]]:
  """Returns (exit code, stdout, stderr) of flaxlm-estimate run with each list of arguments."""
  argvs = [['flaxlm-estimate', *argv] for argv in argvs]
  done = subprocess.run([sys.executable, '-c', RUNNER, json.dumps(argvs)], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert done.returncode == 0, done.stderr
  return [tuple(result) for result in json.loads(done.stdout)]


def row(out: str, label: str) -> list[str]:
  """Returns the words after `label` on the line that starts with it."""
  line = next(line for line in out.splitlines() if line.strip().startswith(label))
  return line.strip()[len(label):].split()


def write_metrics(workdir, records: list[dict]) -> None:
  """Writes `records` as the workdir's metrics.jsonl."""
  workdir.mkdir(exist_ok=True)
  (workdir / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))


@pytest.fixture(scope='module')
def cli(tmp_path_factory) -> dict[str, tuple[int, str, str]]:
  """Returns (exit code, stdout, stderr) of flaxlm-estimate for each case of GOOD and BAD, by name."""
  runs = tmp_path_factory.mktemp('runs')
  for name, records in RUNS.items():
    write_metrics(runs / name, records)
  cases = {**GOOD, **{name: args for name, (args, _) in BAD.items()}}
  results = estimate_cli(*[[arg.format(runs=runs) for arg in args] for args in cases.values()])
  return dict(zip(cases, results))


def test_6nd_reproduces_gpt3_and_chinchilla():
  assert estimate.six_nd(175e9, 300e9) == pytest.approx(3.14e23, rel=0.01)  # GPT-3 paper, Table D.1.
  assert estimate.six_nd(70e9, 1.4e12) == pytest.approx(5.9e23, rel=0.01)  # Chinchilla: 70B on 1.4T tokens.


def test_time_is_flops_over_chips_peak_and_mfu():
  # 6ND 3.15e23 over 1024 A100s (312e12 FLOP/s) at 40%: 3.15e23 / 1.278e17 FLOP/s = 2.465e6 s = 28.5 days.
  assert estimate.device_hours(3.15e23, 312e12, 0.4) == pytest.approx(3.15e23 / (312e12 * 0.4) / 3600)
  assert estimate.wall_clock_days(3.15e23, 312e12, 0.4, 1024) == pytest.approx(28.53, rel=1e-3)


def test_every_device_name_has_a_peak_and_jax_kinds_are_accepted():
  assert {name: estimate.device_peak(name) for name in estimate.DEVICES} == {
      'tpu-v4': 275e12, 'tpu-v5e': 197e12, 'tpu-v5p': 459e12, 'tpu-v6e': 918e12,
      'a100': 312e12, 'h100': 989e12, 'h100-pcie': 756e12, 'h200': 989e12}
  assert estimate.device_peak('NVIDIA H100 80GB HBM3') == estimate.device_peak('H100') == hardware.PEAK_BF16_FLOPS[
      'nvidia h100']


def test_the_measured_mfu_is_the_median_after_the_first_record(tmp_path):
  write_metrics(tmp_path, [{'step': 10, 'loss': 3.0, 'mfu': 0.1}, {'step': 20, 'loss': 2.9},
                           *[{'step': s, 'loss': 2.0, 'mfu': m} for s, m in ((30, 0.52), (40, 0.48), (50, 0.5))]])
  assert estimate.measured_mfu(tmp_path) == 0.5


@pytest.mark.parametrize('check, fragment', [
    (lambda: estimate.check_positive('tokens', 0), '--tokens=0 must be positive'),
    (lambda: estimate.check_positive('params', float('nan')), '--params=nan must be positive'),
    (lambda: estimate.check_positive('tokens', float('inf')), '--tokens=inf must be positive and finite'),
    (lambda: estimate.check_mfu(0.0), '--mfu=0 must be in (0, 1]'),
    (lambda: estimate.device_peak('cpu'), 'unknown --device=cpu: pass one of tpu-v4, tpu-v5e'),
])
def test_checks_name_the_flag_and_the_fix(check, fragment):
  with pytest.raises(UserError) as raised:
    check()
  assert fragment in str(raised.value)


def test_the_installed_command_prints_the_documented_presets_table():
  result = run(command('flaxlm-estimate'), '--presets_table')  # estimate.presets_table()
  table = result.stdout
  assert result.returncode == 0 and table in (REPO / 'docs/estimating.md').read_text(), f'paste it in there:\n{table}'
  llama = next(line for line in table.splitlines() if '`llama2_7b`' in line).split(' | ')
  # 42,863,689,728 FLOPs per token (tests/test_info_command.py) x 1e12 tokens over 256 x 197e12 x 0.4 FLOP/s.
  assert llama[1:3] == ['6,738,415,616', '25.1 GiB'] and llama[8] == '3.59 GiB'
  assert float(llama[9]) == pytest.approx(
      42_863_689_728e12 / (256 * 197e12 * 0.4) / 86400, rel=1e-3)


def test_the_cli_prints_flops_time_and_memory(cli):
  code, out, _ = cli['gpt3']
  assert code == 0 and row(out, '6ND') == ['3.150e+23'] and row(out, 'attention matmuls')[0] == 'unknown'
  assert row(out, 'wall-clock days') == ['28.53'] and row(out, 'MFU') == ['40.0%', '(--mfu)']
  assert row(out, 'training total') == [f'{16 * 175e9 / 2**30:,.2f}', f'{16 * 175e9 / 2**30 / 1024:,.2f}']
  code, out, _ = cli['llama2_7b']
  assert code == 0 and row(out, 'parameters N') == ['6,738,415,616']
  assert row(out, '6ND') == [f'{6 * 6_738_415_616 * 2e12:.3e}']
  assert row(out, '6 x matmul weights + attention')[0] == f'{42_863_689_728 * 2e12:.3e}'
  assert row(out, 'wall-clock days') == [f'{42_863_689_728 * 2e12 / (512 * 459e12 * 0.5) / 86400:.4g}']
  assert cli['llama2_7b_two_epochs'] == cli['llama2_7b']  # 1e12 tokens read twice are 2e12 tokens.


def test_a_sparse_model_s_flops_count_its_active_parameters(cli):
  code, out, _ = cli['mixtral']
  assert code == 0 and row(out, 'parameters N') == ['46,702,792,704'] and row(out, 'active per token') == [
      '12,879,925,248']
  assert row(out, '6ND') == [f'{6 * 12_879_925_248 * 1e12:.3e}']  # N: the parameters a token computes with
  assert row(out, '6 x matmul weights + attention')[0] == f'{79_712_747_520 * 1e12:.3e}'
  assert row(out, 'training total') == [f'{16 * 46_702_792_704 / 2**30:,.2f}']  # memory holds every expert


def test_without_a_device_the_cli_prints_flops_and_memory_only(cli):
  code, out, _ = cli['no_device']
  assert code == 0 and row(out, '6ND') == ['3.150e+23'] and row(out, 'time')[:2] == ['pass', '--device']
  assert row(out, 'training total') == [f'{16 * 175e9 / 2**30:,.2f}']  # No per-device column: no chips given.
  assert 'wall-clock days' not in out and 'MFU' not in out


def test_the_cli_takes_the_mfu_a_run_measured(cli):
  code, out, _ = cli['measured']
  assert code == 0 and row(out, 'MFU')[:3] == ['32.0%', '(measured', 'in'] and out.count('chip_run)') == 1


@pytest.mark.parametrize('name', BAD)
def test_bad_input_gets_one_line_and_a_nonzero_exit(cli, name):
  code, out, err = cli[name]
  assert code != 0 and out == ''
  assert len(err.strip().splitlines()) == 1 and BAD[name][1] in err, err
