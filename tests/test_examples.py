"""Tests of data/examples.py: only response tokens are trained, the chat template, bad lines named, a fixed split."""

import json

import numpy as np
import pytest

from flaxlm.configs.errors import UserError
from flaxlm.data import chat, examples, pipeline, tokenizer as tokenizer_lib

BYTES = tokenizer_lib.ByteTokenizer()


def write(path, *records) -> None:
  """Writes `records` to `path`, one a line: dicts as JSON, strings as they are."""
  path.write_text(''.join((r if isinstance(r, str) else json.dumps(r)) + '\n' for r in records))


def test_prompt_tokens_are_untrained_and_response_tokens_and_eos_trained(tmp_path):
  write(tmp_path / 'a.jsonl', {'prompt': 'Q: hi\nA:', 'response': ' hello'})
  [example] = examples.read(tmp_path / 'a.jsonl')
  ids_N, trained_N = examples.tokenize(example, BYTES)
  np.testing.assert_array_equal(ids_N, np.concatenate([BYTES.encode('Q: hi\nA: hello'), [BYTES.eos_id]]))
  np.testing.assert_array_equal(trained_N, [False] * len('Q: hi\nA:') + [True] * len(' hello') + [True])
  char = tokenizer_lib.CharTokenizer.from_text('Q: hi\nA: hello')  # no EOS: nothing is appended.
  np.testing.assert_array_equal(examples.tokenize(example, char)[1], [False] * 8 + [True] * 6)


def test_messages_follow_the_template_and_train_only_assistant_contents(tmp_path):
  messages = [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'},
              {'role': 'assistant', 'content': 'Hello'}, {'role': 'user', 'content': 'Bye'},
              {'role': 'assistant', 'content': 'Ciao'}]
  write(tmp_path / 'chat.jsonl', {'messages': messages})
  [example] = examples.read(tmp_path / 'chat.jsonl')
  text = ''.join(chat.TEMPLATE.format(**m) for m in messages)
  assert text == '<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\nHello\n<|user|>\nBye\n<|assistant|>\nCiao\n'
  ids_N, trained_N = examples.tokenize(example, BYTES)
  assert BYTES.decode(ids_N) == text and ids_N[-1] == BYTES.eos_id
  assert BYTES.decode(ids_N[trained_N]) == 'HelloCiao' and trained_N[-1]
  assert example.text('prompt') == 'Be brief.HiBye' and example.text('response') == 'HelloCiao'


def test_an_example_ending_with_a_prompt_does_not_train_its_eos(tmp_path):
  write(tmp_path / 'chat.jsonl', {'messages': [{'role': 'user', 'content': 'Hi'}]})
  [example] = examples.read(tmp_path / 'chat.jsonl')
  assert not examples.tokenize(example, BYTES)[1].any()


@pytest.mark.parametrize('bad, message', [
    ('not json', 'is not valid JSON'),
    ({'prompt': 'no response'}, 'is not an example'),
    ({'messages': [{'role': 'robot', 'content': 'x'}]}, 'is not an example'),
    ({'messages': []}, 'is not an example'),
    ([1, 2], 'is not an example'),
])
def test_malformed_lines_are_named_by_file_and_number(tmp_path, bad, message):
  path = tmp_path / 'a.jsonl'
  write(path, {'prompt': 'a', 'response': 'b'}, '', bad, 'also not json')
  with pytest.raises(UserError, match=f'a.jsonl:3 {message}'):
    examples.read(path)
  found, errors = examples.scan(path)
  assert [e.line for e in found] == [1] and len(errors) == 2
  assert f'a.jsonl:3 {message}' in str(errors[0]) and 'a.jsonl:4 is not valid JSON' in str(errors[1])


def test_a_non_utf8_line_is_named_and_the_others_still_read(tmp_path):
  path = tmp_path / 'a.jsonl'
  path.write_bytes(b'{"prompt": "caf\xe9", "response": "x"}\n{"prompt": "a", "response": "b"}\n')
  found, errors = examples.scan(path)
  assert [e.line for e in found] == [2] and len(errors) == 1 and 'a.jsonl:1 is not UTF-8' in str(errors[0])


def test_the_split_holds_out_the_last_examples_the_same_every_time(tmp_path):
  path = tmp_path / 'a.jsonl'
  write(path, *({'prompt': f'p{i}', 'response': f'r{i}'} for i in range(20)))
  first, again = (examples.split(examples.read(path), 0.1) for _ in range(2))
  assert first == again
  assert [e.line for e in first.train] == list(range(1, 19)) and [e.line for e in first.validation] == [19, 20]
  two = examples.split(examples.read(path)[:2], 0.9)  # 0.9 of 2 rounds to 2: one is left to train on.
  assert len(two.train) == len(two.validation) == 1
  with pytest.raises(UserError, match='at least 2'):
    examples.split(examples.read(path)[:1], 0.1)


def test_packed_examples_weigh_only_response_targets_across_example_boundaries(tmp_path):
  path = tmp_path / 'a.jsonl'
  write(path, *({'prompt': 'p' * (3 + i), 'response': 'r' * (2 + i % 3)} for i in range(9)))
  stream = examples.token_stream(examples.read(path), BYTES)
  packed = pipeline.PackedExamples(stream, 8, BYTES.pad_id)
  epoch = packed.gather(np.arange(len(packed)))
  is_response = (epoch['targets'] == BYTES.encode('r')[0]) | (epoch['targets'] == BYTES.eos_id)
  np.testing.assert_array_equal(epoch['weights'], is_response.astype(np.float32))
  assert epoch['weights'].sum() == sum(2 + i % 3 + 1 for i in range(9))


def test_with_the_context_length_no_example_straddles_two_windows(tmp_path):
  path = tmp_path / 'a.jsonl'
  write(path, *({'prompt': 'p' * (1 + i % 3), 'response': 'r' * (1 + i % 2)} for i in range(12)))
  plain = examples.token_stream(examples.read(path), BYTES)
  packed = pipeline.PackedExamples(examples.token_stream(examples.read(path), BYTES, 8), 8, BYTES.pad_id)
  epoch = packed.gather(np.arange(len(packed)))
  is_response = (epoch['targets'] == BYTES.encode('r')[0]) | (epoch['targets'] == BYTES.eos_id)
  np.testing.assert_array_equal(epoch['weights'], is_response.astype(np.float32))
  assert epoch['weights'].sum() == plain.trained.sum()  # Every response token is still learned once.
  aligned = packed.stream
  assert aligned.begins[::8].all()  # Each window starts with an example (or padding): none straddles two.
  assert not plain.begins[::8].all()  # Without it, some straddle.
