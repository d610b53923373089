"""Stopping cleanly when asked: SIGTERM (what Cloud TPU and most schedulers send) or Ctrl-C (SIGINT) ends a run
after the step in flight, with a checkpoint saved. A second Ctrl-C stops at once, but a save under way is finished
first.

The signal is only noted where it arrives and acted on between steps: an interrupt raised inside library code (a
metrics writer, a data reader) could leave it holding a lock and the run hanging at exit, as seen under load.
One process notices the signal itself. On multi-host runs JAX's distributed runtime catches SIGTERM and agrees
with every host on the step at which all of them save, through Orbax (`reached_preemption`).
"""

import contextlib
import signal
import threading
from typing import Callable, Iterator

import jax
import orbax.checkpoint as ocp


@contextlib.contextmanager
def watch(manager: ocp.CheckpointManager) -> Iterator[Callable[[int], str | None]]:
  """Yields `reached(step)`: the name of the signal ('SIGTERM', 'Ctrl-C') once the run should save at `step` and
  stop, else None. Call it once per step, every step."""
  if jax.process_count() > 1:
    yield lambda step: 'SIGTERM' if manager.reached_preemption(step) else None
    return
  if threading.current_thread() is not threading.main_thread():  # Only there can Python take signals.
    yield lambda step: None
    return
  requested = []

  def on_sigint(*_) -> None:
    if 'Ctrl-C' in requested:  # The second: stop now.
      raise KeyboardInterrupt
    requested.append('Ctrl-C')

  previous = {sig: signal.signal(sig, handler) for sig, handler in (
      (signal.SIGTERM, lambda *_: requested.append('SIGTERM')), (signal.SIGINT, on_sigint))}
  try:
    yield lambda step: requested[0] if requested else None
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)


@contextlib.contextmanager
def sigint_held(deliver: bool = True) -> Iterator[None]:
  """Holds Ctrl-C (SIGINT) off while the block runs (a save, which an interrupt would leave half made, or leave
  running unseen); if one came, hands it afterwards to the handler there was, when `deliver`."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  came = threading.Event()
  previous = signal.signal(signal.SIGINT, lambda *_: came.set())
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if came.is_set() and deliver and callable(previous):
    previous(signal.SIGINT, None)
