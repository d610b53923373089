"""Tests of train/throughput.py: tokens per second per device, and MFU only where the peak is known."""

import jax.numpy as jnp
import pytest

from flaxlm.train.throughput import Throughput


def test_speed_divides_by_devices_and_gives_mfu_against_the_peak():
  timer = Throughput(tokens_per_step=1024, flops_per_token=1e9, devices=4, device_kind='TPU v4')
  speed = timer.speed(8.0e4)
  assert speed['tokens_per_second_per_device'] == 2.0e4
  assert speed['mfu'] == pytest.approx(1e9 * 2.0e4 / 275e12)


def test_an_unknown_device_has_no_mfu():
  assert 'mfu' not in Throughput(1024, 1e9, 1, 'cpu').speed(1e4)


def test_a_step_logged_where_the_measurement_began_has_no_speed():
  timer = Throughput(1024, 1e9, 1, 'cpu')
  timer.start(5)
  step, values = timer.finish(5, {'loss': jnp.float32(2.0)}, {'val_loss': 2.5})
  assert step == 5 and values == {'loss': 2.0, 'val_loss': 2.5}
  _, values = timer.finish(7, {'loss': jnp.float32(1.5)}, {})
  assert values['tokens_per_second'] > 0 and values['loss'] == 1.5
