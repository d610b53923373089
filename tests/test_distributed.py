"""Tests of train/distributed.py: two processes on localhost train exactly like one process, and resume exactly."""

import socket

import pytest

import commands
from conftest import REPO, command, make_corpus
from test_checkpoint import largest_file
from test_cli import assert_one_line_error, run, train_args
from test_resume import assert_same_run, losses
from flaxlm.train import checkpoint, metrics


def free_port() -> int:
  """Returns a TCP port nothing listens on now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two(*args: str) -> list[tuple[str, str]]:
  """Runs flaxlm-train with `args` as the two processes of one run on localhost; returns each one's (stdout, stderr),
  having checked that both exited 0."""
  address = f'127.0.0.1:{free_port()}'
  processes = [commands.start(command('flaxlm-train'), *args, f'--coordinator_address={address}', '--num_processes=2',
                               f'--process_id={i}', cwd=REPO) for i in (0, 1)]
  try:
    codes = [p.wait(timeout=240) for p in processes]
  finally:
    for p in processes:
      p.kill()  # Only if one is still running: the other's wait timed out.
  outputs = [p.output() for p in processes]
  assert codes == [0, 0], outputs
  return outputs


# Every run here: 36 tokens split over 2 devices; a constant learning rate after the warmup, so that a first run of 6
# steps follows the same schedule as one of 10; a checkpoint every 3 steps.
FLAGS = ('--config.mesh.cpu_devices=1', '--config.model.vocab_size=36', '--config.train.log_every=1',
         '--config.train.checkpoint_every=3', '--config.train.min_learning_rate=1e-3')
SPARSE = ('--config.model.num_experts=4', '--config.model.expert_width=32', '--config.model.dense_layers=1')
FSDP = ('--config.mesh.data=1', '--config.mesh.fsdp=2', '--config.train.optimizer=adafactor')
# Each split of the dense runs below is made by another of the optimizers (train/optimizer.py): Lion's signs of
# batch-split gradients, Adafactor's factored moments of fsdp-split matrices, Muon's orthogonalisation of
# tensor-split matrices; AdamW's, the default, is the sparse run's.
OPTIMIZERS = ('lion', 'adafactor', 'muon')


@pytest.fixture(scope='module')
def shared(tmp_path_factory) -> dict:
  """The corpus, one process's run of it with each of OPTIMIZERS, and the fsdp run of two processes that the tests
  compare against."""
  root = tmp_path_factory.mktemp('distributed')
  corpus = make_corpus(root / 'corpus.txt')
  for name in OPTIMIZERS:
    single = run(command('flaxlm-train'), *train_args(corpus, root / name, *FLAGS, f'--config.train.optimizer={name}'))
    assert single.returncode == 0, single.stderr
  return {'corpus': corpus, 'one': root, 'fsdp': root / 'fsdp',
          'fsdp_outputs': run_two(*train_args(corpus, root / 'fsdp', *FLAGS, *FSDP))}


@pytest.mark.timeout(300)
@pytest.mark.parametrize('mesh, printed', [
    (('--config.mesh.dcn_data=2', '--config.train.optimizer=lion'),
     "mesh {'data': 2, 'fsdp': 1, 'expert': 1, 'tensor': 1}"),
    (FSDP, "mesh {'data': 1, 'fsdp': 2, 'expert': 1, 'tensor': 1}"),  # Each process holds the whole batch.
    (('--config.mesh.data=1', '--config.mesh.tensor=2', '--config.train.optimizer=muon'),
     "mesh {'data': 1, 'fsdp': 1, 'expert': 1, 'tensor': 2}"),
], ids=['data_across_processes', 'fsdp_across_processes', 'tensor_across_processes'])
def test_two_processes_give_the_same_losses_as_one(shared, tmp_path, mesh, printed):
  two = shared['fsdp'] if mesh == FSDP else tmp_path / 'two'
  outputs = shared['fsdp_outputs'] if mesh == FSDP else run_two(*train_args(shared['corpus'], two, *FLAGS, *mesh))
  assert printed in outputs[0][0] and 'step 10' in outputs[0][0]
  assert not [line for line in outputs[1][0].splitlines() if line.startswith(('model', 'step'))]  # process 0 logs.
  assert_same_losses(two, shared['one'] / mesh[-1].split('=')[1])


@pytest.mark.timeout(300)
def test_two_processes_each_holding_half_the_experts_give_the_same_losses_as_one(shared, tmp_path):
  # A sparse model (model/moe.py; a dense first layer, then 4 experts): its tokens exchanged between the processes.
  # Five steps and one save (the saves of two processes wait on each other): the steps are what is compared.
  short = (*FLAGS, *SPARSE, '--config.train.steps=5', '--config.train.checkpoint_every=5')
  one = run(command('flaxlm-train'), *train_args(shared['corpus'], tmp_path / 'one', *short))
  assert one.returncode == 0, one.stderr
  outputs = run_two(*train_args(shared['corpus'], tmp_path / 'two', *short, '--config.mesh.data=1',
                                '--config.mesh.expert=2'))
  assert "mesh {'data': 1, 'fsdp': 1, 'expert': 2, 'tensor': 1}" in outputs[0][0]
  assert 'balance_loss' in metrics.read_metrics(tmp_path / 'two')[-1]
  assert_same_losses(tmp_path / 'two', tmp_path / 'one')


def assert_same_losses(two, one) -> None:
  """Checks the run of two processes in `two` logged the steps, losses and validation losses of the run in `one`."""
  expected, got = metrics.read_metrics(one), metrics.read_metrics(two)
  assert [r['step'] for r in got] == [r['step'] for r in expected]
  for a, b in zip(got, expected):
    # After AdamW steps, Adam's strays (conftest.adamw_params_differ) move a loss by ~|dL/dp| * 2 lr each (a sign Lion
    # flips, likewise): seen 3e-7, while losing one process's half of the batch moves it by 2e-4. 1e-5 lies between,
    # ~30x from each.
    for key in ('loss', 'val_loss', 'balance_loss'):  # (a sparse model's router loss too)
      assert a.get(key, 0) == pytest.approx(b.get(key, 0), rel=1e-5), key
  assert 'val_loss' in got[-1]


@pytest.mark.timeout(300)
def test_two_processes_resumed_past_a_checkpoint_damaged_for_one_give_bitwise_the_uninterrupted_run(shared, tmp_path):
  workdir = tmp_path / 'run'
  run_two(*train_args(shared['corpus'], workdir, *FLAGS, *FSDP, '--config.train.steps=6'))  # Saves steps 3 and 6.
  # Process 1 wrote its halves of the fsdp-sharded arrays there, and only it reads them back: process 0 restores step
  # 6, process 1 does not, and both must agree to resume from step 3.
  damaged = largest_file(workdir / 'checkpoints' / '6' / 'state' / 'ocdbt.process_1')
  damaged.write_bytes(damaged.read_bytes()[:100])
  outputs = run_two(*train_args(shared['corpus'], workdir, *FLAGS, *FSDP))
  assert f'checkpoint {checkpoint.directory(workdir) / "6"} does not restore (it failed on another process)' \
         in outputs[0][1]
  assert 'resuming at step 3 of 10' in outputs[0][0] and (workdir / checkpoint.CORRUPT_DIR / '6').is_dir()
  assert len(losses(shared['fsdp'])) == 10
  assert_same_run(workdir, shared['fsdp'])  # Bitwise: the same programs on the same mesh from the same state and batches.


def test_partial_coordinator_flags_are_refused(corpus, tmp_path):
  result = run(command('flaxlm-train'), *train_args(corpus, tmp_path / 'run'), '--coordinator_address=127.0.0.1:1')
  assert_one_line_error(result, 'pass all of --coordinator_address, --num_processes and --process_id')
  assert not (tmp_path / 'run').exists()
