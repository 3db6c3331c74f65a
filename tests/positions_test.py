"""Tests for seqpe_jax.positions."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from seqpe_jax import positions
from seqpe_jax.errors import ConfigError


class DigitizeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_method_doc_examples(self):
    fn = self.variant(lambda p: positions.digitize(p, 5))
    np.testing.assert_array_equal(fn(jnp.array([[123], [0], [7], [19999]])),
                                  [[0, 0, 1, 2, 3], [0, 0, 0, 0, 0], [0, 0, 0, 0, 7],
                                   [1, 9, 9, 9, 9]])
    fn2 = self.variant(lambda p: positions.digitize(p, 2))
    np.testing.assert_array_equal(fn2(jnp.array([[12, 3], [2, 3]])), [[1, 2, 0, 3], [0, 2, 0, 3]])

  def test_3d_and_batch_shapes(self):
    out = positions.digitize(np.array([[[1, 23, 456]], [[9, 0, 99]]]), 3)
    chex.assert_shape(out, (2, 1, 9))
    chex.assert_type(out, jnp.int32)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 1, 0, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(out[1, 0], [0, 0, 9, 0, 0, 0, 0, 9, 9])

  def test_other_base(self):
    np.testing.assert_array_equal(positions.digitize(np.array([[5]]), 4, base=2), [[0, 1, 0, 1]])

  def test_capacity_error_names_value_and_capacity(self):
    with pytest.raises(ValueError, match=r'100000.*\[0, 100000\).*max_digits >= 6'):
      positions.digitize(np.array([[5], [100000]]), 5)
    with pytest.raises(ValueError, match='negative'):
      positions.digitize(np.array([[-1]]), 5)

  def test_under_jit_wraps_modulo_capacity(self):
    # Documented behaviour: tracers cannot be checked, digits wrap modulo 10**k.
    out = jax.jit(lambda p: positions.digitize(p, 2))(jnp.array([[123]]))
    np.testing.assert_array_equal(out, [[2, 3]])

  def test_pad_mask_and_axis_ids(self):
    np.testing.assert_array_equal(positions.pad_mask(np.array([[0], [123]]), 5),
                                  [[0, 0, 0, 0, 1], [0, 0, 1, 1, 1]])
    np.testing.assert_array_equal(positions.pad_mask(np.array([[12, 3]]), 2), [[1, 1, 0, 1]])
    np.testing.assert_array_equal(positions.axis_ids(2, 2), [0, 0, 1, 1])

  def test_grids_row_major(self):
    g = positions.grid_2d(2, 3)
    np.testing.assert_array_equal(g, [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    np.testing.assert_array_equal(positions.grid((2, 3)), g)
    np.testing.assert_array_equal(positions.grid_2d(1, 2, start=(5, 7)), [[5, 7], [5, 8]])
    np.testing.assert_array_equal(positions.arange_1d(3, 4)[:, 0], [4, 5, 6])

  def test_digits_needed_and_validate(self):
    self.assertEqual(positions.digits_needed(19999), 5)
    self.assertEqual(positions.digits_needed(99999), 5)
    self.assertEqual(positions.digits_needed(100000), 6)
    self.assertEqual(positions.digits_needed(0), 1)
    positions.validate_positions(9999, 4, 'eval length')
    with pytest.raises(ConfigError, match='eval length needs position 10000.*max_digits >= 5'):
      positions.validate_positions(10000, 4, 'eval length')


if __name__ == '__main__':
  absltest.main()
