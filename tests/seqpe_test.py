"""Tests for seqpe_jax.seqpe (the SeqPE encoder)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from seqpe_jax import seqpe


def _enc(**kw):
  args = dict(data_dim=1, max_digits=5, width=32, num_heads=4, num_layers=2, out_dim=16,
              dropout_rate=0.1)
  args.update(kw)
  return seqpe.SeqPEEncoder(**args)


class SeqPEEncoderTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(1, 2, 3)
  def test_shapes_any_axes(self, n):
    enc = _enc(data_dim=n, max_digits=2)
    pos = jnp.arange(4 * 3 * n).reshape(4, 3, n) % 100
    params = enc.init(jax.random.PRNGKey(0), pos)
    out = self.variant(enc.apply)(params, pos)
    chex.assert_shape(out, (4, 3, 16))
    chex.assert_tree_all_finite(out)

  def test_text_param_count_matches_method_doc(self):
    enc = seqpe.SeqPEEncoder(data_dim=1, max_digits=5, width=768, num_heads=12, num_layers=2,
                             out_dim=768)
    shapes = jax.eval_shape(enc.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
    self.assertEqual(seqpe.num_params(shapes), 14_780_160)

  def _hidden(self, enc, params, pos):
    _, state = enc.apply(params, pos, capture_intermediates=True, mutable=['intermediates'])
    return state['intermediates']['block_1']['__call__'][0]  # [M, T, D]

  def test_causal_digits_do_not_see_later_digits(self):
    enc = _enc(cls_only_last_layer=False)
    a, b = jnp.array([[12345]]), jnp.array([[12399]])  # differ from digit 3 on
    params = enc.init(jax.random.PRNGKey(0), a)
    ha, hb = self._hidden(enc, params, a), self._hidden(enc, params, b)
    np.testing.assert_allclose(ha[:, :3], hb[:, :3], atol=1e-6)
    self.assertGreater(float(jnp.abs(ha[:, 3:] - hb[:, 3:]).max()), 1e-4)
    # The bidirectional option lets early digits see later ones.
    bi = _enc(cls_only_last_layer=False, causal=False)
    self.assertGreater(float(jnp.abs(self._hidden(bi, params, a)[:, :3]
                                     - self._hidden(bi, params, b)[:, :3]).max()), 1e-4)

  def test_cls_only_last_layer_is_exact(self):
    pos = jnp.arange(0, 99999, 997)[:, None]
    params = _enc().init(jax.random.PRNGKey(1), pos)
    np.testing.assert_allclose(_enc().apply(params, pos),
                               _enc(cls_only_last_layer=False).apply(params, pos), atol=1e-5)

  def test_one_call_over_a_length_equals_per_position_calls(self):
    enc = _enc()
    pos_PxLx1 = jnp.arange(2 * 64).reshape(2, 64, 1) * 37
    params = enc.init(jax.random.PRNGKey(2), pos_PxLx1)
    whole = jax.jit(enc.apply)(params, pos_PxLx1)
    single = jax.vmap(jax.vmap(lambda p: enc.apply(params, p[None])[0]))(pos_PxLx1)
    np.testing.assert_allclose(whole, single, atol=1e-5)

  def test_mask_padding_only_affects_padded_positions(self):
    full, padded = jnp.array([[12345]]), jnp.array([[45]])
    params = _enc().init(jax.random.PRNGKey(3), full)
    on, off = _enc(mask_padding=True), _enc(mask_padding=False)
    np.testing.assert_allclose(on.apply(params, full), off.apply(params, full), atol=1e-6)
    self.assertGreater(float(jnp.abs(on.apply(params, padded) - off.apply(params, padded)).max()),
                       1e-4)

  def test_dropout_and_temperature(self):
    pos = jnp.arange(8)[:, None]
    enc = _enc()
    params = enc.init(jax.random.PRNGKey(4), pos)
    det = enc.apply(params, pos)
    drop = enc.apply(params, pos, deterministic=False, rngs={'dropout': jax.random.PRNGKey(5)})
    self.assertGreater(float(jnp.abs(det - drop).max()), 1e-5)
    np.testing.assert_allclose(_enc(temperature=2.0).apply(params, pos), det / 2, rtol=1e-6)


if __name__ == '__main__':
  absltest.main()
