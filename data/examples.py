"""Fine-tuning examples from JSONL, tokenized with a mask of the tokens whose prediction is trained.

Each non-blank line of the file is one example, in either of two forms:
- `{"prompt": "...", "response": "..."}`: the prompt then the response, used as written (no template).
- `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`: each message rendered
  with TEMPLATE, so [user "Hi", assistant "Hello"] reads `<|user|>\\nHi\\n<|assistant|>\\nHello\\n`.
Only response text is trained: the response, or every assistant message's content, and the EOS appended
after the example (if the tokenizer has one) when the example ends with response text. Prompts, system and
user contents and template text (the role headers and newlines) are context: they are inputs, and a target
that is one of their tokens carries no loss. Each piece of text is tokenized on its own, so no token
straddles a prompt and a response.

The validation split is the last `val_fraction` of the examples in file order: the same file always splits
the same way.

Shape key: N tokens of one example.
"""

import dataclasses
import pathlib

import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.data import files, pipeline, sources, tokenizer as tokenizer_lib

TEMPLATE = '<|{role}|>\n{content}\n'
ROLES = ('system', 'user', 'assistant')


@dataclasses.dataclass(frozen=True)
class Example:
  """One fine-tuning example: its line number, and its text as (kind, text) pieces in order.

  A piece's kind is 'prompt', 'response' (the only one trained) or 'template'.
  """
  line: int
  pieces: tuple[tuple[str, str], ...]

  def text(self, kind: str) -> str:
    """Returns the concatenated text of the pieces of `kind`."""
    return ''.join(text for piece_kind, text in self.pieces if piece_kind == kind)


@dataclasses.dataclass(frozen=True)
class Split:
  """A file's examples, split into training and validation."""
  train: list[Example]
  validation: list[Example]


def message_pieces(message: dict) -> list[tuple[str, str]]:
  """Returns one message rendered with TEMPLATE: its header, its content (a response if the assistant's), its end."""
  head, tail = TEMPLATE.split('{content}')
  kind = 'response' if message['role'] == 'assistant' else 'prompt'
  return [('template', head.format(role=message['role'])), (kind, message['content']), ('template', tail)]


def is_message(message: object) -> bool:
  """Returns whether `message` is a dict with a known role and string content."""
  return isinstance(message, dict) and message.get('role') in ROLES and isinstance(message.get('content'), str)


def parse(line: str, path: pathlib.Path, number: int) -> Example:
  """Returns the example on line `number` of `path`; raises UserError naming the line if it is not one."""
  record = sources.json_record(line, f'{path}:{number}')
  fields = record if isinstance(record, dict) else {}
  if isinstance(fields.get('prompt'), str) and isinstance(fields.get('response'), str):
    return Example(number, (('prompt', fields['prompt']), ('response', fields['response'])))
  messages = fields.get('messages')
  if isinstance(messages, list) and messages and all(map(is_message, messages)):
    return Example(number, tuple(piece for message in messages for piece in message_pieces(message)))
  raise UserError(f'{path}:{number} is not an example: give it string fields "prompt" and "response", or '
                  f'"messages", a non-empty list of {{"role": one of {", ".join(ROLES)}, "content": string}}.')


def scan(path: pathlib.Path) -> tuple[list[Example], list[UserError]]:
  """Returns the examples of every well-formed line of a JSONL file, and an error for each malformed line."""
  examples, errors = [], []
  with sources.reading(files.check_regular(path)):
    data = path.read_bytes()
  for number, raw in enumerate(data.splitlines(), 1):
    try:
      line = raw.decode('utf-8')
      if line.strip():
        examples.append(parse(line, path, number))
    except UnicodeDecodeError as e:
      errors.append(UserError(f'{path}:{number} is not UTF-8 ({e.reason} at byte {e.start}): convert it to UTF-8.'))
    except UserError as e:
      errors.append(e)
  return examples, errors


def read(path: pathlib.Path) -> list[Example]:
  """Returns the examples of a JSONL file; raises UserError naming the first malformed line, or if there are none."""
  examples, errors = scan(path)
  if errors:
    raise errors[0]
  if not examples:
    raise UserError(f'{path} has no examples: give it one JSON object per line.')
  return examples


def split(examples: list[Example], val_fraction: float) -> Split:
  """Returns the examples with the last `val_fraction` of them held out (at least one, leaving one to train on)."""
  if not 0 < val_fraction < 1:
    raise UserError(f'data.val_fraction={val_fraction} must lie strictly between 0 and 1.')
  if len(examples) < 2:
    raise UserError(f'cannot split {len(examples)} example(s) into training and validation: give at least 2.')
  held_out = min(max(1, round(len(examples) * val_fraction)), len(examples) - 1)
  return Split(examples[:-held_out], examples[-held_out:])


def tokenize(example: Example, tokenizer: tokenizer_lib.Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Returns the example's int32 ids_N (EOS appended if the tokenizer has one) and bool trained_N (responses)."""
  ids = [tokenizer.encode(text) for _, text in example.pieces]
  trained = [np.full(len(piece_ids), kind == 'response') for (kind, _), piece_ids in zip(example.pieces, ids)]
  if tokenizer.eos_id is not None:
    last_kind = next(kind for kind, _ in reversed(example.pieces) if kind != 'template')
    ids.append(np.asarray([tokenizer.eos_id], np.int32))
    trained.append(np.asarray([last_kind == 'response']))
  return np.concatenate(ids).astype(np.int32), np.concatenate(trained).astype(bool)


def window_aligned(ids: list[np.ndarray], trained: list[np.ndarray], length: int,
                   pad_id: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """Returns the examples with untrained padding put before each one that would straddle two windows of `length`.

  The pipeline cuts the stream into windows of `length` inputs; an example cut in two would have the end of its
  response trained without its prompt in view. An example longer than a window is cut however it is placed.
  """
  aligned_ids, aligned_trained, position = [], [], 0
  for example_ids, example_trained in zip(ids, trained):
    room = length - position % length
    if room < len(example_ids) <= length:
      aligned_ids.append(np.full(room, pad_id, np.int32))
      aligned_trained.append(np.zeros(room, bool))
      position += room
    aligned_ids.append(example_ids)
    aligned_trained.append(example_trained)
    position += len(example_ids)
  return aligned_ids, aligned_trained


def token_stream(examples: list[Example], tokenizer: tokenizer_lib.Tokenizer,
                 length: int | None = None) -> pipeline.TokenStream:
  """Returns the examples as one stream, each with its EOS, whose untrained tokens carry no loss as targets.

  With `length` (the model's context), no example that fits in a window straddles two (see `window_aligned`).
  """
  ids, trained = (list(part) for part in zip(*(tokenize(example, tokenizer) for example in examples)))
  if length:
    ids, trained = window_aligned(ids, trained, length, tokenizer.pad_id or 0)
  return pipeline.TokenStream.from_documents(ids, None, trained)
