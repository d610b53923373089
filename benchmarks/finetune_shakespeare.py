"""Fine-tunes the Shakespeare character model to shout, and prints how well it learned, before and after.

  flaxlm-train --config=shakespeare_char --workdir=/tmp/run
  python benchmarks/finetune_shakespeare.py --pretrained=/tmp/run --output=/tmp/shout
  python benchmarks/finetune_shakespeare.py --pretrained=/tmp/run --output=/tmp/shout_lora --lora_rank=8

The task is generated: a prompt 'Shout: good morrow, sweet lady\\n' asks for the response 'GOOD MORROW, SWEET LADY!'.
The phrases are drawn (seeded) from a list of Shakespearean words; the held-out prompts use phrases no training
example has. Prints the loss on the validation responses of the pretrained model and of the fine-tuned one
(configs/finetune_shakespeare.py, full or LoRA), then greedy answers to the held-out prompts: how many match
exactly, and what share of their letters are upper case (the kind of answer asked for).
"""

import contextlib
import io
import json
import pathlib
import random

import numpy as np
from absl import flags

from flaxlm.configs import finetune_shakespeare
from flaxlm.model import sampling
from flaxlm.train import loop, metrics
from flaxlm.train.use import pretrained
from flaxlm.train.commands import cli

PRETRAINED = flags.DEFINE_string('pretrained', None, 'Workdir (or export) of the pretrained Shakespeare model.')
OUTPUT = flags.DEFINE_string('output', None, 'New directory for the examples and the fine-tuning runs.')
LORA_RANK = flags.DEFINE_integer('lora_rank', 0, '0: fine-tune every weight; r > 0: LoRA adapters of rank r.')
STEPS = flags.DEFINE_integer('steps', 600, 'Fine-tuning steps.')
EXAMPLES = flags.DEFINE_integer('examples', 2000, 'Generated examples (the last tenth is validation).')
LEARNING_RATE = flags.DEFINE_float('learning_rate', None, 'Peak learning rate; default: the config\'s (3e-3 for LoRA).')
HELD_OUT = flags.DEFINE_integer('held_out', 50, 'Prompts of unseen phrases to answer greedily.')

WORDS = ('good morrow sweet lady fair lord noble king queen gentle heart night day love death sword crown fool '
         'honest false brave cousin father mother brother sister daughter son grace tongue eyes blood heaven '
         'fortune soul peace war friend enemy servant master duke prince true old young poor rich proud sad '
         'merry sweetest dearest gracious villain traitor').split()


def phrase(rng: random.Random) -> str:
  """Returns two to four words, the first two separated by a comma half the time."""
  words = [rng.choice(WORDS) for _ in range(rng.randint(2, 4))]
  if rng.random() < 0.5:
    words[0] += ','
  return ' '.join(words)


def prompt(text: str) -> str:
  """Returns the prompt that asks the model to shout `text`."""
  return f'Shout: {text}\n'


def shout(text: str) -> str:
  """Returns the answer expected for `text`: upper case, with an exclamation mark."""
  return text.upper() + '!'


def write_examples(path: pathlib.Path, count: int, held_out: int, seed: int = 0) -> list[str]:
  """Writes `count` prompt/response examples as JSONL and returns `held_out` phrases that none of them uses."""
  rng = random.Random(seed)
  phrases = []
  while len(set(phrases)) < count + held_out:
    phrases.append(phrase(rng))
  unique = list(dict.fromkeys(phrases))
  path.write_text(''.join(json.dumps({'prompt': prompt(p), 'response': shout(p)}) + '\n' for p in unique[:count]))
  return unique[count:count + held_out]


def tune(examples: pathlib.Path, workdir: pathlib.Path, steps: int, learning_rate: float | None) -> float:
  """Fine-tunes from --pretrained on `examples` for `steps` (at `learning_rate` if given); returns the last val_loss."""
  config = finetune_shakespeare.get_config()
  config.data.path, config.train.init_from, config.train.steps = str(examples), PRETRAINED.value, steps
  config.train.eval_every = config.train.checkpoint_every = steps
  config.model.lora_rank = LORA_RANK.value
  if LORA_RANK.value:
    config.model.lora_targets = 'query,key,value,out,gate,up,down'
    config.train.learning_rate, config.train.min_learning_rate = 3e-3, 3e-4
  if LEARNING_RATE.value:
    config.train.learning_rate, config.train.min_learning_rate = LEARNING_RATE.value, LEARNING_RATE.value / 10
  if learning_rate is not None:
    config.train.learning_rate = config.train.min_learning_rate = learning_rate
  with contextlib.redirect_stdout(io.StringIO()):  # The runs' own lines: see metrics.jsonl in their workdirs.
    loop.train(config, str(workdir))
  return metrics.read_metrics(workdir)[-1]['val_loss']


def answers(workdir: pathlib.Path, phrases: list[str]) -> list[str]:
  """Returns the model's greedy answer to each phrase's prompt, as long as the expected answer."""
  model, params, tokenizer = pretrained.load(workdir)
  settings = sampling.Settings(temperature=0.0)
  samples = [sampling.generate(model, params, [tokenizer.encode(prompt(p))], len(shout(p)), settings=settings)[0]
             for p in phrases]
  return [tokenizer.decode(sample.tokens) for sample in samples]


def upper_share(texts: list[str]) -> float:
  """Returns the share of the letters of `texts` that are upper case."""
  letters = [c for text in texts for c in text if c.isalpha()]
  return float(np.mean([c.isupper() for c in letters])) if letters else 0.0


def report(name: str, phrases: list[str], said: list[str]) -> None:
  """Prints exact matches and the upper-case share of `said`, with the first three answers."""
  exact = sum(s == shout(p) for p, s in zip(phrases, said))
  print(f'{name}: {exact}/{len(phrases)} held-out prompts answered exactly; {upper_share(said):.0%} of the letters '
        f'upper case; e.g. ' + '; '.join(f'{p!r} -> {s!r}' for p, s in zip(phrases[:3], said[:3])))


def run() -> None:
  """Generates the examples, measures the pretrained model, fine-tunes, measures again, and prints the figures."""
  cli.required(PRETRAINED, 'pass --pretrained=DIR, a trained shakespeare_char run or its export.')
  output = pathlib.Path(cli.required(OUTPUT, 'pass --output=DIR, a new directory.'))
  output.mkdir(parents=True)
  phrases = write_examples(output / 'examples.jsonl', EXAMPLES.value, HELD_OUT.value)
  before = tune(output / 'examples.jsonl', output / 'untouched', 1, 0.0)  # One step at learning rate 0.
  after = tune(output / 'examples.jsonl', output / 'tuned', STEPS.value, None)
  kind = f'LoRA rank {LORA_RANK.value}' if LORA_RANK.value else 'full fine-tune'
  print(f'validation loss on the responses: pretrained {before:.3f}, after {STEPS.value} steps ({kind}) '
        f'{after:.3f} nats per character')
  report('pretrained', phrases, answers(output / 'untouched', phrases))
  report('fine-tuned', phrases, answers(output / 'tuned', phrases))


if __name__ == '__main__':
  cli.run(run)
