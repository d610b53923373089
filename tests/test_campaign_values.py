"""The bad-input campaign (tests/campaign.py) against values read from files and flags: a Hugging Face folder's
config.json (flaxlm-convert, and flaxlm-train's train.init_from), a tokenizer's side files (tokenizer_config.json,
generation_config.json, special_tokens_map.json, chat_template.jinja) wherever a tokenizer is loaded, flaxlm-train's
config values, and symlinks to nothing given as outputs. Each is refused where it is read, in one line naming the
file (or flag) and key, before anything is written."""

import json
import pathlib
import shutil

import pytest

from campaign import Case, assert_refused, run_campaign
from commands import run
from conftest import command, make_corpus
from test_campaign_use import copied, hf_copy
from test_plot import write_run

FROM_HF = ('flaxlm-convert', '--from_hf={case}/hf_llama', '--output={case}/out')
TRAIN = ('flaxlm-train', '--config=tiny', '--workdir={case}/run', '--config.data.path={corpus}',
         '--config.train.steps=10', '--config.mesh.cpu_devices=1')
SAMPLE = ('flaxlm-sample', '--params={case}/llama_export', '--prompt=the', '--max_new_tokens=2')
EXPORT = ('flaxlm-export', '--workdir={case}/llama_export', '--output={case}/out')
TO_HF = ('flaxlm-convert', '--to_hf={case}/hf', '--params={case}/llama_export')
LAYERS = 'num_hidden_layers=10,000,000, and the safetensors files lack the tensors of layer 2'


def hf_config(id: str, kind: str, fragment: str, changes: dict, **options) -> Case:
  """A case converting a copy of the Llama fixture whose config.json has `changes`."""
  return Case(id, kind, FROM_HF, fragment, setup=hf_copy(config=changes), **options)


def train(id: str, kind: str, fragment: str, *overrides: str) -> Case:
  """A case training a new tiny run with `overrides` (flags appended)."""
  return Case(id, kind, (*TRAIN, *overrides), fragment)


def side_files(**contents: dict | bytes):
  """Returns a change writing each side file (its name with '.' for '_': tokenizer_config_json) with `contents`: a
  dict is merged into the file's JSON object (an empty one if it is missing), bytes replace it."""
  def change(folder: pathlib.Path) -> None:
    for key, content in contents.items():
      file = folder / key.replace('_json', '.json').replace('_jinja', '.jinja')
      if isinstance(content, bytes):
        file.write_bytes(content)
      else:
        file.write_text(json.dumps({**(json.loads(file.read_text()) if file.exists() else {}), **content}))
  return change


def tokenizer_case(id: str, kind: str, argv: tuple[str, ...], fragment: str, **contents: dict | bytes) -> Case:
  """A case running `argv` on a copy of the Llama fixture (hf_llama) or of its export (llama_export), whichever
  `argv` names, whose side files get `contents` (see `side_files`); a tokenizer_config.json, empty unless `contents`
  give one, makes the SentencePiece model's side files read, as in a Hugging Face folder."""
  name = 'hf_llama' if '{case}/hf_llama' in ' '.join(argv) else 'llama_export'
  return Case(id, kind, argv, fragment, setup=copied(name, side_files(**{'tokenizer_config_json': {}, **contents})))


def dangling(name: str):
  """Returns a setup making the case's `name` a symlink to a path in a folder that does not exist."""
  def setup(case: pathlib.Path, paths: dict) -> None:
    (case / name).symlink_to(case / 'gone' / name)
  return setup


EOS_OUTSIDE = "has eos_token_id 500, outside the tokenizer's 128 ids (0 to 127)"
TEMPLATE = 'has chat_template=5, which is not a Jinja template'
CASES = [
    # A Hugging Face config.json's values, where flaxlm-convert reads them.
    hf_config('convert_ten_million_layers', 'hang', LAYERS, {'num_hidden_layers': 10_000_000}, timeout=60),
    hf_config('convert_one_layer_more_than_the_tensors', 'message', 'num_hidden_layers=3, and the safetensors files '
              'lack the tensors of layer 2 (model.layers.2.*; they hold 2 layers)', {'num_hidden_layers': 3}),
    hf_config('convert_vocabulary_of_10_to_the_30', 'traceback',
              f'vocab_size={10**30}, which is not a positive integer of at most 2,147,483,647', {'vocab_size': 10**30}),
    hf_config('convert_width_of_10_billion', 'message', 'hidden_size=10000000000, which is not a positive integer of',
              {'hidden_size': 10**10}),
    hf_config('convert_heads_of_2_to_the_40', 'message', f'num_attention_heads={2**40}, which is not a positive',
              {'num_attention_heads': 2**40, 'num_key_value_heads': 2**40}),
    hf_config('convert_vocabulary_a_list', 'message', 'vocab_size=[128], which is not a positive integer',
              {'vocab_size': [128]}),
    hf_config('convert_layers_as_text', 'message', "num_hidden_layers='2', which is not a positive integer",
              {'num_hidden_layers': '2'}),
    hf_config('convert_layers_true', 'message', 'num_hidden_layers=True, which is not a positive integer',
              {'num_hidden_layers': True}),
    hf_config('convert_context_a_float', 'message', 'max_position_embeddings=64.0, which is not a positive integer',
              {'max_position_embeddings': 64.0}),
    hf_config('convert_norm_epsilon_nan', 'message', 'rms_norm_eps=nan, which is not a positive number',
              {'rms_norm_eps': float('nan')}),
    hf_config('convert_rope_theta_infinite', 'message', 'rope_theta=inf, which is not a positive number',
              {'rope_parameters': {'rope_type': 'default', 'rope_theta': float('inf')}}),
    hf_config('convert_rope_type_a_list', 'traceback', "rope_type=['linear'], which flaxlm cannot express",
              {'rope_parameters': {'rope_type': ['linear'], 'rope_theta': 1000.0, 'factor': 2.0}}),
    hf_config('convert_rope_type_an_object', 'traceback', "rope_type={}, which flaxlm cannot express",
              {'rope_parameters': {'rope_type': {}, 'rope_theta': 1000.0}}),
    hf_config('convert_activation_a_list', 'message', "hidden_act=['silu'], which flaxlm cannot express",
              {'hidden_act': ['silu']}),
    hf_config('convert_qwen3_layer_types_a_number', 'traceback', 'layer_types with 5, which flaxlm cannot express',
              {'model_type': 'qwen3', 'layer_types': 5}),
    hf_config('convert_qwen2_layer_types_nested', 'traceback', "layer_types with [['full_attention']], which",
              {'model_type': 'qwen2', 'layer_types': [['full_attention']]}),
    # The same folders as train.init_from: refused before their config.json is read, as not a flaxlm model.
    Case('train_init_from_hf_ten_million_layers', 'message', (*TRAIN, '--config.train.init_from={case}/hf_llama'),
         'convert it first with flaxlm-convert --from_hf=', setup=hf_copy(config={'num_hidden_layers': 10_000_000})),
    Case('train_init_from_hf_vocabulary_a_list', 'message', (*TRAIN, '--config.train.init_from={case}/hf_llama'),
         'convert it first with flaxlm-convert --from_hf=', setup=hf_copy(config={'vocab_size': [128]})),
    # A tokenizer's side files, converting the folder they are in.
    tokenizer_case('convert_eos_outside_the_vocabulary', 'accepted', FROM_HF, EOS_OUTSIDE,
                   generation_config_json={'eos_token_id': 500}),
    tokenizer_case('convert_eos_as_text', 'accepted', FROM_HF,
                   "/hf_llama/tokenizer.model has eos_token_id='2', which is not an id or a list of ids",
                   generation_config_json={'eos_token_id': '2'}),
    tokenizer_case('convert_eos_list_with_text', 'accepted', FROM_HF, "eos_token_id=[2, 'x'], which is not an id",
                   generation_config_json={'eos_token_id': [2, 'x']}),
    tokenizer_case('convert_add_bos_yes', 'accepted', FROM_HF, "add_bos_token='yes', which is not true or false",
                   tokenizer_config_json={'add_bos_token': 'yes'}),
    tokenizer_case('convert_chat_template_a_number', 'accepted', FROM_HF, TEMPLATE,
                   tokenizer_config_json={'chat_template': 5}),
    tokenizer_case('convert_chat_templates_without_text', 'accepted', FROM_HF,
                   "chat_template=[{'name': 'default'}], which is not a Jinja template",
                   tokenizer_config_json={'chat_template': [{'name': 'default'}]}),
    tokenizer_case('convert_bos_token_a_number', 'accepted', FROM_HF, 'has bos_token=1, which is not the token\'s text',
                   tokenizer_config_json={'bos_token': 1}),
    tokenizer_case('convert_special_map_eos_a_list', 'accepted', FROM_HF,
                   "special_tokens_map.json beside", special_tokens_map_json={'eos_token': ['</s>']}),
    tokenizer_case('convert_chat_template_jinja_not_utf8', 'traceback', FROM_HF,
                   'chat_template.jinja beside', chat_template_jinja='{{ "caf\xe9" }}'.encode('latin-1')),
    # ... loading an export that carries them: sampling, exporting it, converting it back.
    tokenizer_case('sample_eos_outside_the_vocabulary', 'accepted', SAMPLE, EOS_OUTSIDE,
                   generation_config_json={'eos_token_id': [2, 500]}),
    tokenizer_case('sample_add_bos_yes', 'accepted', SAMPLE, "add_bos_token='yes'",
                   tokenizer_config_json={'add_bos_token': 'yes'}),
    tokenizer_case('sample_chat_templates_as_text', 'accepted', (*SAMPLE, '--chat'),
                   "chat_template=['{{ messages }}'], which is not a Jinja template",
                   tokenizer_config_json={'chat_template': ['{{ messages }}']}),
    tokenizer_case('sample_pad_token_without_content', 'accepted', SAMPLE, "pad_token={'text': '<pad>'}, which is",
                   tokenizer_config_json={'pad_token': {'text': '<pad>'}}),
    tokenizer_case('export_eos_as_text', 'accepted', EXPORT, "eos_token_id='2', which is not an id",
                   generation_config_json={'eos_token_id': '2'}),
    tokenizer_case('export_chat_template_a_number', 'accepted', EXPORT, TEMPLATE,
                   tokenizer_config_json={'chat_template': 5}),
    tokenizer_case('export_eos_outside_the_vocabulary', 'accepted', EXPORT, EOS_OUTSIDE,
                   generation_config_json={'eos_token_id': 500}),
    tokenizer_case('convert_to_hf_add_bos_yes', 'accepted', TO_HF, "add_bos_token='yes'",
                   tokenizer_config_json={'add_bos_token': 'yes'}),
    # ... and as the tokenizer a run trains with (a Hugging Face folder as data.tokenizer).
    tokenizer_case('train_tokenizer_folder_eos_as_text', 'accepted',
                   (*TRAIN, '--config.data.tokenizer={case}/hf_llama'), "eos_token_id='2', which is not an id",
                   generation_config_json={'eos_token_id': '2'}),
    # flaxlm-train's config values.
    train('train_seed_negative', 'traceback', 'train.seed=-1 must be from 0 to 4,294,967,295',
          '--config.train.seed=-1'),
    train('train_seed_above_32_bits', 'traceback', 'train.seed=4294967296 must be from 0',
          f'--config.train.seed={2**32}'),
    train('train_seed_of_10_to_the_20', 'traceback', f'train.seed={10**20} must be from 0',
          f'--config.train.seed={10**20}'),
    train('train_max_documents_negative', 'accepted', 'data.max_documents=-1 must not be negative',
          '--config.data.max_documents=-1'),
    train('train_mesh_fsdp_zero', 'message', 'mesh.fsdp=0 must be -1 (the devices the other axes leave) or positive',
          '--config.mesh.fsdp=0'),
    train('train_mesh_tensor_minus_two', 'message', 'mesh.tensor=-2 must be -1', '--config.mesh.tensor=-2'),
    train('train_mesh_dcn_data_zero', 'traceback', 'mesh.dcn_data=0 must be positive', '--config.mesh.dcn_data=0'),
    train('train_steps_beyond_int32', 'hang', f'train.steps={2**31} must be positive (and at most 2,147,483,647)',
          f'--config.train.steps={2**31}'),
    train('train_read_threads_a_billion', 'hang', 'data.read_threads=10000000000 must not be negative',
          f'--config.data.read_threads={10**10}'),
    # Symlinks to nothing as outputs.
    Case('export_output_a_dangling_symlink', 'message',
         ('flaxlm-export', '--workdir={llama_export}', '--output={case}/out'), 'out is a symlink to',
         setup=dangling('out')),
    Case('convert_output_a_dangling_symlink', 'message', ('flaxlm-convert', '--from_hf={hf_llama}',
                                                           '--output={case}/out'), 'which does not exist: remove the '
         'link, or pass another path', setup=dangling('out')),
    Case('convert_to_hf_a_dangling_symlink', 'message',
         ('flaxlm-convert', '--to_hf={case}/hf', '--params={llama_export}'),
         '/hf is a symlink to', setup=dangling('hf')),
    Case('tokenizer_output_a_dangling_symlink_overwritten', 'accepted',
         ('flaxlm-tokenizer', 'train', '--input={corpus}', '--vocab_size=300', '--output={case}/t.model',
          '--overwrite'), 't.model is a symlink to', setup=dangling('t.model')),
    Case('plot_output_a_dangling_symlink_overwritten', 'accepted',
         ('flaxlm-plot', '--workdir={plotted}', '--output={case}/loss.png', '--overwrite'), 'loss.png is a symlink to',
         setup=dangling('loss.png')),
]


def sandbox(root: pathlib.Path) -> dict[str, str]:
  """Makes what the cases use below `root` (no training run: every case is refused before one would be read), and
  returns their paths by name: `corpus` (a text), `hf_llama` (a copy of the Llama fixture), `llama_export` (its
  conversion) and `plotted` (a run's config.json and metrics, to plot)."""
  corpus = make_corpus(root / 'corpus.txt')
  shutil.copytree(pathlib.Path(__file__).parent / 'fixtures' / 'hf_llama', root / 'hf_llama')
  made = run(command('flaxlm-convert'), f'--from_hf={root / "hf_llama"}', f'--output={root / "llama_export"}')
  assert made.returncode == 0, made.stderr
  write_run(root / 'plotted', [{'step': step, 'loss': 4.0 - 0.1 * step, 'learning_rate': 1e-3} for step in (5, 10)])
  return {'corpus': str(corpus), 'hf_llama': str(root / 'hf_llama'), 'llama_export': str(root / 'llama_export'),
          'plotted': str(root / 'plotted')}


@pytest.fixture(scope='module')
def results(tmp_path_factory) -> dict:
  """Every case's result, from one campaign run in a fresh sandbox."""
  root = tmp_path_factory.mktemp('campaign_values')
  return run_campaign(CASES, root, sandbox(root))


@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_a_bad_value_is_refused_where_it_is_read_in_one_line_with_no_damage(results, case):
  assert_refused(case, results[case.id])
