"""Multi-host runs: every host runs the same command, and JAX's distributed runtime joins the processes.

On Cloud TPU VMs (and under SLURM, Open MPI or Kubernetes) JAX finds the other hosts itself
(`--multihost`); on other GPU or CPU clusters each process is told the coordinator's address, the number of
processes and its own index.
"""

from typing import Callable

import jax
from absl import flags

from flaxlm.configs.errors import UserError


def define_flags(module_name: str) -> Callable[[], None]:
  """Defines --multihost, --coordinator_address, --num_processes and --process_id for the command module
  `module_name` (its --help lists them); returns the function that joins the hosts they name."""
  multihost = flags.DEFINE_bool('multihost', False, 'Join the other hosts of a Cloud TPU slice (or SLURM job), found '
                                'by JAX itself.', module_name=module_name)
  coordinator = flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for multi-process runs on '
                                    'GPU or CPU clusters.', module_name=module_name)
  processes = flags.DEFINE_integer('num_processes', None, 'How many processes the run has (with '
                                   '--coordinator_address).', module_name=module_name)
  process_id = flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 to num_processes-1 (with '
                                    '--coordinator_address).', module_name=module_name)
  return lambda: initialize(multihost.value, coordinator.value, processes.value, process_id.value)


def initialize(multihost: bool, coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  """Joins this process to the others of a multi-host run (before any device is used); a no-op for one host."""
  explicit = (coordinator_address, num_processes, process_id)
  if not multihost and explicit == (None, None, None):
    return
  if None in explicit and explicit != (None, None, None):
    raise UserError('pass all of --coordinator_address, --num_processes and --process_id, or none of them '
                    '(--multihost alone lets JAX find the hosts on Cloud TPU VMs and SLURM).')
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UserError(f'the multi-host runtime did not start ({reason}): outside Cloud TPU VMs and SLURM, pass '
                    '--coordinator_address=HOST:PORT --num_processes=N --process_id=I on every host.') from None
