"""Tests of configs/options.py and configs/base.py's check: options declared once give the sections, their documented
table and the one check of a config's values."""

import dataclasses
import math
import pathlib

import pytest

from flaxlm import configs
from flaxlm.configs import base, options
from flaxlm.configs.errors import UserError
from flaxlm.model.config import ModelConfig

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'


def test_the_model_section_is_model_config_s_options_with_groups_under_their_prefixes():
  section = base.get_config().model
  assert section.to_dict() == options.values(ModelConfig())
  assert section.rope_theta == ModelConfig().rope.theta and section.lora_base == ModelConfig().lora.base
  assert set(section) == {key for key, _ in options.flat_fields(ModelConfig)}


def test_a_section_reads_back_into_the_dataclass_groups_included():
  changed = dataclasses.replace(ModelConfig(), width=96, rope=dataclasses.replace(ModelConfig().rope, factor=8.0),
                                lora=dataclasses.replace(ModelConfig().lora, rank=4, targets='query'))
  assert options.read(ModelConfig, base.model_config()) == ModelConfig()
  section = base.model_config()
  section.update(options.values(changed))
  assert options.read(ModelConfig, section) == changed
  assert options.value(changed, 'rope_factor') == 8.0 and options.value(changed, 'lora_targets') == 'query'


def test_the_documented_table_of_model_options_is_the_code_s():
  table = options.markdown_table(ModelConfig, 'model')
  assert table in (DOCS / 'training.md').read_text(), f'paste into docs/training.md:\n{table}'


@pytest.mark.parametrize('rule, good, bad, says', [
    (options.Positive(), (1, 2), (0, -1), 'must be positive'),
    (options.NonNegative('the default'), (0, 3), (-1,), 'must not be negative (0 takes the default)'),
    (options.PositiveFinite('1e-6'), (1e-6, 10.0), (0.0, -1.0, math.inf, math.nan), 'must be a positive finite'),
    (options.Finite('0'), (0.0, -2.5), (math.inf, -math.inf, math.nan), 'must be a finite number'),
    (options.Interval('[0', '1)', 'a share'), (0.0, 0.5), (1.0, -0.1, math.nan), 'must be in [0, 1) (a share)'),
    (options.Interval('(0', 'inf)', 'a rate'), (1e-9, 1e9), (0.0, math.inf), 'must be in (0, inf) (a rate)'),
    (options.OneOf(('a', 'b')), ('a', 'b'), ('c', ''), "is not one of ('a', 'b')"),
])
def test_each_rule_takes_its_values_and_names_the_key_and_flag_for_others(rule, good, bad, says):
  for value in good:
    options.check_value('section.key', value, rule)
  for value in bad:
    with pytest.raises(UserError, match=r'section\.key=.* ' + r'.*: set --config\.section\.key\.$') as raised:
      options.check_value('section.key', value, rule)
    assert says in str(raised.value)


@pytest.mark.parametrize('name', configs.presets())
def test_every_preset_passes_the_check(name):
  base.check(configs.load(name))


@pytest.mark.parametrize('key, value, says', [
    ('train.beta1', 1.0, 'train.beta1=1.0 must be in [0, 1)'),
    ('train.steps', 0, 'train.steps=0 must be positive'),
    ('train.nonfinite', 'ignore', "train.nonfinite='ignore' is not one of ('stop', 'skip')"),
    ('data.format', 'csv', "data.format='csv' is not one of ('text', 'examples')"),
    ('data.val_fraction', 0.0, 'data.val_fraction=0.0 must be in (0, 1)'),
    ('mesh.cpu_devices', -2, 'mesh.cpu_devices=-2 must not be negative'),
    ('model.lora_base', 'int3', "model.lora_base='int3' is not one of"),
    ('model.rope_factor', 0.0, 'model.rope_factor=0.0 must be a positive finite number'),
    ('model.dropout', 1.0, 'model.dropout=1.0 must be in [0, 1)'),
])
def test_the_check_refuses_a_value_outside_its_rule_in_any_section(key, value, says):
  config = base.get_config()
  section, field = key.split('.')
  config[section][field] = value
  with pytest.raises(UserError, match=f'set --config.{key}') as raised:
    base.check(config)
  assert str(raised.value).startswith(says)
