"""Stopping cleanly when the scheduler asks: SIGTERM (what Cloud TPU and most schedulers send) ends a run after
the step in flight, with a checkpoint saved. Ctrl-C (SIGINT) stops at once, but a save in flight is finished first.

One process notices the signal itself. On multi-host runs JAX's distributed runtime catches it and agrees with
every host on the step at which all of them save, through Orbax (`reached_preemption`).
"""

import contextlib
import signal
import threading
from typing import Callable, Iterator

import jax
import orbax.checkpoint as ocp


@contextlib.contextmanager
def watch(manager: ocp.CheckpointManager) -> Iterator[Callable[[int], bool]]:
  """Yields `reached(step)`: True once the run should save at `step` and stop. Call it once per step, every step."""
  if jax.process_count() > 1:
    yield manager.reached_preemption
    return
  requested = threading.Event()
  in_main_thread = threading.current_thread() is threading.main_thread()  # Only there can Python take signals.
  previous = signal.signal(signal.SIGTERM, lambda *_: requested.set()) if in_main_thread else None
  try:
    yield lambda step: requested.is_set()
  finally:
    if in_main_thread:
      signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def sigint_held(reraise: bool = True) -> Iterator[None]:
  """Holds Ctrl-C (SIGINT) off while the block runs (a save, which an interrupt would leave half made, or leave
  running unseen); if one came, raises it as KeyboardInterrupt when the block is done, when `reraise`."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  came = threading.Event()
  previous = signal.signal(signal.SIGINT, lambda *_: came.set())
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if came.is_set() and reraise:
    raise KeyboardInterrupt
