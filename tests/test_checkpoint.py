"""Tests of train/checkpoint.py: keep the latest K plus the best, ignore unfinished saves, fall back past damage, retry
what is not damage (memory, storage) and never move it."""

import errno
import json
import math
import os
import pathlib
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from flaxlm.configs import tiny
from flaxlm.configs.errors import UserError
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer
from flaxlm.train import checkpoint, optimizer, preemption, sharding, state as state_lib
from flaxlm.train.state import TrainState


def make_state(step: int) -> TrainState:
  """Returns a small train state whose arrays hold `step`."""
  return TrainState(step=jnp.asarray(step, jnp.int32), params={'w': jnp.full((4, 8), float(step))},
                    opt_state={'m': jnp.full((4, 8), -float(step))})


def abstract() -> TrainState:
  """Returns the shapes of make_state's states."""
  return jax.eval_shape(lambda: make_state(0))


def save_steps(workdir: pathlib.Path, keep: int, val_losses: dict[int, float], steps: range) -> None:
  """Saves a checkpoint at each of `steps`, ranked by `val_losses` where given."""
  manager = checkpoint.checkpoint_manager(workdir, keep)
  for step in steps:
    checkpoint.save(manager, make_state(step), {'index': step}, ml_collections.ConfigDict({'run': 1}),
                    val_losses.get(step))
  manager.wait_until_finished()
  manager.close()


def largest_file(path: os.PathLike) -> pathlib.Path:
  """Returns the largest file under `path` (an array data file of a checkpoint)."""
  return max((p for p in pathlib.Path(path).rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def test_the_latest_k_and_the_best_by_validation_loss_are_kept(tmp_path):
  save_steps(tmp_path, 2, {2: 1.5, 4: 2.0, 6: 2.5}, range(1, 8))
  assert checkpoint.saved_steps(tmp_path) == [2, 6, 7]


def test_restore_gives_back_the_latest_state_and_data_position(tmp_path):
  save_steps(tmp_path, 3, {}, range(1, 4))
  state, data_state = checkpoint.restore_latest(tmp_path, abstract())
  assert int(state.step) == 3 and data_state == {'index': 3}
  np.testing.assert_array_equal(state.params['w'], np.full((4, 8), 3.0))


def test_an_unfinished_save_is_never_the_latest(tmp_path):
  save_steps(tmp_path, 3, {}, range(1, 3))
  unfinished = checkpoint.directory(tmp_path) / '3.orbax-checkpoint-tmp-1234567'  # As a crash mid-save leaves it.
  unfinished.mkdir()
  (unfinished / 'state').mkdir()
  state, _ = checkpoint.restore_latest(tmp_path, abstract())
  assert int(state.step) == 2


def test_a_damaged_checkpoint_is_named_moved_aside_and_the_one_before_restored(tmp_path, capsys):
  save_steps(tmp_path, 3, {}, range(1, 4))
  damaged = largest_file(checkpoint.directory(tmp_path) / '3' / 'state')
  damaged.write_bytes(damaged.read_bytes()[:10])
  state, _ = checkpoint.restore_latest(tmp_path, abstract())
  assert int(state.step) == 2
  message = capsys.readouterr().err
  assert f'checkpoint {checkpoint.directory(tmp_path) / "3"} does not restore' in message
  assert checkpoint.saved_steps(tmp_path) == [1, 2] and (tmp_path / checkpoint.CORRUPT_DIR / '3').is_dir()


def test_a_step_damaged_twice_is_set_aside_beside_the_first(tmp_path):
  save_steps(tmp_path, 3, {}, range(1, 4))
  (tmp_path / checkpoint.CORRUPT_DIR / '3').mkdir(parents=True)  # Step 3 was set aside once already.
  damaged = largest_file(checkpoint.directory(tmp_path) / '3' / 'state')
  damaged.write_bytes(damaged.read_bytes()[:10])
  state, _ = checkpoint.restore_latest(tmp_path, abstract())
  assert int(state.step) == 2 and sorted(p.name for p in (tmp_path / checkpoint.CORRUPT_DIR).iterdir()) == ['3', '3-2']


def test_a_checkpoint_that_fails_the_callers_check_counts_as_damaged(tmp_path, capsys):
  save_steps(tmp_path, 3, {}, range(1, 4))

  def check(restored):  # As the loop's data iterator refuses a state it cannot take.
    if restored[1]['index'] == 3:
      raise ValueError('garbled iterator state')
  state, data = checkpoint.restore_latest(tmp_path, abstract(), check=check)
  assert int(state.step) == 2 and data == {'index': 2}
  assert 'does not restore (garbled iterator state)' in capsys.readouterr().err


def test_a_read_cut_short_by_a_signal_stops_the_restore_and_moves_nothing(tmp_path):
  save_steps(tmp_path, 3, {}, range(1, 4))
  before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*'))

  def read_interrupted(manager, step, abstract):  # As Orbax does when SIGTERM lands in its read: another error.
    try:
      os.kill(os.getpid(), signal.SIGTERM)
    except KeyboardInterrupt:
      raise RuntimeError('Encountered error while reading array index: ()') from None

  with pytest.raises(KeyboardInterrupt), preemption.interruptible():
    checkpoint.restore_latest(tmp_path, abstract(), read=read_interrupted)
  assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*')) == before


def test_when_no_checkpoint_restores_the_run_refuses_and_moves_nothing(tmp_path):
  save_steps(tmp_path, 3, {}, range(1, 3))
  for step in (1, 2):
    damaged = largest_file(checkpoint.directory(tmp_path) / str(step) / 'state')
    damaged.write_bytes(b'')
  with pytest.raises(UserError, match='no checkpoint in .* restores'):
    checkpoint.restore_latest(tmp_path, abstract())
  assert checkpoint.saved_steps(tmp_path) == [1, 2]


def failing_restore(monkeypatch, error: Exception, step: int, times: int) -> list[int]:
  """Makes restoring checkpoint `step` raise `error` the first `times` tries (without waiting between tries); returns
  the list of steps tried, which grows as restores are tried."""
  real, tried = checkpoint.restore, []

  def restore(manager, at, abstract):
    tried.append(at)
    if at == step and tried.count(step) <= times:
      raise error
    return real(manager, at, abstract)
  monkeypatch.setattr(checkpoint, 'restore', restore)
  monkeypatch.setattr(checkpoint, 'RETRY_DELAYS', (0.0,) * len(checkpoint.RETRY_DELAYS))
  return tried


def chained(error: Exception, cause: Exception) -> Exception:
  """Returns `error` raised from `cause`, as a library wraps the error it met."""
  error.__cause__ = cause
  return error


TRANSIENT = [MemoryError(), ConnectionResetError(104, 'Connection reset by peer'), TimeoutError('read timed out'),
             OSError(errno.EIO, 'Input/output error'), OSError(errno.EMFILE, 'Too many open files'),
             ValueError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1073741824 bytes.'),
             ValueError('UNAVAILABLE: Error reading "params.w/0" in OCDBT database at gs://b/run/checkpoints/3/state'),
             ValueError('DEADLINE_EXCEEDED: Error reading "params.w/0"'),
             RuntimeError('Failed to allocate request for 12.0MiB (12582912B) on device ordinal 0: out of memory'),
             chained(RuntimeError('restore failed'), MemoryError())]
DAMAGE = [ValueError('DATA_LOSS: Error opening "zarr" driver: Error reading "opt_state.m/.zarray"'),
          ValueError('OUT_OF_RANGE: Error reading Byte range [0, 271) of local file'),
          ValueError('NOT_FOUND: Metadata at "opt_state.m/.zarray" does not exist'),
          json.JSONDecodeError('Expecting value', '{"gar', 4), KeyError('Item "state" was not found in the checkpoint'),
          FileNotFoundError(errno.ENOENT, 'Metadata file (named _METADATA) does not exist')]


@pytest.mark.parametrize('error', TRANSIENT, ids=repr)
def test_a_lack_of_memory_or_a_failed_read_is_transient(error):
  assert checkpoint.classify(error) is checkpoint.Outcome.TRANSIENT


@pytest.mark.parametrize('error', DAMAGE, ids=repr)
def test_what_damaged_files_raise_is_damage(error):
  assert checkpoint.classify(error) is checkpoint.Outcome.DAMAGED


def test_a_transient_error_is_retried_and_the_checkpoint_then_restores_in_place(tmp_path, monkeypatch, capsys):
  save_steps(tmp_path, 3, {}, range(1, 4))
  tried = failing_restore(monkeypatch, MemoryError(), 3, times=2)
  state, _ = checkpoint.restore_latest(tmp_path, abstract())
  assert int(state.step) == 3 and tried == [3, 3, 3]
  assert checkpoint.saved_steps(tmp_path) == [1, 2, 3] and not (tmp_path / checkpoint.CORRUPT_DIR).exists()
  assert capsys.readouterr().err.count('failed to read (MemoryError): trying again in 0 s.') == 2


@pytest.mark.parametrize('error', TRANSIENT[:1] + TRANSIENT[5:6], ids=repr)
def test_a_transient_error_that_persists_refuses_in_one_line_naming_the_step_and_moves_nothing(tmp_path, monkeypatch,
                                                                                              error):
  save_steps(tmp_path, 3, {}, range(1, 4))
  tried = failing_restore(monkeypatch, error, 3, times=100)
  with pytest.raises(UserError) as refused:
    checkpoint.restore_latest(tmp_path, abstract())
  message = str(refused.value)
  assert f'checkpoint {checkpoint.directory(tmp_path) / "3"} failed to read 4 times ({checkpoint.first_line(error)})' \
         in message and 'nothing was moved; rerun the same command' in message and '\n' not in message
  assert tried == [3] * (len(checkpoint.RETRY_DELAYS) + 1)  # The step before was never tried in its place.
  assert checkpoint.saved_steps(tmp_path) == [1, 2, 3] and not (tmp_path / checkpoint.CORRUPT_DIR).exists()


def test_a_checkpoint_that_failed_on_another_process_counts_as_damaged_on_all(tmp_path, monkeypatch, capsys):
  save_steps(tmp_path, 3, {}, range(1, 4))
  agreed = iter([checkpoint.Outcome.DAMAGED])  # Another process's first restore failed; this one's restored.
  monkeypatch.setattr(checkpoint, 'worst_on_any_process', lambda outcome: max(outcome, next(agreed, outcome)))
  state, _ = checkpoint.restore_latest(tmp_path, abstract())
  assert int(state.step) == 2 and checkpoint.saved_steps(tmp_path) == [1, 2]
  assert 'does not restore (it failed on another process): moved to' in capsys.readouterr().err


@pytest.mark.parametrize('saved_on, restored_on', [((1, 2, 1, 1), (1, 1, 1, 1)), ((1, 1, 1, 1), (1, 1, 1, 2)),
                                                    ((1, 1, 1, 2), (2, 1, 1, 1))])
def test_a_model_saved_on_one_mesh_restores_onto_another_exactly(tmp_path, saved_on, restored_on):
  config = tiny.get_config()
  model = Transformer(ModelConfig.from_config(config.model, 20))
  tx = optimizer.make_optimizer(config.train)

  def abstract_on(sizes):
    config.mesh.update(dict(zip(sharding.MESH_AXES, sizes)))
    return state_lib.abstract_state(model, tx, sharding.make_mesh(config, jax.devices()[:math.prod(sizes)]))

  state = state_lib.init_state(model, tx, 3, abstract_on(saved_on))
  manager = checkpoint.checkpoint_manager(tmp_path, 1)
  checkpoint.save(manager, state, {}, config)
  manager.wait_until_finished()
  manager.close()
  target = abstract_on(restored_on)
  restored, _ = checkpoint.restore_latest(tmp_path, target)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
  assert jax.tree.map(lambda x: x.sharding, restored) == jax.tree.map(lambda x: x.sharding, target)
