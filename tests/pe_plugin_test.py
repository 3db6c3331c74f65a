"""The README's "Adding a position encoding" example: a toy PE defined here alone,
registered, trained one step through the GPT and decoded with the KV cache."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl.testing import absltest

from configs import common
from seqpe_jax import generate as gen, injection, optim, posenc
from seqpe_jax.gpt import GPT, GPTConfig
from seqpe_jax.posenc import PEConfig, PEOutput, PEType, register


# --- the README example -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToyOptions:               # becomes config.pe.toy_decay
  init_slope: float = 0.5       # initial per-head slope


@dataclasses.dataclass(frozen=True)
class ToyHook(injection.AttentionHook):
  opts: ToyOptions = ToyOptions()

  def scores(self, mod, q, k, *, q_pos, k_pos, scale, causal, num_old):
    slope_H = mod.param('toy_slope', lambda _, s: jnp.full(s, self.opts.init_slope),
                        (mod.num_heads,))  # one per layer and head
    dist_XxLxS = jnp.abs(q_pos[:, :, None] - k_pos[:, None, :]).astype(jnp.float32)
    return q, k, -slope_H[None, :, None, None] * jnp.sqrt(dist_XxLxS)[:, None]


@register('toy_decay')
class ToyDecay(PEType):
  """logits -= m_h sqrt|i - j|: a learned, ALiBi-like square-root decay."""

  dims = (1,)
  Options = ToyOptions

  @classmethod
  def hook(cls, pe):
    return ToyHook(opts=cls.options_of(pe))

  @classmethod
  def encode(cls, enc, positions_PxLxn, grid_shape, aux_Mxn, mode, deterministic):
    return PEOutput(ctx=injection.PEContext(positions=positions_PxLxn))
# ------------------------------------------------------------------------------------------

# pytest imports every test module before running any: keep the toy in the registry (and so in
# every `pe_config()`) only while this module's tests run.
posenc.unregister('toy_decay')


def setUpModule():
  register('toy_decay')(ToyDecay)


def tearDownModule():
  posenc.unregister('toy_decay')


class PluginTest(chex.TestCase):

  def test_config_group_comes_from_the_options(self):
    cfg = common.pe_config('toy_decay')
    self.assertEqual(cfg.toy_decay.init_slope, 0.5)
    cfg.toy_decay.init_slope = 0.25
    pe = PEConfig.from_config(cfg)
    pe.validate(1)
    self.assertEqual(pe.options, ToyOptions(0.25))
    self.assertIn('toy_decay', posenc.names(1))

  def test_trains_one_step_and_decodes_with_the_cache(self):
    pe = PEConfig(type='toy_decay', options=ToyOptions(init_slope=0.8))
    model = GPT(GPTConfig(vocab_size=32, num_layers=2, width=32, num_heads=4,
                          tie_embeddings=False), pe, train_len=8)
    tokens = jax.random.randint(jax.random.PRNGKey(0), (4, 9), 0, 32)
    params = model.init(jax.random.PRNGKey(1), tokens[:, :-1])['params']
    chex.assert_shape(params['block_0']['attn']['toy_slope'], (4,))
    tx, _ = optim.build_optimizer(common.optim_config(warmup_steps=0), 10)

    def loss_fn(p):
      logits, _ = model.apply({'params': p}, tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    self.assertTrue(np.isfinite(float(loss)))
    self.assertGreater(float(jnp.abs(grads['block_0']['attn']['toy_slope']).max()), 0.0)
    updates, _ = tx.update(grads, tx.init(params), params)
    params = optax.apply_updates(params, updates)
    self.assertLess(float(loss_fn(params)), float(loss))
    # Cached decoding equals recomputing the whole prefix, past the training length.
    run = lambda c: gen.generate(model, {'params': params}, np.asarray(tokens[:2, :5]),
                                 max_new_tokens=10, use_cache=c, return_logits=True)
    (tok_c, logits_c), (tok_u, logits_u) = run(True), run(False)
    np.testing.assert_array_equal(tok_c, tok_u)
    np.testing.assert_allclose(logits_c, logits_u, atol=1e-5, rtol=0)


if __name__ == '__main__':
  absltest.main()
