"""Fine-tuning examples from JSONL, tokenized with a mask of the tokens whose prediction is trained.

Each non-blank line of the file is one example, in either of two forms:
- `{"prompt": "...", "response": "..."}`: the prompt then the response, used as written (no template).
- `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`: a conversation, rendered
  with the tokenizer's chat template (data/chat.py), or for flaxlm's own tokenizers with chat.TEMPLATE, so
  [user "Hi", assistant "Hello"] reads `<|user|>\\nHi\\n<|assistant|>\\nHello\\n`.
Only response text is trained: the response, or every assistant turn (with a chat template: the reply and the
template's end of turn, e.g. `Hello<|eot_id|>`; with flaxlm's: the content), and the EOS appended after the
example (if the tokenizer has one; not after a chat template's conversation, whose turns end themselves) when
the example ends with response text. Prompts, system and user turns and template text (role headers, newlines)
are context: they are inputs, and a target that is one of their tokens carries no loss. BOS comes first where
the tokenizer adds it (a chat template writes its own). Each piece of text is tokenized on its own, so no token
straddles a prompt and a response.

The validation split is the last `val_fraction` of the examples in file order: the same file always splits
the same way.

Shape key: N tokens of one example.
"""

import dataclasses
import pathlib

import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.data import chat, files, pipeline, sources, tokenizer as tokenizer_lib


@dataclasses.dataclass(frozen=True)
class Example:
  """One fine-tuning example: its line number, its text as (kind, text) pieces in order (a conversation's in
  flaxlm's template), and a conversation's messages, for a tokenizer's own chat template.

  A piece's kind is 'prompt', 'response' (the only one trained) or 'template'.
  """
  line: int
  pieces: tuple[tuple[str, str], ...]
  messages: tuple[chat.Message, ...] | None = None

  def text(self, kind: str) -> str:
    """Returns the concatenated text of the pieces of `kind`."""
    return ''.join(text for piece_kind, text in self.pieces if piece_kind == kind)


@dataclasses.dataclass(frozen=True)
class Split:
  """A file's examples, split into training and validation."""
  train: list[Example]
  validation: list[Example]


def parse(line: str, path: pathlib.Path, number: int) -> Example:
  """Returns the example on line `number` of `path`; raises UserError naming the line if it is not one."""
  record = sources.json_record(line, f'{path}:{number}')
  fields = record if isinstance(record, dict) else {}
  if isinstance(fields.get('prompt'), str) and isinstance(fields.get('response'), str):
    return Example(number, (('prompt', fields['prompt']), ('response', fields['response'])))
  messages = fields.get('messages')
  if isinstance(messages, list) and messages and all(map(chat.is_message, messages)):
    messages = tuple({'role': m['role'], 'content': m['content']} for m in messages)
    return Example(number, tuple(piece for message in messages for piece in chat.message_pieces(message)), messages)
  raise UserError(f'{path}:{number} is not an example: give it string fields "prompt" and "response", or '
                  f'"messages", a non-empty list of {{"role": one of {", ".join(chat.ROLES)}, "content": string}}.')


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


def templated(example: Example, tokenizer: tokenizer_lib.Tokenizer) -> bool:
  """Returns whether the example is a conversation that `tokenizer`'s own chat template renders."""
  return example.messages is not None and tokenizer.chat_template is not None


def pieces_for(example: Example, tokenizer: tokenizer_lib.Tokenizer) -> list[tuple[str, str]]:
  """Returns the example's pieces as `tokenizer` reads them: a conversation in its chat template where it has one
  (raises UserError naming the example's line if that fails), else as parsed."""
  if not templated(example, tokenizer):
    return list(example.pieces)
  try:
    return chat.pieces(tokenizer, list(example.messages))
  except UserError as e:
    raise UserError(f'example on line {example.line}: {e}') from None


def tokenize(example: Example, tokenizer: tokenizer_lib.Tokenizer) -> tuple[np.ndarray, np.ndarray]:
  """Returns the example's int32 ids_N and bool trained_N (responses): BOS first and EOS appended where the
  tokenizer adds them, except to a conversation in its chat template, whose text is as the template renders it."""
  pieces, own = pieces_for(example, tokenizer), templated(example, tokenizer)
  head = np.zeros(0, np.int32) if own else tokenizer_lib.bos(tokenizer)
  ids = [head] + [tokenizer.encode(text) for _, text in pieces]
  trained = [np.zeros(len(head), bool)] + [np.full(len(piece_ids), kind == 'response')
                                            for (kind, _), piece_ids in zip(pieces, ids[1:])]
  if tokenizer.eos_id is not None and not own:
    last_kind = next(kind for kind, _ in reversed(pieces) if kind != 'template')
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
