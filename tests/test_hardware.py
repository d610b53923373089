"""Tests of train/plan/hardware.py: device kinds find their own chip's peak, unknown kinds none, and MFU."""

import pytest

from flaxlm.train.plan import hardware


@pytest.mark.parametrize('device_kind, peak', [
    ('TPU v4', 275e12),
    ('TPU v5 lite', 197e12),
    ('TPU v5e', 197e12),
    ('TPU v5', 459e12),
    ('TPU v5p', 459e12),
    ('TPU v6 lite', 918e12),
    ('TPU v6e', 918e12),
    ('NVIDIA A100-SXM4-80GB', 312e12),
    ('NVIDIA A100-SXM4-40GB', 312e12),
    ('NVIDIA A100-PCIE-40GB', 312e12),
    ('NVIDIA H100 80GB HBM3', 989e12),
    ('NVIDIA H100 PCIe', 756e12),
    ('NVIDIA H200', 989e12),
])
def test_known_device_kinds_get_their_chips_peak(device_kind, peak):
  assert hardware.peak_flops_per_second(device_kind) == peak


@pytest.mark.parametrize('device_kind', ['cpu', 'TPU v3', 'TPU v4 lite', 'NVIDIA H200 NVL',
                                         'NVIDIA GeForce RTX 4090', ''])
def test_unknown_device_kinds_have_no_peak(device_kind):
  assert hardware.peak_flops_per_second(device_kind) is None


def test_mfu_is_achieved_over_peak_flops():
  # 800e6 FLOPs per token * 123,125 tokens/s = 98.5e12 FLOP/s; a v5e chip's peak is 197e12: 50%.
  assert hardware.mfu(800e6, 123_125, 'TPU v5 lite') == pytest.approx(0.5)
  assert hardware.mfu(800e6, 123_125, 'cpu') is None


def test_hbm_bandwidth_is_known_for_accelerators_and_not_guessed_for_a_cpu():
  assert hardware.hbm_bytes_per_second('NVIDIA H100 80GB HBM3') == 3.35e12
  assert hardware.hbm_bytes_per_second('TPU v5 lite') == 8.19e11
  assert hardware.hbm_bytes_per_second('cpu') is None
