"""Every default of a flaxlm run, documented, and the values each may take. Presets start from `get_config()` and
change a few fields.

Any field can be overridden from the command line, for example `--config.train.steps=100`. `check` refuses a
config whose values are outside their rules (configs/options.py), once, before a command starts; how fields relate
to one another (a mesh that fits the devices, heads that divide the width) is checked where it is used.
"""

import ml_collections

from flaxlm.configs import options
from flaxlm.configs.options import AxisSize, Between, Interval, NonNegative, OneOf, Positive
from flaxlm.model.config import ModelConfig
from flaxlm.train import optimizer


def model_config() -> ml_collections.ConfigDict:
  """Returns the transformer's shape and options at their defaults: `ModelConfig`'s options (model/config.py says
  what each means and allows), the rotary and LoRA groups flattened as `rope_*` and `lora_*`."""
  return options.section(ModelConfig)


def train_config() -> ml_collections.ConfigDict:
  """Returns the optimizer, schedule and loop settings (read by `train.optimizer` and `train.loop`)."""
  c = ml_collections.ConfigDict()
  c.steps = 2000  # number of optimizer updates.
  c.batch_size = 12  # sequences per step, across all devices.
  c.microbatches = 1  # gradient accumulation: each step's batch is run in this many pieces, its gradients summed.
  c.optimizer = 'adamw'  # 'adamw', 'muon' (Muon for the layers' matrices, AdamW for the rest), 'adafactor' or
  # 'lion'; train/optimizer.py says what each reads.
  c.learning_rate = 1e-3  # peak learning rate, reached after the warmup (with muon: its AdamW part's).
  c.min_learning_rate = 1e-4  # where the decay ends, at the last step (cosine, wsd, linear).
  c.warmup_steps = 100  # linear warmup from 0 to learning_rate.
  c.schedule = 'cosine'  # after the warmup: 'cosine' decay, 'wsd' (stable, then a decay over the last
  # decay_fraction of the steps), 'linear' decay, or 'constant'.
  c.decay_fraction = 0.2  # wsd: the share of the steps, at the end, over which the rate decays.
  c.decay_shape = 'linear'  # wsd: how it decays, 'linear' or '1-sqrt'.
  c.beta1 = 0.9  # adamw and lion: the first moment's decay (with muon: its AdamW part's).
  c.beta2 = 0.99  # adamw and lion: the second moment's (lion: the momentum's own update).
  c.weight_decay = 0.1  # decoupled decay (times the learning rate), applied to matrices (kernels and embeddings)
  # only, by every optimizer.
  c.muon_learning_rate = 0.02  # muon: the peak rate of the matrices it orthogonalises, on the same schedule.
  c.muon_momentum = 0.95  # muon: its (Nesterov) momentum's decay.
  c.z_loss = 0.0  # weight of the squared log-normaliser of the logits added to the loss (PaLM's 1e-4); 0: none.
  c.grad_clip = 1.0  # global-norm gradient clipping; 0 turns it off.
  c.eval_every = 250  # steps between validation evaluations (and at the last step).
  c.eval_batches = 50  # validation batches per evaluation, the same ones every time.
  c.eval_tasks = ''  # lm-evaluation-harness tasks to score during training, as flaxlm-eval's --tasks (names or task
  # YAML paths, comma-separated; shakespeare_word_order is shipped); '' scores none.
  c.eval_tasks_every = 0  # steps between task scores (and at the last step); 0: at every validation evaluation.
  c.eval_tasks_limit = 0  # documents scored per task; 0: all of them.
  c.log_every = 10  # steps between metrics lines.
  c.checkpoint_every = 500  # steps between checkpoints (and at the last step).
  c.keep_checkpoints = 3  # how many recent checkpoints the workdir keeps (plus the best by val_loss).
  c.seed = 0  # seeds parameters, dropout and the order of training batches.
  c.init_from = ''  # fine-tuning: start from a flaxlm-export directory or a run's workdir (its latest checkpoint)
  # with a fresh optimizer and this config's schedule; the run then uses that model's tokenizer.
  c.nonfinite = 'stop'  # a step whose loss or gradients are not finite: 'stop' the run, or 'skip' its update.
  c.profile_steps = 0  # how many steps to trace with jax.profiler into WORKDIR/tensorboard (TensorBoard's profile
  # tab, Perfetto); 0 traces none.
  c.profile_start = 5  # the first step traced (numbered from 1, as logged): the steps before it compile and warm up.
  c.trackers = 'tensorboard'  # where metrics go besides metrics.jsonl: 'tensorboard', 'wandb' (Weights & Biases:
  # the wandb extra; WANDB_MODE=offline writes locally), or 'tensorboard,wandb'.
  c.wandb_project = 'flaxlm'  # wandb: the project its run is logged under.
  return c


def data_config() -> ml_collections.ConfigDict:
  """Returns where the training text comes from and how it becomes tokens (read by `train.loop`)."""
  c = ml_collections.ConfigDict()
  c.path = ''  # a token store (flaxlm-data prepare), or what one is prepared from at the first run (cached in
  # $FLAXLM_CACHE, default ~/.cache/flaxlm): text, JSONL or Parquet files (comma-separated, globs allowed), or
  # tfds:NAME[/CONFIG].
  c.format = 'text'  # 'text': learn every token; 'examples': one JSONL file of prompt/response (or chat messages)
  # examples, learning the responses only (see data/examples.py).
  c.text_field = 'text'  # the text field of JSONL records and TFDS examples.
  c.tfds_dir = ''  # where TFDS datasets are prepared; '' is TFDS's default (~/tensorflow_datasets).
  c.max_documents = 0  # read at most this many documents per TFDS split; 0 reads them all.
  c.tokenizer = 'char'  # 'char' (built from the text; with a store: the store's), 'byte' (UTF-8 bytes), a
  # SentencePiece .model file, a Hugging Face tokenizer.json, or a Hugging Face model folder.
  c.val_fraction = 0.1  # the share held out for validation: of the text's documents (and pieces of a long text),
  # evenly spread; of fine-tuning examples, the last.
  c.store_digest = ''  # set by the run: the SHA-256 of its token store's manifest (a resume reads the same tokens).
  c.read_threads = 0  # Grain threads preparing batches ahead; 0 prepares them in the training thread.
  return c


def mesh_config() -> ml_collections.ConfigDict:
  """Returns the device mesh's shape (read by `train.sharding`)."""
  c = ml_collections.ConfigDict()
  c.data = -1  # data-parallel axis; -1 takes all devices the other axes leave.
  c.fsdp = 1  # parameter-sharded data-parallel axis.
  c.expert = 1  # expert-parallel axis: a sparse model's experts split over it, and the batch too.
  c.tensor = 1  # tensor-parallel axis (heads, MLP width, vocab).
  c.dcn_data = 1  # multi-slice TPU (or multi-process) runs: how many slices (processes) the data axis spans.
  c.cpu_devices = 0  # on CPU, split the host into this many devices; 0: one per core that divides the batch.
  return c


TRAIN_RULES = {
    **{key: Positive() for key in ('steps', 'batch_size', 'microbatches', 'eval_every', 'eval_batches', 'log_every',
                                   'checkpoint_every', 'keep_checkpoints', 'profile_start')},
    'learning_rate': Interval('[0', 'inf)', 'the peak step size, 1e-3 say; 0 leaves the params as they are'),
    'min_learning_rate': Interval('[0', 'inf)', 'where the decay ends; 0 decays to nothing'),
    'warmup_steps': NonNegative('no warmup: the first step is at the peak'),
    'beta1': Interval('[0', '1)', "Adam's first-moment decay, 0.9 say"),
    'beta2': Interval('[0', '1)', "Adam's second-moment decay, 0.99 say"),
    'weight_decay': Interval('[0', 'inf)', '0 turns it off'),
    'grad_clip': Interval('[0', 'inf)', 'the largest gradient norm; 0 turns clipping off'),
    'nonfinite': OneOf(('stop', 'skip')),
    'optimizer': OneOf(tuple(optimizer.OPTIMIZERS)),
    'schedule': OneOf(optimizer.SCHEDULES),
    'decay_fraction': Interval('(0', '1]', 'the share of the steps that decays, 0.2 say'),
    'decay_shape': OneOf(optimizer.DECAY_SHAPES),
    'muon_learning_rate': Interval('(0', '0.5]', "the spectral norm of each matrix's step, 0.02 say; above 0.5 a "
                                   'step outweighs the initial weights'),
    'muon_momentum': Interval('[0', '1)', "Muon's momentum decay, 0.95 say"),
    'z_loss': Interval('[0', 'inf)', "PaLM's 1e-4; 0 turns it off"),
    'profile_steps': NonNegative('no trace'),
    'trackers': OneOf(('tensorboard', 'wandb', 'tensorboard,wandb')),
    'eval_tasks_every': NonNegative('0 scores the tasks at every validation evaluation'),
    'eval_tasks_limit': NonNegative('0 scores every document of each task'),
    'seed': Between(0, 2**32 - 1, 'what JAX seeds its random numbers with'),
}
DATA_RULES = {
    'format': OneOf(('text', 'examples')),
    'val_fraction': Interval('(0', '1)', 'the share of the text held out for validation, 0.1 say'),
    'read_threads': NonNegative('batches prepared in the training thread'),
    'max_documents': NonNegative('every document'),
}
MESH_RULES = {**{axis: AxisSize() for axis in ('data', 'fsdp', 'expert', 'tensor')}, 'dcn_data': Positive(),
              'cpu_devices': NonNegative('one device per core that divides the batch; N splits the host into N')}


def check(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the first value of `config` that its rule refuses (nan fails every range)."""
  for name, section_rules in (('model', options.rules(ModelConfig)), ('train', TRAIN_RULES), ('data', DATA_RULES),
                              ('mesh', MESH_RULES)):
    options.check(config[name], name, section_rules)


def get_config() -> ml_collections.ConfigDict:
  """Returns the full default config: model, train, data and mesh sections."""
  config = ml_collections.ConfigDict()
  config.model = model_config()
  config.train = train_config()
  config.data = data_config()
  config.mesh = mesh_config()
  return config
