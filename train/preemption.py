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
import sys
import threading
from typing import Any, Callable, Iterator

import jax


class Interrupter:
  """A handler of Ctrl-C and SIGTERM that raises KeyboardInterrupt where the program is, and remembers that it came:
  Python prints and drops an exception raised inside a garbage-collection or finalizer callback (JAX runs one), so
  `check_interrupted` raises it again where the program can take it."""

  def __init__(self):
    self.came = False

  def __call__(self, signum: int, frame) -> None:
    self.came = True
    raise KeyboardInterrupt


@contextlib.contextmanager
def interruptible(handler: Interrupter | None = None) -> Iterator[None]:
  """Makes Ctrl-C (SIGINT) and SIGTERM raise KeyboardInterrupt while the block runs (through `handler`, an
  Interrupter by default), even where the process was started ignoring them (a shell script's background job): a
  command stops when it is told to. A training run's own handlers (`watch`) take over while it steps."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  handler, hook = handler or Interrupter(), sys.unraisablehook
  previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
  quiet = lambda raised: None if raised.exc_type is KeyboardInterrupt else hook(raised)
  sys.unraisablehook = quiet  # A dropped interrupt is not printed as a traceback: check_interrupted raises it again.
  try:
    yield
  finally:
    if sys.unraisablehook is quiet:  # Not if another was put in front since (checkpoint.quiet_abandoned_reads).
      sys.unraisablehook = hook
    for sig, old in previous.items():
      signal.signal(sig, old)


def check_interrupted() -> None:
  """Raises KeyboardInterrupt if Ctrl-C or SIGTERM came to the `interruptible` block this runs in (the exception it
  raised then may have been dropped)."""
  handler = signal.getsignal(signal.SIGINT)
  if isinstance(handler, Interrupter) and handler.came:
    raise KeyboardInterrupt


@contextlib.contextmanager
def watch(manager: Any) -> Iterator[Callable[[int], str | None]]:
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


def sigint_held(deliver: bool = True) -> contextlib.AbstractContextManager[None]:
  """Returns `signals_held` of Ctrl-C (SIGINT) alone: what a training run's save holds off (SIGTERM ends a run after
  its step in any case)."""
  return signals_held((signal.SIGINT,), deliver)


@contextlib.contextmanager
def signals_held(signals: tuple[int, ...], deliver: bool = True) -> Iterator[None]:
  """Holds `signals` off while the block runs (a save, which an interrupt would leave half made, or leave running
  unseen); if one came, hands the first afterwards to the handler there was for it, when `deliver`."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  came = []
  previous = {sig: signal.signal(sig, lambda sig, _: came.append(sig)) for sig in signals}
  try:
    yield
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
  if came and deliver and callable(previous[came[0]]):
    previous[came[0]](came[0], None)
