"""Fine-tuning the Shakespeare character model on prompt/response examples: only the responses are learned.

  flaxlm-train --config=shakespeare_char --workdir=/tmp/run
  flaxlm-data check examples.jsonl --tokenizer=char --max_length=64
  flaxlm-train --config=finetune_shakespeare --config.data.path=examples.jsonl \
      --config.train.init_from=/tmp/run --workdir=/tmp/tuned

Each line of examples.jsonl is {"prompt": "...", "response": "..."} or {"messages": [...]} (data/examples.py);
their characters must be ones the pretrained model's tokenizer knows.

Its TPU slice is the Shakespeare model's: one v5e chip (the step's memory depends on the shapes alone, so
`flaxlm-info --compile_for` needs no init_from).
"""

import ml_collections

from flaxlm.configs import shakespeare_char

TPU_SLICE = shakespeare_char.TPU_SLICE


def get_config() -> ml_collections.ConfigDict:
  """Returns the Shakespeare model's shape, 600 steps at pre-training's peak learning rate, on examples.

  benchmarks/finetune_shakespeare.py measured this on a generated task (RESULTS.md): at a tenth of that rate, 300
  steps taught the answers' form (upper case) but not their content.
  """
  config = shakespeare_char.get_config()
  config.data.format = 'examples'
  config.train.steps = 600
  config.train.learning_rate = 1e-3
  config.train.min_learning_rate = 1e-4
  config.train.warmup_steps = 20
  config.train.eval_every = 50
  config.train.checkpoint_every = 100
  return config
