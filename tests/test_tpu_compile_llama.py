"""The llama presets' train steps compiled for their TPU slices (tests/test_tpu_compile.py compiles the others): a
file of its own, so that pytest-xdist's --dist loadfile compiles the two halves of the presets on both workers at once."""

from test_tpu_compile import LLAMAS, assert_presets_compile_for_their_slices_and_fit, needs_libtpu


@needs_libtpu
def test_the_llama_presets_compile_for_their_slices_and_fit():
  assert_presets_compile_for_their_slices_and_fit(list(LLAMAS))
