"""Training speed as the field reports it: tokens per second, per device, and model FLOPs utilization (MFU)."""

import contextlib
import time

import jax

from flaxlm.train.plan import hardware


class Throughput:
  """Measures speed between logged steps, leaving out evaluation, saving, and the first (compiling) step."""

  def __init__(self, tokens_per_step: int, flops_per_token: float, devices: int, device_kind: str):
    self.tokens_per_step, self.flops_per_token = tokens_per_step, flops_per_token
    self.devices, self.device_kind = devices, device_kind
    self.start(0)

  def start(self, step: int) -> None:
    """Begins a measurement at `step` (finished), from now."""
    self.step, self.time, self.excluded = step, time.perf_counter(), 0.0

  @contextlib.contextmanager
  def paused(self):
    """Returns a context whose duration is left out of the next measurement."""
    start = time.perf_counter()
    yield
    self.excluded += time.perf_counter() - start

  def speed(self, tokens_per_second: float) -> dict[str, float]:
    """Returns tokens_per_second, tokens_per_second_per_device and, where the device's peak is known, mfu."""
    per_device = tokens_per_second / self.devices
    values = {'tokens_per_second': tokens_per_second, 'tokens_per_second_per_device': per_device}
    mfu = hardware.mfu(self.flops_per_token, per_device, self.device_kind)
    return values if mfu is None else {**values, 'mfu': mfu}

  def finish(self, step: int, device_metrics: dict, host_metrics: dict) -> tuple[int, dict[str, float]]:
    """Returns (step, metrics): the device metrics fetched (waiting for the step), with the speed since the last call.

    The speed is left out when no step was measured (the step logged is the one the measurement began at).
    """
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    seconds = max(time.perf_counter() - self.time - self.excluded, 1e-9)
    if step > self.step:
      values.update(self.speed((step - self.step) * self.tokens_per_step / seconds))
    self.start(step)
    return step, {**values, **host_metrics}
