"""What every flaxlm command shares: absl flag parsing, and mistakes reported as one line with a non-zero exit."""

import signal
import sys
from typing import Callable

from absl import flags, logging

from flaxlm import configs
from flaxlm.configs.errors import UserError
from flaxlm.train import commands, preemption


def run(main: Callable[..., None], argv: list[str] | None = None, takes_args: bool = False) -> None:
  """Parses the command line into absl FLAGS and runs `main`, turning user errors into one line on stderr.

  With `takes_args`, `main` receives the positional arguments; otherwise any positional argument is an error.
  """
  argv = sys.argv if argv is None else argv
  if {'--help', '-h', '--helpfull'} & set(argv[1:]):
    print_help(sys.modules[main.__module__])
    sys.exit(0)
  logging.set_verbosity(logging.ERROR)  # Libraries' notices would bury the command's own lines.
  try:
    args = flags.FLAGS(with_config_files(argv))[1:]
  except UserError as e:
    exit_with(str(e), 2)
  except flags.Error as e:
    exit_with(f'{e}: see --help for the flags.', 2)
  except (AttributeError, KeyError) as e:  # How ml_collections reports an override of a key it lacks.
    exit_with(f'a --config override names a key that does not exist ({e}): see configs/base.py for the keys.', 2)
  except Exception as e:  # A config file is Python: loading it runs the user's code, which may fail anyhow.
    exit_with(f'a config file failed to load ({type(e).__name__}: {e}): fix the file.', 2)
  if args and not takes_args:
    exit_with(f'unexpected argument {args[0]!r}: flags are written --name=value.', 2)
  try:
    with preemption.interruptible():
      main(args) if takes_args else main()
  except UserError as e:
    exit_with(str(e), 1)
  except KeyboardInterrupt as e:  # A command may say what the interruption left (a run: its last checkpoint).
    exit_with(f'interrupted: {e}' if str(e) else 'interrupted.', 130)
  finally:
    for sig in (signal.SIGINT, signal.SIGTERM):  # Done: a signal while the interpreter shuts down just ends it,
      if signal.getsignal(sig) is commands.leave:  # not with the start-up handler's "interrupted while starting".
        signal.signal(sig, signal.SIG_DFL)


def with_config_files(argv: list[str]) -> list[str]:
  """Returns `argv` with a preset name given to --config (`--config=tiny` or `--config tiny`) replaced by its file."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + configs.config_file(arg.removeprefix('--config='))
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = configs.config_file(out[i + 1])
  return out


def print_help(module) -> None:
  """Prints a command's module docstring (its usage) and the flags its module defines, with their help."""
  print((module.__doc__ or '').strip() + '\n')
  print(flags.FLAGS.module_help(module))


def exit_with(message: str, code: int) -> None:
  """Prints `message` as the command's one error line and exits with `code`."""
  name = sys.argv[0].rsplit('/', 1)[-1]
  print(f'{name}: error: {message}', file=sys.stderr)
  sys.exit(code)


def required(flag: flags.FlagHolder, hint: str):
  """Returns the flag's value; raises UserError naming the flag if it was not given (or given empty)."""
  if flag.value is None or flag.value in ('', []):
    raise UserError(f'--{flag.name} is required: {hint}')
  return flag.value


def model_path(workdir: flags.FlagHolder, params: flags.FlagHolder) -> str:
  """Returns the path of the model to use: --workdir (a training run) or --params (an export), exactly one given."""
  if bool(workdir.value) == bool(params.value):
    raise UserError(f'pass exactly one of --{workdir.name}=DIR (a training run) and --{params.name}=PATH (a '
                    'flaxlm-export).')
  return workdir.value or params.value


def config(flag: flags.FlagHolder):
  """Returns the ConfigDict of a config-file flag; raises UserError if it is missing or does not load."""
  value = required(flag, f'pass --{flag.name}=PRESET (one of {", ".join(configs.presets())}) or a config file.')
  try:
    value.to_dict()  # config_flags loads the file lazily and reports a failure on first use.
  except OSError as e:
    reason = str(e).strip().splitlines()[-1].strip()
    raise UserError(f'the --{flag.name} file does not load ({reason}): fix the file, or pass a preset.') from None
  return value
