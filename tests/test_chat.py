"""Tests of data/chat.py and flaxlm-sample --chat: chat templates rendered as transformers renders them (the fixture's
reference), the loss on assistant turns only, flaxlm's own template, templates that fail in one line, and
flaxlm-sample --chat and flaxlm-score on a tiny export with the fixture's tokenizer.json."""

import concurrent.futures
import dataclasses
import json
import pathlib
import re

import jax
import numpy as np
import pytest

from conftest import command
from test_cli import run
from test_loop import tiny_config
from flaxlm.configs.errors import UserError
from flaxlm.data import chat, examples, tokenizer as tokenizer_lib
from flaxlm.model import sampling
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, param_shapes
from flaxlm.train import workdir as workdir_lib
from flaxlm.train.use import export

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'hf_tokenizer'
REFERENCE = json.loads((FIXTURE / 'reference.json').read_text())
CONVERSATION = REFERENCE['conversation']


@pytest.fixture(scope='module')
def hf() -> tokenizer_lib.HFTokenizer:
  """The fixture's tokenizer.json with its tokenizer_config.json (Llama-3-like template) and generation_config.json."""
  return tokenizer_lib.from_hf_folder(FIXTURE)


def with_template(tokenizer: tokenizer_lib.HFTokenizer, template: str) -> tokenizer_lib.HFTokenizer:
  """Returns `tokenizer` with another chat template."""
  specials = tokenizer.specials
  return tokenizer_lib.HFTokenizer(tokenizer.serialized(), tokenizer_lib.Specials(
      specials.config, specials.add_bos, specials.eos_ids, template))


@pytest.mark.parametrize('prompt', [False, True])
def test_the_template_renders_and_encodes_the_conversation_as_transformers(hf, prompt):
  expected = REFERENCE['chat'][str(prompt).lower()]
  assert chat.render(hf, CONVERSATION, prompt) == expected['text']
  assert hf.encode(expected['text']).tolist() == expected['ids']
  if prompt:  # What flaxlm-sample --chat feeds the model: the template writes BOS, none is added twice.
    assert chat.prompt_ids(hf, CONVERSATION).tolist() == expected['ids']


def test_a_messages_example_trains_on_the_assistant_turns_only(hf, tmp_path):
  (tmp_path / 'chat.jsonl').write_text(json.dumps({'messages': CONVERSATION}) + '\n')
  [example] = examples.read(tmp_path / 'chat.jsonl')
  ids_N, trained_N = examples.tokenize(example, hf)
  assert ids_N.tolist() == REFERENCE['chat']['false']['ids']  # As transformers' apply_chat_template.
  assert hf.decode(ids_N[trained_N]) == 'Over the stone.<|eot_id|>Into the sea, café 😀<|eot_id|>'
  spans = np.flatnonzero(np.diff(np.concatenate([[0], trained_N.astype(int), [0]])))
  assert len(spans) == 4  # Two trained runs, one per assistant turn.
  assert ids_N[0] == hf.bos_id and (ids_N == hf.bos_id).sum() == 1  # The template's BOS, not a second one.


def test_flaxlm_tokenizers_keep_flaxlm_template():
  byte = tokenizer_lib.ByteTokenizer()
  messages = [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]
  assert chat.render(byte, messages, False) == '<|user|>\nHi\n<|assistant|>\nHello\n'
  assert chat.render(byte, messages[:1], True) == '<|user|>\nHi\n<|assistant|>\n'
  assert byte.decode(chat.prompt_ids(byte, messages[:1])) == '<|user|>\nHi\n<|assistant|>\n'


def test_the_transformers_environment_is_reproduced(hf):
  template = ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m | tojson }}\n"
              "  {% endfor %}{{ eos_token }}")
  text = chat.render(with_template(hf, template), [{'role': 'user', 'content': 'café'}] * 2, False)
  assert text == '{"role": "user", "content": "café"}\n<|eot_id|>'  # trim/lstrip_blocks, break, tojson's text.


@pytest.mark.parametrize('template, reason', [
    ("{{ raise_exception('only user turns') }}", 'only user turns'),
    ('{% for message in messages %}', 'Unexpected end of template'),
    ('{{ messages[0].content.no_such_method() }}', 'no_such_method'),
])
def test_a_template_that_fails_to_render_is_refused_in_one_line(hf, tmp_path, template, reason):
  broken = with_template(hf, template)
  with pytest.raises(UserError, match=f"chat_template fails to render.*{reason}") as error:
    chat.render(broken, CONVERSATION, True)
  assert '\n' not in str(error.value)
  (tmp_path / 'chat.jsonl').write_text(json.dumps({'messages': CONVERSATION}) + '\n')
  with pytest.raises(UserError, match='example on line 1: the tokenizer\'s chat_template fails to render'):
    examples.tokenize(examples.read(tmp_path / 'chat.jsonl')[0], broken)


def test_a_template_that_rewrites_earlier_turns_is_refused(hf):
  template = "{% for m in messages %}{{ m.content if loop.last else '...' }}{% endfor %}"
  with pytest.raises(UserError, match='renders assistant turn 3 differently once later turns follow'):
    chat.pieces(with_template(hf, template), CONVERSATION[:4])


def test_a_chat_prompt_is_the_user_s_turn_or_a_json_conversation():
  assert chat.conversation('{"a": 1}') == [{'role': 'user', 'content': '{"a": 1}'}]
  assert chat.conversation(json.dumps({'messages': CONVERSATION[:2]})) == CONVERSATION[:2]
  with pytest.raises(UserError, match='the chat prompt\'s "messages" is not a non-empty list'):
    chat.conversation('{"messages": [{"role": "robot", "content": "x"}]}')


def test_sample_chat_stops_at_the_tokenizer_s_eos_ids_and_score_reads_the_text_after_bos(hf, tmp_path):
  config = tiny_config('', 10)
  config.model.max_length = 64
  config = workdir_lib.resolve(config, hf.vocab_size)
  model = Transformer(ModelConfig.from_config(config.model, hf.vocab_size))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: 0.3 * rng.standard_normal(s.shape).astype(np.float32), param_shapes(model.config))
  question = 'Where does the river run?'
  prompt = chat.prompt_ids(hf, [{'role': 'user', 'content': question}])
  [free] = sampling.generate(model, params, [prompt], 6, settings=sampling.Settings(0.0))
  eos_ids = (*hf.eos_ids, free.tokens[3])  # generation_config.json's ids, and one the model writes within 6 tokens.
  stop = next(i for i, token in enumerate(free.tokens) if token in eos_ids)
  specials = dataclasses.replace(hf.specials, eos_ids=eos_ids[1:])
  export.write(tmp_path / 'export', params, config, tokenizer_lib.HFTokenizer(hf.serialized(), specials), 'float32')
  model_flag = f'--params={tmp_path / "export"}'
  commands = [('flaxlm-sample', model_flag, '--temperature=0', '--max_new_tokens=6', '--chat', f'--prompt={question}'),
              ('flaxlm-score', model_flag, '--text=the river runs')]
  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # Each spends seconds importing JAX: overlap them.
    chatted, scored = pool.map(lambda args: run(command(args[0]), *args[1:]), commands)
  assert scored.returncode == 0, scored.stderr
  rows = [line.split()[1] for line in scored.stdout.splitlines() if re.match(r'\d+  ', line)]
  assert rows == [repr(hf.piece(token)) for token in hf.encode('the river runs')]  # After BOS: every token scored.
  assert chatted.returncode == 0, chatted.stderr
  assert chatted.stdout == hf.decode(free.tokens[:stop]) + '\n'  # The reply alone, ended by the id, not shown.
  saved = tokenizer_lib.load(tmp_path / 'export' / 'tokenizer.json')  # The export kept every tokenizer file.
  assert saved.eos_ids == eos_ids and saved.chat_template == hf.chat_template and saved.add_bos
