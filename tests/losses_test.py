"""Tests for seqpe_jax.losses (parity with the official criteria and properties)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import absltest

from seqpe_jax import losses
from tests.conftest import shared_path


class ParityTest(chex.TestCase):

  def test_official_losses(self):
    d = np.load(shared_path('parity', 'official_losses.npz'))
    c = losses.contrastive_loss(d['pivot'], d['candidates'], d['labels'])
    np.testing.assert_allclose(float(c), float(d['contrastive_loss']), rtol=1e-6)
    teacher = d['main_pe'][d['teacher_index']]
    kd = losses.ood_distillation_loss(teacher, d['student_pe'], int(d['num_heads']))
    np.testing.assert_allclose(float(kd), float(d['kd_loss']), rtol=1e-6)


class PropertyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_contrastive_matches_manual_cross_entropy(self):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    piv, cand = jax.random.normal(k1, (4, 8)), jax.random.normal(k2, (4, 5, 8))
    labels = jnp.array([0, 4, 2, 1])
    got = self.variant(losses.contrastive_loss)(piv, cand, labels)
    logits = np.einsum('bd,bkd->bk', piv, cand)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(got, -logp[np.arange(4), labels].mean(), rtol=1e-5)

  def test_kl_is_elementwise_mean(self):
    # Row-averaged KL divided by n, as the official reduction='mean'.
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    t, s = jax.random.normal(k1, (2, 6, 8)), jax.random.normal(k2, (2, 6, 8))
    got = losses.ood_distillation_loss(t, s, num_heads=2)

    def rows(x):
      x = x.reshape(2, 6, 2, 4).transpose(0, 2, 1, 3)
      a = np.einsum('bhik,bhjk->bhij', x, x)
      return a - np.log(np.exp(a).sum(-1, keepdims=True))
    lt, ls = rows(np.asarray(t)), rows(np.asarray(s))
    row_kl = (np.exp(lt) * (lt - ls)).sum(-1).mean() + (np.exp(ls) * (ls - lt)).sum(-1).mean()
    np.testing.assert_allclose(got, row_kl / 6, rtol=1e-5)

  def test_teacher_gets_no_gradient_and_identical_is_zero(self):
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    t, s = jax.random.normal(k1, (2, 5, 8)), jax.random.normal(k2, (2, 5, 8))
    gt, gs = jax.grad(lambda a, b: losses.ood_distillation_loss(a, b, 2), argnums=(0, 1))(t, s)
    chex.assert_trees_all_close(gt, jnp.zeros_like(gt))
    self.assertGreater(float(jnp.abs(gs).sum()), 0.0)
    self.assertAlmostEqual(float(losses.ood_distillation_loss(t, t, 2)), 0.0, places=6)
    # beta < 1 lets the teacher learn too.
    gt2 = jax.grad(lambda a: losses.ood_distillation_loss(a, s, 2, beta=0.5))(t)
    self.assertGreater(float(jnp.abs(gt2).sum()), 0.0)
    chex.assert_tree_all_finite(gs)


if __name__ == '__main__':
  absltest.main()
