"""Tests for seqpe_jax.layers (the written-out LayerNorm and GELU against flax's, Linear,
lookups)."""

import chex
import flax.linen as nn
import jax
import jax.test_util
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from seqpe_jax import layers


def _flax_ln(eps):
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name='ln')


class LayerNormTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(((7, 16),), ((2, 5, 32),), ((3, 1, 4, 8),))
  def test_values_and_gradients_equal_flax(self, shape):
    x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), shape)
    ours = layers.LayerNorm(1e-5)
    params = nn.meta.unbox(ours.init(jax.random.key(2), x))
    # Non-trivial scale / bias, shared by both (same tree).
    params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(3), p.shape), params)
    ref_params = {'params': params['params']['ln']}
    ref_apply = lambda p, x: _flax_ln(1e-5).apply(p, x)
    np.testing.assert_allclose(ours.apply(params, x), ref_apply(ref_params, x),
                               rtol=1e-5, atol=1e-5)
    g_ours = jax.grad(lambda p, x: jnp.sum(ours.apply(p, x) * w), argnums=(0, 1))(params, x)
    g_ref = jax.grad(lambda p, x: jnp.sum(ref_apply(p, x) * w), argnums=(0, 1))(ref_params, x)
    np.testing.assert_allclose(g_ours[1], g_ref[1], rtol=1e-4, atol=1e-5)
    for k in ('scale', 'bias'):
      np.testing.assert_allclose(g_ours[0]['params']['ln'][k], g_ref[0]['params'][k],
                                 rtol=1e-4, atol=1e-5)

  def test_parameter_tree_and_init(self):
    params = layers.LayerNorm().init(jax.random.key(0), jnp.ones((2, 6)))
    chex.assert_trees_all_equal(nn.meta.unbox(params),
                                {'params': {'ln': {'scale': jnp.ones(6), 'bias': jnp.zeros(6)}}})
    self.assertEqual(params['params']['ln']['scale'].names, ('norm',))

  def test_bf16_output_dtype_fp32_math(self):
    x = jax.random.normal(jax.random.key(0), (4, 64)) * 100 + 1000  # large mean: fp32 stats
    ln = layers.LayerNorm(dtype=jnp.bfloat16)
    params = ln.init(jax.random.key(1), x)
    y = ln.apply(params, x.astype(jnp.bfloat16))
    self.assertEqual(y.dtype, jnp.bfloat16)
    ref = _flax_ln(1e-5).apply({'params': nn.meta.unbox(params)['params']['ln']},
                               x.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(y.astype(jnp.float32), ref, atol=2e-2)

  def test_gradient_check(self):
    # Reverse mode against finite differences (a custom_vjp has no forward mode).
    x = jax.random.normal(jax.random.key(0), (3, 5))
    f = lambda x, s, b: layers.layer_norm(x, s, b, 1e-5)
    jax.test_util.check_grads(f, (x, jnp.linspace(0.5, 1.5, 5), jnp.linspace(-1, 1, 5)),
                              order=1, modes=['rev'], atol=5e-2, rtol=5e-2)


class GeluTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_values_and_gradients_equal_flax(self, approximate):
    x = 4.0 * jax.random.normal(jax.random.key(0), (3, 257))
    w = jax.random.normal(jax.random.key(1), x.shape)
    np.testing.assert_array_equal(layers.gelu(x, approximate), nn.gelu(x, approximate))
    g = jax.grad(lambda x: jnp.sum(w * layers.gelu(x, approximate)))(x)
    g_ref = jax.grad(lambda x: jnp.sum(w * nn.gelu(x, approximate)))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)
    jax.test_util.check_grads(lambda x: layers.gelu(x, approximate), (x[0, :9],), order=1,
                              modes=['rev'], atol=1e-2, rtol=1e-2)

  def test_backward_keeps_only_the_input(self):
    # The point of the custom VJP: one saved [.., F] tensor per MLP instead of flax's several.
    # The residuals are the leaves of the VJP closure.
    x = jax.random.normal(jax.random.key(0), (8, 64))
    saved = lambda f: [a for a in jax.tree.leaves(jax.vjp(f, x)[1]) if a.shape == x.shape]
    self.assertLen(saved(layers.gelu), 1)
    self.assertGreater(len(saved(lambda x: nn.gelu(x))), 2)

  def test_bf16_in_bf16_out(self):
    x = jax.random.normal(jax.random.key(0), (4, 32)).astype(jnp.bfloat16)
    y, vjp = jax.vjp(layers.gelu, x)
    self.assertEqual(y.dtype, jnp.bfloat16)
    self.assertEqual(vjp(jnp.ones_like(y))[0].dtype, jnp.bfloat16)


class LinearAndLookupTest(absltest.TestCase):

  def test_part_computes_a_slice_of_the_outputs_with_the_same_parameters(self):
    lin = layers.Linear((3, 2, 4), ('embed', None, 'heads', 'kv'))
    x = jax.random.normal(jax.random.key(0), (5, 8))
    params = lin.init(jax.random.key(1), x)
    params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias too
    full = lin.apply(params, x)
    self.assertEqual(full.shape, (5, 3, 2, 4))
    np.testing.assert_allclose(lin.apply(params, x, part=slice(1, 3)), full[:, 1:3], atol=1e-6)
    np.testing.assert_allclose(lin.apply(params, x, part=slice(0, 1)), full[:, :1], atol=1e-6)

  def test_onehot_lookup_is_an_exact_gather_with_its_gradient(self):
    table = jax.random.normal(jax.random.key(0), (7, 3))
    ids = jnp.array([[0, 6, 6], [2, 2, 1]])
    np.testing.assert_array_equal(layers.onehot_lookup(table, ids), table[ids])
    w = jax.random.normal(jax.random.key(1), (2, 3, 3))
    g = jax.grad(lambda t: jnp.sum(layers.onehot_lookup(t, ids) * w))(table)
    np.testing.assert_allclose(g, jax.grad(lambda t: jnp.sum(t[ids] * w))(table), atol=1e-6)


class BatchBroadcastTest(parameterized.TestCase):

  @parameterized.parameters(1, 2, 3, 5, 6, 7, 8)
  def test_block_sum_is_the_sum_of_contiguous_blocks(self, reps):
    x = jax.random.normal(jax.random.key(0), (reps * 2, 3, 4))
    np.testing.assert_allclose(layers.block_sum(x, reps), x.reshape(reps, 2, 3, 4).sum(0),
                               rtol=1e-6, atol=1e-6)

  @parameterized.product(batch=(1, 2, 3, 5, 8), materialize_grad=(False, True))
  def test_broadcast_batch_value_and_gradient(self, batch, materialize_grad):
    x = jax.random.normal(jax.random.key(1), (1, 2, 3))
    w = jax.random.normal(jax.random.key(2), (batch, 2, 3))
    out = layers.broadcast_batch(x, batch, materialize_grad)
    np.testing.assert_array_equal(out, jnp.broadcast_to(x, (batch, 2, 3)))
    g = jax.jit(jax.grad(lambda x: jnp.sum(layers.broadcast_batch(x, batch, materialize_grad)
                                           * w)))(x)
    np.testing.assert_allclose(g, w.sum(0, keepdims=True), rtol=1e-6, atol=1e-6)

  def test_reference_attention_with_a_batch_one_bias(self):
    # A [1, H, L, S] bias (one position set for the batch) goes through broadcast_batch:
    # same values and gradients as the bias broadcast up front (the plain transpose).
    b, l, h, k = 3, 5, 2, 4
    q, kk, v = (jax.random.normal(jax.random.key(i), (b, l, h, k)) for i in range(3))
    bias = jax.random.normal(jax.random.key(3), (1, h, l, l))
    mask = layers.causal_mask(l, l)[None, None]

    def loss(q, kk, v, bias, up_front):
      bias = jnp.broadcast_to(bias, (b, h, l, l)) if up_front else bias
      out = layers.dot_product_attention(q, kk, v, scale=k**-0.5, bias=bias, mask=mask)
      return jnp.sum(out ** 2)
    ours, ref = (jax.value_and_grad(loss, argnums=(0, 1, 2, 3))(q, kk, v, bias, u)
                 for u in (False, True))
    np.testing.assert_allclose(ours[0], ref[0], rtol=1e-6)
    for x, y in zip(ours[1], ref[1]):
      np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


if __name__ == '__main__':
  absltest.main()
