"""Shared test setup: two CPU devices (so data parallelism is tested without accelerators) and small corpora."""

import atexit
import os
import pathlib
import shutil
import sys
import tempfile

# Tests compile many small programs and run each briefly: skip XLA's slow LLVM optimisations (5x faster
# compiles). Subprocesses the tests start inherit this.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true')

# Runs prepare their text's token store in a cache of the test session's own, not in the user's home.
os.environ['FLAXLM_CACHE'] = tempfile.mkdtemp(prefix='flaxlm-test-cache-')

# Compiled programs are shared through JAX's persistent cache by the suite's processes and the commands the tests
# start, which compile the same small programs again and again: one folder for the test session, made by the first
# process (the controller under pytest-xdist) and inherited by its workers and their subprocesses. Every program is
# cached, however small or quick to compile; a size limit turns on the cache's file lock, so that no process reads an
# entry another is still writing. What several test files use and one process builds for all (tests/campaign.py's
# sandbox) lies in a second such folder, FLAXLM_TEST_SESSION.
if 'PYTEST_XDIST_WORKER' not in os.environ:
  for name, prefix in ('JAX_COMPILATION_CACHE_DIR', 'jax-cache'), ('FLAXLM_TEST_SESSION', 'session'):
    os.environ[name] = tempfile.mkdtemp(prefix=f'flaxlm-test-{prefix}-')
    atexit.register(shutil.rmtree, os.environ[name], ignore_errors=True)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'
os.environ['JAX_COMPILATION_CACHE_MAX_SIZE'] = str(2 ** 40)

# The CPU is JAX's only backend here and in the commands the tests start: with libtpu installed (the `tpu` extra,
# for tests/test_tpu_compile.py) every other JAX process would try to start a TPU backend, and print libtpu's
# warnings on stderr where the tests expect a command's one line. FLAXLM_TEST_DEVICE=1 leaves JAX_PLATFORMS as it
# is, so JAX takes the machine's GPU or TPU: for tests/test_device.py, which skips without one.
if os.environ.get('FLAXLM_TEST_DEVICE') != '1':
  os.environ['JAX_PLATFORMS'] = 'cpu'

import jax  # noqa: E402  (after XLA_FLAGS is set)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update('jax_num_cpu_devices', 2)

# The files that take longest (over 10 s of one worker's time each, longest first), collected first: pytest-xdist's
# --dist loadfile hands whole files to its workers in collection order (pytest.ini turns off its reordering by test
# count), and the suite ends when its last file does.
LONGEST_FIRST = ('test_resume.py', 'test_notebooks.py', 'test_sampling.py', 'test_distributed.py',
                 'test_eval_command.py', 'test_lora.py', 'test_eval_harness.py', 'test_transformer.py',
                 'test_loop.py', 'test_attention.py', 'test_pretrained_finetune.py', 'test_gguf.py',
                 'test_tpu_compile.py', 'test_campaign_use.py', 'test_hf_families.py', 'test_campaign_tools.py',
                 'test_step.py', 'test_optimizer.py', 'test_profile.py', 'test_sharding.py', 'test_trackers.py',
                 'test_cli.py', 'test_gcs.py', 'test_campaign_train.py', 'test_package.py', 'test_quantize.py', 'test_inference.py', 'test_scoring.py', 'test_export.py')


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
  """Puts the tests of LONGEST_FIRST's files first, in that order, each file's own order kept."""
  rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


REPO = pathlib.Path(__file__).resolve().parents[1]
WORDS = ('the king and queen of the north sent word to their people that spring would come early '
         'this year and every farmer should be ready to plant ROMEO: JULIET: ').split(' ')


def make_corpus(path: pathlib.Path, num_words: int = 3000, seed: int = 0) -> pathlib.Path:
  """Writes a text of `num_words` words drawn (seeded) from a small vocabulary, in lines of ten words."""
  import random
  rng = random.Random(seed)
  words = [rng.choice(WORDS) for _ in range(num_words)]
  path.write_text('\n'.join(' '.join(words[i:i + 10]) for i in range(0, num_words, 10)) + '\n')
  return path


@pytest.fixture
def corpus(tmp_path: pathlib.Path) -> pathlib.Path:
  """A small generated text file."""
  return make_corpus(tmp_path / 'corpus.txt')


def command(name: str) -> str:
  """Returns the path of an installed console script of this environment, such as flaxlm-train."""
  return os.path.join(os.path.dirname(sys.executable), name)


def adamw_params_differ(got, want, learning_rates: list[float], stray: float = 1e-3) -> str:
  """Returns '' when two runs' params after a few AdamW steps from the same start differ as float reassociation
  alone can make them (other meshes, processes, microbatches), else what is out of bounds.

  Error model: reassociation moves each gradient component by ~1e-6 of the sum of its terms' sizes. Adam divides each
  component by its own scale, so a component whose terms cancel to within that noise can flip its update's sign: its
  parameter may then differ by up to 2 * 1.01 * lr per step (|m/sqrt(v)| <= 1.01 in the first five steps with
  beta1 0.9 and beta2 0.99, by Cauchy-Schwarz). Only such strays (observed: a handful in 32k) leave rtol 1e-5,
  atol 1e-6, so at most a fraction `stray` may; a lost shard or microbatch changes the update of far more.
  """
  a, b = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)]) for tree in (got, want))
  beyond, largest = float(np.mean(~np.isclose(a, b, rtol=1e-5, atol=1e-6))), float(np.max(np.abs(a - b)))
  bound = 2 * 1.01 * sum(learning_rates)
  if beyond > stray or largest > bound:
    return f'{beyond:.2%} of params beyond rtol 1e-5, atol 1e-6 (at most {stray:.2%}); largest gap {largest:.3g} ' \
           f'(at most 2 * 1.01 * sum(lr) = {bound:.3g})'
  return ''
