"""Tests of train/loop.py and the workdir it writes: files, metrics, checkpoints and exact resumption."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from flaxlm.configs import base, tiny
from conftest import make_corpus
from flaxlm.configs.errors import UserError
from flaxlm.data import prepare, sources, tokenizer as tokenizer_lib
from flaxlm.train import inputs, loop, loss as loss_lib, metrics, sharding, state as state_lib, workdir as workdir_lib
from flaxlm.train.use import pretrained as pretrained_lib


def tiny_config(corpus, steps: int = 20):
  """Returns the tiny preset on `corpus`, trained for `steps`."""
  config = tiny.get_config()
  config.data.path = str(corpus)
  config.train.steps = steps
  return config


def test_a_run_writes_the_workdir_contract(corpus, tmp_path):
  workdir = tmp_path / 'run'
  state = loop.train(tiny_config(corpus), str(workdir))
  assert int(state.step) == 20
  saved = json.loads((workdir / 'config.json').read_text())
  assert saved['train']['steps'] == 20 and saved['model']['vocab_size'] == len(set(corpus.read_text()))
  assert saved['model']['num_kv_heads'] == 2 and saved['model']['mlp_width'] == 128
  assert json.loads((workdir / 'tokenizer.json').read_text())['kind'] == 'char'
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit()) == ['10', '20']
  assert any((workdir / 'tensorboard').iterdir())
  records = metrics.read_metrics(workdir)
  assert [r['step'] for r in records] == [5, 10, 15, 20]
  for r in records:
    assert {'step', 'loss', 'learning_rate', 'tokens_per_second', 'tokens_per_second_per_device', 'grad_norm'} <= r.keys()
    assert 'mfu' not in r  # A CPU has no peak in the table: MFU is left out, not guessed.
  assert [r['step'] for r in records if 'val_loss' in r] == [10, 20]
  assert records[-1]['loss'] < records[0]['loss']


def test_a_resumed_run_continues_from_its_checkpoint_to_the_same_result(corpus, tmp_path):
  straight = loop.train(tiny_config(corpus, 20), str(tmp_path / 'straight'))
  loop.train(tiny_config(corpus, 20), str(tmp_path / 'resumed'))
  shutil.rmtree(tmp_path / 'resumed' / 'checkpoints' / '20')  # As if killed after step 20's log, before its save.
  resumed = loop.train(tiny_config(corpus, 20), str(tmp_path / 'resumed'))
  assert int(resumed.step) == 20
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(straight.params), jax.device_get(resumed.params))
  losses = lambda run: [(r['step'], r['loss'], r.get('val_loss')) for r in metrics.read_metrics(tmp_path / run)]
  assert losses('straight') == losses('resumed')


def test_a_finished_run_started_again_trains_no_further(corpus, tmp_path):
  loop.train(tiny_config(corpus, 10), str(tmp_path / 'run'))
  state = loop.train(tiny_config(corpus, 10), str(tmp_path / 'run'))
  assert int(state.step) == 10
  assert [r['step'] for r in metrics.read_metrics(tmp_path / 'run')] == [5, 10]


def test_metrics_logged_after_the_checkpoint_are_dropped_on_resume(tmp_path):
  lines = [{'step': s, 'loss': 1.0} for s in (5, 10, 15)]
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in lines))
  metrics.drop_after(tmp_path, 10)
  assert [r['step'] for r in metrics.read_metrics(tmp_path)] == [5, 10]


def test_a_workdir_of_another_model_shape_is_refused_untouched(corpus, tmp_path):
  workdir = tmp_path / 'run'
  loop.train(tiny_config(corpus, 10), str(workdir))
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*')}
  config = tiny_config(corpus, 20)
  config.model.width = 64
  with pytest.raises(UserError, match='model.width: 32 there, 64 here'):
    loop.train(config, str(workdir))
  assert {p: p.stat().st_mtime_ns for p in workdir.rglob('*')} == before


@pytest.mark.parametrize('key, value, message', [('steps', 0, 'train.steps=0'), ('eval_every', -1, 'eval_every')])
def test_non_positive_counts_are_refused(corpus, tmp_path, key, value, message):
  config = tiny_config(corpus)
  config.train[key] = value
  with pytest.raises(UserError, match=message):
    loop.train(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_a_sentencepiece_run_saves_its_model_and_refuses_another_tokenizer(corpus, tmp_path):
  model = tokenizer_lib.save(tokenizer_lib.train_sentencepiece(sources.lines(str(corpus)), 300), tmp_path)
  config = tiny_config(corpus, 10)
  config.data.tokenizer = str(model)
  loop.train(config, str(tmp_path / 'run'))
  assert (tmp_path / 'run' / 'tokenizer.model').read_bytes() == model.read_bytes()
  config.data.tokenizer = 'byte'
  with pytest.raises(UserError, match='different model'):
    loop.train(config, str(tmp_path / 'run'))


def test_a_run_saved_before_a_config_key_existed_loads_with_that_key_s_default(tmp_path):
  saved = base.get_config().to_dict()
  del saved['model']['norm_eps'], saved['train']['microbatches']
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  config = workdir_lib.load_config(tmp_path)
  assert config.model.norm_eps == 1e-6 and config.train.microbatches == 1
  assert config.model.width == saved['model']['width']


def test_fine_tuning_starts_from_the_pretrained_params_with_a_fresh_optimizer(corpus, tmp_path):
  pretrained = loop.train(tiny_config(corpus, 20), str(tmp_path / 'base'))
  other_text = make_corpus(tmp_path / 'other.txt', seed=1)
  config = tiny_config(other_text, 1)
  config.train.init_from = str(tmp_path / 'base')
  config.train.learning_rate = config.train.min_learning_rate = 0.0  # One step that changes nothing.
  tuned = loop.train(config, str(tmp_path / 'tuned'))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(tuned.params), jax.device_get(pretrained.params))
  assert int(tuned.step) == 1 and int(tuned.opt_state[1][0].count) == 1  # A fresh optimizer: one update.
  assert (tmp_path / 'tuned' / 'tokenizer.json').read_text() == (tmp_path / 'base' / 'tokenizer.json').read_text()
  config.model.update(width=64, mlp='gelu', norm_offset=1.0, rope_theta=5e5, dtype='bfloat16', max_length=8)
  adopted, taken = pretrained_lib.adopt_model(config, workdir_lib.load_config(tmp_path / 'base'))
  # The pretrained model, set however the run's config sets its own, and the run's own way of computing it.
  assert adopted.model.to_dict() == {**workdir_lib.load_config(tmp_path / 'base').model.to_dict(),
                                     'dtype': 'bfloat16', 'max_length': 8}
  assert sorted(taken) == ["model.mlp='swiglu' (not 'gelu')", 'model.norm_offset=0.0 (not 1.0)',
                          'model.rope_theta=10000.0 (not 500000.0)', 'model.width=32 (not 64)']


def test_a_fine_tune_of_another_length_keeps_the_context_a_rotary_scaling_was_made_for():
  saved = base.get_config()
  saved.model.update(rope_scaling='yarn', rope_factor=4.0, max_length=64)  # rope_original_length 0: max_length's 64.
  config = base.get_config()
  config.model.max_length = 128
  adopted, _ = pretrained_lib.adopt_model(config, saved)
  assert adopted.model.max_length == 128 and adopted.model.rope_original_length == 64


def test_fine_tuning_on_examples_learns_the_responses(corpus, tmp_path):
  loop.train(tiny_config(corpus, 20), str(tmp_path / 'base'))
  pairs = [('the king', ' and queen of the north'), ('spring', ' would come early'), ('ROMEO:', ' JULIET:')]
  lines = [json.dumps({'prompt': p, 'response': r}) for _ in range(40) for p, r in pairs]
  (tmp_path / 'examples.jsonl').write_text('\n'.join(lines) + '\n')

  def tune(steps: int, learning_rate: float, name: str) -> float:
    config = tiny_config(tmp_path / 'examples.jsonl', steps)
    config.data.format, config.train.init_from = 'examples', str(tmp_path / 'base')
    config.train.learning_rate = config.train.min_learning_rate = learning_rate
    config.train.eval_every = steps
    loop.train(config, str(tmp_path / name))
    return metrics.read_metrics(tmp_path / name)[-1]['val_loss']

  base_loss = tune(1, 0.0, 'untouched')  # The pretrained model's loss on the responses.
  assert tune(80, 1e-2, 'tuned') < 0.3 * base_loss


def test_validation_loss_is_the_mean_over_the_trained_tokens_of_all_batches(corpus, tmp_path):
  setup = loop.prepare(tiny_config(corpus), str(tmp_path / 'run'))
  tx, abstract, _, eval_fn = loop.build_steps(setup)
  rng = np.random.default_rng(0)  # Noise on the params: the head starts at zero, which makes every loss log V.
  host_params = jax.tree.map(lambda x: x + 0.3 * rng.standard_normal(x.shape, np.float32),
                             jax.device_get(state_lib.init_state(setup.model, tx, 0, abstract).params))
  params = jax.device_put(host_params, jax.tree.map(lambda x: x.sharding, abstract.params))
  full, sparse = (jax.device_get(b) for b in loop.validation_batches(setup)[:2])
  sparse['weights'] = np.zeros_like(sparse['weights'])
  sparse['weights'][0, :3] = 1  # 3 trained tokens against the full batch's hundreds, as fine-tuning examples do.
  whole = {k: np.concatenate([full[k], sparse[k]]) for k in full}  # One batch holding both: its mean per token.
  expected = float(loss_lib.loss_fn(host_params, whole, setup.model, None))
  mean_of_means = np.mean([float(loss_lib.loss_fn(host_params, b, setup.model, None)) for b in (full, sparse)])
  assert abs(mean_of_means - expected) > 0.05  # The two means differ here, by far more than the tolerance below.
  got = loop.evaluate(eval_fn, params, [sharding.global_batch(b, setup.mesh) for b in (full, sparse)])
  assert got == pytest.approx(expected, rel=1e-5)


def test_a_store_prepared_with_another_bos_setting_of_the_same_tokenizer_json_is_refused(tmp_path):
  fixture = pathlib.Path(__file__).parent / 'fixtures' / 'hf_tokenizer'
  shutil.copytree(fixture, tmp_path / 'no_bos')
  settings = json.loads((fixture / 'tokenizer_config.json').read_text())
  (tmp_path / 'no_bos' / 'tokenizer_config.json').write_text(json.dumps({**settings, 'add_bos_token': False}))
  (tmp_path / 'text.txt').write_text('the river runs\n' * 150)  # Two pieces of text: one a split.
  store_path = str(tmp_path / 'store')
  prepared = prepare.prepare(str(tmp_path / 'text.txt'), store_path, str(tmp_path / 'no_bos'),
                             prepare.Settings(val_fraction=0.5), workers=0)
  config = tiny_config(store_path)
  config.data.tokenizer = str(tmp_path / 'no_bos')
  assert not inputs.store_tokenizer(config, prepared).add_bos  # The store's own setting is taken.
  config.data.tokenizer = str(fixture)  # The same tokenizer.json, adding BOS: the store's documents lack it.
  with pytest.raises(UserError, match='holds the ids of another tokenizer than data.tokenizer='):
    inputs.store_tokenizer(config, prepared)
