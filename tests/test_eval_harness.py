"""flaxlm's lm-evaluation-harness backend against the harness's own Hugging Face backend: the answers HFLM gave for
tiny Llama (with BOS), GPT-2, Qwen2 and Gemma models, request by request and task by task (tests/fixtures/lm_eval,
written by tests/fixtures/make_eval_fixtures.py with torch and transformers; none are needed here)."""

import json

import numpy as np
import pytest

pytest.importorskip('lm_eval')  # The `eval` extra.
import lm_eval.api.registry
from lm_eval.api.instance import Instance

from conftest import REPO
from flaxlm.model import quantize, scoring
from flaxlm.train.use import convert, evaluate, harness, pretrained

FIXTURES = REPO / 'tests' / 'fixtures' / 'lm_eval'
FAMILIES = ('llama', 'gpt2', 'qwen2', 'gemma')
TASKS = ['fixture_mc', 'fixture_rolling', 'fixture_gen']
RTOL = 1e-4  # float32 on both sides; XLA and torch sum in different orders.


def backend(name: str, output) -> tuple[harness.FlaxLM, dict]:
  """Returns the fixture model `name` converted at `output` and loaded as the backend (float32), and HFLM's answers
  for it."""
  convert.from_hf(str(FIXTURES / name), str(output), None, 'float32')
  model, params, tokenizer = pretrained.load(output, 'float32')
  return (harness.FlaxLM(model, params, tokenizer, batch_size=4),
          json.loads((FIXTURES / name / 'reference.json').read_text()))


@pytest.fixture(scope='module', params=FAMILIES)
def family(request, tmp_path_factory) -> tuple[harness.FlaxLM, dict]:
  """The family's fixture model as the backend, and HFLM's answers for it."""
  return backend(request.param, tmp_path_factory.mktemp(request.param) / 'model')


def instances(kind: str, rows: list, answers: int = 1) -> list[Instance]:
  """Returns the harness's requests of `kind` for reference rows [arguments..., answers...]."""
  return [Instance(kind, {}, tuple(row[:-answers]), i) for i, row in enumerate(rows)]


def test_requests_of_every_length_share_a_few_compiled_shapes(family):  # First: the family's model is new to jit.
  lm, reference = family
  requests = instances('loglikelihood', reference['requests']['loglikelihood'], answers=2)
  lengths = {len(c) + len(x) for c, x in (lm._encode_pair(*r.args) for r in requests if r.args[0])}
  widths = {harness.padded_width(n, 64) for n in range(1, 65)}  # 16, 20, 24, 28, 32, 40, 48, 56, 64.
  compiled = scoring.window_scores._cache_size()
  lm.loglikelihood(requests)
  assert len(lengths) > len(widths) >= scoring.window_scores._cache_size() - compiled


def test_loglikelihoods_and_greedy_flags_are_the_hf_backends(family):
  lm, reference = family
  rows = reference['requests']['loglikelihood']
  answers = lm.loglikelihood(instances('loglikelihood', rows, answers=2))
  np.testing.assert_allclose([a[0] for a in answers], [r[2] for r in rows], rtol=RTOL)
  assert [a[1] for a in answers] == [r[3] for r in rows]
  assert any(r[3] for r in rows)  # The fixture has greedy continuations: the flag is tested both ways.


def test_rolling_loglikelihoods_are_the_hf_backends(family):
  lm, reference = family
  rows = reference['requests']['loglikelihood_rolling']
  np.testing.assert_allclose(lm.loglikelihood_rolling(instances('loglikelihood_rolling', rows)),
                             [r[1] for r in rows], rtol=RTOL)


def test_generations_are_the_hf_backends(family):
  lm, reference = family
  rows = reference['requests']['generate_until']
  assert lm.generate_until(instances('generate_until', rows)) == [r[2] for r in rows]


def assert_same_answers(ours, theirs) -> None:
  """Checks two nested answers agree: numbers within RTOL, everything else equal."""
  if isinstance(theirs, float):
    np.testing.assert_allclose(ours, theirs, rtol=RTOL)
  elif isinstance(theirs, list):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
      assert_same_answers(a, b)
  else:
    assert ours == theirs


def test_task_samples_and_scores_are_the_hf_backends(family, monkeypatch):
  lm, reference = family
  monkeypatch.chdir(REPO)  # The fixture tasks name their data files from the repository's root, as HFLM read them.
  manager = evaluate.task_manager(TASKS, str(FIXTURES / 'tasks'))
  results = json.loads(evaluate.to_json(evaluate.evaluate(lm, TASKS, manager, log_samples=True)))
  for task in TASKS:
    theirs = reference['tasks'][task]
    ours = {s['doc_id']: s for s in results['samples'][task]}
    for sample in theirs['samples']:
      assert ours[sample['doc_id']]['arguments'] == sample['arguments']
      assert_same_answers(ours[sample['doc_id']]['resps'], sample['resps'])
    for metric, value in theirs['results'].items():
      if 'stderr' not in metric and isinstance(value, float):
        np.testing.assert_allclose(results['results'][task][metric], value, rtol=RTOL, err_msg=f'{task} {metric}')


def test_int8_weights_answer_as_the_float_weights_within_their_rounding(tmp_path):
  lm, reference = backend('gemma', tmp_path / 'model')  # One family stands for all: the forward pass is shared.
  quantized = harness.FlaxLM(lm.model, quantize.quantize(lm.params, 'int8'), lm.flaxlm_tokenizer, batch_size=4)
  rows = reference['requests']['loglikelihood'][:8]  # A few requests: each new shape compiles for the int8 tree.
  answers = quantized.loglikelihood(instances('loglikelihood', rows, answers=2))
  np.testing.assert_allclose([a[0] for a in answers], [r[2] for r in rows], rtol=0.02)


def test_the_harness_finds_the_backend_by_name_and_loads_a_model_from_its_arguments(tmp_path):
  convert.from_hf(str(FIXTURES / 'gpt2'), str(tmp_path / 'model'), None, 'float32')
  lm = lm_eval.api.registry.get_model('flaxlm').create_from_arg_string(f'path={tmp_path / "model"},dtype=float32',
                                                                       {'batch_size': 4})
  assert isinstance(lm, harness.FlaxLM) and lm.rows == 4
  rows = json.loads((FIXTURES / 'gpt2' / 'reference.json').read_text())['requests']['loglikelihood'][:4]
  answers = lm.loglikelihood(instances('loglikelihood', rows, answers=2))
  np.testing.assert_allclose([a[0] for a in answers], [r[2] for r in rows], rtol=RTOL)
