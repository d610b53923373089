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
TAKE_OVER = flags.DEFINE_bool('take_over', False, 'Take the workdir\'s lock from the run that holds it, when that run '
                              'is known to be gone (a crashed host whose lease has not yet expired).')
join_hosts = distributed.define_flags(__name__)


def train() -> None:
  """Joins the other hosts, if any, then trains."""
  config, workdir = cli.config(CONFIG), cli.required(WORKDIR, 'pass --workdir=DIR for the run\'s files.')
  join_hosts()
  loop.train(config, workdir, TAKE_OVER.value)


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-train and `python -m flaxlm.train`."""
  cli.run(train, argv)
