"""The whole path a user takes with a pretrained model: a Hugging Face folder converted by flaxlm-convert, its
tokenizer's chat template rendering chat `messages` examples, fine-tuned with LoRA, then asked with flaxlm-sample
--chat. A tiny Qwen2 in bfloat16, with the fixture tokenizer.json and its Llama-3-like chat template, is converted
and renders its examples; a tiny Gemma 3, with a SentencePiece-style tokenizer.json and Gemma 3's chat template,
goes the whole way. (LoRA on a bfloat16 base, and resuming and merging on an int8 one: tests/test_lora.py.)"""

import json
import pathlib
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy

import commands
from conftest import command
from flaxlm.configs import base
from flaxlm.data import chat, examples, tokenizer as tokenizer_lib
from flaxlm.model import hf, hf_families, lora, sampling
from flaxlm.model.config import ModelConfig
from flaxlm.train import loop, metrics, workdir as workdir_lib
from flaxlm.train.use import convert, export, pretrained

TOKENIZER = pathlib.Path(__file__).parent / 'fixtures' / 'hf_tokenizer'
HF_CONFIG = {  # A Qwen2 (q/k/v biases, tied head) with the fixture tokenizer's 357 ids and room to spare.
    'architectures': ['Qwen2ForCausalLM'], 'model_type': 'qwen2', 'hidden_act': 'silu', 'hidden_size': 32,
    'intermediate_size': 64, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'num_hidden_layers': 2,
    'max_position_embeddings': 64, 'rms_norm_eps': 1e-6, 'rope_theta': 10000.0, 'tie_word_embeddings': True,
    'use_sliding_window': False, 'vocab_size': 384, 'dtype': 'bfloat16'}
GEMMA3_TOKENIZER = pathlib.Path(__file__).parent / 'fixtures' / 'hf_gemma3_tokenizer'
GEMMA3_CONFIG = {  # A Gemma 3 text model (local and global layers, q/k norms, two rotary bases, tied head) with the
    # Gemma 3 fixture tokenizer's 384 ids and room to spare.
    'architectures': ['Gemma3ForCausalLM'], 'model_type': 'gemma3_text', 'hidden_activation': 'gelu_pytorch_tanh',
    'hidden_size': 32, 'intermediate_size': 64, 'num_attention_heads': 4, 'num_key_value_heads': 2, 'head_dim': 8,
    'num_hidden_layers': 2, 'layer_types': ['sliding_attention', 'full_attention'],
    'sliding_window': 8, 'max_position_embeddings': 64, 'query_pre_attn_scalar': 8,
    'rope_parameters': {'full_attention': {'rope_type': 'default', 'rope_theta': 10000.0},
                        'sliding_attention': {'rope_type': 'default', 'rope_theta': 1000.0}},
    'rms_norm_eps': 1e-6, 'tie_word_embeddings': True, 'vocab_size': 400, 'dtype': 'bfloat16'}
STEPS = 30  # Of LoRA fine-tuning: the loss falls 30-fold, the first answer token leads its next by 2 logits.
# Two questions and their answers; each answer ends with the template's <|eot_id|>, which ends a sample.
QA = [('Where does the river run?', 'Over the stone.'), ('And then?', 'Into the sea.')]


def hf_folder(directory: pathlib.Path, hf_config: dict, tokenizer: pathlib.Path) -> pathlib.Path:
  """Writes a Hugging Face model folder: config.json `hf_config`, random bfloat16 weights under transformers' names
  (norm scales near 1 as the model applies them, so every layer passes its signal on: near 0 where the model adds 1,
  as Gemma's) and the tokenizer files of the fixture folder `tokenizer`; returns it."""
  directory.mkdir()
  (directory / 'config.json').write_text(json.dumps(hf_config))
  model = base.get_config().model
  model.update(hf_families.model_config(hf_config))
  c = ModelConfig.from_config(model, hf_config['vocab_size'])
  rng = np.random.default_rng(0)
  weight = lambda name, shape: ((1 - c.norm_offset) * name.endswith('norm.weight') +
                                0.3 * rng.standard_normal(shape)).astype(ml_dtypes.bfloat16)
  prefix = hf_families.family_of(c)[1].prefix
  safetensors.numpy.save_file({name: weight(name, shape) for name, shape in hf.hf_shapes(c, prefix).items()},
                              directory / 'model.safetensors', metadata={'format': 'pt'})
  for file in tokenizer.iterdir():
    if file.name != 'reference.json':
      shutil.copy(file, directory)
  return directory


@pytest.fixture(scope='module')
def converted(tmp_path_factory) -> pathlib.Path:
  """The flaxlm export flaxlm-convert --from_hf makes of the folder (computing in float32: cheap on a CPU)."""
  root = tmp_path_factory.mktemp('pretrained')
  convert.from_hf(str(hf_folder(root / 'hf', HF_CONFIG, TOKENIZER)), str(root / 'export'), None, 'float32')
  return root / 'export'


@pytest.fixture(scope='module')
def chats(tmp_path_factory) -> pathlib.Path:
  """A JSONL file of chat examples: each question and its answer, many times over."""
  path = tmp_path_factory.mktemp('examples') / 'chat.jsonl'
  lines = [json.dumps({'messages': [{'role': 'user', 'content': q}, {'role': 'assistant', 'content': a}]})
           for _ in range(24) for q, a in QA]
  path.write_text('\n'.join(lines) + '\n')
  return path


def tune(converted: pathlib.Path, data: pathlib.Path, workdir: pathlib.Path, lora_base: str):
  """Returns the final state and the per-step losses of a LoRA fine-tune of the export `converted` on the chat
  examples, its base held as `lora_base`."""
  config = base.get_config()  # Its model section is not the export's: training takes init_from's model.
  config.model.update(max_length=32, lora_rank=8, lora_targets='query,value,out,up,down', lora_base=lora_base)
  config.data.update(path=str(data), format='examples')
  config.train.update(init_from=str(converted), steps=STEPS, batch_size=4, eval_every=STEPS, checkpoint_every=STEPS,
                      log_every=1, eval_batches=1, learning_rate=3e-2, min_learning_rate=3e-3, warmup_steps=0)
  state = loop.train(config, str(workdir))
  return state, [r['loss'] for r in metrics.read_metrics(workdir)]


def test_the_export_keeps_the_bfloat16_weights_and_the_tokenizer_s_specials(converted):
  tokenizer = workdir_lib.load_tokenizer(converted)
  assert isinstance(tokenizer, tokenizer_lib.HFTokenizer) and tokenizer.add_bos and set(tokenizer.eos_ids) == {1, 4}
  assert tokenizer_lib.files_of(tokenizer) == tokenizer_lib.files_of(tokenizer_lib.from_hf_folder(TOKENIZER))
  assert export.stored_dtype(converted) == 'bfloat16'  # As the checkpoint: the base LoRA reads is its own bits.


def test_chat_examples_are_rendered_in_the_tokenizer_s_template(converted, chats):
  tokenizer = workdir_lib.load_tokenizer(converted)
  ids_N, trained_N = examples.tokenize(examples.read(chats)[0], tokenizer)
  q, a = QA[0]
  header = lambda role: f'<|start_header_id|>{role}<|end_header_id|>\n\n'
  expected = tokenizer.encode(f'{header("user")}{q}<|eot_id|>{header("assistant")}{a}<|eot_id|>')
  assert ids_N.tolist() == [tokenizer.bos_id] + expected.tolist()  # BOS once, written by the template.
  assert tokenizer.decode(ids_N[trained_N]) == f'{a}<|eot_id|>'  # The loss on the answer and its end alone.


def assert_learned_on_the_base_as_held(state, losses, base_params, lora_base: str) -> None:
  """Checks a LoRA run's loss fell to a quarter of its first (from a random base's, above ln V, to about 1 per answer
  token: the adapters learn the answers) and its frozen base is the base as held at the start, bit for bit."""
  assert np.mean(losses[-10:]) < losses[0] / 4, losses
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.frozen),
               jax.device_get(lora.hold_base(base_params, lora_base)))


def test_a_gemma3_renders_its_template_learns_the_answers_with_lora_on_an_int8_base_and_chats(chats, tmp_path):
  """Converted, its template rendered as transformers renders it, fine-tuned with LoRA on an int8 base (its layers
  scanned as groups of a local and a global one, expanded a layer at a time), then asked in-process and with
  flaxlm-sample --chat: each answer, stopped at <end_of_turn>."""
  convert.from_hf(str(hf_folder(tmp_path / 'hf', GEMMA3_CONFIG, GEMMA3_TOKENIZER)), str(tmp_path / 'export'), None,
                  'float32')
  tokenizer = workdir_lib.load_tokenizer(tmp_path / 'export')
  end_of_turn = tokenizer.encode('<end_of_turn>').tolist()  # One id: a special token.
  assert tokenizer.add_bos and len(end_of_turn) == 1 and tokenizer.eos_ids == (1, *end_of_turn)  # <eos>, <end_of_turn>
  reference = json.loads((GEMMA3_TOKENIZER / 'reference.json').read_text())  # What transformers makes of the template.
  for prompt, expected in reference['chat'].items():  # The system message folded into the first user turn.
    assert chat.render(tokenizer, reference['conversation'], prompt == 'true') == expected['text']
  assert chat.prompt_ids(tokenizer, reference['conversation']).tolist() == reference['chat']['true']['ids']
  ids_N, trained_N = examples.tokenize(examples.read(chats)[0], tokenizer)
  q, a = QA[0]
  expected = tokenizer.encode(f'<start_of_turn>user\n{q}<end_of_turn>\n<start_of_turn>model\n{a}<end_of_turn>\n')
  assert ids_N.tolist() == [tokenizer.bos_id] + expected.tolist()  # BOS once, written by the template.
  assert tokenizer.decode(ids_N[trained_N]) == f'{a}<end_of_turn>\n'  # The answer and the end of its turn alone.
  workdir = tmp_path / 'run'
  state, losses = tune(tmp_path / 'export', chats, workdir, 'int8')
  assert_learned_on_the_base_as_held(state, losses, pretrained.load(tmp_path / 'export', 'bfloat16')[1], 'int8')
  saved = tokenizer_lib.files_of(workdir_lib.load_tokenizer(workdir))  # The run keeps the model's tokenizer files.
  assert saved == tokenizer_lib.files_of(tokenizer)
  sampled = commands.start(command('flaxlm-sample'), f'--workdir={workdir}', '--chat', '--temperature=0',
                           f'--prompt={QA[0][0]}', '--max_new_tokens=12')  # The CLI, while the test samples too.
  model, params, _ = pretrained.load(workdir)
  prompts = [chat.prompt_ids(tokenizer, [{'role': 'user', 'content': q}]) for q, _ in QA]
  replies = sampling.generate(model, params, prompts, 12, settings=sampling.Settings(0.0, eos_ids=tokenizer.eos_ids))
  assert [tokenizer.decode(r.tokens) for r in replies] == [f'{a}<end_of_turn>' for _, a in QA]  # Stopped at the end.
  code = sampled.wait(timeout=300)
  out, err = sampled.output()
  assert code == 0, err
  assert out == f'{QA[0][1]}\n'  # The answer alone, ended by <end_of_turn> (not shown) well before 12 tokens.
