"""Tests for seqpe_jax.baselines (closed-form PEs and table resizing)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from seqpe_jax import baselines


def _scores(q, k, ang_q, ang_k):
  """q·k after rotating q by ang_q and k by ang_k (single token each)."""
  rq = baselines.apply_rope(q[None, None, None], ang_q[None, None])[0, 0, 0]
  rk = baselines.apply_rope(k[None, None, None], ang_k[None, None])[0, 0, 0]
  return float(jnp.dot(rq, rk))


class RopeTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters('none', 'linear', 'ntk', 'yarn')
  def test_1d_scores_depend_only_on_offset(self, scaling):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    q, k = jax.random.normal(k1, (32,)), jax.random.normal(k2, (32,))
    inv = baselines.rope_inv_freq(32, scaling=scaling, factor=4.0, original_length=64)
    ang = lambda p: baselines.rope_angles(jnp.array([[p]]), inv)[0, 0]
    for i, j, s in [(5, 2, 100), (0, 7, 1234), (40, 40, 9)]:
      self.assertAlmostEqual(_scores(q, k, ang(i), ang(j)), _scores(q, k, ang(i + s), ang(j + s)),
                             places=3)
    self.assertNotAlmostEqual(_scores(q, k, ang(5), ang(2)), _scores(q, k, ang(5), ang(3)), places=3)

  def test_scalings(self):
    base = baselines.rope_inv_freq(64)
    np.testing.assert_allclose(baselines.rope_inv_freq(64, scaling='linear', factor=4.0), base / 4,
                               rtol=1e-6)
    yarn = baselines.rope_inv_freq(64, scaling='yarn', factor=4.0, original_length=512)
    np.testing.assert_allclose(yarn[0], base[0], rtol=1e-6)    # high frequency kept
    np.testing.assert_allclose(yarn[-1], base[-1] / 4, rtol=1e-6)  # low frequency interpolated
    self.assertGreater(baselines.yarn_mscale(4.0), 1.0)
    self.assertLess(baselines.rope_inv_freq(64, scaling='ntk', factor=4.0)[-1], base[-1])

  def test_2d_axial_and_mixed_depend_only_on_offset(self):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    q, k = jax.random.normal(k1, (32,)), jax.random.normal(k2, (32,))
    axial = lambda r, c: baselines.axial_rope_angles(jnp.array([[[r, c]]]), 32)[0, 0]
    freqs = baselines.rope_mixed_init_freqs(k3, 2, 32)
    mixed = lambda r, c: baselines.rope_mixed_angles(jnp.array([[[r, c]]]), freqs)[0, 0, 1]
    for ang in (axial, mixed):
      self.assertAlmostEqual(_scores(q, k, ang(3, 4), ang(1, 9)),
                             _scores(q, k, ang(13, 24), ang(11, 29)), places=3)
      self.assertNotAlmostEqual(_scores(q, k, ang(3, 4), ang(1, 9)),
                                _scores(q, k, ang(3, 4), ang(2, 9)), places=3)
    chex.assert_shape(freqs, (2, 2, 16))

  def test_apply_rope_preserves_norm(self):
    x = jax.random.normal(jax.random.PRNGKey(2), (2, 5, 3, 8))
    ang = jax.random.uniform(jax.random.PRNGKey(3), (1, 5, 4), maxval=6.0)
    np.testing.assert_allclose(jnp.linalg.norm(baselines.apply_rope(x, ang), axis=-1),
                               jnp.linalg.norm(x, axis=-1), rtol=1e-5)


class AlibiTest(chex.TestCase):

  def test_slopes(self):
    np.testing.assert_allclose(baselines.alibi_slopes(8), 2.0 ** -np.arange(1, 9), rtol=1e-6)
    s12 = baselines.alibi_slopes(12)
    self.assertEqual(s12.shape, (12,))
    np.testing.assert_allclose(s12[:8], 2.0 ** -np.arange(1, 9), rtol=1e-6)
    np.testing.assert_allclose(s12[8:], 2.0 ** -(np.arange(4) + 0.5), rtol=1e-6)
    self.assertEqual(len(set(baselines.alibi_slopes(6).tolist())), 6)

  def test_bias_depends_only_on_offset(self):
    pos = jnp.arange(10)[None]
    b = baselines.alibi_bias(pos, pos, baselines.alibi_slopes(4))
    b_shift = baselines.alibi_bias(pos + 1000, pos + 1000, baselines.alibi_slopes(4))
    np.testing.assert_allclose(b, b_shift)
    np.testing.assert_allclose(b[0, 0, 5, 2], -0.25 * 3)
    sym = baselines.alibi_bias(pos, pos, baselines.alibi_slopes(4), causal=False)
    np.testing.assert_allclose(sym[0, 1, 2, 5], sym[0, 1, 5, 2])


class TablesTest(chex.TestCase):

  def test_sinusoids(self):
    pe = baselines.sinusoidal_1d(jnp.array([[0, 3]]), 8)
    chex.assert_shape(pe, (1, 2, 8))
    np.testing.assert_allclose(pe[0, 0], [0, 1] * 4, atol=1e-7)
    np.testing.assert_allclose(pe[0, 1, :2], [np.sin(3.0), np.cos(3.0)], rtol=1e-6)
    s2 = baselines.sincos_2d(jnp.array([[[2, 5]]]), 8)
    np.testing.assert_allclose(s2[0, 0, 0], np.sin(5.0), rtol=1e-6)  # x = column first
    np.testing.assert_allclose(s2[0, 0, 4], np.sin(2.0), rtol=1e-6)

  def test_resize_identity_and_nonsquare(self):
    t = jax.random.normal(jax.random.PRNGKey(0), (16, 8))
    np.testing.assert_array_equal(baselines.resize_table_1d(t, 16), t)
    long = baselines.resize_table_1d(t, 64)
    chex.assert_shape(long, (64, 8))
    g = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 4))
    np.testing.assert_array_equal(baselines.resize_grid(g, (3, 5)), g)
    big = baselines.resize_grid(g, (6, 10), 'linear')
    chex.assert_shape(big, (6, 10, 4))
    # A constant-per-row grid stays constant along columns when only columns resize.
    rows = jnp.broadcast_to(jnp.arange(3.0)[:, None, None], (3, 5, 4))
    np.testing.assert_allclose(baselines.resize_grid(rows, (3, 9), 'bicubic')[:, :, 0],
                               np.broadcast_to(np.arange(3.0)[:, None], (3, 9)), atol=1e-5)


if __name__ == '__main__':
  absltest.main()
