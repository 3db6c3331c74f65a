"""Tests for seqpe_jax.tasks: loss composition, one encoder call, shifts, validation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.extend import core as jax_core
import numpy as np
import pytest
from absl.testing import absltest, parameterized

from configs import smoke
from seqpe_jax import regularisers, samplers
from seqpe_jax.errors import ConfigError
from seqpe_jax.seqpe import SeqPEEncoder
from seqpe_jax.tasks import Task


def _task(kind='lm', **aux):
  config = smoke.get_config('task=vit' if kind == 'vit' else None)
  config.aux.update(aux)
  task = Task(config, vocab_size=64) if kind == 'lm' else Task(config, num_classes=10, channels=3)
  params = nn.meta.unbox(task.init(jax.random.PRNGKey(0)))
  batch = jax.tree.map(jnp.asarray, task.dummy_batch(4))
  if kind == 'lm':
    batch['inputs'] = jnp.arange(64).reshape(4, 16) % 64
    batch['targets'] = (batch['inputs'] + 1) % 64
  return config, task, params, batch


def _encoder_calls(fn):
  calls = []

  def count(next_fun, args, kwargs, context):
    if isinstance(context.module, SeqPEEncoder) and context.method_name == '__call__':
      calls.append(args[0].shape)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(count):
    jax.eval_shape(fn)
  return calls


def _eqns(jaxpr):
  """Every equation of a jaxpr, nested ones (cond branches, remat bodies) included."""
  for e in jaxpr.eqns:
    yield e
    for sub in jax_core.jaxprs_in_params(e.params):
      yield from _eqns(getattr(sub, 'jaxpr', sub))


class LossTest(chex.TestCase, parameterized.TestCase):

  @parameterized.parameters('lm', 'vit')
  def test_one_encoder_call_per_step(self, kind):
    _, task, params, batch = _task(kind, shift_rate=0.0)
    calls = _encoder_calls(lambda: task.loss_fn(params, batch, jax.random.PRNGKey(0), jnp.int32(0)))
    a = task.aux
    n_main = int(np.prod(task.train_grid))
    n_aux = a.contrastive.num_pivots * (1 + a.contrastive.num_candidates) + (
        a.ood.num_items * a.ood.num_points)
    self.assertEqual(calls, [(n_main + n_aux, task.data_dim)])
    # With random shifts each lax.cond branch makes its own single call; the shifted one
    # leaves out the OOD students (their term is off on shifted steps).
    _, task, params, batch = _task(kind)
    calls = _encoder_calls(lambda: task.loss_fn(params, batch, jax.random.PRNGKey(0), jnp.int32(0)))
    n_ct = a.contrastive.num_pivots * (1 + a.contrastive.num_candidates)
    self.assertEqual(sorted(calls), sorted([(n_main + n_aux, task.data_dim),
                                            (a.shift_sets * n_main + n_ct, task.data_dim)]))

  def test_total_is_task_plus_weighted_regularisers(self):
    _, task, params, batch = _task(contrastive_weight=0.3, ood_weight=0.7, shift_rate=0.0)
    loss, m = task.loss_fn(params, batch, jax.random.PRNGKey(1), jnp.int32(5))
    np.testing.assert_allclose(loss, m['task_loss'] + 0.3 * m['contrastive'] + 0.7 * m['ood'],
                               rtol=1e-6)
    self.assertGreater(float(m['contrastive']), 0.0)
    self.assertGreater(float(m['ood']), 0.0)

  def test_weight_warmup(self):
    _, task, params, batch = _task(weight_warmup_steps=10, shift_rate=0.0)
    loss, m = task.loss_fn(params, batch, jax.random.PRNGKey(1), jnp.int32(1))  # ramp 2/10
    np.testing.assert_allclose(loss, m['task_loss'] + 0.2 * 0.1 * (m['contrastive'] + m['ood']),
                               rtol=1e-6)

  def test_shifted_steps_move_positions_and_skip_ood(self):
    _, task, params, batch = _task(shift_rate=1.0)
    # At init (pe_qk ~ N(0, 0.02)) the PE moves the loss by ~1e-8; amplify it to see the shift.
    params['posenc']['pe_qk']['kernel'] = params['posenc']['pe_qk']['kernel'] * 300.0
    # Jitted: eager dispatch of the step's ~thousand small ops took ~30 s of the suite.
    loss, m = jax.jit(task.loss_fn)(params, batch, jax.random.PRNGKey(2), jnp.int32(0))
    self.assertEqual(float(m['shifted']), 1.0)
    self.assertEqual(float(m['ood']), 0.0)
    _, task0, _, _ = _task(shift_rate=0.0)
    _, m0 = jax.jit(task0.loss_fn)(params, batch, jax.random.PRNGKey(2), jnp.int32(0))
    self.assertGreater(abs(float(m['task_loss']) - float(m0['task_loss'])), 1e-4)

  @parameterized.parameters('lm', 'vit')
  def test_shifted_step_equals_encoding_the_ood_students_too(self, kind):
    # The official shifted step encodes the OOD students and zeroes their term; ours skips
    # them. Same loss and gradients as that reference, written out from the task's pieces.
    _, task, params, batch = _task(kind, shift_rate=1.0, weight_warmup_steps=0)
    if 'pe_qk' in params['posenc']:  # LM attn_scalar: make the PE move the loss (see above)
      params['posenc']['pe_qk']['kernel'] = params['posenc']['pe_qk']['kernel'] * 300.0
    rng, a = jax.random.PRNGKey(3), task.aux

    def reference(p):
      k_ct, k_ood, _, k_sets, k_enc, k_model = jax.random.split(rng, 6)
      aux = regularisers.sample_aux(a, k_ct, k_ood, train_grid=task.train_grid,
                                    max_digits=task.pe.max_digits)
      sets = samplers.shifted_grid(samplers.shift_offsets(k_sets, task.shift_pool, a.shift_sets),
                                   task.train_grid)
      pe = task.encode(p, sets, aux_Mxd=aux.positions_Mxd, deterministic=False, rng=k_enc)
      task_loss, _ = task.task_loss(task.logits(p, batch, pe, deterministic=False, rng=k_model),
                                    batch)
      return task_loss + a.contrastive_weight * regularisers.contrastive_term(pe.aux_embed, aux)

    ours = lambda p: task.loss_fn(p, batch, rng, jnp.int32(0))
    (v, m), g = jax.jit(jax.value_and_grad(ours, has_aux=True))(params)
    v_ref, g_ref = jax.jit(jax.value_and_grad(reference))(params)
    self.assertEqual(float(m['shifted']), 1.0)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5 * float(jnp.max(jnp.abs(y))) + 1e-12,
                                 err_msg=jax.tree_util.keystr(path))

  @parameterized.parameters(0.0, 1.0)
  def test_encoder_remat_policy_is_the_traced_one(self, shift_rate):
    # aux.encoder_remat chooses what the backward recomputes of the step's encoder call.
    for policy in regularisers.ENCODER_REMAT:
      _, task, params, batch = _task(shift_rate=shift_rate, encoder_remat=policy)
      jaxpr = jax.make_jaxpr(
          lambda p: task.loss_fn(p, batch, jax.random.PRNGKey(4), jnp.int32(0)))(params)
      remats = [e.params['policy'] for e in _eqns(jaxpr.jaxpr) if 'policy' in e.params]
      want = {'auto': 'full' if shift_rate else 'none'}.get(policy, policy)
      self.assertLen(remats, 0 if want == 'none' else 2 if shift_rate else 1, policy)
      for pol in remats:
        self.assertEqual(pol, jax.checkpoint_policies.dots_with_no_batch_dims_saveable
                         if want == 'dots' else None)

  def test_baselines_have_no_regularisers(self):
    config = smoke.get_config()
    config.pe.type = 'rope'
    task = Task(config, vocab_size=64)
    params = nn.meta.unbox(task.init(jax.random.PRNGKey(0)))
    batch = jax.tree.map(jnp.asarray, task.dummy_batch(4))
    loss, m = task.loss_fn(params, batch, jax.random.PRNGKey(0), jnp.int32(0))
    self.assertEqual(float(loss), float(m['task_loss']))
    self.assertNotIn('contrastive', m)
    self.assertIsNone(task.shift_pool)

  def test_validation(self):
    config = smoke.get_config()
    config.aux.max_position = 20000  # 4 digits hold < 10000
    with pytest.raises(ConfigError, match=r'max_digits >= 5'):
      Task(config, vocab_size=64)
    config = smoke.get_config()
    config.aux.shift_sets = 3
    with pytest.raises(ConfigError, match='shift_sets=3 must divide'):
      Task(config, vocab_size=64)
    config = smoke.get_config()
    config.model.num_heads = 3
    with pytest.raises(ConfigError, match='not divisible by model.num_heads=3'):
      Task(config, vocab_size=64)
    config = smoke.get_config('task=vit')
    config.aux.ood_min_offset = 3
    with pytest.raises(ConfigError, match='applies to 1-D positions only'):
      Task(config, num_classes=10, channels=3)
    config = smoke.get_config()
    config.aux.ood_min_offset = 9990  # P=10000, L=16: no room
    with pytest.raises(ConfigError, match='leaves no room'):
      Task(config, vocab_size=64)
    self.assertEqual(Task(smoke.get_config(), vocab_size=64).aux.ood.min_offset, 4)  # L // 4
    config = smoke.get_config()
    config.model.nonsense = 1
    with pytest.raises(ConfigError, match='unknown model option'):
      Task(config, vocab_size=64)

  def test_counts_per_device_scale_with_data_parallel(self):
    # The official samplers run per GPU: with counts_per_device the regulariser and shift
    # counts are per data-parallel device.
    config = smoke.get_config()
    config.train.batch_size = 8
    task = Task(config, vocab_size=64, data_parallel=4)
    self.assertEqual((task.aux.contrastive.num_pivots, task.aux.ood.num_items,
                      task.aux.shift_sets), (2, 2, 2))  # global counts: unchanged
    config.aux.counts_per_device = True
    task = Task(config, vocab_size=64, data_parallel=4)
    self.assertEqual((task.aux.contrastive.num_pivots, task.aux.ood.num_items,
                      task.aux.shift_sets), (8, 8, 8))
    self.assertEqual(task.aux.contrastive.num_candidates, 8)  # per pivot: not scaled
    config.aux.shift_sets = 4
    with pytest.raises(ConfigError, match=r'4 x aux.shift_sets=4 \(aux.counts_per_device\) '
                       r'must divide the \(micro-\)batch 8'):
      Task(config, vocab_size=64, data_parallel=4)


if __name__ == '__main__':
  absltest.main()
