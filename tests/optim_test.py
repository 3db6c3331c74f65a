"""Tests for seqpe_jax.optim: groups, decay masks, schedules, separate clipping."""

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl.testing import absltest

from configs import common
from seqpe_jax import optim
from seqpe_jax.errors import ConfigError

PARAMS = {
    'tok_embed': {'embedding': jnp.ones((8, 4))},
    'block_0': {'attn': {'qkv': {'kernel': jnp.ones((4, 12)), 'bias': jnp.ones((12,))}},
                'ln_1': {'ln': {'scale': jnp.ones((4,)), 'bias': jnp.zeros((4,))}}},
    'posenc': {'seqpe_encoder': {'token_embed': jnp.ones((10, 4)),
                                 'block_0': {'mlp': {'fc': {'kernel': jnp.ones((4, 16))}}}},
               'pe_qk': {'kernel': jnp.ones((4, 8))}},
}


class OptimTest(chex.TestCase):

  def test_groups_and_decay_mask(self):
    groups = optim.param_groups(PARAMS)
    self.assertEqual(groups['posenc']['seqpe_encoder']['token_embed'], 'seqpe_encoder')
    self.assertEqual(groups['posenc']['pe_qk']['kernel'], 'backbone')  # pe_qk is the model's
    self.assertEqual(groups['block_0']['attn']['qkv']['kernel'], 'backbone')
    mask = optim.decay_mask(PARAMS)
    self.assertTrue(mask['block_0']['attn']['qkv']['kernel'])
    self.assertFalse(mask['block_0']['attn']['qkv']['bias'])
    self.assertFalse(mask['block_0']['ln_1']['ln']['scale'])
    self.assertFalse(mask['tok_embed']['embedding'])
    self.assertFalse(mask['posenc']['seqpe_encoder']['token_embed'])
    self.assertTrue(mask['posenc']['seqpe_encoder']['block_0']['mlp']['fc']['kernel'])

  def test_vit_decay_mask_is_official(self):
    # The official ViT (timm) decays every weight matrix / conv filter, incl. the patch
    # projection and the per-layer pe_qk, and never biases (even the [3, H, dh] qkv bias),
    # norms, the CLS token, position tables or the SeqPE encoder's embeddings.
    from configs import smoke
    from seqpe_jax.tasks import Task
    config = smoke.get_config('task=vit')
    params = jax.eval_shape(Task(config, num_classes=10).init, jax.random.PRNGKey(0))
    mask = {'/'.join(str(k.key) for k in path): m for path, m in
            jax.tree_util.tree_leaves_with_path(optim.decay_mask(params))}
    decayed = sorted(k for k, m in mask.items() if m)
    self.assertIn('patch_embed/kernel', decayed)
    self.assertIn('block_0/attn/pe_qk/kernel', decayed)
    self.assertIn('head/kernel', decayed)
    for name in ('block_0/attn/qkv/bias', 'cls_token', 'posenc/prefix_pos',
                 'posenc/seqpe_encoder/token_embed', 'posenc/seqpe_encoder/cls_embed',
                 'block_0/ln_1/ln/scale'):
      self.assertFalse(mask[name], name)
    self.assertTrue(all(k.endswith('kernel') for k in decayed))

  def test_schedules(self):
    cfg = common.optim_config(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    lr = optim.schedule(cfg, 1.0, 110)
    np.testing.assert_allclose([lr(0), lr(5), lr(10), lr(110)], [0.0, 0.5, 1.0, 0.1], atol=1e-6)
    cfg.schedule = 'linear'
    np.testing.assert_allclose(optim.schedule(cfg, 1.0, 110)(60), 0.55, atol=1e-6)
    cfg.schedule = 'constant'
    np.testing.assert_allclose(optim.schedule(cfg, 1.0, 110)(100), 1.0)
    cfg.schedule = 'exp'
    with pytest.raises(ConfigError, match='schedule'):
      optim.schedule(cfg, 1.0, 10)

  def test_separate_clipping_keeps_backbone_update_from_encoder_spikes(self):
    # eps=1 with b1=b2=0 makes Adam's update g / (|g| + 1): it shows the clipped magnitude.
    cfg = common.optim_config(lr=1.0, warmup_steps=0, schedule='constant', clip_norm=1.0,
                              pe_clip_norm=1.0, b1=0.0, b2=0.0, eps=1.0)
    tx, _ = optim.build_optimizer(cfg, 10)
    grads = jax.tree.map(jnp.zeros_like, PARAMS)
    grads['block_0']['attn']['qkv']['kernel'] = jnp.full((4, 12), 0.01)
    grads['posenc']['seqpe_encoder']['token_embed'] = jnp.full((10, 4), 100.0)  # a spike
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    # Backbone norm 0.069 < 1: untouched by the encoder's spike (a global clip would scale it
    # by 1/632 here).
    np.testing.assert_allclose(updates['block_0']['attn']['qkv']['kernel'], -0.01 / 1.01, rtol=1e-4)
    g_pe = 100.0 / (100.0 * np.sqrt(40))  # the encoder clipped to norm 1 on its own
    np.testing.assert_allclose(updates['posenc']['seqpe_encoder']['token_embed'],
                               -g_pe / (g_pe + 1), rtol=1e-4)
    norms = optim.group_norms(grads)
    np.testing.assert_allclose(norms['seqpe_encoder'], 100.0 * np.sqrt(40), rtol=1e-5)
    np.testing.assert_allclose(norms['backbone'], 0.01 * np.sqrt(48), rtol=1e-5)

  def test_pe_lr_and_weight_decay(self):
    cfg = common.optim_config(lr=1.0, pe_lr=0.1, warmup_steps=0, schedule='constant',
                              clip_norm=0.0, pe_clip_norm=0.0, weight_decay=0.0, pe_weight_decay=0.0)
    tx, _ = optim.build_optimizer(cfg, 10)
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    bb = float(updates['block_0']['attn']['qkv']['kernel'][0, 0])
    pe = float(updates['posenc']['seqpe_encoder']['block_0']['mlp']['fc']['kernel'][0, 0])
    np.testing.assert_allclose(pe / bb, 0.1, rtol=1e-4)
    with pytest.raises(ConfigError, match='lr'):
      optim.build_optimizer(ml_collections.ConfigDict({**cfg.to_dict(), 'lr': 0.0}), 10)


  def test_cosine_schedule_is_optax_warmup_cosine_decay_bitwise(self):
    """`optax.warmup_cosine_decay_schedule` equals the former hand-joined schedule."""
    import optax

    def former(cfg, peak, total):  # linear warm-up joined to cosine_decay_schedule
      warm = min(int(cfg.warmup_steps), max(total - 1, 0))
      after = optax.cosine_decay_schedule(peak, max(total - warm, 1),
                                          alpha=float(cfg.min_lr_ratio))
      if warm == 0:
        return after
      return optax.join_schedules(
          [optax.linear_schedule(float(cfg.warmup_init_lr), peak, warm), after], [warm])

    cases = [(2e-3, 0.1, 50, 0.0, 800), (2e-3, 0.1, 1, 0.0, 4), (1e-3, 0.01, 100, 0.0, 1500),
             (1.2e-3, 1e-5 / 1.2e-3, 20 * 1251, 1e-6, 400 * 1251),  # vit_imagenet
             (5e-5, 0.0, 0, 0.0, 100), (3e-4, 0.5, 5, 0.0, 1), (3e-4, 0.3, 7, 1e-5, 7)]
    for lr, ratio, warm, init, total in cases:
      cfg = common.optim_config(lr=lr, min_lr_ratio=ratio, warmup_steps=warm,
                                warmup_init_lr=init)
      steps = jnp.asarray(np.unique(np.concatenate([
          np.arange(min(total + 5, 3000)), np.linspace(0, total + 10, 2000).astype(int)])))
      want = jax.vmap(former(cfg, lr, total))(steps)
      got = jax.vmap(optim.schedule(cfg, lr, total))(steps)
      np.testing.assert_array_equal(got, want, err_msg=str((lr, ratio, warm, total)))
      self.assertEqual(float(optim.schedule(cfg, lr, total)(3)), float(former(cfg, lr, total)(3)))

  def test_group_norms_are_optax_global_norm_of_each_group(self):
    grads = jax.tree.map(lambda x: x * 0.5, PARAMS)
    grads['posenc']['seqpe_encoder']['token_embed'] = jnp.arange(40.0).reshape(10, 4)
    norms = optim.group_norms(grads)
    enc = grads['posenc']['seqpe_encoder']
    rest = {k: v for k, v in grads.items() if k != 'posenc'} | {'pe_qk': grads['posenc']['pe_qk']}
    # The former hand-rolled formula: sqrt of the sum of squares over the group's leaves.
    former = lambda t: jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(t)))
    np.testing.assert_allclose(norms['seqpe_encoder'], former(enc), rtol=1e-6)
    np.testing.assert_allclose(norms['backbone'], former(rest), rtol=1e-6)
    self.assertEqual(float(optim.group_norms({'w': {'kernel': jnp.ones(3)}})['seqpe_encoder']), 0.)

if __name__ == '__main__':
  absltest.main()
