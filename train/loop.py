"""The training loop: set up from a config (its inputs from train/inputs.py, a pretrained start from
train/use/pretrained.py), then step, evaluate, log and checkpoint until `train.steps`.

The loop dispatches step s+1 before it pulls step s's metrics to the host, so logging never stalls the device.
"""

import contextlib
import dataclasses
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import lock, pipeline, tokenizer as tokenizer_lib
from flaxlm.model import attention, flops, lora, pattern, quantize
from flaxlm.model.config import ModelConfig
from flaxlm.model.transformer import Transformer, count_params
from flaxlm.train import (checkpoint, inputs, memory, metrics, optimizer, preemption, profile, sharding,
                          state as state_lib, step as step_lib, throughput, trackers, workdir as workdir_lib)
from flaxlm.train.use import pretrained


@dataclasses.dataclass
class Setup:
  """What a run needs before its first step, all checked before anything is written to the workdir."""
  config: ml_collections.ConfigDict  # resolved: the model section states every derived value.
  tokenizer: tokenizer_lib.Tokenizer
  train_examples: pipeline.PackedExamples
  val_examples: pipeline.PackedExamples
  model: Transformer
  mesh: jax.sharding.Mesh
  tasks: Any = None  # train.eval_tasks' (names, the harness's task manager), their data read; None without tasks.


def prepare(config: ml_collections.ConfigDict, workdir: str, holding: contextlib.ExitStack | None = None) -> Setup:
  """Returns the checked setup of a run whose config passed base.check; raises UserError, having written nothing, if
  any input is wrong. A token store prepared into the cache stays locked until `holding` closes (and is removed if it
  closes on an error); without `holding`, until this returns."""
  if holding is None:
    with contextlib.ExitStack() as holding:
      return prepare(config, workdir, holding)
  profile.check(config.train)
  trackers.check(config.train)
  if config.train.init_from:  # Refuses a path that holds no run or export before reading any text.
    config = pretrained.adopt(config)
  shape = ModelConfig.from_config(config.model, 1)  # Check the model before reading a possibly large file.
  attention.resolve(shape.attention, jax.default_backend(), shape.dtype, shape.head_dim, shape.attention_softcap)
  if not config.train.init_from and (problem := pattern.longer_than_context(shape.window, shape.max_length)):
    raise UserError(problem)
  if config.model.lora_rank and not config.train.init_from:
    raise UserError(f'model.lora_rank={config.model.lora_rank} trains adapters on a pretrained model: set '
                    '--config.train.init_from to a flaxlm-export directory or a run\'s workdir.')
  tokenizer, streams, digest = inputs.streams(config, holding)
  resolved = workdir_lib.resolve(config, tokenizer.vocab_size)
  resolved.data.store_digest = digest
  for change in workdir_lib.check_compatible(workdir, resolved, tokenizer):
    if jax.process_index() == 0:
      print(f'resuming with {change} (it changes how the model is computed, not what it learns)', flush=True)
  model = Transformer(ModelConfig.from_config(resolved.model, tokenizer.vocab_size))
  train_examples, val_examples = (pipeline.PackedExamples(stream, config.model.max_length, tokenizer.pad_id or 0)
                                  for stream in streams)
  for name, examples in (('training', train_examples), ('validation', val_examples)):
    if len(examples) < config.train.batch_size:
      raise UserError(f'the {name} split holds {len(examples)} sequences of {config.model.max_length} tokens, '
                      f'fewer than one batch of {config.train.batch_size}: use a longer text, or a smaller '
                      '--config.train.batch_size or --config.model.max_length.')
  return Setup(resolved, tokenizer, train_examples, val_examples, model, sharding.make_mesh(config),
               eval_tasks(config.train, model, tokenizer))


def eval_tasks(c: ml_collections.ConfigDict, model: Transformer,
               tokenizer: tokenizer_lib.Tokenizer) -> tuple[list[str], Any] | None:
  """Returns train.eval_tasks' (names, task manager), None for ''; raises UserError naming a task that cannot run:
  each is loaded and its requests (the train.eval_tasks_limit first documents') encoded and checked in a dry run."""
  if not c.eval_tasks:
    return None
  try:
    from flaxlm.train.use import evaluate, harness  # The harness is imported by the runs that score tasks alone.
    names = evaluate.task_names(c.eval_tasks)
    manager = evaluate.task_manager(names, None)
    evaluate.load_tasks(names, manager)
    evaluate.evaluate(harness.FlaxLM(model, None, tokenizer), names, manager, limit=c.eval_tasks_limit or None)
  except UserError as e:
    raise UserError(f'train.eval_tasks: {e}') from None
  return names, manager


def task_scores(setup: Setup, params) -> dict[str, float]:
  """Returns the scores of train.eval_tasks for `params` (`evaluate.flat_scores`), run in batches of at most a GiB of
  float32 logits per device."""
  from flaxlm.train.use import evaluate, harness
  c, names_manager = setup.model.config, setup.tasks
  per_device = max(1, min(16, 2**30 // (4 * c.max_length * c.vocab_size)))
  rows = per_device * sharding.batch_shards(setup.mesh.shape)
  lm = harness.FlaxLM(setup.model, params, setup.tokenizer, rows)
  limit = setup.config.train.eval_tasks_limit or None
  return evaluate.flat_scores(evaluate.evaluate(lm, *names_manager, limit=limit))


def validation_batches(setup: Setup) -> list[dict[str, jax.Array]]:
  """Returns the fixed validation batches (`train.eval_batches` of them, B x T each), on their devices."""
  c = setup.config.train
  return [sharding.global_batch(b, setup.mesh)
          for b in pipeline.eval_batches(setup.val_examples, c.batch_size, c.eval_batches,
                                         sharding.process_rows(setup.mesh, c.batch_size))]


def evaluate(eval_fn, params, val_batches: list[dict[str, jax.Array]]) -> float:
  """Returns the validation loss: the mean loss per trained token over all `val_batches`, fetched in one wait.

  `eval_fn(params, batch)` returns the batch's (sum of token losses, sum of weights), so batches that train
  different counts of tokens (fine-tuning examples) weigh by those counts.
  """
  sums = np.asarray(jax.device_get([eval_fn(params, batch) for batch in val_batches]), np.float64)
  return float(sums[:, 0].sum() / max(sums[:, 1].sum(), 1))


def build_steps(setup: Setup):
  """Returns (optimizer, abstract state, train_fn, eval_fn) for a checked setup."""
  c = setup.config.train
  tx = optimizer.make_optimizer(c)
  abstract = state_lib.abstract_state(setup.model, tx, setup.mesh, setup.config.model.lora_base)
  train_fn, eval_fn = step_lib.compile_steps(setup.model, tx, optimizer.schedule(c), c.seed, abstract, setup.mesh,
                                             c.microbatches, c.z_loss)
  return tx, abstract, train_fn, eval_fn


def read_frozen(setup: Setup, abstract_frozen):
  """Returns a LoRA run's frozen base: train.init_from's params, read in model.lora_base's read dtype straight into
  their devices, then held as it says, laid out as `abstract_frozen`. The same bits on every call: resumes are exact."""
  storage = setup.config.model.lora_base
  float_layout = lambda x: jax.ShapeDtypeStruct(x.shape, lora.read_dtype(storage), sharding=x.sharding)
  as_read = jax.tree.map(float_layout, quantize.integers(abstract_frozen))
  initial = pretrained.read_initial_params(setup.config.train.init_from, as_read)
  return state_lib.hold_frozen(initial, abstract_frozen, storage)


def describe_params(state: state_lib.TrainState) -> str:
  """Returns '1,234 parameters', or for LoRA how many of them are trained: '1,234 parameters, 56 trained (4.54%)'."""
  trained = count_params(state.params)
  if state.frozen is None:
    return f'{trained:,} parameters'
  total = trained + count_params(quantize.integers(state.frozen))
  return f'{total:,} parameters, {trained:,} trained (LoRA adapters: {trained / total:.2%})'


@contextlib.contextmanager
def writing(workdir: str, take_over: bool) -> Iterator[bool]:
  """Holds the lock of `workdir` (data/lock.py) while the block runs and yields whether the workdir is new (made by
  this run): process 0 takes the lock, and every process learns whether it did; raises UserError, having written
  nothing, if another run holds it."""
  with contextlib.ExitStack() as stack:
    refused, new = None, False
    if jax.process_index() == 0:
      try:
        new = stack.enter_context(lock.held(workdir, '--workdir', take_over))
      except UserError as e:
        refused = e
    if jax.process_count() > 1 and not multihost_utils.broadcast_one_to_all(np.int32(refused is None)):
      raise refused or UserError(f'process 0 could not lock --workdir={workdir}: its error line says why.')
    if refused:
      raise refused
    yield new


def train(config: ml_collections.ConfigDict, workdir: str, take_over: bool = False) -> state_lib.TrainState:
  """Trains (or resumes) the run in `workdir` to `config.train.steps` and returns the final state; `take_over`
  takes the workdir's lock from a run that holds it (one known to be gone).

  Stops early, with a checkpoint saved, on SIGTERM; raises UserError if the loss stops being finite, or, having
  written nothing, if an input is wrong or another run writes the workdir.
  """
  base.check(config)
  sharding.configure_cpu_devices(config)
  workdir_lib.check_usable(workdir)
  with writing(workdir, take_over) as new:
    return train_locked(config, workdir, new)


def train_locked(config: ml_collections.ConfigDict, workdir: str, new: bool) -> state_lib.TrainState:
  """Trains the run in `workdir`, whose lock this process holds (see `train`); a `new` workdir whose run stops
  before its first step is emptied again (its lock then removes it)."""
  manager = log = None
  try:
    with contextlib.ExitStack() as holding:  # A token store prepared for the run stays locked until it starts.
      setup, state, data, train_fn, eval_fn = start(config, workdir, holding)
      manager = checkpoint.checkpoint_manager(workdir, setup.config.train.keep_checkpoints)
      log = metrics.MetricsLog(workdir, setup.config)
      preemption.check_interrupted()
  except BaseException as e:
    for opened in (manager, log):  # Closed before their files are removed (a new workdir's) or kept.
      if opened is not None:
        opened.close()
    if new and jax.process_index() == 0:
      workdir_lib.remove_run_files(workdir)
    if isinstance(e, KeyboardInterrupt):
      raise KeyboardInterrupt('before the first step: nothing was written; run the same command to start again.' if new
                              else f'before the first step: {last_saved(workdir)}') from None
    raise
  with (preemption.watch(manager) as preempted,  # Until the last save is written: a signal then waits for it.
        contextlib.closing(profile.Window(setup.config.train, workdir)) as trace):  # Stopped however the run ends.
    try:
      return run_steps(setup, state, data, train_fn, eval_fn, manager, log, preempted, trace)
    except KeyboardInterrupt:
      with preemption.sigint_held(deliver=False):
        manager.wait_until_finished()  # The save in flight, if any, then counts: the message below is true.
      raise KeyboardInterrupt(last_saved(workdir)) from None
    finally:
      with preemption.sigint_held(deliver=False):
        manager.wait_until_finished()
        manager.close()
      log.close()


def start(config: ml_collections.ConfigDict, workdir: str, holding: contextlib.ExitStack):
  """Checks and sets up the run in `workdir`, then writes its run files; returns (setup, state, data iterator,
  train_fn, eval_fn). Everything that can fail on the inputs does so before the first write (`prepare`'s
  `holding`)."""
  setup = prepare(config, workdir, holding)
  c = setup.config.train
  tx, abstract, train_fn, eval_fn = build_steps(setup)
  memory.check_fits(abstract)
  preemption.check_interrupted()  # A signal raised inside a library's callback while compiling was dropped there.
  lead = jax.process_index() == 0  # Only the first process writes files and prints.
  data = pipeline.train_iterator(setup.train_examples, c.batch_size, c.seed, setup.config.data.read_threads,
                                 sharding.process_rows(setup.mesh, c.batch_size))
  restored = checkpoint.restore_latest(workdir, abstract, check=lambda restored: data.set_state(restored[1]))
  lora_run = abstract.frozen is not None
  starts_pretrained = c.init_from and not restored and not lora_run
  initial = pretrained.read_initial_params(c.init_from, abstract.params) if starts_pretrained else None
  frozen = read_frozen(setup, abstract.frozen) if lora_run else None  # Read again on resuming: not checkpointed.
  check_first_batch(data)
  preemption.check_interrupted()
  if lead:
    workdir_lib.write_run_files(workdir, setup.config, setup.tokenizer)
  if restored:
    state = restored[0]  # The data iterator took the checkpoint's position in restore_latest's check.
  else:
    state = state_lib.init_state(setup.model, tx, c.seed, abstract)
    state = state if initial is None else state.replace(params=initial)
  state = state.replace(frozen=frozen)
  step = int(state.step)
  if lead:
    metrics.drop_after(workdir, step)
    print(f'model: {describe_params(state)}; mesh {dict(setup.mesh.shape)}; '
          f'{len(setup.train_examples):,} training sequences ({setup.train_examples.padding_fraction():.2%} '
          f'padding); {"resuming at" if step else "starting from"} step {step} of {c.steps}', flush=True)
  return setup, state, data, train_fn, eval_fn


def check_first_batch(data) -> None:
  """Reads the next batch of `data` and puts the iterator back: data that cannot be read fails before the run writes
  anything."""
  position = data.get_state()
  next(data)
  data.set_state(position)


def last_saved(workdir: str) -> str:
  """Returns what an interrupted run says: the step it resumes from, or that nothing was saved."""
  steps = checkpoint.saved_steps(workdir)
  if not steps:
    return 'no checkpoint was saved: run the same command to start again.'
  return (f'the last checkpoint saved is step {steps[-1]} (later steps are lost): run the same command to resume '
          'from it.')


def run_steps(setup: Setup, state: state_lib.TrainState, data, train_fn, eval_fn, manager, log: metrics.MetricsLog,
              preempted, trace: profile.Window) -> state_lib.TrainState:
  """Runs the steps from `state.step` to the end (or a preemption), logging, evaluating, checkpointing and tracing
  the profiled window."""
  c, length = setup.config.train, setup.config.model.max_length
  val_batches = validation_batches(setup)
  timer = throughput.Throughput(c.batch_size * length, flops.training_flops_per_token(setup.model.config),
                                setup.mesh.size, setup.mesh.devices.flat[0].device_kind)
  first, pending, unchecked, stop = int(state.step), None, None, False
  for step in range(first, c.steps):
    done = step + 1
    trace.before(done)
    state, step_metrics = train_fn(state, sharding.global_batch(next(data), setup.mesh))
    if trace.stops_after(done):  # Once the window's last step has run: writing the trace is not training.
      jax.block_until_ready(step_metrics)
      with timer.paused():
        trace.close()
    if step == first:  # Compiling the step is not training: measure from the end of the first step.
      jax.block_until_ready(step_metrics)
      timer.start(done)
    if unchecked:  # The previous step's loss, read while this step runs.
      check_finite(*unchecked, manager)
    unchecked = (done, step_metrics)
    if pending:
      log.write(*timer.finish(*pending))
      pending = None
    due = lambda every: done % every == 0 or done == c.steps
    tasks_due = setup.tasks is not None and due(c.eval_tasks_every or c.eval_every)
    stop = preempted(done)
    if due(c.log_every) or due(c.eval_every) or tasks_due or stop:
      pending = (done, step_metrics, {})
    if due(c.eval_every) or due(c.checkpoint_every) or stop:
      check_finite(*unchecked, manager)  # Waits for the step, which counts as training time.
      unchecked = None
    if due(c.eval_every):
      with timer.paused():
        pending[2]['val_loss'] = evaluate(eval_fn, state_lib.model_params(state), val_batches)
    if tasks_due:
      with timer.paused():
        pending[2].update(task_scores(setup, state_lib.model_params(state)))
    if due(c.checkpoint_every) or stop:
      with timer.paused(), preemption.sigint_held():  # A Ctrl-C counts once this save is under way whole.
        checkpoint.save(manager, state, data.get_state(), setup.config, pending and pending[2].get('val_loss'))
    if stop:
      break
  if pending:
    log.write(*timer.finish(*pending))
  if stop:
    with preemption.sigint_held():
      manager.wait_until_finished()  # The message below is true only once the save is written.
    if jax.process_index() == 0:
      print(f'stopped at step {int(state.step)} on {stop}, with a checkpoint saved: run the same command to resume.',
            flush=True)
  return state


def check_finite(step: int, step_metrics: dict, manager) -> None:
  """Raises UserError naming `step` and the last checkpoint if its loss or gradients are not finite.

  With `train.nonfinite=skip` (the step reports `skipped_steps`) such steps leave the state as it was instead.
  """
  if 'skipped_steps' in step_metrics:
    return
  loss, grad_norm = (float(x) for x in jax.device_get((step_metrics['loss'], step_metrics['grad_norm'])))
  if np.isfinite(loss) and np.isfinite(grad_norm):
    return
  saved = manager.latest_step()
  raise UserError(f'step {step}: the loss is {loss} and the gradient norm {grad_norm}: training stopped; the last '
                  f'good checkpoint is {"step " + str(saved) if saved is not None else "none (nothing saved)"}. '
                  'Lower --config.train.learning_rate, or set --config.train.nonfinite=skip to skip such steps.')
