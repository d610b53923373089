"""Tests of lean inference loading (train/use/pretrained.py): a run's params alone, read straight into their shardings on
the inference mesh and in the dtype asked for; flaxlm-sample's and flaxlm-score's --dtype; train.init_from."""

import concurrent.futures
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts

from conftest import WORDS, command
from test_cli import assert_one_line_error
from test_export import assert_trees_equal
from test_loop import tiny_config
from flaxlm.data import tokenizer as tokenizer_lib
from flaxlm.model import sampling
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import checkpoint, optimizer, sharding, state, step, workdir as workdir_lib
from flaxlm.train.use import pretrained

GREEDY_WITH_RUNNER_UP = sampling.Settings(temperature=0, candidates=2)
PROMPT, NEW_TOKENS = 'ROMEO:', 20


@pytest.fixture(scope='module')
def workdir(tmp_path_factory) -> pathlib.Path:
  """A run's workdir with one checkpoint, saved as training saves it, of a tiny model whose every tensor-split size
  (4 heads, 2 key/value heads, MLP width 128, vocabulary 36) splits over 2 devices. Its params and AdamW moments are
  random: no training to wait for, and moments that are not zeros, which would compress to nothing on disk."""
  workdir = tmp_path_factory.mktemp('inference') / 'run'
  tokenizer = tokenizer_lib.for_corpus('char', ' '.join(WORDS) + '\n.')
  assert tokenizer.vocab_size == 36
  config = workdir_lib.resolve(tiny_config('', 10), tokenizer.vocab_size)
  model = Transformer(ModelConfig.from_config(config.model, tokenizer.vocab_size))
  tx = optimizer.make_optimizer(config.train)
  rng = np.random.default_rng(0)
  random = lambda x: jax.device_put(0.3 * rng.standard_normal(x.shape, np.float32) if x.dtype == np.float32 else
                                    np.zeros(x.shape, x.dtype), x.sharding)
  train_state = jax.tree.map(random, state.abstract_state(model, tx, sharding.single_device_mesh()))
  workdir_lib.write_run_files(workdir, config, tokenizer)
  manager = checkpoint.checkpoint_manager(workdir, 1)
  checkpoint.save(manager, train_state, {}, config)
  manager.wait_until_finished()
  manager.close()
  return workdir


def bytes_read(fn):
  """Returns (fn(), the bytes TensorStore read from files while it ran)."""
  metrics = lambda: ts.experimental_collect_matching_metrics('/tensorstore/kvstore/file/bytes_read')
  total = lambda: sum(value['value'] for metric in metrics() for value in metric['values'])
  before = total()
  result = fn()
  return result, total() - before


def whole_state_params(workdir: pathlib.Path):
  """Returns (model, params) as loading did before: the whole train state (params and AdamW moments) restored on one
  device, then its params kept. The reference, independent of pretrained.py."""
  config = workdir_lib.load_config(workdir)
  model = Transformer(ModelConfig.from_config(config.model, config.model.vocab_size))
  abstract = state.abstract_state(model, optimizer.make_optimizer(config.train), sharding.single_device_mesh())
  return model, checkpoint.restore_latest(workdir, abstract, move_failures=False)[0].params


def greedy(model, params, tokenizer) -> sampling.Sample:
  """Returns the greedy continuation of PROMPT, with each step's two most likely tokens, on the params' mesh."""
  prompts = [tokenizer.encode(PROMPT)]
  return step.with_mesh(sampling.generate, sharding.mesh_of(params))(model, params, prompts, NEW_TOKENS, 0,
                                                                     GREEDY_WITH_RUNNER_UP)[0]


def test_params_alone_are_read_and_sample_as_the_whole_state_did(workdir):
  one_device = sharding.single_device_mesh()  # Where the reference is restored.
  (model, params, tokenizer), params_only = bytes_read(lambda: pretrained.load(workdir, mesh=one_device))
  (reference_model, reference), whole = bytes_read(lambda: whole_state_params(workdir))
  assert_trees_equal(jax.device_get(params), jax.device_get(reference))
  assert model.config == reference_model.config
  assert greedy(model, params, tokenizer).tokens == greedy(reference_model, reference, tokenizer).tokens
  # The checkpoint holds the params, AdamW's mu and nu (each of the params' size) and a few scalars, each compressed
  # alike: reading the moments too would read about 3x the params' bytes. Read alone, the params are at most their
  # uncompressed size (plus the small metadata files), a third of the whole.
  assert params_only < 0.4 * whole
  assert params_only < 1.1 * 4 * count_params(params)


def test_a_two_device_tensor_mesh_samples_the_tokens_of_one_device(workdir):
  model, params, tokenizer = pretrained.load(workdir)  # The default mesh: every device that splits the model evenly.
  mesh = sharding.mesh_of(params)
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'expert': 1, 'tensor': 2}
  up = params['stack']['layers']['mlp']['up']['kernel']  # L x D x F, F split.
  assert up.sharding.spec[-1] == 'tensor' and up.addressable_shards[0].data.shape[-1] == up.shape[-1] // 2
  _, single, _ = pretrained.load(workdir, mesh=sharding.inference_mesh(model.config, jax.devices()[:1]))
  on_two, on_one = greedy(model, params, tokenizer), greedy(model, single, tokenizer)
  # Error model: the split matmuls sum their terms in another order, which moves each float32 log-probability by a
  # few ulps of the terms' sizes (~1e-6 here; measured on each step's two most likely tokens, bounded at 1e-4). A
  # greedy choice can differ only where the top two are closer than twice that: none is, so every token must agree.
  log_two, log_one = np.log(on_two.top_probs), np.log(on_one.top_probs)
  error = float(np.max(np.abs(log_two - log_one)))
  assert error < 1e-4
  assert np.min(log_one[:, 0] - log_one[:, 1]) > 2 * error
  assert on_two.tokens == on_one.tokens and on_two.top_ids == on_one.top_ids


def test_bfloat16_holds_and_computes_in_bfloat16_and_a_bad_dtype_is_refused_in_one_line(workdir, tmp_path):
  model, params, tokenizer = pretrained.load(workdir, 'bfloat16')
  model32, float32, _ = pretrained.load(workdir, 'float32')
  assert model.config.dtype == 'bfloat16'
  assert_trees_equal(jax.device_get(params), jax.device_get(jax.tree.map(lambda x: x.astype(jnp.bfloat16), float32)))
  tokens = greedy(model, params, tokenizer).tokens
  assert tokens != greedy(model32, float32, tokenizer).tokens  # So the command's text tells which dtype it ran in.
  two_devices = {**os.environ, 'JAX_NUM_CPU_DEVICES': '2'}  # The command then samples on the same 2-device mesh.
  run = lambda args: subprocess.run(args, capture_output=True, text=True, timeout=300, env=two_devices)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Each command spends seconds importing JAX: overlap them.
    sampled, refused = pool.map(run, [
        (command('flaxlm-sample'), f'--workdir={workdir}', f'--prompt={PROMPT}', '--temperature=0',
         f'--max_new_tokens={NEW_TOKENS}', '--dtype=bfloat16'),
        (command('flaxlm-score'), f'--workdir={tmp_path}', '--text=the', '--dtype=float16')])
  assert sampled.returncode == 0, sampled.stderr
  assert sampled.stdout == PROMPT + tokenizer.decode(tokens) + '\n'
  assert_one_line_error(refused, '--dtype=float16 is not one of float32, bfloat16: pick one of them.')


def test_init_from_reads_the_params_straight_into_the_training_shardings(workdir):
  config = tiny_config('', 10)
  config.model.vocab_size = 36
  config.mesh.update(data=1, fsdp=2)
  mesh = sharding.make_mesh(config, jax.devices()[:2])
  model = Transformer(ModelConfig.from_config(config.model, 36))
  abstract = state.abstract_state(model, optimizer.make_optimizer(config.train), mesh).params
  params = pretrained.read_initial_params(str(workdir), abstract)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(abstract)):
    assert got.sharding == want.sharding and got.dtype == want.dtype == jnp.float32
  assert_trees_equal(jax.device_get(params), jax.device_get(whole_state_params(workdir)[1]))
