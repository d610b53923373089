"""`flaxlm-train --config=FILE --workdir=DIR [--config.KEY=VALUE ...]`: train a model, or resume its run.

Multi-host: every host runs the same command, adding `--multihost` on Cloud TPU VMs (or explicit
`--coordinator_address`, `--num_processes` and `--process_id` on other clusters).
"""

from absl import flags
from ml_collections import config_flags

from flaxlm.train import distributed, loop
from flaxlm.train.commands import cli

CONFIG = config_flags.DEFINE_config_file('config', None, 'A preset (e.g. shakespeare_char) or a config file.',
                                         lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the run: config, tokenizer, checkpoints, metrics.')
MULTIHOST = flags.DEFINE_bool('multihost', False, 'Join the other hosts of a Cloud TPU slice (or SLURM job), '
                              'found by JAX itself.')
COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'HOST:PORT of process 0, for multi-process runs '
                                  'on GPU or CPU clusters.')
NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'How many processes the run has (with '
                                     '--coordinator_address).')
PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index, 0 to num_processes-1 (with '
                                  '--coordinator_address).')


def train() -> None:
  """Joins the other hosts, if any, then trains."""
  config, workdir = cli.config(CONFIG), cli.required(WORKDIR, 'pass --workdir=DIR for the run\'s files.')
  distributed.initialize(MULTIHOST.value, COORDINATOR.value, NUM_PROCESSES.value, PROCESS_ID.value)
  loop.train(config, workdir)


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-train and `python -m flaxlm.train`."""
  cli.run(train, argv)
