"""Tests for seqpe_jax.vit: every 2-D PE, resolution change, CLS position, errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from seqpe_jax.errors import ConfigError
from seqpe_jax.posenc import VIT_PE_TYPES, PEConfig
from seqpe_jax.positions import grid_2d
from seqpe_jax.vit import VIT_PRESETS, ViT, ViTConfig, patch_grid


def _model(type_='seqpe', **pe):
  pe = PEConfig(**{'type': type_, 'width': 16, 'heads': 2, 'max_digits': 2, 'apply': 'attn_mul',
                   'pe_qk': 'multi', 'dropout': 0.0, **pe})
  return ViT(ViTConfig(num_classes=5, patch_size=4, num_layers=2, width=32, num_heads=4), pe,
             train_image_size=16)


class ViTTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters(*VIT_PE_TYPES)
  def test_every_pe_trains_and_extends(self, type_):
    model = _model(type_)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    params = model.init(jax.random.PRNGKey(1), x)
    logits, _ = model.apply(params, x)
    chex.assert_shape(logits, (2, 5))
    big, _ = model.apply(params, jax.random.normal(jax.random.PRNGKey(2), (2, 24, 32, 3)))
    chex.assert_shape(big, (2, 5))  # 6x8 non-square grid
    chex.assert_tree_all_finite((logits, big))
    grads = jax.grad(lambda p: model.apply(p, x)[0].sum())(params)
    chex.assert_tree_all_finite(grads)

  @parameterized.parameters(*VIT_PE_TYPES)
  def test_fused_equals_reference(self, type_):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
    pe = PEConfig(type=type_, width=16, heads=2, max_digits=2, apply='attn_mul', pe_qk='multi',
                  dropout=0.0)
    feats = {}
    for impl in ('reference', 'xla'):
      model = ViT(ViTConfig(num_classes=5, patch_size=4, num_layers=2, width=32, num_heads=4,
                            attention_impl=impl), pe, train_image_size=16)
      if impl == 'reference':
        params = model.init(jax.random.PRNGKey(1), x)
        head = params['params']['head']['kernel']  # zero-initialised: give it weights
        params['params']['head']['kernel'] = head.replace_boxed(
            jax.random.normal(jax.random.PRNGKey(2), head.value.shape))
      feats[impl] = model.apply(params, x)[0]
    np.testing.assert_allclose(feats['xla'], feats['reference'], atol=2e-5)

  def test_seqpe_per_layer_pe_qk_and_cls_position(self):
    model = _model()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
    self.assertIn('pe_qk', params['block_0']['attn'])
    self.assertIn('pe_qk', params['block_1']['attn'])
    chex.assert_shape(params['posenc']['prefix_pos'].value, (1, 32))

  @chex.variants(with_jit=True, without_jit=True)
  def test_interpolate_mode_equals_extend_at_the_train_grid(self):
    model = _model()
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 16, 16, 3))
    params = model.init(jax.random.PRNGKey(4), x)
    head = params['params']['head']['kernel']
    params['params']['head']['kernel'] = head.replace_boxed(
        jax.random.normal(jax.random.PRNGKey(1), head.value.shape))
    f = self.variant(lambda p, x, mode: model.apply(p, x, mode=mode)[0], static_argnums=2)
    np.testing.assert_allclose(f(params, x, 'extend'), f(params, x, 'interpolate'), atol=1e-5)
    big = jax.random.normal(jax.random.PRNGKey(5), (2, 32, 32, 3))
    self.assertGreater(float(jnp.abs(f(params, big, 'extend') - f(params, big, 'interpolate')).max()),
                       1e-6)

  def test_explicit_positions_and_patch_errors(self):
    model = _model()
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 16, 16, 3))  # varied patches
    params = model.init(jax.random.PRNGKey(0), x)
    # The classifier starts at zero (ViT init); give it weights to see the features.
    head = params['params']['head']['kernel']
    params['params']['head']['kernel'] = head.replace_boxed(
        jax.random.normal(jax.random.PRNGKey(1), head.value.shape))
    shifted, _ = model.apply(params, x, grid_2d(4, 4, start=(10, 20))[None])
    default, _ = model.apply(params, x)
    self.assertGreater(float(jnp.abs(shifted - default).max()), 1e-6)
    with pytest.raises(ConfigError, match='not divisible by the patch size 4'):
      model.apply(params, jnp.ones((1, 18, 16, 3)))
    self.assertEqual(patch_grid((224, 224), 16), (14, 14))
    self.assertEqual(VIT_PRESETS['vit_s16']['width'], 384)


if __name__ == '__main__':
  absltest.main()
