"""`flaxlm-train --config=FILE --workdir=DIR [--config.KEY=VALUE ...]`: train a model, or resume its run."""

from absl import flags
from ml_collections import config_flags

from train import cli, loop

CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/shakespeare_char.py.',
                                         lock_config=True)
WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for the run: config, tokenizer, checkpoints, metrics.')


def main(argv: list[str] | None = None) -> None:
  """Entry point of flaxlm-train and `python -m train`."""
  cli.run(lambda: loop.train(cli.config(CONFIG),
                             cli.required(WORKDIR, 'pass --workdir=DIR for the run\'s files.')), argv)
