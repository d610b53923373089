"""Tests of data/text.py: reading a text file and holding out its end for validation."""

import numpy as np
import pytest

from configs.errors import UserError
from data import text


@pytest.mark.parametrize('content, message', [(None, 'does not exist'), ('', 'is empty'), ('  \n', 'is empty')])
def test_missing_or_empty_files_are_refused(tmp_path, content, message):
  path = tmp_path / 'data.txt'
  if content is not None:
    path.write_text(content)
  with pytest.raises(UserError, match=message):
    text.read_text(str(path))


def test_split_holds_out_the_end_of_the_text():
  tokens = np.arange(100)
  train, val = text.split_tokens(tokens, 0.1, 5)
  np.testing.assert_array_equal(np.concatenate([train, val]), tokens)
  assert len(val) == 10
  with pytest.raises(UserError, match='too few'):
    text.split_tokens(tokens, 0.1, 20)
