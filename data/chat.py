"""Chat templates: a conversation (a list of {"role", "content"} messages) as the text the model reads.

A checkpoint's tokenizer brings its `chat_template` (Jinja, from tokenizer_config.json), rendered as transformers
renders it: a sandboxed jinja2 environment with trim_blocks and lstrip_blocks, the loop controls, a `tojson` filter
that keeps non-ASCII text, `raise_exception(message)` and `strftime_now(format)`, and the variables `messages`,
`add_generation_prompt`, `bos_token` and `eos_token`. Special tokens the template writes ('<|eot_id|>') become
their ids when the text is encoded. flaxlm's own tokenizers have no template: their conversations read
`<|role|>\\ncontent\\n` (TEMPLATE), the generation prompt being `<|assistant|>\\n`.

For training, `pieces` cuts the rendered conversation into the assistant turns (trained) and the rest: an assistant
turn is the text from where the conversation before it ends with its generation prompt to where the conversation up
to it ends, so it covers the reply and what the template closes it with (its end-of-turn token).
"""

import datetime
import functools
import json

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np

from flaxlm.configs.errors import UserError
from flaxlm.data import tokenizer as tokenizer_lib

TEMPLATE = '<|{role}|>\n{content}\n'
ROLES = ('system', 'user', 'assistant')
Message = dict[str, str]


def is_message(message: object) -> bool:
  """Returns whether `message` is a dict with a known role and string content."""
  return isinstance(message, dict) and message.get('role') in ROLES and isinstance(message.get('content'), str)


def conversation(text: str) -> list[Message]:
  """Returns the conversation a chat prompt gives: the messages of a JSON object {"messages": [...]}, else the text
  as the user's turn; raises UserError if it is such an object whose messages are malformed."""
  try:
    record = json.loads(text)
  except json.JSONDecodeError:
    record = None
  if not isinstance(record, dict) or 'messages' not in record:
    return [{'role': 'user', 'content': text}]
  messages = record['messages']
  if not (isinstance(messages, list) and messages and all(map(is_message, messages))):
    raise UserError(f'the chat prompt\'s "messages" is not a non-empty list of {{"role": one of {", ".join(ROLES)}, '
                    '"content": string}: fix it, or pass plain text as the user\'s turn.')
  return [{'role': m['role'], 'content': m['content']} for m in messages]


def message_pieces(message: Message) -> list[tuple[str, str]]:
  """Returns one message in flaxlm's TEMPLATE as (kind, text): its header, its content (a 'response' if the
  assistant's, else a 'prompt'), its end ('template')."""
  head, tail = TEMPLATE.split('{content}')
  kind = 'response' if message['role'] == 'assistant' else 'prompt'
  return [('template', head.format(role=message['role'])), (kind, message['content']), ('template', tail)]


def raise_exception(message: str) -> None:
  """Raises the error a template asks for (transformers' `raise_exception`)."""
  raise jinja2.exceptions.TemplateError(message)


def tojson(value, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
  """Returns `value` as JSON, non-ASCII text kept (transformers' `tojson` filter)."""
  return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


@functools.lru_cache(maxsize=8)
def compiled(template: str) -> jinja2.Template:
  """Returns the chat template compiled in transformers' sandboxed environment."""
  environment = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                             extensions=[jinja2.ext.loopcontrols])
  environment.filters['tojson'] = tojson
  environment.globals['raise_exception'] = raise_exception
  environment.globals['strftime_now'] = lambda format: datetime.datetime.now().strftime(format)
  return environment.from_string(template)


def render(tokenizer: tokenizer_lib.Tokenizer, messages: list[Message], add_generation_prompt: bool) -> str:
  """Returns the conversation as text, in the tokenizer's chat template (else flaxlm's TEMPLATE), followed by the
  assistant's header where `add_generation_prompt`; raises UserError in one line if the template fails to render."""
  if tokenizer.chat_template is None:
    text = ''.join(text for message in messages for _, text in message_pieces(message))
    return text + (TEMPLATE.split('{content}')[0].format(role='assistant') if add_generation_prompt else '')
  name = lambda token_id: '' if token_id is None else tokenizer.piece(token_id)
  try:
    return compiled(tokenizer.chat_template).render(
        messages=messages, add_generation_prompt=add_generation_prompt, bos_token=name(tokenizer.bos_id),
        eos_token=name(tokenizer.eos_id))
  except Exception as e:  # jinja2's TemplateError kinds, and whatever the template's expressions raise.
    reason = ' '.join(str(e).split()) or type(e).__name__
    raise UserError(f'the tokenizer\'s chat_template fails to render this conversation ({reason}): fix the '
                    'chat_template in its tokenizer_config.json, or the conversation.') from None


def pieces(tokenizer: tokenizer_lib.Tokenizer, messages: list[Message]) -> list[tuple[str, str]]:
  """Returns the rendered conversation as (kind, text) pieces in order: each assistant turn a 'response', the text
  between them 'template'; raises UserError if the template renders a turn differently once more follow."""
  whole, cuts = render(tokenizer, messages, False), []
  for i, message in enumerate(messages):
    if message['role'] == 'assistant':
      before, through = render(tokenizer, messages[:i], True), render(tokenizer, messages[:i + 1], False)
      if not (through.startswith(before) and whole.startswith(through)):
        raise UserError(f'the tokenizer\'s chat_template renders assistant turn {i + 1} differently once later turns '
                        'follow, so its text cannot be told from the rest: train on conversations that end there, or '
                        'use a template that renders each turn alike.')
      cuts.append((len(before), len(through)))
  result, done = [], 0
  for start, end in cuts:
    result += [('template', whole[done:start]), ('response', whole[start:end])]
    done = end
  result.append(('template', whole[done:]))
  return [(kind, text) for kind, text in result if text]


def prompt_ids(tokenizer: tokenizer_lib.Tokenizer, messages: list[Message]) -> np.ndarray:
  """Returns the int32 ids of the conversation followed by the generation prompt, as the model reads them: a chat
  template's text as rendered (it writes BOS itself), flaxlm's after BOS where the tokenizer adds it."""
  text = render(tokenizer, messages, True)
  return tokenizer.encode(text) if tokenizer.chat_template is not None else tokenizer_lib.model_ids(tokenizer, text)
