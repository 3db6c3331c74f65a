"""Tests for seqpe_jax.gpt: shapes, causality for every PE, position sets, presets."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest, parameterized

from seqpe_jax.gpt import GPT, GPT_PRESETS, GPTConfig
from seqpe_jax.posenc import LM_PE_TYPES, PEConfig

L, V = 12, 40
PE_VARIANTS = [dict(type=t) for t in LM_PE_TYPES] + [
    dict(type='seqpe', apply=a) for a in ('input_add', 'attn_add', 'attn_mul')] + [
    dict(type='seqpe', scalar_form='bias'), dict(type='seqpe', pe_qk='multi'),
    dict(type='rope', rope_scaling='yarn', rope_factor=4.0)]


def _model(dropout=0.0, **pe):
  pe = PEConfig(**{'width': 16, 'heads': 2, 'max_digits': 3, 'dropout': dropout, **pe})
  return GPT(GPTConfig(vocab_size=V, num_layers=2, width=32, num_heads=4, dropout=dropout), pe,
             train_len=L)


def _name(pe):
  return '_'.join(f'{v}' for v in pe.values())


class CausalityTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters((_name(pe), pe) for pe in PE_VARIANTS)
  def test_loss_at_t_has_zero_gradient_wrt_later_inputs_and_positions(self, pe):
    model = _model(**pe)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, L), 0, V)
    params = model.init(jax.random.PRNGKey(1), tokens)
    pe_out = model.apply(params, jnp.arange(L)[None], method=model.encode_positions)
    emb = model.apply(params, tokens, method=lambda m, t: m.tok_embed(t))
    t = 5

    def loss_at_t(emb, pe_out):
      logits, _ = model.apply(params, tokens, pe=pe_out, embeddings_BxLxC=emb)
      return jax.nn.log_softmax(logits[:, t]).sum()

    g_emb, g_pe = jax.grad(loss_at_t, argnums=(0, 1), allow_int=True)(emb, pe_out)
    self.assertTrue(bool((g_emb[:, t + 1:] == 0).all()), 'inputs after t leak into token t')
    self.assertGreater(float(jnp.abs(g_emb[:, :t + 1]).sum()), 0.0)
    float_grads = {k: v for k, v in vars(g_pe.ctx).items()
                   if v is not None and jnp.issubdtype(v.dtype, jnp.floating)}
    for name, g in float_grads.items():
      self.assertTrue(bool((g[:, t + 1:] == 0).all()), f'{name} after t leaks into token t')
    if pe['type'] in ('seqpe', 'learned', 'sinusoidal', 'rope'):
      self.assertTrue(any(float(jnp.abs(g[:, :t + 1]).sum()) > 0 for g in float_grads.values()))


class FusedAttentionTest(chex.TestCase, parameterized.TestCase):

  @parameterized.named_parameters((_name(pe), pe) for pe in PE_VARIANTS)
  def test_fused_equals_reference(self, pe):
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, L), 0, V)
    pe_cfg = PEConfig(**{'width': 16, 'heads': 2, 'max_digits': 3, 'dropout': 0.0, **pe})
    models = {impl: GPT(GPTConfig(vocab_size=V, num_layers=2, width=32, num_heads=4,
                                  attention_impl=impl), pe_cfg, train_len=L)
              for impl in ('reference', 'xla')}
    params = models['reference'].init(jax.random.PRNGKey(1), tokens)
    logits = {impl: m.apply(params, tokens)[0] for impl, m in models.items()}
    np.testing.assert_allclose(logits['xla'], logits['reference'], atol=2e-5)


class GPTTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_shapes_and_longer_lengths(self):
    model = _model(type='seqpe')
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((2, L), jnp.int32))
    for length in (L, 4 * L):
      logits, pe = self.variant(lambda p, x: model.apply(p, x))(params, jnp.ones((2, length),
                                                                               jnp.int32))
      chex.assert_shape(logits, (2, length, V))
      chex.assert_tree_all_finite(logits)

  def test_position_sets_tile_over_batch(self):
    model = _model(type='seqpe')
    tokens = jax.random.randint(jax.random.PRNGKey(0), (4, L), 0, V)
    params = model.init(jax.random.PRNGKey(1), tokens)
    sets = jnp.stack([jnp.arange(L), jnp.arange(L) + 300])  # P=2 sets: row b uses set b % 2
    tiled, _ = model.apply(params, tokens, sets)
    for b in range(4):
      alone, _ = model.apply(params, tokens[b:b + 1], sets[b % 2][None])
      np.testing.assert_allclose(tiled[b], alone[0], atol=1e-5)
    self.assertGreater(float(jnp.abs(tiled[0] - tiled[1]).max()), 1e-5)

  def test_precomputed_pe_equals_inline(self):
    model = _model(type='seqpe')
    tokens = jnp.arange(2 * L).reshape(2, L) % V
    params = model.init(jax.random.PRNGKey(2), tokens)
    pe = model.apply(params, jnp.arange(L)[None], method=model.encode_positions)
    np.testing.assert_allclose(model.apply(params, tokens, pe=pe)[0], model.apply(params, tokens)[0],
                               atol=1e-6)

  def test_bf16_compute_keeps_fp32_params_and_logits(self):
    pe = PEConfig(type='seqpe', width=16, heads=2, max_digits=3)
    model = GPT(GPTConfig(vocab_size=V, num_layers=1, width=32, num_heads=4, dtype='bfloat16'),
                pe, train_len=L)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32))
    self.assertTrue(all(x.dtype == jnp.float32 for x in jax.tree.leaves(params)))
    logits, _ = model.apply(params, jnp.zeros((1, L), jnp.int32))
    self.assertEqual(logits.dtype, jnp.float32)
    chex.assert_tree_all_finite(logits)

  def test_remat_matches(self):
    tokens = jnp.arange(L)[None] % V
    pe = PEConfig(type='rope')
    a = GPT(GPTConfig(vocab_size=V, num_layers=2, width=32, num_heads=4), pe, train_len=L)
    b = GPT(GPTConfig(vocab_size=V, num_layers=2, width=32, num_heads=4, remat=True), pe,
            train_len=L)
    params = a.init(jax.random.PRNGKey(0), tokens)
    loss = lambda m: lambda p: m.apply(p, tokens)[0].sum()
    chex.assert_trees_all_close(jax.grad(loss(a))(params), jax.grad(loss(b))(params), atol=1e-5)

  @parameterized.parameters(('reference', 1), ('reference', 2), ('xla', 1))
  def test_attn_scalar_forms_are_one_function(self, impl, sets):
    """bias (once per forward, shared by the layers), concat and auto: same logits and grads,
    for one position set and for P = 2 sets tiled over the batch."""
    tokens = jax.random.randint(jax.random.PRNGKey(0), (4, L), 0, V)
    positions = jnp.stack([jnp.arange(L) + 7 * i for i in range(sets)])
    models = {f: GPT(GPTConfig(vocab_size=V, num_layers=2, width=32, num_heads=4,
                               attention_impl=impl),
                     PEConfig(width=16, heads=2, max_digits=3, dropout=0.0, scalar_form=f,
                              scalar_scale=0.7), train_len=L)
              for f in ('concat', 'bias', 'auto')}
    params = models['concat'].init(jax.random.PRNGKey(1), tokens)
    loss = lambda m: lambda p: jnp.sum(jnp.sin(m.apply(p, tokens, positions)[0]))
    ref = jax.grad(loss(models['concat']))(params)
    for form in ('bias', 'auto'):
      np.testing.assert_allclose(models[form].apply(params, tokens, positions)[0],
                                 models['concat'].apply(params, tokens, positions)[0], atol=2e-5)
      chex.assert_trees_all_close(jax.grad(loss(models[form]))(params), ref, atol=2e-5)

  def test_prepare_shares_the_bias_only_where_logits_are_materialised(self):
    hook = PEConfig(type='seqpe', scalar_form='auto').injection()
    ctx = _model(type='seqpe').apply(
        _model(type='seqpe').init(jax.random.PRNGKey(0), jnp.zeros((1, L), jnp.int32)),
        jnp.arange(L)[None], method=GPT.encode_positions).ctx
    shared = hook.prepare(ctx, num_heads=4, head_dim=8, materialized=True)
    chex.assert_shape(shared.attn_bias, (1, L, 4, L))
    self.assertIsNone(shared.q_pe)  # the layers need nothing else
    self.assertIs(hook.prepare(ctx, num_heads=4, head_dim=8, materialized=False), ctx)
    concat = PEConfig(type='seqpe', scalar_form='concat').injection()
    self.assertIs(concat.prepare(ctx, num_heads=4, head_dim=8, materialized=True), ctx)
    forced = PEConfig(type='seqpe', scalar_form='bias').injection()
    self.assertIsNotNone(forced.prepare(ctx, num_heads=4, head_dim=8,
                                        materialized=False).attn_bias)

  def test_presets(self):
    self.assertEqual(GPT_PRESETS['gpt2_small']['width'], 768)
    self.assertEqual(GPT_PRESETS['gpt2_small']['num_layers'], 12)


if __name__ == '__main__':
  absltest.main()
