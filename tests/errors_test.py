"""Tests for seqpe_jax.errors: the shared enum check and the one-line error text."""

import pytest
from absl.testing import absltest

from seqpe_jax import errors


class CheckChoiceTest(absltest.TestCase):

  def test_accepts_a_choice_and_names_every_choice_otherwise(self):
    errors.check_choice('aux.encoder_remat', 'dots', ('auto', 'full', 'dots', 'none'))
    with pytest.raises(errors.ConfigError,
                       match=r"^x\.y must be a, b or c, got 'd'$"):
      errors.check_choice('x.y', 'd', ('a', 'b', 'c'))
    with pytest.raises(errors.ConfigError, match=r"^k must be  or a, got 3$"):
      errors.check_choice('k', 3, ('', 'a'))

  def test_one_line_keeps_the_first_line(self):
    self.assertEqual(errors.one_line(ValueError('first\nsecond')), 'ValueError: first')
    self.assertLen(errors.one_line(ValueError('x' * 400), limit=50), 50)


if __name__ == '__main__':
  absltest.main()
