"""Config options declared once: each with its default, what it means, and the values it may take.

A config section can be a frozen dataclass whose fields are `option(...)`s (the model's: model/config.py).
configs/base.py builds the section from it (`section`), so a default and its documentation live in one place, and
`base.check` checks a whole config's values against the rules declared with them, once, before a command starts.
A field whose default is another such dataclass is a group, flattened into the section under its name as a prefix:
the `rope` group's `theta` is `model.rope_theta`.

A rule says what is wrong with a value (`problem`, a phrase) or returns None, once `check_value` has found the value
of the rule's `kind` (an integer, a number or text: a JSON file or a Python config can hold anything); `check_value`
makes the phrase the one line a user sees, naming the key to set.
"""

import dataclasses
import math
from typing import Any, Callable, ClassVar

import ml_collections

from flaxlm.configs.errors import UserError


LARGEST = 2**31 - 1  # The most a count or size may be: the device holds them (steps, ids, shapes) as int32.
KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {  # Each kind of value: its name, and whether a value is one
    'integer': ('an integer', lambda v: isinstance(v, int) and not isinstance(v, bool)),  # (a bool is no number,
    'number': ('a number', lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),  # though Python's are)
    'text': ('text', lambda v: isinstance(v, str))}


@dataclasses.dataclass(frozen=True)
class Positive:
  """A count or size above zero."""
  kind: ClassVar[str] = 'integer'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value`, or None."""
    return None if 0 < value <= LARGEST else f'must be positive (and at most {LARGEST:,})'


@dataclasses.dataclass(frozen=True)
class NonNegative:
  """A count or size where 0 takes a default (`zero`, say what)."""
  zero: str
  kind: ClassVar[str] = 'integer'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value`, or None."""
    return None if 0 <= value <= LARGEST else f'must not be negative (0 takes {self.zero}) or above {LARGEST:,}'


@dataclasses.dataclass(frozen=True)
class Between:
  """An integer from `low` to `high`; `meaning` says what it is."""
  low: int
  high: int
  meaning: str
  kind: ClassVar[str] = 'integer'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value`, or None."""
    return None if self.low <= value <= self.high else f'must be from {self.low:,} to {self.high:,} ({self.meaning})'


@dataclasses.dataclass(frozen=True)
class AxisSize:
  """A mesh axis's size: a positive count, or -1 for the devices the other axes leave."""
  kind: ClassVar[str] = 'integer'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value`, or None."""
    return None if value == -1 or 0 < value <= LARGEST else 'must be -1 (the devices the other axes leave) or positive'


@dataclasses.dataclass(frozen=True)
class PositiveFinite:
  """A positive finite number; `usual` says what is usual."""
  usual: str
  kind: ClassVar[str] = 'number'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value` (nan fails every comparison), or None."""
    return None if 0 < value < math.inf else f'must be a positive finite number (usually {self.usual})'


@dataclasses.dataclass(frozen=True)
class Finite:
  """Any finite number; `usual` says what is usual."""
  usual: str
  kind: ClassVar[str] = 'number'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value`, or None."""
    return None if -math.inf < value < math.inf else f'must be a finite number (usually {self.usual})'


@dataclasses.dataclass(frozen=True)
class Interval:
  """A number in an interval written as '[0' and '1)' (a bracket includes its end, a parenthesis excludes it)."""
  low: str
  high: str
  meaning: str
  kind: ClassVar[str] = 'number'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value` (not finite included), or None."""
    lo, hi = float(self.low[1:]), float(self.high[:-1])
    above = value > lo if self.low[0] == '(' else value >= lo
    below = value < hi if self.high[-1] == ')' else value <= hi
    if above and below and math.isfinite(value):
      return None
    return f'must be in {self.low}, {self.high} ({self.meaning})'


@dataclasses.dataclass(frozen=True)
class OneOf:
  """One of a few named choices."""
  choices: tuple[str, ...]
  kind: ClassVar[str] = 'text'

  def problem(self, value: Any) -> str | None:
    """Returns what is wrong with `value`, or None."""
    return None if value in self.choices else f'is not one of {self.choices}'


Rule = Positive | NonNegative | Between | AxisSize | PositiveFinite | Finite | Interval | OneOf


def option(default: Any, doc: str, rule: Rule | None = None) -> Any:
  """Returns a dataclass field with `default`, its documentation and the rule its values follow (None: any)."""
  return dataclasses.field(default=default, metadata={'doc': doc, 'rule': rule})


def group(cls: type) -> Any:
  """Returns a dataclass field holding a group of options, `cls()` by default (flattened under the field's name)."""
  return dataclasses.field(default_factory=cls, metadata={'doc': cls.__doc__.splitlines()[0], 'rule': None})


def is_group(field: dataclasses.Field) -> bool:
  """Returns whether a field holds a group of options rather than one value."""
  return field.default_factory is not dataclasses.MISSING


def flat_fields(cls: type, prefix: str = '') -> list[tuple[str, dataclasses.Field]]:
  """Returns (section key, field) for every option of `cls`, groups flattened: ('rope_theta', field of theta)."""
  flat = []
  for field in dataclasses.fields(cls):
    if is_group(field):
      flat += flat_fields(field.default_factory, f'{prefix}{field.name}_')
    else:
      flat.append((prefix + field.name, field))
  return flat


def section(cls: type) -> ml_collections.ConfigDict:
  """Returns the config section of `cls`'s options at their defaults."""
  return ml_collections.ConfigDict(values(cls()))


def values(instance: Any) -> dict[str, Any]:
  """Returns each section key of a dataclass of options with its value in `instance` (groups flattened)."""
  return {key: value(instance, key) for key, _ in flat_fields(type(instance))}


def markdown_table(cls: type, name: str) -> str:
  """Returns a Markdown table of `cls`'s options as the section `name`: each key, its default and what it means (the
  table docs/ shows, checked against this by the tests so it cannot drift)."""
  rows = [f'| `{name}.{key}` | `{field.default!r}` | {field.metadata["doc"]} |' for key, field in flat_fields(cls)]
  return '\n'.join(['| option | default | what it is |', '| --- | --- | --- |', *rows])


def rules(cls: type) -> dict[str, Rule]:
  """Returns the rule of each option of `cls` that has one, by section key."""
  return {key: field.metadata['rule'] for key, field in flat_fields(cls) if field.metadata['rule']}


def read(cls: type, values: ml_collections.ConfigDict, prefix: str = '') -> Any:
  """Returns `cls` built from a section's values (a group from its prefixed keys); keys the section lacks keep their
  defaults, and keys `cls` does not declare are not read."""
  kwargs = {}
  for field in dataclasses.fields(cls):
    if is_group(field):
      kwargs[field.name] = read(field.default_factory, values, f'{prefix}{field.name}_')
    elif prefix + field.name in values:
      kwargs[field.name] = values[prefix + field.name]
  return cls(**kwargs)


def value(instance: Any, key: str) -> Any:
  """Returns the value of section key `key` in a dataclass of options ('rope_theta' is instance.rope.theta)."""
  for field in dataclasses.fields(instance):
    if is_group(field) and key.startswith(field.name + '_'):
      return value(getattr(instance, field.name), key.removeprefix(field.name + '_'))
  return getattr(instance, key)


class Refused(UserError):
  """A value its rule refuses: `what` names the key and value and says what is wrong; the message adds the flag."""

  def __init__(self, name: str, what: str):
    super().__init__(f'{what}: set --config.{name}.')
    self.what = what


def check_value(name: str, value: Any, rule: Rule) -> None:
  """Raises Refused naming `name` (a 'section.key'), its value, what is wrong with it (its kind first: text where
  a number belongs, true for a count) and the flag to set."""
  kind, is_kind = KINDS[rule.kind]
  problem = rule.problem(value) if is_kind(value) else f'is not {kind}'
  if problem:
    shown = repr(value) if isinstance(value, str) else value
    raise Refused(name, f'{name}={shown} {problem}')


def check(values: ml_collections.ConfigDict, name: str, section_rules: dict[str, Rule]) -> None:
  """Raises UserError for the first key of the section `values` (called `name` in the config) whose value its rule
  refuses; keys the section lacks (a config saved before they existed) are not checked."""
  for key, rule in section_rules.items():
    if key in values:
      check_value(f'{name}.{key}', values[key], rule)
