"""Tests of flaxlm-info, run in-process: exact counts, FLOPs and memory of a preset, and its one-line errors."""

import sys

import pytest
from absl import flags

from conftest import command
from test_cli import assert_one_line_error, run
from flaxlm.train.commands import info as info_command


def info(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
  """Runs flaxlm-info with `args` and returns (exit code, stdout, stderr)."""
  argv = ['flaxlm-info', *args]
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections finds --config.KEY overrides in sys.argv.
  flags.FLAGS.unparse_flags()  # Forget the previous test's flags,
  for name in [name for name in flags.FLAGS if name.startswith('config.')]:
    delattr(flags.FLAGS, name)  # and the --config.KEY overrides ml_collections defined for them.
  try:
    info_command.main(argv)
    code = 0
  except SystemExit as e:
    code = e.code
  out, err = capsys.readouterr()
  return code, out, err


def row(out: str, label: str) -> list[str]:
  """Returns the words after `label` on the line of the table that starts with it."""
  line = next(line for line in out.splitlines() if line.strip().startswith(label))
  return line.strip()[len(label):].split()


def test_llama2_7b_counts_flops_and_memory(monkeypatch, capsys):
  code, out, _ = info(monkeypatch, capsys, '--config=llama2_7b')
  assert code == 0
  assert row(out, 'parameters') == ['6,738,415,616']
  # 6 * matmul weights (32 * (4*4096*4096 + 3*4096*11008) + 32000*4096 = 6,607,077,376) = 39,642,464,256,
  # plus attention 6 * T 4096 * H 32 * K 128 * L 32 = 3,221,225,472.
  assert row(out, 'training FLOPs per token') == ['42,863,689,728']
  assert row(out, 'adamw state (float32)') == [f'{2 * 4 * 6_738_415_616 / 2**30:,.2f}'] == ['50.21']
  assert row(out, 'training total') == [f'{4 * 4 * 6_738_415_616 / 2**30:,.2f}']
  assert 'divide by mesh.fsdp x mesh.tensor' in out  # The preset's mesh.fsdp=-1 takes whatever devices there are.
  code, out, _ = info(monkeypatch, capsys, '--config=llama2_7b', '--config.train.optimizer=muon')
  # Muon's one moment for the layers' matrices; AdamW's two for the embedding, the untied head and 65 norms.
  adamw_params = 2 * 32000 * 4096 + 65 * 4096
  muon_state = 4 * (6_738_415_616 - adamw_params) + 8 * adamw_params
  assert code == 0 and row(out, 'muon state (float32)') == [f'{muon_state / 2**30:,.2f}'] == ['26.08']
  assert row(out, 'training total') == [f'{(8 * 6_738_415_616 + muon_state) / 2**30:,.2f}']


def test_mixtral_counts_its_parameters_active_ones_and_their_flops(monkeypatch, capsys):
  code, out, _ = info(monkeypatch, capsys, '--config=mixtral_8x7b')
  assert code == 0 and '8 experts (2 a token)' in out
  assert row(out, 'parameters') == ['46,702,792,704']
  # The 6 experts of 3 x 4096 x 14336 a token skips in each of 32 layers: 33,822,867,456 (Mixtral's 12.9B active).
  assert row(out, 'active per token') == ['12,879,925,248']
  # 32 * (attention 4096*128*80 + router 4096*8 + 2 experts 2*3*4096*14336) + head 32000*4096 = 12,748,587,008 in
  # matmuls, times 6, plus attention 6 * T 4096 * H 32 * K 128 * L 32 = 3,221,225,472 (MaxText's active FLOPs).
  assert row(out, 'in matmuls') == ['12,748,587,008']
  assert row(out, 'training FLOPs per token') == ['79,712,747,520']


def test_explicit_mesh_sizes_give_memory_per_device(monkeypatch, capsys):
  code, out, _ = info(monkeypatch, capsys, '--config=llama2_7b', '--config.mesh.fsdp=8',
                      '--config.mesh.tensor=2')
  assert code == 0
  total, per_device = row(out, 'weights (float32)')
  assert float(total) == round(4 * 6_738_415_616 / 2**30, 2) and float(per_device) == round(float(total) / 16, 2)


def test_a_lora_fine_tune_counts_its_adapters_and_holds_its_base_as_lora_base(monkeypatch, capsys):
  code, out, _ = info(monkeypatch, capsys, '--config=llama2_7b', '--config.model.lora_rank=16',
                      '--config.model.lora_base=int8')
  assert code == 0
  adapters = 32 * 2 * 16 * (4096 + 4096)  # Layers x (query, value) x rank x (inputs + outputs).
  assert row(out, 'LoRA: trained parameters')[0] == f'{adapters:,}'
  # The layers' matrices a byte a weight, plus a float32 scale per output column (query, key, value, out, down: 4096;
  # gate, up: 11008); norms, embedding and head bfloat16.
  layer_matrices, scales = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008), 32 * 4 * (5 * 4096 + 2 * 11008)
  bfloat16 = 2 * (32 * 2 * 4096 + 4096 + 2 * 32000 * 4096)
  assert row(out, 'frozen base (int8)') == [f'{(layer_matrices + scales + bfloat16) / 2**30:,.3f}'] == ['6.525']
  assert abs(float(row(out, 'adamw state (float32)')[0]) - 8 * adapters / 2**30) <= 6e-4  # Rounded to 0.001.
  code, out, err = info(monkeypatch, capsys, '--config=llama2_7b', '--config.model.lora_rank=16',
                        '--config.model.lora_base=int3')
  assert code == 1 and "model.lora_base='int3' is not one of" in err


def test_a_char_tokenizer_needs_the_vocabulary_size(monkeypatch, capsys):
  code, out, err = info(monkeypatch, capsys, '--config=tiny')
  assert code == 1 and out == ''
  assert len(err.strip().splitlines()) == 1 and '--config.model.vocab_size=N' in err
  code, out, _ = info(monkeypatch, capsys, '--config=tiny', '--config.model.vocab_size=65')
  # 65*32 embed and head (untied) + 2 layers of [attention 32*8*(4+2+2+4), SwiGLU 3*32*128, 2*32] + 32.
  assert code == 0 and row(out, 'parameters') == [f'{2 * 65 * 32 + 2 * (3_072 + 12_288 + 64) + 32:,}']


@pytest.mark.parametrize('args, fragment', [
    ([], '--config is required'),
    (['--config=tiny', '--config.model.no_such_key=1'], 'no_such_key'),
    (['--config=tiny', '--config.model.vocab_size=-5'], 'model.vocab_size=-5'),
    (['--config=gpt2_124m', '--config.model.vocab_size=-1'], 'set --config.model.vocab_size'),
    *[(['--config=tiny', '--config.model.vocab_size=65', f'--config.{key}={size}'], f'{key}={size}')
      for key, size in (('model.mlp_width', -3), ('model.num_kv_heads', -1), ('model.width', 0),
                        ('model.num_layers', -2), ('model.max_length', 0), ('train.batch_size', 0),
                        ('train.batch_size', -4), ('mesh.fsdp', 0), ('mesh.tensor', -3))],
    (['--config=tiny', '--config.model.vocab_size=65', '--decode'], 'add --compile_for=SLICE'),
    (['--config=tiny', '--config.model.vocab_size=65', '--quantize=int8'], 'add --decode'),
    (['--config=tiny', '--config.model.vocab_size=65', '--compile_for=v5e-1', '--decode_batch=4'], 'add --decode'),
    (['--config=tiny', '--config.model.vocab_size=65', '--compile_for=v5e-1', '--decode', '--decode_batch=0'],
     '--decode_batch=0 must be positive'),
    (['--config=tiny', '--config.model.vocab_size=65', '--compile_for=v5e-3'], 'pass one of v4-8,'),
])
def test_bad_input_gets_one_line_and_a_nonzero_exit(monkeypatch, capsys, args, fragment):
  code, out, err = info(monkeypatch, capsys, *args)
  assert code != 0 and out == ''
  assert len(err.strip().splitlines()) == 1 and fragment in err


def test_the_installed_command(tmp_path):
  assert_one_line_error(run(command('flaxlm-info'), f'--config={tmp_path}/none.py'), 'does not exist')
  assert_one_line_error(run(command('flaxlm-info'), '--config=gpt2_124m', '--config.model.vocab_size=-5'),
                        '--config.model.vocab_size')
  result = run(command('flaxlm-info'), '--config=gpt2_124m')
  assert result.returncode == 0 and '124,439,808' in result.stdout
