"""Tests for seqpe_jax.evaluators.lm_extrapolation: PE caching, exact token counts, start
positions, word perplexity, and the evaluator's config checks and data pre-reading."""

import jax
import numpy as np
import pytest
from absl.testing import absltest

from configs import smoke
from seqpe_jax import evaluate, evaluators, sharding
from seqpe_jax.errors import ConfigError
from seqpe_jax.evaluators import lm_extrapolation
from seqpe_jax.tasks import Task

_sweep = lm_extrapolation.lm_extrapolation


def _lm_task(**pe):
  config = smoke.get_config()
  config.pe.update(pe)
  return config, Task(config, vocab_size=64)


class LMExtrapolationTest(absltest.TestCase):

  def test_pe_encoded_once_per_length_and_every_token_scored_once(self):
    config, task = _lm_task()
    config.eval.update(lengths=(16, 48), max_tokens=300, batch_size=4)
    params = jax.tree.map(np.asarray, jax.jit(task.init)(jax.random.PRNGKey(0)))
    params = __import__('flax').linen.meta.unbox(params)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    calls = []
    real = evaluate._jitted(task, 'encode')
    orig = evaluate._jitted

    def counting(t, kind):
      if kind == 'encode':
        return lambda *a: (calls.append(a[1].shape), real(*a))[1]
      return orig(t, kind)
    evaluate._jitted = counting
    try:
      stream = np.arange(1000) % 64
      results = _sweep(task, params, mesh, lambda split: stream, config)
    finally:
      evaluate._jitted = orig
    self.assertEqual(calls, [(1, 16, 1), (1, 48, 1)])  # once per length, not per batch
    self.assertEqual([r['tokens'] for r in results], [299, 299])
    self.assertTrue(all(np.isfinite(r['ppl']) and r['ppl'] > 1 for r in results))

  def test_start_position_and_word_perplexity(self):
    # eval.start_position feeds positions start..start+L-1 (the official --eval_start_pos);
    # with a tokenizer the row also carries word perplexity exp(NLL / words).
    from seqpe_jax.data.tokenizers import ByteTokenizer
    config, task = _lm_task()
    config.eval.update(lengths=(16,), max_tokens=200, batch_size=4)
    params = __import__('flax').linen.meta.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    tok = ByteTokenizer()
    stream = tok.encode('the cat sat on the mat and then it ran off. ' * 8)
    base = _sweep(task, params, mesh, lambda s: stream, config, tok)[0]
    scored = stream[1:200]
    self.assertEqual(base['words'], int((scored == 32).sum()) + int(scored[0] != 32))
    np.testing.assert_allclose(base['word_ppl'], np.exp(base['nll'] * base['tokens'] /
                                                         base['words']), rtol=1e-6)
    config.eval.start_position = 100
    shifted = _sweep(task, params, mesh, lambda s: stream, config, tok)[0]
    self.assertEqual(shifted['start_position'], 100)
    self.assertNotAlmostEqual(shifted['ppl'], base['ppl'], places=4)  # SeqPE is absolute
    # The same number by hand: one chunk's logits with positions 100..115.
    chunk = np.asarray(stream[:17], np.int32)
    logits, _ = task.model.apply({'params': params}, chunk[None, :-1],
                                 (100 + np.arange(16, dtype=np.int32))[None])
    nll = -jax.nn.log_softmax(logits[0])[np.arange(16), chunk[1:]]
    config.eval.max_tokens = 17
    one = _sweep(task, params, mesh, lambda s: stream, config)[0]
    np.testing.assert_allclose(one['nll'], float(nll.mean()), rtol=1e-5)
    # RoPE is relative: a start offset leaves its perplexity unchanged.
    config, task = _lm_task(type='rope')
    config.eval.update(lengths=(16,), max_tokens=200, batch_size=4)
    params = __import__('flax').linen.meta.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    ppl = []
    for start in (0, 100):
      config.eval.start_position = start
      ppl.append(_sweep(task, params, mesh, lambda s: stream, config)[0]['ppl'])
    np.testing.assert_allclose(ppl[0], ppl[1], rtol=1e-4)


class EvaluatorTest(absltest.TestCase):

  def test_checks_config_and_pre_reads_splits(self):
    config, task = _lm_task()
    read = []

    class Data:
      tokenizer = None

      def eval_stream(self, split):
        read.append(split)
        return np.arange(200) % 64
    ev = evaluators.get('lm_extrapolation')(task, config, Data())
    self.assertEqual(read, list(config.eval.splits))  # pre-read when built
    self.assertEqual((ev.name, ev.output, ev.table.x_key, ev.table.metric),
                     ('lm_extrapolation', 'extrapolation', 'length', 'ppl'))
    config.eval.start_position = -1
    with pytest.raises(ConfigError, match='eval.start_position must be >= 0'):
      evaluators.get('lm_extrapolation')(task, config, Data())


if __name__ == '__main__':
  absltest.main()
