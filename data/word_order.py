"""The evaluation task flaxlm ships, `shakespeare_word_order`: finish a held-out line of Shakespeare, choosing the
true order of its last words among four orders of them (chance: 25%).

The lines are from the shipped corpus's validation pieces, exactly those a run on `flaxlm:tinyshakespeare` holds out
(data/prepare.py, `val_fraction` 0.1), so a model trained on that corpus has never read them. Each document is a
speech line (of at least five words) with the line before it: the context is that line and the first half of the
speech line's words; the choices are the rest of its words in their own order and in three other orders, placed in a
fixed random order. Every choice has the same characters, so no length or spelling gives the answer away: a model
scores above chance by knowing how English (and Shakespeare's verse) orders words.
"""

import random

from flaxlm.data import prepare, sources

CORPUS = 'tinyshakespeare'
CHOICES = 4
MAX_DOCUMENTS = 500
SEED = 0


def held_out_pieces() -> list[str]:
  """Returns the validation pieces of the shipped corpus, in order, as a run on it splits them."""
  settings = prepare.Settings()
  group = prepare.file_groups(str(sources.shipped(CORPUS)), prepare.INLINE_BYTES)[0]
  return [unit.text for index, unit in enumerate(prepare.units(group, settings))
          if prepare.held_out(index, settings.val_fraction)]


def is_speech(line: str) -> bool:
  """Returns whether `line` is a line of speech: not empty, and not a speaker's name ('ROMEO:')."""
  return bool(line.strip()) and not line.rstrip().endswith(':')


def split_line(line: str) -> tuple[str, list[str]] | None:
  """Returns (the first half of a line's words, the rest as words), None for a line whose rest is under 3 words."""
  words = line.split()
  half = len(words) // 2
  return (' '.join(words[:half]), words[half:]) if len(words) - half >= 3 and half else None


def shuffles(words: list[str], count: int, rng: random.Random) -> list[str]:
  """Returns `count` distinct orders of `words` other than their own, as text; fewer if there are not so many."""
  own, seen = ' '.join(words), set()
  for _ in range(100):
    order = ' '.join(rng.sample(words, len(words)))
    if order != own:
      seen.add(order)
    if len(seen) == count:
      break
  return sorted(seen)


def documents() -> list[dict]:
  """Returns the task's documents: {'context', 'choices', 'answer'}, at most MAX_DOCUMENTS, the same every time."""
  rng = random.Random(SEED)
  docs = []
  for piece in held_out_pieces():
    lines = piece.split('\n')
    for end in range(1, len(lines) - 1, 2):  # Passages that share no line.
      halves = split_line(lines[end]) if lines[end - 1].strip() and is_speech(lines[end]) else None
      others = shuffles(halves[1], CHOICES - 1, rng) if halves else []
      if len(others) == CHOICES - 1 and len(docs) < MAX_DOCUMENTS:
        answer = rng.randrange(CHOICES)
        choices = others[:answer] + [' '.join(halves[1])] + others[answer:]
        docs.append({'context': lines[end - 1] + '\n' + halves[0], 'choices': choices, 'answer': answer})
  return docs
