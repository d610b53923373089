"""Tests of model/scoring.py and flaxlm-score: per-token log-probabilities, the sliding window, perplexity."""

import concurrent.futures
import math
import pathlib
import re
import shutil

import jax
import numpy as np
import pytest

from conftest import command, make_corpus
from test_cli import assert_one_line_error, run
from test_loop import tiny_config
from test_transformer import VOCAB, forward, init, make_model, random_params
from flaxlm.model import scoring
from flaxlm.train import loop
from flaxlm.train.use import pretrained

T = 16  # The context length of make_model.


def full_pass(model, params, tokens_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Returns, from one forward pass over the whole text, (log p of tokens 1..N-1, the top ids, their log p)."""
  log_probs_MxV = np.asarray(jax.nn.log_softmax(forward(model, params, tokens_N[None, :-1])[0], axis=-1))
  return (np.take_along_axis(log_probs_MxV, tokens_N[1:, None], axis=-1)[:, 0], log_probs_MxV.argmax(-1),
          log_probs_MxV.max(-1))


def text_of(length: int, seed: int = 0) -> np.ndarray:
  """Returns `length` random token ids."""
  return np.random.default_rng(seed).integers(0, VOCAB, length).astype(np.int32)


@pytest.mark.parametrize('positions', ['rotary', 'learned'])
def test_scores_of_a_text_within_the_context_equal_a_full_pass(positions):
  model = make_model(positions=positions)
  params = random_params(model)
  tokens_N = text_of(T + 1)  # The longest text one window scores: T tokens, each from its whole prefix.
  scores, expected = scoring.token_log_probs(model, params, tokens_N), full_pass(model, params, tokens_N)
  assert [s.shape for s in scores] == [(T,)] * 3
  np.testing.assert_allclose(scores[0], expected[0], atol=1e-5)
  np.testing.assert_array_equal(scores[1], expected[1])
  np.testing.assert_allclose(scores[2], expected[2], atol=1e-5)


def test_the_windows_score_every_token_once_with_at_least_half_the_context():
  for num_tokens in (2, 3, T, T + 1, T + 2, 2 * T, 5 * T + 3):
    plan = scoring.windows(num_tokens, T)
    scored = [j for start, first in plan for j in range(first, min(start + T, num_tokens - 1) + 1)]
    assert scored == list(range(1, num_tokens))
    contexts = [j - start for start, first in plan[1:] for j in range(first, min(start + T, num_tokens - 1) + 1)]
    assert all(T // 2 < c <= T for c in contexts)
  assert scoring.windows(40, T) == [(0, 1), (8, 17), (16, 25), (24, 33)]


@pytest.mark.parametrize('positions', ['rotary', 'learned'])
def test_a_long_text_is_scored_by_sliding_windows(positions):
  model = make_model(positions=positions)
  params = random_params(model)
  tokens_N = text_of(3 * T + 5)
  log_probs_M, top_ids_M, top_log_probs_M = scoring.token_log_probs(model, params, tokens_N)
  assert log_probs_M.shape == top_ids_M.shape == top_log_probs_M.shape == (3 * T + 4,)
  assert np.all(np.isfinite(log_probs_M)) and np.all(log_probs_M <= top_log_probs_M + 1e-6)
  np.testing.assert_allclose(log_probs_M[:T], full_pass(model, params, tokens_N[:T + 1])[0], atol=1e-5)
  start, _ = scoring.windows(len(tokens_N), T)[-1]  # The last token, seen from the last window's start.
  np.testing.assert_allclose(log_probs_M[-1], full_pass(model, params, tokens_N[start:])[0][-1], atol=1e-5)


def test_texts_of_any_length_share_one_compiled_window():
  model = make_model(num_layers=1)
  params = random_params(model)
  scoring.token_log_probs(model, params, text_of(2))
  compiled = scoring.window_scores._cache_size()
  for length in (7, T + 1, 2 * T + 3):
    scoring.token_log_probs(model, params, text_of(length))
  assert scoring.window_scores._cache_size() == compiled


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
  model = make_model(tie_embeddings=False)
  log_probs_M, _, _ = scoring.token_log_probs(model, init(model), text_of(2 * T))  # The head is zero: uniform.
  np.testing.assert_allclose(log_probs_M, -math.log(VOCAB), rtol=1e-5)
  assert scoring.mean_loss(log_probs_M) == pytest.approx(math.log(VOCAB), rel=1e-5)
  assert scoring.perplexity(log_probs_M) == pytest.approx(VOCAB, rel=1e-5)


@pytest.fixture(scope='module')
def trained(tmp_path_factory) -> pathlib.Path:
  """A tiny character-level run of 10 steps (context 16) in `run/`, beside the corpus it learned."""
  root = tmp_path_factory.mktemp('score')
  loop.train(tiny_config(make_corpus(root / 'corpus.txt'), 10), str(root / 'run'))
  return root


def score(*flags: str):
  """Runs flaxlm-score with `flags` and returns the completed process."""
  return run(command('flaxlm-score'), *flags)


def test_the_cli_prints_a_row_per_token_and_the_perplexity(trained):
  text = 'the king and queen\nof the north sent word'  # Longer than the context: several windows.
  result = score(f'--workdir={trained / "run"}', f'--text={text}')
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith(f'{len(text)} tokens exceed the context of 16')
  rows = lines[2:-1]
  assert len(rows) == len(text) - 1 and lines[1].split() == ['#', 'token', 'p', 'loss', 'expected', '(p)']
  assert rows[17].startswith("18  '\\n'") and len({len(r.split("'")[0]) for r in rows}) == 1  # Aligned.
  fields = [re.match(r" *(\d+)  ('.*?'|\".*?\") +(\S+) +(\S+)", row).groups() for row in rows]
  assert [int(f[0]) for f in fields] == list(range(1, len(text)))
  assert [f[1] for f in fields] == [repr(ch) for ch in text[1:]]
  ps, losses = (np.array([float(f[i]) for f in fields]) for i in (2, 3))
  np.testing.assert_allclose(losses, -np.log(np.maximum(ps, 5e-5)), atol=1e-3, rtol=2e-3)
  match = re.fullmatch(r'mean loss (\S+) \| perplexity (\S+) \| (\d+) tokens scored', lines[-1])
  mean, ppl, count = float(match[1]), float(match[2]), int(match[3])
  assert count == len(text) - 1 and mean == pytest.approx(losses.mean(), abs=1e-4)
  assert ppl == pytest.approx(math.exp(mean), rel=1e-3)
  model, params, tokenizer = pretrained.load(trained / 'run')
  log_probs_M, _, _ = scoring.token_log_probs(model, params, tokenizer.encode(text))
  assert mean == pytest.approx(scoring.mean_loss(log_probs_M), abs=1e-4)


def test_bad_inputs_get_one_line(trained, tmp_path):
  shutil.copytree(trained / 'run', tmp_path / 'untrained', ignore=shutil.ignore_patterns('checkpoints'))
  run_dir, text_file = f'--workdir={trained / "run"}', f'--text_file={trained / "corpus.txt"}'
  cases = [  # (flags, what the error says)
      ((run_dir,), 'pass exactly one of --text'),
      ((run_dir, '--text=the king', text_file), 'pass exactly one of --text'),
      ((run_dir, f'--text_file={tmp_path / "missing.txt"}'), 'missing.txt does not exist'),
      (('--text=the king',), 'pass exactly one of --workdir'),
      ((run_dir, '--text=t'), 'the text is 1 token(s) long'),
      ((run_dir, '--text=the king@#'), "characters ['#', '@'] are not in the tokenizer's alphabet"),
      ((f'--workdir={tmp_path / "untrained"}', '--text=the king'), 'has no checkpoint yet'),
  ]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:  # Each run spends seconds importing JAX: overlap them.
    results = list(pool.map(lambda case: score(*case[0]), cases))
  for result, (_, fragment) in zip(results, cases):
    assert_one_line_error(result, fragment)
