"""Tests of flaxlm-export --format=gguf against llama.cpp's own results (tests/fixtures/make_gguf_fixtures.py).

No llama.cpp here: the fixtures hold, for each case of tests/gguf_cases.py, the sha256 of every GGUF file the
references were made from, llama.cpp's token ids and logits for the fixture texts with each, and the file llama.cpp's
own converter wrote for the same Hugging Face model. The exports are made again here: byte-identical, so the
references apply to them.

The logit bounds, as a fraction of the logits' scale (their largest magnitude over a text), against flaxlm's
logits with the weights the file holds (each tensor quantized to its type and back, `file_params`):
  - f32: 1e-3 (measured: below 1e-5 for the rotary models; 4.4e-4 for GPT-2 and 1.7e-4 for Gemma, whose GELU
    llama.cpp approximates otherwise).
  - f16: 2e-3. llama.cpp multiplies float16 weights with activations rounded to float16, an error the size of the
    weights' own rounding (measured: up to 1.3e-3; the rounding alone moves flaxlm's logits by up to 1.5e-3 on these
    tiny random models).
  - q8_0 and q4_0: 5e-2. llama.cpp rounds those matmuls' activations to 8-bit blocks (q8_0's own kind of error;
    measured: up to 2.9e-2 and 3.2e-2).
And against flaxlm's float32 logits: within the quantization's own error (flaxlm's float32 logits against its logits
with the file's weights, measured here: up to 1.5e-3 for f16, 4.3e-2 for q8_0, 0.6 for q4_0 on these random models)
plus the bound above.
"""

import dataclasses
import hashlib
import json
import pathlib
import shutil

import gguf
import jax
import numpy as np
import pytest

import commands
import gguf_cases
from conftest import command
from test_cli import assert_one_line_error
from test_transformer import forward
from flaxlm.configs import base
from flaxlm.configs.errors import UserError
from flaxlm.data import gguf_vocab, tokenizer as tokenizer_lib
from flaxlm.model import gguf as gguf_lib, hf, hf_families
from flaxlm.model.config import ModelConfig
from flaxlm.train import workdir as workdir_lib
from flaxlm.train.plan.estimate import format_bytes
from flaxlm.train.use import gguf as gguf_write, pretrained

BOUNDS = {'f32': 1e-3, 'f16': 2e-3, 'q8_0': 5e-2, 'q4_0': 5e-2}  # llama.cpp against flaxlm with the file's weights


@pytest.fixture(scope='module')
def written(tmp_path_factory) -> dict[str, pathlib.Path]:
  """Returns {case: folder} of every case's export (folder/<case>) and GGUF files (folder/<type>/model.gguf)."""
  root = tmp_path_factory.mktemp('gguf')
  folders = {}
  for case in gguf_cases.CASES:
    folders[case] = root / case
    folders[case].mkdir()
    gguf_cases.main(case, str(folders[case]))
  return folders


def reference(case: str) -> dict[str, np.ndarray]:
  """Returns the case's llama.cpp ids and logits by '<type>_ids_<i>' and '<type>_logits_<i>'."""
  with np.load(gguf_cases.OUT / case / 'reference.npz', allow_pickle=False) as data:
    return dict(data)


def test_exports_are_byte_identical_to_the_files_the_references_were_made_from(written):
  for case, folder in written.items():
    hashes = json.loads((gguf_cases.OUT / case / 'hashes.json').read_text())
    for gguf_type in gguf_cases.TYPES:
      path = folder / gguf_type / f'{gguf_cases.GGUF_NAME}.gguf'
      assert hashlib.sha256(path.read_bytes()).hexdigest() == hashes[gguf_type], (case, gguf_type)


def unlayout(name: str, x: np.ndarray, c: ModelConfig, arch: str) -> np.ndarray:
  """Returns the HF tensor `name` from llama.cpp's layout of it (the inverse of gguf_lib.layout)."""
  if arch == 'llama' and name.endswith(gguf_lib.PERMUTED):
    heads = c.num_heads if name.endswith('q_proj.weight') else c.num_kv_heads
    return x.reshape(heads, x.shape[0] // heads // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)
  if arch == 'gemma' and name.endswith('norm.weight'):
    return x - np.float32(1.0)
  if arch == 'gpt2' and name.endswith(gguf_lib.CONV1D):
    return x.T
  return x


def file_params(params, c: ModelConfig, gguf_type: str):
  """Returns `params` as a GGUF file of `gguf_type` holds them: each tensor quantized to its type and back."""
  _, arch = gguf_lib.architecture(c)
  types = {t.name: t.qtype for t in gguf_lib.tensors(c, gguf_type)}
  tensors = {}
  for group in gguf_lib.named_groups(jax.tree.map(np.asarray, params), c):
    for new_name, name, x in group:
      if name:  # rope_freqs.weight is llama.cpp's, no HF tensor
        stored = gguf.quants.dequantize(gguf_lib.quantize(gguf_lib.layout(name, x, c, arch), types[new_name]),
                                        types[new_name])
        tensors[name] = unlayout(name, stored.reshape(gguf_lib.layout(name, x, c, arch).shape), c, arch)
  return hf.params_from_hf(tensors, dataclasses.replace(c, hf_model_type='llama') if arch == 'llama' else c)


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
  """Returns the largest difference of `got` from `want`, as a fraction of want's largest magnitude."""
  return float(np.abs(got.astype(np.float32) - want).max() / np.abs(want).max())


def padded_ids(found: dict[str, np.ndarray], gguf_type: str, count: int) -> np.ndarray:
  """Returns llama.cpp's ids of the `count` texts as one batch, each padded at its end to the longest (a causal
  model's logits of a text do not depend on what follows it): one forward pass, and one compilation, for all."""
  ids = [found[f'{gguf_type}_ids_{i}'] for i in range(count)]
  return np.stack([np.pad(x, (0, max(map(len, ids)) - len(x))) for x in ids])


def logit_errors(folder: pathlib.Path, case: str) -> dict[str, tuple[float, float, float]]:
  """Returns {type: (llama.cpp against flaxlm with the file's weights, against flaxlm in float32, and the file's
  weights' own error: flaxlm with them against float32)}, each the largest over the case's texts."""
  model, params, _ = pretrained.load(folder / case, 'float32')
  params = jax.tree.map(np.asarray, params)  # host arrays, as file_params's are: the forward pass compiles once
  found, count = reference(case), len(gguf_cases.texts(case))
  errors = {}
  for gguf_type in gguf_cases.TYPES:
    ids_BxT = padded_ids(found, gguf_type, count)
    exact, held = (np.asarray(forward(model, p, ids_BxT)) for p in (params, file_params(params, model.config,
                                                                                         gguf_type)))
    triples = []
    for i in range(count):
      T, theirs = len(found[f'{gguf_type}_ids_{i}']), found[f'{gguf_type}_logits_{i}']
      triples.append((relative_error(theirs, held[i, :T]), relative_error(theirs, exact[i, :T]),
                      relative_error(held[i, :T], exact[i, :T])))
    errors[gguf_type] = tuple(max(triple[k] for triple in triples) for k in range(3))
  return errors


@pytest.mark.parametrize('case', gguf_cases.CASES)
def test_llama_cpp_computes_what_flaxlm_computes(written, case):
  for gguf_type, (held, exact, own) in logit_errors(written[case], case).items():
    assert held <= BOUNDS[gguf_type], (gguf_type, held)
    assert exact <= own + BOUNDS[gguf_type], (gguf_type, exact, own)


def test_llama_cpp_gives_every_text_flaxlm_s_ids(written):
  for case, folder in written.items():
    tokenizer = workdir_lib.load_tokenizer(folder / case)
    found = reference(case)
    for i, text in enumerate(gguf_cases.texts(case)):
      for gguf_type in gguf_cases.TYPES:
        assert found[f'{gguf_type}_ids_{i}'].tolist() == tokenizer_lib.model_ids(tokenizer, text).tolist(), (case, i)


def fields(path: pathlib.Path) -> dict[str, object]:
  """Returns the GGUF file's keys and values, but general.* (the file's name and other labels)."""
  reader = gguf.GGUFReader(path)
  return {f.name: f.contents() for f in reader.fields.values()
          if not f.name.startswith(('GGUF.', 'general.'))}


# The keys in which flaxlm's file differs from llama.cpp's converter's, for each case; any other difference fails.
OURS = {'tokenizer.ggml.add_bos_token', 'tokenizer.ggml.add_eos_token', 'tokenizer.ggml.add_space_prefix'}
DIFFERENCES = {
    # Written explicitly: what the converter leaves to llama.cpp's defaults for a SentencePiece vocabulary (BOS
    # added, a space put first), as flaxlm's tokenizer does it, and its unknown id.
    'llama': OURS | {'tokenizer.ggml.unknown_token_id'},
    'llama3': OURS | {'tokenizer.ggml.unknown_token_id'},
    'mistral': OURS | {'tokenizer.ggml.unknown_token_id'},
    # Qwen3's config.json has no BOS and EOS ids; its tokenizer (here a SentencePiece model) has.
    'qwen3': OURS | {'tokenizer.ggml.unknown_token_id', 'tokenizer.ggml.bos_token_id', 'tokenizer.ggml.eos_token_id'},
    # The converter writes Gemma's own special ids and no space first (its config.json's, and CodeGemma's EOT),
    # whatever the tokenizer: this one (hf_llama's) has others; and no rotary base (llama.cpp would take 10,000).
    'gemma': OURS | {'tokenizer.ggml.unknown_token_id', 'tokenizer.ggml.bos_token_id', 'tokenizer.ggml.eos_token_id',
                     'tokenizer.ggml.eot_token_id', 'tokenizer.ggml.padding_token_id', 'gemma.rope.freq_base'},
    # Scores from the merges' ranks (the converter writes -1000 for every piece of a tokenizer.json).
    'llama_tokenizer_json': {'tokenizer.ggml.add_eos_token', 'tokenizer.ggml.add_space_prefix',
                             'tokenizer.ggml.scores', 'tokenizer.ggml.add_sep_token'},
    'gpt2': {'tokenizer.ggml.add_bos_token', 'tokenizer.ggml.add_eos_token'},
}


@pytest.mark.parametrize('case', DIFFERENCES)
def test_every_key_and_tensor_is_what_llama_cpp_s_converter_writes(written, case):
  ours, theirs = written[case] / 'f16' / f'{gguf_cases.GGUF_NAME}.gguf', gguf_cases.OUT / case / 'converter-f16.gguf'
  mine, converted = fields(ours), fields(theirs)
  differ = {key for key in mine.keys() | converted.keys() if mine.get(key) != converted.get(key)}
  assert differ == DIFFERENCES[case]
  tensors = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
  written_tensors = gguf.GGUFReader(ours).tensors
  assert [t.name for t in written_tensors] and {t.name for t in written_tensors} == tensors.keys()
  for t in written_tensors:
    other = tensors[t.name]
    assert (t.tensor_type, list(t.shape)) == (other.tensor_type, list(other.shape)), t.name
    assert np.array_equal(np.asarray(t.data), np.asarray(other.data)), t.name




def block_bound(x: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
  """Returns the most each element of `x` may move when stored in `qtype`: half a float16 or bfloat16 step; for
  q8_0 half its 32-element block's step amax/127 (the scale itself rounded to float16); for q4_0 a whole step
  amax/8 (the block's largest magnitude takes code -8, and its opposite is clipped to 7)."""
  if qtype == gguf.GGMLQuantizationType.F32:
    return np.zeros_like(x)
  if qtype == gguf.GGMLQuantizationType.F16:
    return np.abs(x) * 2.0 ** -11 + 2.0 ** -25
  if qtype == gguf.GGMLQuantizationType.BF16:
    return np.abs(x) * 2.0 ** -8
  amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
  step = amax / 127 * 0.5 if qtype == gguf.GGMLQuantizationType.Q8_0 else amax / 8
  return np.broadcast_to(step * (1 + 2.0 ** -10) + amax * 2.0 ** -11, (len(amax), 32)).reshape(x.shape)


@pytest.mark.parametrize('case', gguf_cases.CASES)
def test_every_file_reads_back_and_dequantizes_within_its_type_s_error(written, case, tmp_path):
  model, params, _ = pretrained.load(written[case] / case, 'float32')
  c = model.config
  _, arch = gguf_lib.architecture(c)
  expected = {name: gguf_lib.layout(hf_name, x, c, arch)
              for group in gguf_lib.named_groups(jax.tree.map(np.asarray, params), c) for name, hf_name, x in group}
  path = gguf_write.write(str(tmp_path / 'model.gguf'), params, c, workdir_lib.load_tokenizer(written[case] / case),
                          'bf16')
  assert path == (tmp_path / 'model.gguf').stat().st_size
  for folder in [written[case] / t for t in gguf_cases.TYPES] + [tmp_path]:
    reader = gguf.GGUFReader(next(folder.glob('*.gguf')))
    assert [t.name for t in reader.tensors] == list(expected)
    for t in reader.tensors:
      x = expected[t.name]
      stored = gguf.quants.dequantize(t.data, t.tensor_type).reshape(x.shape)
      assert (np.abs(stored - x) <= block_bound(x, t.tensor_type)).all(), (folder.name, t.name)


def seeded_export(root: pathlib.Path, **model) -> pathlib.Path:
  """Writes a flaxlm export of a tiny model with `model` options (seeded params, byte tokenizer); returns its path."""
  config = base.get_config()
  config.model.update(width=64, num_heads=4, num_kv_heads=2, num_layers=2, max_length=64, dtype='float32', **model)
  config.data.tokenizer = 'byte'
  tokenizer = tokenizer_lib.ByteTokenizer()
  c = ModelConfig.from_config(config.model, tokenizer.vocab_size)
  from flaxlm.train.use import export
  return export.write(root / 'export', gguf_cases.seeded_params(c), config, tokenizer, 'float32')


def export_gguf(*args: str):
  """Runs flaxlm-export --format=gguf with `args`."""
  return commands.run(command('flaxlm-export'), '--format=gguf', *args)


def test_export_says_the_file_s_size_first_and_writes_it(tmp_path):
  source = seeded_export(tmp_path)
  output = tmp_path / 'model.gguf'
  result = export_gguf(f'--workdir={source}', f'--output={output}', '--gguf_type=q8_0')
  assert result.returncode == 0, result.stderr
  first, last = result.stdout.strip().splitlines()
  model, _ = pretrained.saved_model(source)
  tokenizer = tokenizer_lib.ByteTokenizer()
  vocab = gguf_vocab.vocabulary(tokenizer, model.config.vocab_size)
  estimate = gguf_write.size(model.config, tokenizer, vocab, 'q8_0')
  assert first == f'writing {output}: a llama.cpp llama model in q8_0, about {format_bytes(estimate)}'
  assert abs(estimate - output.stat().st_size) <= 0.05 * estimate, (estimate, output.stat().st_size)
  assert last.startswith(f'wrote {output}: ')
  assert [p.name for p in tmp_path.iterdir()] == ['export', 'model.gguf']  # no partial file left


def test_a_sentencepiece_vocabulary_without_byte_pieces_gets_a_note(written):
  with_bytes, without = (workdir_lib.load_tokenizer(written[case] / case) for case in ('flaxlm_sentencepiece', 'llama'))
  assert gguf_vocab.notes(gguf_vocab.vocabulary(with_bytes, with_bytes.vocab_size)) == []
  assert gguf_vocab.notes(gguf_vocab.vocabulary(without, without.vocab_size))[0].startswith(
      'note: the tokenizer has no byte pieces')


def lora_run_without_its_base(source: pathlib.Path, root: pathlib.Path) -> pathlib.Path:
  """Returns a folder that is a LoRA run of the export `source` (its config and tokenizer) whose train.init_from
  does not exist."""
  run = root / 'lora_run'
  shutil.copytree(source, run)
  config = json.loads((run / 'config.json').read_text())
  config['model']['lora_rank'], config['train']['init_from'] = 4, str(root / 'gone')
  (run / 'config.json').write_text(json.dumps(config))
  return run


def test_bad_input_gets_one_line_and_writes_nothing(tmp_path):
  source = seeded_export(tmp_path)
  (tmp_path / 'qwen3').mkdir()
  unexpressible = seeded_export(tmp_path / 'qwen3', qk_norm=True, rope_scaling='llama3')
  existing = tmp_path / 'existing.gguf'
  existing.write_bytes(b'keep')
  cases = [
      ([f'--workdir={source}', '--gguf_type=q3_x'], '--gguf_type=q3_x is not a GGUF type flaxlm writes'),
      ([f'--workdir={unexpressible}'], 'model.rope_scaling=llama3 on a qwen3 model'),
      ([f'--workdir={source}', f'--output={existing}'], 'already exists'),
      ([f'--workdir={lora_run_without_its_base(source, tmp_path)}'], 'is a LoRA run'),
      ([f'--workdir={source}', '--dtype=bfloat16'], '--dtype is used only with --format=flaxlm'),
      ([f'--workdir={source}', '--output=gs://bucket/model.gguf'], 'is on Cloud Storage'),
      ([f'--workdir={source}', f'--output={tmp_path / "missing" / "model.gguf"}'], 'create it first'),
  ]
  for args, fragment in cases:
    output = next((a for a in args if a.startswith('--output=')), f'--output={tmp_path / "new.gguf"}')
    assert_one_line_error(export_gguf(*args, output) if output not in args else export_gguf(*args), fragment)
  assert existing.read_bytes() == b'keep'
  assert [p.name for p in tmp_path.rglob('*gguf*')] == ['existing.gguf']  # no file, and no partial one


@pytest.mark.parametrize('name', ['hf_gemma2', 'hf_gemma3'])
def test_gemma_2_and_3_are_refused_by_name_with_the_way_to_a_gguf_file(name):
  section = base.model_config()
  section.update(hf_families.model_config(json.loads((gguf_cases.FIXTURES / name / 'config.json').read_text())))
  with pytest.raises(UserError, match=r"and this one is gemma(2|3_text) .* flaxlm-convert --to_hf, then llama.cpp's"):
    gguf_lib.architecture(ModelConfig.from_config(section, 0))


def test_a_k_quant_without_llama_cpp_python_is_refused_with_the_commands_that_make_it(monkeypatch, tmp_path):
  monkeypatch.setattr(gguf_write.importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(UserError, match='pip install "flaxlm\\[llama\\]", or export --gguf_type=f16 --output=') as e:
    gguf_write.check_k_quant('q4_k_m', tmp_path / 'model.gguf')
  assert f'llama-quantize {tmp_path / "model-f16.gguf"} {tmp_path / "model.gguf"} Q4_K_M' in str(e.value)


def test_a_k_quant_s_size_is_counted_from_llama_cpp_s_bits_per_weight(written):
  c = pretrained.saved_model(written['llama'] / 'llama')[0].config
  f16 = gguf_lib.tensors(c, 'f16')
  weights = sum(int(np.prod(t.shape)) for t in f16)
  infos = sum(len(t.name) + 48 for t in f16)
  assert gguf_lib.file_bytes(c, 'q4_k_m', 0) == int(weights * 4.85 / 8) + infos + 4096


def test_a_file_another_command_wrote_meanwhile_is_left_as_it_is(tmp_path):
  partial, path = tmp_path / '.model.gguf.partial', tmp_path / 'model.gguf'
  partial.write_bytes(b'mine')
  path.write_bytes(b'theirs')
  with pytest.raises(UserError, match='was written by another command while this one wrote it'):
    gguf_write.put_in_place(partial, path)
  assert path.read_bytes() == b'theirs'


def test_a_disk_without_room_for_the_file_is_refused_with_both_sizes(monkeypatch, tmp_path):
  monkeypatch.setattr(gguf_write.shutil, 'disk_usage', lambda path: shutil._ntuple_diskusage(10**10, 10**10 - 10**6,
                                                                                             10**6))
  with pytest.raises(UserError, match='the GGUF file needs about 3.54 GiB and .* has 977 KiB free'):
    gguf_write.check_room(tmp_path / 'model.gguf', 3_800_000_000)


def test_k_quants_are_made_by_llama_cpp_s_quantizer(written, tmp_path):
  pytest.importorskip('llama_cpp')  # the optional extra; the fixture machine has it, CI does not
  model, params, tokenizer = pretrained.load(written['llama3'] / 'llama3', 'float32')
  for gguf_type in gguf_lib.K_QUANTS:
    path = tmp_path / f'{gguf_type}.gguf'
    gguf_write.write(str(path), params, model.config, tokenizer, gguf_type)
    reader = gguf.GGUFReader(path)
    assert reader.fields['general.file_type'].contents() == gguf_lib.K_QUANTS[gguf_type]
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f'{t}.gguf' for t in gguf_lib.K_QUANTS)


def test_an_export_interrupted_while_it_writes_leaves_nothing(written, monkeypatch, tmp_path):
  model, params, tokenizer = pretrained.load(written['gpt2'] / 'gpt2', 'float32')
  calls, quantize = [], gguf_lib.quantize

  def interrupted(x, qtype):
    calls.append(qtype)
    if len(calls) == 3:  # the header and two tensors are written by now
      raise KeyboardInterrupt
    return quantize(x, qtype)
  monkeypatch.setattr(gguf_lib, 'quantize', interrupted)
  with pytest.raises(KeyboardInterrupt):
    gguf_write.write(str(tmp_path / 'model.gguf'), params, model.config, tokenizer, 'q8_0')
  assert len(calls) == 3 and list(tmp_path.iterdir()) == []
