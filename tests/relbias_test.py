"""Tests for seqpe_jax.relbias: FIRE and KERPLE-log biases (shapes, relative-only, causal,
known values) and their registry entries (options → config groups, cached decoding)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from configs import common
from seqpe_jax import posenc, relbias
from seqpe_jax.errors import ConfigError
from seqpe_jax.gpt import GPT, GPTConfig
from seqpe_jax.posenc import PEConfig

H = 3


def _fire_vars(opts=relbias.FireOptions()):
  mod = relbias.FireBias(H, opts)
  pos = jnp.arange(8)[None]
  return mod, mod.init(jax.random.PRNGKey(0), pos, pos)


class FireTest(chex.TestCase):

  def test_shape_and_relative_only_below_the_threshold(self):
    mod, variables = _fire_vars()
    pos = jnp.arange(10)[None]
    b = mod.apply(variables, pos, pos)
    chex.assert_shape(b, (1, H, 10, 10))
    # Below L_thr the normaliser is constant: b depends on i - j only (shifted keys and queries).
    shifted = mod.apply(variables, pos + 100, pos + 100)
    np.testing.assert_allclose(b, shifted, atol=1e-5)
    np.testing.assert_allclose(b[0, :, 5, 2], b[0, :, 7, 4], atol=1e-6)

  def test_normaliser_grows_past_the_threshold(self):
    mod, variables = _fire_vars(relbias.FireOptions(init_threshold=4.0))
    pos = jnp.arange(40)[None]
    b = mod.apply(variables, pos, pos)
    # Same distance 3, query 6 vs 30: past L_thr = 4 the input ψ(3)/ψ(i) shrinks with i.
    self.assertGreater(float(jnp.abs(b[0, :, 6, 3] - b[0, :, 30, 27]).max()), 1e-4)

  def test_known_values(self):
    # Identity-like MLP: hidden = relu(x), out_h = (h + 1) * hidden (sums over the 32 units).
    mod, variables = _fire_vars(relbias.FireOptions(mlp_width=2, init_c=0.5, init_threshold=4.0))
    params = jax.tree.map(lambda x: x, variables['params'])
    params = {'c': params['c'], 'threshold_mult': params['threshold_mult'],
              'mlp_0': {'kernel': params['mlp_0']['kernel'].replace_boxed(jnp.array([[1.0, 0.0]])),
                        'bias': params['mlp_0']['bias']},
              'mlp_1': {'kernel': params['mlp_1']['kernel'].replace_boxed(
                  jnp.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])), 'bias': params['mlp_1']['bias']}}
    b = mod.apply({'params': params}, jnp.array([[2, 9]]), jnp.array([[0, 1]]))
    # (i, j) = (2, 0): ψ(2) / ψ(max(4, 2)) = log 2 / log 3; (9, 1): log 5 / log 5.5.
    x = np.array([[np.log(2) / np.log(3), np.log(1.5) / np.log(3)],
                  [np.log(5.5) / np.log(5.5), np.log(5.0) / np.log(5.5)]])
    np.testing.assert_allclose(b[0], np.array([1.0, 2.0, 3.0])[:, None, None] * x[None],
                               rtol=1e-5)


class KerpleTest(chex.TestCase):

  def test_known_values_shape_and_sign(self):
    b = relbias.kerple_log_bias(jnp.arange(4)[None], jnp.arange(4)[None],
                                jnp.array([1.0, 2.0]), jnp.array([0.5, 3.0]))
    chex.assert_shape(b, (1, 2, 4, 4))
    np.testing.assert_allclose(b[0, 0, 3, 1], -1.0 * np.log1p(0.5 * 2), rtol=1e-6)
    np.testing.assert_allclose(b[0, 1, 3, 0], -2.0 * np.log1p(3.0 * 3), rtol=1e-6)
    np.testing.assert_allclose(jnp.diagonal(b, axis1=2, axis2=3), 0.0)
    self.assertTrue(bool((b <= 0).all()))

  def test_relative_only_and_parameters_clamped_positive(self):
    mod = relbias.KerpleBias(H)
    pos = jnp.arange(6)[None]
    variables = mod.init(jax.random.PRNGKey(0), pos, pos)
    b = mod.apply(variables, pos, pos)
    np.testing.assert_allclose(b, mod.apply(variables, pos + 1000, pos + 1000), atol=1e-5)
    neg = jax.tree.map(lambda x: -jnp.abs(x), variables)  # r1, r2 < 0 act as eps
    np.testing.assert_allclose(mod.apply(neg, pos, pos)[0, :, 5, 0],
                               -0.01 * np.log1p(0.01 * 5), rtol=1e-5)


class RegistryTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters('fire', 'kerple')
  def test_registered_1d_with_a_config_group(self, name):
    self.assertIn(name, posenc.LM_PE_TYPES)
    self.assertNotIn(name, posenc.VIT_PE_TYPES)
    cfg = common.pe_config(name)
    pe = PEConfig.from_config(cfg)
    self.assertIsInstance(pe.options, posenc.get(name).Options)
    with pytest.raises(ConfigError, match='supports'):
      pe.validate(2)
    cfg[name].bogus = 1
    with pytest.raises(ConfigError, match=f'{name}.bogus'):
      PEConfig.from_config(cfg)

  def test_fire_options_reach_the_model(self):
    cfg = common.pe_config('fire')
    cfg.fire.mlp_width = 8
    model = GPT(GPTConfig(vocab_size=16, num_layers=1, width=16, num_heads=2),
                PEConfig.from_config(cfg), train_len=8)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))['params']
    chex.assert_shape(params['block_0']['attn']['fire']['mlp_0']['kernel'].value, (1, 8))
    chex.assert_shape(params['block_0']['attn']['fire']['mlp_1']['kernel'].value, (8, 2))

  @parameterized.parameters('fire', 'kerple')
  def test_causal_future_tokens_do_not_change_the_past(self, name):
    model = GPT(GPTConfig(vocab_size=16, num_layers=2, width=16, num_heads=2),
                PEConfig(type=name), train_len=8)
    tok = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, 16)
    params = model.init(jax.random.PRNGKey(0), tok)
    a, _ = model.apply(params, tok)
    b, _ = model.apply(params, tok.at[:, 5:].set(0))
    np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)


if __name__ == '__main__':
  absltest.main()
