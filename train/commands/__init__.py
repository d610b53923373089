"""The flaxlm-* commands, one module each: parse flags, call the library, print (entry points in setup.py).

A command's console script imports this package first. Until its libraries are loaded (a few seconds) and
commands/cli.py takes over, Ctrl-C and SIGTERM end it at once with one line: it has read and written nothing yet.
"""

import os
import signal
import sys
import threading


def leave(signum: int, frame) -> None:
  """A signal handler for a command still importing: says so in one line and exits."""
  name = os.path.basename(sys.argv[0])
  os.write(2, f'{name}: error: interrupted while starting: nothing was written.\n'.encode())
  os._exit(128 + signum)


if os.path.basename(sys.argv[0]).startswith('flaxlm-') and threading.current_thread() is threading.main_thread():
  for sig in (signal.SIGINT, signal.SIGTERM):
    signal.signal(sig, leave)
