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
from seqpe_jax.seqpe import SeqPEEncoder


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

  def test_encoder_remat_is_one_of_the_policies(self):
    self.assertEqual(_settings().encoder_remat, 'auto')
    self.assertEqual(_settings(encoder_remat='dots').encoder_remat, 'dots')
    with pytest.raises(ConfigError, match="aux.encoder_remat must be auto, full, dots or none, "
                                          "got 'checkpoint'"):
      _settings(encoder_remat='checkpoint')


class RematTest(absltest.TestCase):

  def test_policies_give_the_same_encoder_gradients(self):
    # The step's encoder call on the prefix tree (custom-VJP LayerNorms, one-hot lookups,
    # gathers) under each aux.encoder_remat policy: same value and gradients.
    enc = SeqPEEncoder(max_digits=3, width=16, num_heads=2, out_dim=16, dropout_rate=0.1,
                       share_prefixes=True, position_bound=600)
    pos = jnp.asarray(np.random.default_rng(0).integers(0, 600, (40, 1)), jnp.int32)
    params = enc.init(jax.random.PRNGKey(0), pos[:2])
    w = jax.random.normal(jax.random.PRNGKey(1), (40, 16))
    loss = lambda p: jnp.sum(w * enc.apply(p, pos, deterministic=False,
                                           rngs={'dropout': jax.random.PRNGKey(2)}))
    v0, g0 = jax.jit(jax.value_and_grad(loss))(params)
    for policy in ('full', 'dots'):
      v, g = jax.jit(jax.value_and_grad(regularisers.remat_wrapper(policy, 'none')(loss)))(params)
      np.testing.assert_allclose(v, v0, rtol=1e-6, err_msg=policy)
      for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g0)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(y))),
                                   err_msg=f'{policy} {jax.tree_util.keystr(path)}')


class AuxBatchTest(absltest.TestCase):

  def test_one_concatenation_of_contrastive_then_ood_positions(self):
    a = _settings()
    # Jitted (the samplers' eager op-by-op dispatch took ~20 s); AuxBatch is not a pytree,
    # so its arrays come out of the jit and its static count through the closure.
    counts = []

    def sample(k1, k2):
      aux = regularisers.sample_aux(a, k1, k2, train_grid=(16,), max_digits=4)
      counts.append(aux.num_contrastive)
      return aux.positions_Mxd, aux.pivots_Bxd
    positions_Mxd, pivots_Bxd = jax.jit(sample)(jax.random.PRNGKey(0), jax.random.PRNGKey(1))
    n_ct = a.contrastive.num_pivots * (1 + a.contrastive.num_candidates)
    self.assertEqual(counts, [n_ct])
    self.assertEqual(positions_Mxd.shape, (n_ct + a.ood.num_items * a.ood.num_points, 1))
    self.assertEqual(positions_Mxd.dtype, jnp.int32)
    np.testing.assert_array_equal(positions_Mxd[:a.contrastive.num_pivots], pivots_Bxd)
    self.assertIsNone(regularisers.sample_aux(_settings('rope'), jax.random.PRNGKey(0),
                                              jax.random.PRNGKey(1), train_grid=(16,),
                                              max_digits=4).positions_Mxd)


if __name__ == '__main__':
  absltest.main()
