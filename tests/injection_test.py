"""Tests for seqpe_jax.injection (position hooks inside attention)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from seqpe_jax import injection, relbias
from seqpe_jax.injection import PEAttention, PEContext

B, L, C, H = 4, 6, 16, 4


def Injection(method='none', **kw):  # pylint: disable=invalid-name
  """The attention hook of a method name (the registry's classes build them from a PEConfig)."""
  if method in ('attn_add', 'attn_mul', 'attn_scalar'):
    return injection.SeqPEHook(method=method, **kw)
  return {'none': injection.AttentionHook, 'rope': injection.RopeHook,
          'rope_mixed': injection.RopeMixedHook, 'alibi': injection.AlibiHook,
          'fire': relbias.FireHook, 'kerple': relbias.KerpleHook}[method](**kw)


def _ctx(key, p=2, width=C):
  k1, k2, k3 = jax.random.split(key, 3)
  return PEContext(embed=jax.random.normal(k1, (p, L, width)),
                   q_pe=jax.random.normal(k2, (p, L, width)),
                   k_pe=jax.random.normal(k3, (p, L, width)),
                   positions=jnp.broadcast_to(jnp.arange(L)[None, :, None], (p, L, 1)),
                   angles=jnp.broadcast_to(jnp.arange(L, dtype=jnp.float32)[None, :, None] * 0.3,
                                           (p, L, C // H // 2)))


class AttnScalarTest(chex.TestCase):

  def test_concat_equals_bias_function_level(self):
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    q, kk = jax.random.normal(k[0], (B, L, H, 8)), jax.random.normal(k[1], (B, L, H, 8))
    qp, kp = jax.random.normal(k[2], (B, L, H, 8)), jax.random.normal(k[3], (B, L, H, 8))
    qc, kc = injection.concat_scalar(q, kk, qp, kp, scale=0.7)
    chex.assert_shape(qc, (B, L, H, 16))
    np.testing.assert_allclose(
        jnp.einsum('blhk,bshk->bhls', qc, kc),
        jnp.einsum('blhk,bshk->bhls', q, kk) + injection.scalar_bias(qp, kp, 0.7), rtol=1e-5,
        atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(True, False)
  def test_concat_equals_bias_module_level(self, multi_head):
    width = C if multi_head else C // H
    ctx = _ctx(jax.random.PRNGKey(1), width=width)
    x = jax.random.normal(jax.random.PRNGKey(2), (B, L, C))
    outs = []
    for form in ('bias', 'concat'):
      att = PEAttention(H, Injection('attn_scalar', multi_head=multi_head, scalar_form=form,
                                     scalar_scale=0.5))
      params = att.init(jax.random.PRNGKey(3), x, ctx)
      outs.append(self.variant(att.apply)(params, x, ctx))
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    chex.assert_tree_all_finite(outs)


class InjectionTest(chex.TestCase, parameterized.TestCase):

  def test_tile_to_batch_uses_b_mod_p(self):
    x = jnp.arange(2)[:, None]
    np.testing.assert_array_equal(injection.tile_to_batch(x, 6)[:, 0], [0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match='divide'):
      injection.tile_to_batch(x, 5)

  @parameterized.parameters((1, 7), (2, 6), (3, 9), (16, 32), (5, 40), (4, 4))
  def test_tile_to_batch_gradient_is_block_sum(self, p, batch):
    # The custom transpose (pairwise block sums) must equal jnp.tile's, odd repeat counts too.
    x = jax.random.normal(jax.random.key(p), (p, 3, 2))
    w = jax.random.normal(jax.random.key(batch), (batch, 3, 2))
    ours = jax.grad(lambda x: jnp.sum(injection.tile_to_batch(x, batch) * w))(x)
    ref = jax.grad(lambda x: jnp.sum(jnp.tile(x, (batch // p, 1, 1)) * w))(x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(injection.tile_to_batch(x, batch),
                                  jnp.tile(x, (batch // p, 1, 1)))

  def test_split_heads_checks_width(self):
    chex.assert_shape(injection.split_heads(jnp.zeros((1, L, C)), H, 4, True), (1, L, H, 4))
    chex.assert_shape(injection.split_heads(jnp.zeros((1, L, 4)), H, 4, False), (1, L, 1, 4))
    with pytest.raises(ValueError, match='PE width'):
      injection.split_heads(jnp.zeros((1, L, C)), H, 4, False)

  @parameterized.parameters('attn_add', 'attn_mul', 'attn_scalar')
  def test_positions_change_output(self, method):
    ctx = _ctx(jax.random.PRNGKey(4))
    x = jax.random.normal(jax.random.PRNGKey(5), (B, L, C))
    att = PEAttention(H, Injection(method))
    params = att.init(jax.random.PRNGKey(6), x, ctx)
    a = att.apply(params, x, ctx)
    b = att.apply(params, x, ctx.replace(q_pe=ctx.q_pe * 2, k_pe=ctx.k_pe[::-1]))
    self.assertGreater(float(jnp.abs(a - b).max()), 1e-4)

  def test_per_layer_pe_qk_owns_a_projection(self):
    ctx = _ctx(jax.random.PRNGKey(7))
    x = jnp.ones((B, L, C))
    params = PEAttention(H, Injection('attn_mul', pe_qk='multi')).init(jax.random.PRNGKey(0), x, ctx)
    chex.assert_shape(params['params']['pe_qk']['kernel'].value, (C, 2 * C))
    shared = PEAttention(H, Injection('attn_mul')).init(jax.random.PRNGKey(0), x, ctx)
    self.assertNotIn('pe_qk', shared['params'])

  @parameterized.parameters('none', 'attn_add', 'attn_mul', 'attn_scalar', 'rope', 'rope_mixed',
                            'alibi', 'fire', 'kerple')
  def test_fused_equals_reference(self, method):
    ctx = _ctx(jax.random.PRNGKey(8))
    ctx = ctx.replace(positions=jnp.broadcast_to(jnp.stack(
        [jnp.arange(L) // 3, jnp.arange(L) % 3], -1)[None], (2, L, 2)) if method == 'rope_mixed'
                      else ctx.positions)
    x = jax.random.normal(jax.random.PRNGKey(9), (B, L, C))
    ref = PEAttention(H, Injection(method), implementation='reference')
    params = ref.init(jax.random.PRNGKey(10), x, ctx)
    fused = PEAttention(H, Injection(method), implementation='xla')
    np.testing.assert_allclose(ref.apply(params, x, ctx), fused.apply(params, x, ctx), atol=2e-5)


if __name__ == '__main__':
  absltest.main()
