"""Tests for seqpe_jax.debug: the `train.debug_nan` schedule and its hook."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import absltest

from seqpe_jax import debug
from seqpe_jax.errors import ConfigError


class DebugNaNTest(absltest.TestCase):

  def test_parse_and_errors(self):
    self.assertEqual(debug.parse_debug_nan('contrastive@6, task@7,'), {6: 'contrastive', 7: 'task'})
    self.assertEqual(debug.parse_debug_nan(''), {})
    with pytest.raises(ConfigError, match="items are 'term@step'"):
      debug.parse_debug_nan('foo@1')
    with pytest.raises(ConfigError, match="items are 'term@step'"):
      debug.parse_debug_nan('task@0')
    with pytest.raises(ConfigError, match='poisons ood, but that loss term is off'):
      debug.parse_debug_nan('ood@2', active=('task', 'grads'))

  def test_hook_poisons_its_term_at_its_step_only(self):
    empty = ml_collections.ConfigDict({'debug_nan': ''})
    self.assertIs(debug.nan_hook(empty), debug.identity)
    hook = debug.nan_hook(ml_collections.ConfigDict({'debug_nan': 'task@3,grads@5'}))
    x = jnp.float32(2.0)
    self.assertTrue(np.isnan(hook('task', x, jnp.int32(2))))   # step counts finished updates
    self.assertEqual(float(hook('task', x, jnp.int32(3))), 2.0)
    self.assertEqual(float(hook('ood', x, jnp.int32(2))), 2.0)
    value, grad = jax.value_and_grad(lambda v: hook('grads', v * v, jnp.int32(4)))(x)
    self.assertEqual(float(value), 4.0)       # a finite loss ...
    self.assertTrue(np.isnan(grad))           # ... with NaN gradients


if __name__ == '__main__':
  absltest.main()
