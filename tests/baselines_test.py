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


def _torch_bicubic_loop(x_HxW, out_h, out_w, a=-0.75):
  """A line-by-line Python port of PyTorch's `upsample_bicubic2d` (align_corners=False)."""
  in_h, in_w = len(x_HxW), len(x_HxW[0])

  def cc1(x):
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def cc2(x):
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  def coeffs(t):
    return [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)]

  def value(y, x):
    return x_HxW[min(max(y, 0), in_h - 1)][min(max(x, 0), in_w - 1)]

  out = [[0.0] * out_w for _ in range(out_h)]
  for oy in range(out_h):
    real_y = in_h / out_h * (oy + 0.5) - 0.5
    iy = int(np.floor(real_y))
    cy = coeffs(real_y - iy)
    for ox in range(out_w):
      real_x = in_w / out_w * (ox + 0.5) - 0.5
      ix = int(np.floor(real_x))
      cx = coeffs(real_x - ix)
      rows = [sum(cx[k] * value(iy - 1 + j, ix - 1 + k) for k in range(4)) for j in range(4)]
      out[oy][ox] = sum(cy[j] * rows[j] for j in range(4))
  return np.asarray(out)


class TorchBicubicTest(chex.TestCase, parameterized.TestCase):

  def test_hand_values_1d(self):
    # [0, 1, 0, 0] upsampled x2: each output is the Keys (A=-0.75) weight of the single
    # 1, e.g. out[0]: src=-0.25, t=0.75, the 1 sits 1.25 away: far(1.25) = -0.10546875.
    got = baselines.torch_bicubic_resize_1d(jnp.array([[0.], [1.], [0.], [0.]]), 8)[:, 0]
    want = [-0.10546875, 0.26171875, 0.87890625, 0.87890625, 0.26171875, -0.10546875,
            -0.03515625, 0.0]
    np.testing.assert_allclose(got, want, atol=1e-7)
    np.testing.assert_allclose(got, _torch_bicubic_loop([[0, 1, 0, 0]], 1, 8)[0], atol=1e-6)

  def test_hand_values_2x2(self):
    # 2x2 → 4x4, per axis: out1 has src=0.25, t=0.25, taps (-1, 0, 1, 2) clamped to
    # (0, 0, 1, 1) with weights far(1.25), near(0.25), near(0.75), far(1.75) =
    # (-0.10546875, 0.87890625, 0.26171875, -0.03515625) → (0.7734375, 0.2265625);
    # out0 (src=-0.25) → (1.10546875, -0.10546875); the rest by symmetry.
    w = np.array([[1.10546875, -0.10546875], [0.7734375, 0.2265625],
                  [0.2265625, 0.7734375], [-0.10546875, 1.10546875]])
    np.testing.assert_allclose(baselines.torch_bicubic_matrix(2, 4), w, atol=1e-7)
    x = np.array([[1.0, 2.0], [3.0, 5.0]])
    got = baselines.torch_bicubic_resize(jnp.asarray(x)[..., None], (4, 4))[..., 0]
    np.testing.assert_allclose(got, w @ x @ w.T, atol=1e-5)
    np.testing.assert_allclose(got, _torch_bicubic_loop(x.tolist(), 4, 4), atol=1e-5)

  @parameterized.parameters(((5, 7), (9, 4)), ((14, 14), (24, 24)), ((16, 12), (7, 5)),
                            ((3, 8), (3, 20)), ((6, 6), (2, 3)))
  def test_matches_loop_reference(self, src, dst):
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(sum(src + dst)), (*src, 2)))
    got = baselines.resize_grid(jnp.asarray(x), dst, 'bicubic')
    chex.assert_shape(got, (*dst, 2))
    for c in range(2):
      np.testing.assert_allclose(got[..., c], _torch_bicubic_loop(x[..., c].tolist(), *dst),
                                 atol=1e-5)

  def test_identity_rows_sum_to_one_and_dtype(self):
    np.testing.assert_allclose(baselines.torch_bicubic_matrix(6, 6), np.eye(6), atol=1e-7)
    np.testing.assert_allclose(baselines.torch_bicubic_matrix(5, 13).sum(1), 1.0, atol=1e-6)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 3)).astype(jnp.bfloat16)
    np.testing.assert_array_equal(baselines.torch_bicubic_resize(x, (4, 6)), x)
    self.assertEqual(baselines.resize_grid(x, (8, 12)).dtype, jnp.bfloat16)

  def test_differs_from_jax_cubic(self):
    g = jax.random.normal(jax.random.PRNGKey(3), (4, 4, 2))
    ours = baselines.resize_grid(g, (8, 8), 'bicubic')
    old = baselines.resize_grid(g, (8, 8), 'bicubic_jax')
    np.testing.assert_allclose(old, jax.image.resize(g, (8, 8, 2), 'cubic', antialias=False))
    self.assertGreater(float(jnp.abs(ours - old).max()), 1e-2)
    t = g[:, 0]
    np.testing.assert_allclose(baselines.resize_table_1d(t, 10, 'bicubic'),
                               _torch_bicubic_loop(np.asarray(t).T.tolist(), 2, 10).T, atol=1e-5)
    np.testing.assert_allclose(baselines.resize_table_1d(t, 10, 'bicubic_jax'),
                               jax.image.resize(t, (10, 2), 'cubic', antialias=False))

  def test_jits(self):
    g = jax.random.normal(jax.random.PRNGKey(4), (3, 5, 2))
    fn = jax.jit(lambda x: baselines.resize_grid(x, (6, 10)))
    np.testing.assert_allclose(fn(g), baselines.torch_bicubic_resize(g, (6, 10)), atol=1e-6)


if __name__ == '__main__':
  absltest.main()
