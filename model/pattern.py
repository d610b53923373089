"""Which layers attend to the whole context before them and which to a window of it: the layer pattern.

`model.layer_pattern` names the kinds of successive layers, repeated over the depth: 'global' (every layer sees
every earlier position of its document, the default), 'local' (a layer sees the last `model.window` positions, its
own included), or a mix: Gemma 2's 'local,global' alternates, Gemma 3's 'local*5,global' is five local layers then
a global one. A kind may be followed by *n, n repeats of it.

The transformer scans over groups of one pattern (model/transformer.py), so compile time grows with the pattern's
length, never with depth; the layers a last, partial group leaves (Gemma 3 1B: 26 = 4 x 6 + 2) run unscanned.
"""

KINDS = ('global', 'local')
MOST_REPEATS = 1024  # More layers than any model has: a pattern longer than this is a typo.


def parse(pattern: str) -> tuple[str, ...]:
  """Returns the kinds `pattern` names, in order, repeats written out ('local*2,global' -> local, local, global).

  Raises ValueError with a phrase naming what is wrong: an unknown kind, or a repeat that is not a count.
  """
  kinds = []
  for entry in pattern.split(','):
    kind, _, repeats = entry.strip().partition('*')
    if kind.strip() not in KINDS:
      raise ValueError(f'names the layer kind {kind.strip()!r}; the kinds are {" and ".join(KINDS)}')
    if repeats and not (repeats.strip().isdigit() and 0 < int(repeats) <= MOST_REPEATS):
      raise ValueError(f'repeats {kind.strip()!r} {repeats.strip()!r} times; write a count from 1 to {MOST_REPEATS}')
    kinds += [kind.strip()] * (int(repeats) if repeats else 1)
  return tuple(kinds)


def problem(pattern: str, window: int) -> str | None:
  """Returns what is wrong with a pattern and window together (one line naming the fix), or None."""
  try:
    kinds = parse(pattern)
  except ValueError as e:
    return (f'model.layer_pattern={pattern!r} {e}: set --config.model.layer_pattern (for example local*5,global, '
            "Gemma 3's).")
  if 'local' in kinds and not window:
    return (f'model.layer_pattern={pattern!r} has local layers, and model.window is 0: set --config.model.window '
            '(the positions a local layer sees; Gemma 3: 512, Gemma 2: 4096).')
  return None


def longer_than_context(window: int, max_length: int) -> str | None:
  """Returns the problem of a model designed with a window longer than its context (its local layers would see all
  of it: a typo, or global layers meant), or None. A fine-tune keeps its base's window at any context of its own."""
  if window > max_length:
    return (f'model.window={window} is longer than the context, model.max_length={max_length}: a local layer would '
            'see all of it; set --config.model.window to at most max_length, or make the layers global.')
  return None


def of_layers(pattern: str, num_layers: int) -> tuple[str, ...]:
  """Returns the kind of each of the `num_layers` layers: the pattern repeated, the last repeat cut short."""
  kinds = parse(pattern)
  return tuple(kinds[i % len(kinds)] for i in range(num_layers))


def as_text(kinds: tuple[str, ...]) -> str:
  """Returns the shortest pattern text for `kinds` (a whole pattern's or one layer's each): local*5,global."""
  runs: list[list] = []
  for kind in kinds:
    if runs and runs[-1][0] == kind:
      runs[-1][1] += 1
    else:
      runs.append([kind, 1])
  return ','.join(kind if count == 1 else f'{kind}*{count}' for kind, count in runs)


def shortest(kinds: tuple[str, ...]) -> tuple[str, ...]:
  """Returns the shortest pattern whose repeats, the last cut short, give `kinds` (each layer's kind, in order)."""
  return next(kinds[:n] for n in range(1, len(kinds) + 1)
              if all(kind == kinds[i % n] for i, kind in enumerate(kinds)))
