"""Tests for seqpe_jax.regularisers: settings from `config.aux`, the aux batch, the terms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest

from configs import smoke
from seqpe_jax import regularisers
from seqpe_jax.errors import ConfigError
from seqpe_jax.posenc import PEConfig


def _settings(pe_type='seqpe', grid=(16,), **aux):
  config = smoke.get_config()
  config.pe.type = pe_type
  config.aux.update(aux)
  return regularisers.aux_settings(config.aux, pe=PEConfig.from_config(config.pe),
                                   train_grid=grid, train_what='train.seq_len=16',
                                   micro_batch=4)


class SettingsTest(absltest.TestCase):

  def test_terms_on_for_seqpe_only(self):
    a = _settings()
    self.assertEqual(a.active_terms, ('task', 'contrastive', 'ood', 'grads'))
    b = _settings('rope')
    self.assertEqual((b.contrastive, b.ood, b.shift_rate), (None, None, 0.0))
    self.assertEqual(b.active_terms, ('task', 'grads'))
    self.assertIsNone(regularisers.shift_pool(smoke.get_config().aux, b, seed=0,
                                              train_grid=(16,)))

  def test_errors_name_the_training_size(self):
    with pytest.raises(ConfigError, match=r'train.seq_len=16 needs position 99999'):
      _settings(grid=(100000,), max_position=100000)
    with pytest.raises(ConfigError, match='shift_sets=3 must divide the \\(micro-\\)batch 4'):
      _settings(shift_sets=3)


class AuxBatchTest(absltest.TestCase):

  def test_one_concatenation_of_contrastive_then_ood_positions(self):
    a = _settings()
    aux = regularisers.sample_aux(a, jax.random.PRNGKey(0), jax.random.PRNGKey(1),
                                  train_grid=(16,), max_digits=4)
    n_ct = a.contrastive.num_pivots * (1 + a.contrastive.num_candidates)
    self.assertEqual(aux.num_contrastive, n_ct)
    self.assertEqual(aux.positions_Mxd.shape, (n_ct + a.ood.num_items * a.ood.num_points, 1))
    self.assertEqual(aux.positions_Mxd.dtype, jnp.int32)
    np.testing.assert_array_equal(aux.positions_Mxd[:a.contrastive.num_pivots],
                                  aux.pivots_Bxd)
    self.assertIsNone(regularisers.sample_aux(_settings('rope'), jax.random.PRNGKey(0),
                                              jax.random.PRNGKey(1), train_grid=(16,),
                                              max_digits=4).positions_Mxd)


if __name__ == '__main__':
  absltest.main()
