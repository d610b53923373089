"""Tests of LoRA (model/lora.py): the adapters' size, their merge, and a LoRA fine-tune through the training loop."""

import contextlib
import dataclasses
import json

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxlm.configs import tiny
from flaxlm.configs.errors import UserError
import commands
from conftest import command
from test_transformer import forward, init
from flaxlm.model import lora, quantize
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import (loop, loss as loss_lib, memory as memory_lib, metrics, optimizer, sharding, state as state_lib,
                          step as step_lib)
from flaxlm.train.use import pretrained

ALL = 'query,key,value,out,gate,up,down'


def model_config(rank: int, targets: str = ALL, **changes) -> ModelConfig:
  """Returns the tiny preset's model (vocabulary 50) with LoRA adapters of `rank` on `targets`."""
  c = tiny.get_config().model
  c.update(lora_rank=rank, lora_targets=targets, **changes)
  return ModelConfig.from_config(c, 50)


def expected_trained(c: ModelConfig, targets: str) -> int:
  """Returns r * (inputs + outputs) summed over the targeted matrices of all layers: LoRA's trained count."""
  D, F, H, G, K = c.width, c.mlp_width, c.num_heads, c.num_kv_heads, c.head_dim
  sizes = {'query': (D, H * K), 'key': (D, G * K), 'value': (D, G * K), 'out': (H * K, D), 'gate': (D, F),
           'up': (D, F), 'down': (F, D)}
  return c.num_layers * sum(c.lora.rank * sum(sizes[name]) for name in targets.split(','))


@pytest.mark.parametrize('rank,targets,lora_base', [(1, 'query,value', 'bfloat16'), (4, ALL, 'int8'),
                                                    (8, 'out,down', 'float32')])
def test_the_state_trains_exactly_the_adapters_the_formula_counts(rank, targets, lora_base):
  c = model_config(rank, targets)
  tx = optimizer.make_optimizer(tiny.get_config().train)
  abstract = state_lib.abstract_state(Transformer(c), tx, sharding.single_device_mesh(), lora_base)
  assert count_params(abstract.params) == expected_trained(c, targets)
  assert {x.dtype for x in jax.tree.leaves(abstract.params)} == {np.dtype('float32')}
  moments = [leaf for leaf in jax.tree.leaves(abstract.opt_state) if leaf.ndim]  # Adam's mu and nu, per adapter.
  assert count_params(moments) == 2 * expected_trained(c, targets)  # None for the base: 8 bytes an adapter weight.
  assert memory_lib.memory_bytes(abstract.opt_state) - memory_lib.memory_bytes(moments) < 64  # Counts, scalars.
  plain = state_lib.abstract_state(Transformer(c.without_lora()), tx,
                                   sharding.single_device_mesh()).params
  assert jax.tree.map(lambda x: x.shape, quantize.integers(abstract.frozen)) == jax.tree.map(lambda x: x.shape, plain)
  held = traverse_util.flatten_dict(quantize.integers(abstract.frozen))
  dtypes = {'/'.join(path): x.dtype for path, x in held.items()}
  matrix = dtypes.pop('stack/layers/mlp/up/kernel')
  assert matrix == {'float32': np.float32, 'bfloat16': jnp.bfloat16, 'int8': np.int8}[lora_base]
  assert set(dtypes.values()) == {np.dtype(np.float32 if lora_base == 'float32' else jnp.bfloat16), matrix}


def test_on_a_sparse_int8_base_the_attention_s_adapters_train_and_the_experts_are_held_in_int8(cycle_batch):
  c = model_config(4, 'query,key,value,out', num_experts=4, expert_width=16)
  tx = optimizer.make_optimizer(tiny.get_config().train)
  abstract = state_lib.abstract_state(Transformer(c), tx, sharding.single_device_mesh(), 'int8')
  assert count_params(abstract.params) == expected_trained(c, 'query,key,value,out')
  held = {'/'.join(path): x.dtype for path, x in traverse_util.flatten_dict(quantize.integers(abstract.frozen)).items()}
  assert held['stack/layers/moe/up/kernel'] == held['stack/layers/moe/down/kernel'] == np.int8
  assert held['stack/layers/moe/router/kernel'] == jnp.bfloat16  # the router's small matrix is not quantized
  base, adapters = lora.split(noisy_params(c, 3))
  loss = lambda trained: loss_lib.loss_fn(lora.combine(lora.hold_base(base, 'int8'), trained), cycle_batch,
                                          Transformer(c), None)
  grads = jax.jit(jax.grad(loss))(adapters)  # through the routed experts, expanded from int8 a layer at a time
  assert all(np.isfinite(g).all() and np.abs(g).max() > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('scan_layers', [True, False])
def test_merged_params_give_the_logits_of_base_plus_adapters(scan_layers):
  c = model_config(4, scan_layers=scan_layers)
  tokens_BxT = jax.random.randint(jax.random.key(0), (2, 16), 0, 50)
  base, adapters = lora.split(init(Transformer(c), seed=1))
  noise = lambda tree, seed: jax.tree.map(  # numpy's: JAX's, op by op, would compile an op per distinct shape
      lambda x: 0.1 * np.random.default_rng(seed).standard_normal(x.shape, np.float32), tree)
  base = jax.tree.map(jax.numpy.add, base, noise(base, 2))  # The head starts at zero: make every matrix count.
  adapters = noise(adapters, 3)
  with_adapters = forward(Transformer(c), lora.combine(base, adapters), tokens_BxT)
  merged = forward(Transformer(c.without_lora()), lora.merge(lora.combine(base, adapters), c.lora.alpha, c.lora.rank),
                   tokens_BxT)
  without = forward(Transformer(c.without_lora()), base, tokens_BxT)
  # x(W + s AB) against xW + s(xA)B: the same sums reassociated, ~1e-6 of the logits' scale; a wrong s errs by ~0.1.
  np.testing.assert_allclose(merged, with_adapters, atol=1e-5 * float(np.abs(with_adapters).max()))
  assert np.abs(np.asarray(with_adapters - without)).max() > 0.1  # The adapters do change the logits.


def test_fresh_adapters_leave_the_model_unchanged():
  c = model_config(2)
  params = init(Transformer(c), seed=1)
  base, _ = lora.split(params)
  jax.tree.map(np.testing.assert_array_equal, lora.merge(params, c.lora.alpha, c.lora.rank), base)  # W + 0 is W.


@pytest.mark.parametrize('targets,mlp,message', [
    ('query,qkv', 'swiglu', r"names no matrix 'qkv'.*query,key,value,out,gate,up,down"),
    ('gate', 'gelu', r"names no matrix 'gate'.*query,key,value,out,up,down"),
    (' , ', 'swiglu', 'lora_targets is empty'),
])
def test_a_lora_target_that_names_no_matrix_is_refused(targets, mlp, message):
  with pytest.raises(UserError, match=message):
    model_config(4, targets, mlp=mlp)


def test_a_gated_gelu_mlp_has_a_gate_to_adapt():
  c = model_config(2, 'gate', mlp='geglu')  # Gemma's GeGLU, gated as SwiGLU is.
  abstract = state_lib.abstract_state(Transformer(c), optimizer.make_optimizer(tiny.get_config().train),
                                      sharding.single_device_mesh())
  assert count_params(abstract.params) == expected_trained(c, 'gate')


def tiny_config(path, steps: int):
  """Returns the tiny preset on `path`, trained for `steps`, evaluated and saved at the end."""
  config = tiny.get_config()
  config.data.path = str(path)
  config.train.steps = config.train.eval_every = config.train.checkpoint_every = steps
  return config


def test_lora_needs_a_pretrained_model(corpus, tmp_path):
  config = tiny_config(corpus, 1)
  config.model.lora_rank = 4
  with pytest.raises(UserError, match='lora_rank=4 trains adapters on a pretrained model: set --config.train.init_from'):
    loop.train(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def stopping_at(step: int):
  """Returns a stand-in for preemption.watch whose run is told to save and stop at `step`, as SIGTERM would."""
  @contextlib.contextmanager
  def watch(manager):
    yield lambda done: 'SIGTERM' if done == step else None
  return watch


def test_a_lora_fine_tune_on_an_int8_base_learns_resumes_exactly_and_merges(corpus, tmp_path, monkeypatch):
  pretraining = tiny_config(corpus, 20)
  pretraining.train.learning_rate = 1e-2  # Enough for the output head to learn: adapters do not reach it.
  loop.train(pretraining, str(tmp_path / 'base'))
  pairs = [('the king', ' and queen of the north'), ('spring', ' would come early'), ('ROMEO:', ' JULIET:')]
  lines = [json.dumps({'prompt': p, 'response': r}) for _ in range(40) for p, r in pairs]
  (tmp_path / 'examples.jsonl').write_text('\n'.join(lines) + '\n')

  def tune(name: str, stop_at: int = 0, eval_every: int = 60):
    """Returns the state and metrics of a 60-step LoRA fine-tune in `name`, saved and stopped at step `stop_at` (as
    SIGTERM would) if it is not 0, evaluated every `eval_every` steps (which changes none of its programs)."""
    config = tiny_config(tmp_path / 'examples.jsonl', 60)
    config.data.format, config.train.init_from = 'examples', str(tmp_path / 'base')
    config.model.update(lora_rank=4, lora_targets='query,value,out,up,down', lora_base='int8')
    config.train.learning_rate, config.train.min_learning_rate, config.train.eval_every = 3e-2, 3e-3, eval_every
    with monkeypatch.context() as patch:
      if stop_at:
        patch.setattr(loop.preemption, 'watch', stopping_at(stop_at))
      return loop.train(config, str(tmp_path / name)), metrics.read_metrics(tmp_path / name)

  # Fresh adapters: the int8 base's loss on the responses, evaluated after a first step whose learning rate is the
  # warmup's 0, which leaves the adapters as they start (B zero: they add nothing).
  fresh, untouched = tune('untouched', stop_at=1, eval_every=1)
  assert int(fresh.step) == 1 and not any(np.any(b) for path, b in traverse_util.flatten_dict(
      jax.device_get(fresh.params)).items() if path[-1] == 'lora_b')
  state, straight = tune('lora')
  assert straight[-1]['val_loss'] < 0.85 * untouched[-1]['val_loss']  # A tiny base trained for seconds.
  assert all(lora.is_adapter(path) for path in traverse_util.flatten_dict(state.params))  # What is trained.
  assert int(tune('resumed', stop_at=25)[0].step) == 25  # Saved and stopped at step 25...
  resumed, after = tune('resumed')  # ...then resumed: the adapters restored, the base read again.
  # (Orbax restores only a tree that matches the checkpoint's whole: it holds the adapters and moments, no base.)
  # Bitwise: the same programs on the same adapters, moments, batches and (re-read, re-quantized) base bits.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params), jax.device_get(state.params))
  assert [r['loss'] for r in after] == [r['loss'] for r in straight]
  _, base, _ = pretrained.load(tmp_path / 'base')
  model, merged, _ = pretrained.load(tmp_path / 'lora')  # The adapters merged into the base (float32, as saved).
  assert model.config.lora.rank == 0
  flat_base, flat_merged = traverse_util.flatten_dict(base), traverse_util.flatten_dict(merged)
  changed = {'/'.join(path) for path in flat_base if not np.array_equal(flat_base[path], flat_merged[path])}
  assert changed == {f'stack/layers/{module}/{name}/kernel' for module, name in
                     [('attention', 'query'), ('attention', 'value'), ('attention', 'out'), ('mlp', 'up'),
                      ('mlp', 'down')]}  # All else bitwise the base.
  exported = commands.run(command('flaxlm-export'), f'--workdir={tmp_path / "lora"}', f'--output={tmp_path / "out"}')
  assert exported.returncode == 0, exported.stderr
  assert json.loads((tmp_path / 'out' / 'config.json').read_text())['model']['lora_rank'] == 0  # Merged: plain.


def noisy_params(c: ModelConfig, seed: int) -> dict:
  """Returns random params of `c`'s model, every matrix non-zero (an init's head and adapters' B are zero)."""
  rng = np.random.default_rng(seed)  # numpy's noise: JAX's, a draw per shape, would double the program to compile.
  fresh = jax.device_get(init(Transformer(c), seed))
  return jax.tree.map(lambda x: x + 0.1 * rng.standard_normal(x.shape, np.float32), fresh)


@pytest.fixture(scope='module')
def cycle_batch():
  """A batch of the 8-token cycle 0 1 ... 7 0 1 ...: each token fixes the next, so a model can learn it fast."""
  tokens_BxT = np.tile(np.arange(16, dtype=np.int32) % 8, (8, 1))
  return {'inputs': tokens_BxT, 'targets': (tokens_BxT + 1) % 8, 'positions': np.tile(np.arange(16), (8, 1)),
          'segment_ids': np.ones_like(tokens_BxT), 'weights': np.ones(tokens_BxT.shape, np.float32)}


@pytest.mark.parametrize('lora_base', ['bfloat16', 'int8'])
def test_adapters_learn_on_a_frozen_base_held_as_lora_base_which_stays_bitwise(lora_base, cycle_batch):
  c = model_config(4, 'query,value,up,down')
  train = tiny.get_config().train
  train.learning_rate, train.warmup_steps = 3e-2, 0
  model, tx, mesh = Transformer(c), optimizer.make_optimizer(train), sharding.single_device_mesh()
  abstract = state_lib.abstract_state(model, tx, mesh, lora_base)
  base = lora.split(noisy_params(c, 2))[0]
  frozen = state_lib.hold_frozen(jax.tree.map(lambda x: x.astype(lora.read_dtype(lora_base)), base), abstract.frozen,
                                 lora_base)
  held = jax.device_get(frozen)
  state = state_lib.init_state(model, tx, 0, abstract).replace(frozen=frozen)
  train_fn, _ = step_lib.compile_steps(model, tx, optimizer.schedule(train), 0, abstract, mesh)
  losses = []
  for _ in range(15):
    state, metrics = train_fn(state, cycle_batch)
    losses.append(float(metrics['loss']))
  assert losses[-1] < 0.5 * losses[0]  # From about 6 (a random base) down: the adapters alone learn the cycle.
  assert jax.tree.structure(state.frozen) == jax.tree.structure(held)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen), held)  # The base did not move.
  # Every adapter moved, and the optimizer's moments are the adapters' alone (checked by count in the test above).
  assert all(np.abs(np.asarray(b)).max() > 0 for b in jax.tree.leaves(state.params))


def test_a_quantized_base_computes_as_its_dequantized_copy_and_gives_the_same_adapter_gradients(cycle_batch):
  # A Gemma-like layer with Qwen's extras (GeGLU, norms with the +1 offset, q/k norms and biases, heads of 16 on a
  # width of 32): every kind of base parameter a converted model brings, quantized or left bfloat16.
  c = model_config(4, 'query,value,gate,down', mlp='geglu', norm_offset=1.0, qk_norm=True, qkv_bias=True,
                   head_dim=16, scale_embeddings=True)
  base, adapters = lora.split(noisy_params(c, 2))
  held = lora.hold_base(base, 'int4')  # The layers' matrices int4, expanded a layer at a time inside the scan.
  reference = quantize.dequantize(held, jnp.float32)  # The same numbers, expanded whole before the model runs.
  loss = lambda trained, frozen: loss_lib.loss_fn(lora.combine(frozen, trained), cycle_batch, Transformer(c), None)
  got, want = (jax.jit(jax.value_and_grad(loss))(adapters, frozen) for frozen in (held, reference))
  # The same float32 operations on the same values, in one program or the other: equal to rounding.
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), got[1], want[1])


def test_the_step_makes_no_gradient_of_the_base():
  # 8 layers of width 256: the base's float32 matrices (25.8 MB) dwarf a batch of 2 x 16 tokens' activations.
  c = dataclasses.replace(model_config(4, 'query,value', width=256, num_heads=4, num_kv_heads=4), num_layers=8)
  model, tx, mesh = Transformer(c), optimizer.make_optimizer(tiny.get_config().train), sharding.single_device_mesh()
  abstract = state_lib.abstract_state(model, tx, mesh, 'float32')
  batch = {k: jax.ShapeDtypeStruct((2, 16), np.float32 if k == 'weights' else np.int32)
           for k in ('inputs', 'targets', 'positions', 'segment_ids', 'weights')}
  train, _ = step_lib.jit_steps(model, tx, optimizer.schedule(tiny.get_config().train), 0, abstract, mesh)
  with jax.set_mesh(mesh):
    memory = train.lower(abstract, batch).compile().memory_analysis()
  # A gradient of the base would be a base-sized temporary (the full fine-tune's step has twice the params: 52 MB);
  # this one's are a few per-layer buffers (10 MB). The frozen base goes out as it came in, in place.
  assert memory.temp_size_in_bytes < 0.5 * memory_lib.memory_bytes(abstract.frozen)
  assert memory.output_size_in_bytes - memory.alias_size_in_bytes < 1024
