"""Runs that stop at any moment continue as if nothing happened: SIGKILL, SIGTERM, damaged checkpoints, other meshes.

Each test drives flaxlm-train as a user would, in a subprocess, and compares with a run that was never stopped.
"""

import random
import re
import shutil
import signal
import time

import jax
import numpy as np
import pytest

import campaign
import commands
from conftest import REPO, command
from test_cli import assert_one_line_error, run
from flaxlm.data import lock
from flaxlm.train import checkpoint, metrics
from flaxlm.train.use import pretrained

STEPS = 20
KILL_STEPS = sorted(random.Random(5).sample(range(2, STEPS), 2))  # Two steps, fixed so failures replay.


def args(corpus, workdir, *overrides: str) -> list[str]:
  """Returns flaxlm-train's arguments for a 20-step tiny run that logs every step and saves every 3."""
  return [command('flaxlm-train'), '--config=tiny', f'--workdir={workdir}',
          f'--config.data.path={corpus}', f'--config.train.steps={STEPS}', '--config.train.log_every=1',
          '--config.train.checkpoint_every=3', '--config.mesh.cpu_devices=1', *overrides]


def stop_at(step: int, sig: int, argv: list[str], again_on: str | None = None,
            then: tuple[int, float] | None = None) -> tuple[int, str]:
  """Runs `argv`, sends `sig` once it has logged `step` (and again when it prints a line starting `again_on`, if
  given; or `then` = (signal, seconds): that signal so long after the first), and returns its exit code and what it
  printed after the first signal (stdout, then stderr)."""
  process = commands.start(*argv, cwd=REPO)
  for line in process.lines:
    if line.startswith(f'step {step} |'):
      process.send_signal(sig)
      if then:
        time.sleep(then[1])
        process.send_signal(then[0])
      break
  rest = []
  for line in process.lines:
    rest.append(line)
    if again_on and line.startswith(again_on):
      process.send_signal(sig)
  code = process.wait(timeout=120)
  return code, ''.join(rest) + process.output()[1]


def losses(workdir) -> list[tuple]:
  """Returns each logged step's (step, loss, grad_norm, val_loss)."""
  return [(r['step'], r['loss'], r['grad_norm'], r.get('val_loss')) for r in metrics.read_metrics(workdir)]


def final_params(workdir):
  """Returns the params of `workdir`'s latest checkpoint, on the host."""
  return jax.device_get(pretrained.load(workdir)[1])


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  """A run that was never interrupted, and its corpus."""
  from conftest import make_corpus
  root = tmp_path_factory.mktemp('straight')
  corpus = make_corpus(root / 'corpus.txt')
  result = run(*args(corpus, root / 'run'))
  assert result.returncode == 0, result.stderr
  return corpus, root / 'run'


def assert_same_run(workdir, straight_workdir) -> None:
  """Checks bitwise-equal final params and identical losses, step for step: bitwise by construction, as both runs
  execute the same compiled program on the same one-device mesh from the same state and batches."""
  assert losses(workdir) == losses(straight_workdir)
  jax.tree.map(np.testing.assert_array_equal, final_params(workdir), final_params(straight_workdir))


@pytest.mark.timeout(300)
@pytest.mark.parametrize('step', KILL_STEPS)
def test_a_run_killed_at_any_step_resumes_to_bitwise_the_same_result(straight, tmp_path, step):
  corpus, reference = straight
  stop_at(step, signal.SIGKILL, args(corpus, tmp_path / 'run'))
  assert checkpoint.directory(tmp_path / 'run').is_dir() and (tmp_path / 'run' / lock.LOCK).is_file()
  resumed = run(*args(corpus, tmp_path / 'run'))
  assert resumed.returncode == 0, resumed.stderr
  assert f'took over the lock of {tmp_path / "run"} from process ' in resumed.stdout  # The killed run's, left behind.
  assert_same_run(tmp_path / 'run', reference)
  assert not (tmp_path / 'run' / lock.LOCK).exists()


@pytest.mark.timeout(300)
def test_a_second_writer_is_refused_and_readers_run_while_the_first_trains_on_undisturbed(straight, tmp_path):
  corpus, reference = straight
  workdir = tmp_path / 'run'
  first = commands.start(*args(corpus, workdir), cwd=REPO)
  for line in first.lines:
    if line.startswith('step 7 |'):  # Step 6's save began once step 3's was whole: readers have one to read.
      first.send_signal(signal.SIGSTOP)  # Held still, alive, while the others run.
      break
  try:
    second = run(*args(corpus, workdir))
    assert_one_line_error(second, f'{workdir} is being written by process {first.pid} on ')
    assert 'pass --take_over' in second.stderr
    sampled = run(command('flaxlm-sample'), f'--workdir={workdir}', '--prompt=the', '--max_new_tokens=4', '--seed=1')
    assert sampled.returncode == 0, sampled.stderr
  finally:
    first.send_signal(signal.SIGCONT)
  assert first.wait(timeout=120) == 0, first.output()[1]
  assert_same_run(workdir, reference)


@pytest.mark.timeout(300)
def test_sigterm_saves_the_step_in_flight_exits_0_and_resumes_to_the_same_result(straight, tmp_path):
  corpus, reference = straight
  code, printed = stop_at(7, signal.SIGTERM, args(corpus, tmp_path / 'run'))
  assert code == 0
  stopped_at = int(re.search(r'stopped at step (\d+) on SIGTERM', printed).group(1))
  assert 7 < stopped_at < STEPS and (checkpoint.directory(tmp_path / 'run') / str(stopped_at)).is_dir()
  assert run(*args(corpus, tmp_path / 'run')).returncode == 0
  assert_same_run(tmp_path / 'run', reference)


@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM], ids=['ctrl_c', 'sigterm'])
def test_a_signal_before_the_first_step_stops_the_run_leaving_nothing_new_and_the_checkpoints_as_they_were(
    straight, tmp_path, sig):
  corpus, reference = straight
  shutil.copytree(reference, tmp_path / 'resumed')
  for name, steps, said in (('new', STEPS, 'nothing was written; run the same command to start again.'),
                            ('resumed', STEPS + 5, f'the last checkpoint saved is step {STEPS} ')):
    before = campaign.digest(tmp_path)
    process = commands.start(*args(corpus, tmp_path / name, f'--config.train.steps={steps}'), cwd=REPO)
    time.sleep(0.5)  # Setting up: reading the text, compiling the step.
    process.send_signal(sig)
    code = process.wait(timeout=120)
    out, err = process.output()
    assert code == 130, err  # (Once in five suites under load: 1. Its stderr, next time, says why.)
    assert 'step 1 |' not in out and err.count('\n') == 1, err
    assert err.startswith('flaxlm-train: error: interrupted: before the first step: ') and said in err, err
    # A resume may have begun its own files (config.json with its step count, a TensorBoard events file) when it
    # stopped; its checkpoints and metrics are as they were.
    kept = lambda digest: {k: v for k, v in digest.items() if 'config.json' not in k and 'tensorboard' not in k}
    assert kept(campaign.digest(tmp_path)) == kept(before)


def wide(corpus, workdir) -> list[str]:
  """Returns the arguments of a run wide enough (3.1M params, 36 MiB of state) that its save takes a while."""
  return args(corpus, workdir, '--config.model.width=384', '--config.model.num_heads=8')


def assert_resumes_from_the_last_complete_save(argv: list[str], workdir, step: int | None = None) -> str:
  """Checks that running `argv` again resumes from `workdir`'s newest complete checkpoint (`step` if given), having
  named and set aside any save left unfinished; returns what it printed on stderr."""
  saved, unfinished = checkpoint.saved_steps(workdir), sorted(checkpoint.directory(workdir).glob('*tmp*'))
  assert step is None or saved[-1] == step
  resumed = run(*argv, f'--config.train.steps={saved[-1] + 1}')  # The last override of a key wins.
  assert resumed.returncode == 0 and f'resuming at step {saved[-1]} ' in resumed.stdout, resumed.stderr
  for path in unfinished:
    assert f'{path} is a save that never finished' in resumed.stderr
    assert not path.exists() and (workdir / 'corrupt_checkpoints' / path.name).is_dir()
  return resumed.stderr


@pytest.mark.timeout(300)
def test_the_stop_message_is_printed_only_once_the_save_is_complete(straight, tmp_path):
  argv = wide(straight[0], tmp_path / 'run')
  _, printed = stop_at(7, signal.SIGTERM, argv, again_on='stopped at step')  # SIGTERM again once it says saved.
  stopped_at = int(re.search(r'stopped at step (\d+) on SIGTERM', printed).group(1))
  assert not list(checkpoint.directory(tmp_path / 'run').glob('*tmp*'))  # None was left half-written,
  assert_resumes_from_the_last_complete_save(argv, tmp_path / 'run', stopped_at)  # and the one announced is whole.


@pytest.mark.timeout(300)
def test_two_sigterms_50_ms_apart_stop_once_with_the_save_complete(straight, tmp_path):
  argv = wide(straight[0], tmp_path / 'run')
  code, printed = stop_at(7, signal.SIGTERM, argv, then=(signal.SIGTERM, 0.05))
  stopped_at = int(re.search(r'stopped at step (\d+) on SIGTERM, with a checkpoint saved', printed).group(1))
  assert code == 0 and printed.count('stopped at step') == 1
  assert not list(checkpoint.directory(tmp_path / 'run').glob('*tmp*'))
  assert_resumes_from_the_last_complete_save(argv, tmp_path / 'run', stopped_at)


@pytest.mark.timeout(300)
def test_ctrl_c_stops_after_the_step_in_flight_with_it_saved(straight, tmp_path):
  argv = args(straight[0], tmp_path / 'run', '--config.train.steps=100000')  # Far from done when interrupted.
  code, printed = stop_at(7, signal.SIGINT, argv)
  stopped_at = int(re.search(r'stopped at step (\d+) on Ctrl-C, with a checkpoint saved', printed).group(1))
  assert code == 0 and 'Traceback' not in printed
  assert_resumes_from_the_last_complete_save(argv, tmp_path / 'run', stopped_at)


@pytest.mark.timeout(300)
def test_a_second_ctrl_c_stops_at_once_and_names_the_last_checkpoint_saved(straight, tmp_path):
  argv = wide(straight[0], tmp_path / 'run')
  code, printed = stop_at(7, signal.SIGINT, argv, then=(signal.SIGINT, 0.05))
  said = re.search(r'(stopped at step|the last checkpoint saved is step) (\d+)', printed)
  assert code in (0, 130) and said and 'Traceback' not in printed, printed
  assert_resumes_from_the_last_complete_save(argv, tmp_path / 'run', int(said.group(2)))


@pytest.mark.timeout(300)
def test_ctrl_c_during_a_save_waits_for_it_and_says_which_step_was_saved(straight, tmp_path):
  argv = wide(straight[0], tmp_path / 'run')
  code, printed = stop_at(7, signal.SIGTERM, argv, then=(signal.SIGINT, 0.05))  # SIGTERM starts a save.
  said = re.search(r'(stopped at step|the last checkpoint saved is step) (\d+)', printed)
  assert code in (0, 130) and said, printed
  assert 'Traceback' not in printed
  assert_resumes_from_the_last_complete_save(argv, tmp_path / 'run', int(said.group(2)))


@pytest.mark.timeout(300)
def test_a_kill_during_a_save_leaves_a_save_that_is_named_once_and_set_aside(straight, tmp_path):
  workdir, argv = tmp_path / 'run', wide(straight[0], tmp_path / 'run')
  stop_at(7, signal.SIGTERM, argv, then=(signal.SIGKILL, 0.05))  # Killed while (or just after) it saves.
  checkpoint.directory(workdir).joinpath('6.orbax-checkpoint-tmp-1').mkdir(exist_ok=True)  # Left for sure.
  said = assert_resumes_from_the_last_complete_save(argv, workdir)
  again = run(*argv, f'--config.train.steps={checkpoint.saved_steps(workdir)[-1]}')
  assert again.returncode == 0 and 'never finished' not in again.stderr  # Named once: it is gone.
  assert said.count('never finished') >= 1


@pytest.mark.timeout(300)
def test_a_truncated_latest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(straight, tmp_path):
  corpus, reference = straight
  workdir = tmp_path / 'run'
  shutil.copytree(reference, workdir)
  (workdir / 'checkpoints' / '20').rename(workdir / 'checkpoints' / '20.orbax-checkpoint-tmp-99')  # Unfinished.
  data = max((p for p in (workdir / 'checkpoints' / '18' / 'state').rglob('*') if p.is_file()),
             key=lambda p: p.stat().st_size)
  data.write_bytes(data.read_bytes()[:100])
  resumed = run(*args(corpus, workdir))
  assert resumed.returncode == 0, resumed.stderr
  assert f'checkpoint {workdir.absolute() / "checkpoints" / "18"} does not restore' in resumed.stderr
  assert 'resuming at step 15' in resumed.stdout
  assert_same_run(workdir, reference)


@pytest.mark.timeout(300)
@pytest.mark.skipif(tuple(map(int, jax.__version__.split('.')[:2])) < (0, 12),
                    reason='in-process CPU all-reduce deadlocks before jax 0.12')
def test_a_checkpoint_saved_on_one_device_continues_on_two_and_back(straight, tmp_path):
  corpus, reference = straight
  workdir = tmp_path / 'run'
  assert stop_at(8, signal.SIGTERM, args(corpus, workdir))[0] == 0  # One device, stopped with a checkpoint.
  resumed_at = len(losses(workdir))
  assert stop_at(14, signal.SIGTERM, args(corpus, workdir, '--config.mesh.cpu_devices=2'))[0] == 0
  result = run(*args(corpus, workdir))
  assert result.returncode == 0, result.stderr
  got, expected = losses(workdir), losses(reference)
  assert got[:resumed_at] == expected[:resumed_at]
  # The first step on two devices starts from the same parameters: only the order of the sums differs.
  np.testing.assert_allclose(got[resumed_at][1:3], expected[resumed_at][1:3], rtol=1e-5)
  # Later, Adam's strays (conftest.adamw_params_differ) move each loss by ~|dL/dp| * 2 lr: seen 3e-7, far inside 1e-3.
  np.testing.assert_allclose([r[1] for r in got], [r[1] for r in expected], rtol=1e-3)


@pytest.mark.timeout(300)
def test_a_non_finite_loss_stops_the_run_naming_the_step_and_leaves_finite_checkpoints(corpus, tmp_path):
  workdir = tmp_path / 'run'
  result = run(*args(corpus, workdir, '--config.train.learning_rate=1e9', '--config.train.min_learning_rate=1e9',
                     '--config.train.checkpoint_every=1'))
  assert_one_line_error(result, 'training stopped; the last good checkpoint is step')
  stopped, saved = re.search(r'error: step (\d+): the loss is .* checkpoint is step (\d+)\.', result.stderr).groups()
  assert int(saved) == int(stopped) - 1 == max(int(p.name) for p in (workdir / 'checkpoints').iterdir()
                                               if p.name.isdigit())
  params = final_params(workdir)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.timeout(300)
def test_skipping_non_finite_steps_counts_them_and_keeps_the_state_finite(corpus, tmp_path):
  workdir = tmp_path / 'run'
  result = run(*args(corpus, workdir, '--config.train.learning_rate=1e9', '--config.train.min_learning_rate=1e9',
                     '--config.train.nonfinite=skip'))
  assert result.returncode == 0, result.stderr
  assert metrics.read_metrics(workdir)[-1]['skipped_steps'] > 0
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(final_params(workdir)))
