"""Tests for seqpe_jax.evaluate: fail-fast checks, PE caching, exact token counts, reports."""

import json
import pathlib
import tempfile

import jax
import numpy as np
import pytest
from absl.testing import absltest

from configs import smoke
from seqpe_jax import evaluate, sharding
from seqpe_jax.errors import ConfigError
from seqpe_jax.tasks import Task


def _lm_task(**pe):
  config = smoke.get_config()
  config.pe.update(pe)
  return config, Task(config, vocab_size=64)


class CheckEvalConfigTest(absltest.TestCase):

  def test_capacity_and_learned_table_errors(self):
    config, task = _lm_task()
    config.eval.lengths = (16, 10001)  # 4 digits: positions < 10000
    with pytest.raises(ConfigError, match=r'10001 needs position 10000.*max_digits >= 5'):
      evaluate.check_eval_config(task, config)
    config, task = _lm_task(type='learned')
    config.pe.learned.resize = 'none'
    task = Task(config, vocab_size=64)
    with pytest.raises(ConfigError, match='learned position table'):
      evaluate.check_eval_config(task, config)
    config.pe.learned.resize = 'linear'
    evaluate.check_eval_config(Task(config, vocab_size=64), config)

  def test_vit_image_size_errors(self):
    config = smoke.get_config('task=vit')
    task = Task(config, num_classes=10, channels=3)
    config.eval.image_sizes = (8, 10)
    with pytest.raises(ConfigError, match='not divisible by the patch size'):
      evaluate.check_eval_config(task, config)
    config.eval.image_sizes = (8, 404)  # a 101x101 grid needs 3 digits per axis
    with pytest.raises(ConfigError, match='max_digits >= 3'):
      evaluate.check_eval_config(task, config)


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
      results = evaluate.lm_extrapolation(task, params, mesh, lambda split: stream, config)
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
    base = evaluate.lm_extrapolation(task, params, mesh, lambda s: stream, config, tok)[0]
    scored = stream[1:200]
    self.assertEqual(base['words'], int((scored == 32).sum()) + int(scored[0] != 32))
    np.testing.assert_allclose(base['word_ppl'], np.exp(base['nll'] * base['tokens'] /
                                                         base['words']), rtol=1e-6)
    config.eval.start_position = 100
    shifted = evaluate.lm_extrapolation(task, params, mesh, lambda s: stream, config, tok)[0]
    self.assertEqual(shifted['start_position'], 100)
    self.assertNotAlmostEqual(shifted['ppl'], base['ppl'], places=4)  # SeqPE is absolute
    # The same number by hand: one chunk's logits with positions 100..115.
    chunk = np.asarray(stream[:17], np.int32)
    logits, _ = task.model.apply({'params': params}, chunk[None, :-1],
                                 (100 + np.arange(16, dtype=np.int32))[None])
    nll = -jax.nn.log_softmax(logits[0])[np.arange(16), chunk[1:]]
    config.eval.max_tokens = 17
    one = evaluate.lm_extrapolation(task, params, mesh, lambda s: stream, config)[0]
    np.testing.assert_allclose(one['nll'], float(nll.mean()), rtol=1e-5)
    # RoPE is relative: a start offset leaves its perplexity unchanged.
    config, task = _lm_task(type='rope')
    config.eval.update(lengths=(16,), max_tokens=200, batch_size=4)
    params = __import__('flax').linen.meta.unbox(jax.jit(task.init)(jax.random.PRNGKey(0)))
    ppl = []
    for start in (0, 100):
      config.eval.start_position = start
      ppl.append(evaluate.lm_extrapolation(task, params, mesh, lambda s: stream, config)[0]['ppl'])
    np.testing.assert_allclose(ppl[0], ppl[1], rtol=1e-4)

  def test_report_files(self):
    _, task = _lm_task()
    results = [{'length': 16, 'split': 'valid', 'ppl': 10.0}, {'length': 32, 'split': 'valid',
                                                                'ppl': 12.5}]
    workdir = pathlib.Path(tempfile.mkdtemp())
    report = evaluate.write_report(workdir, task, results)
    saved = json.loads((workdir / 'extrapolation.json').read_text())
    self.assertEqual(saved, report)
    self.assertEqual((saved['task'], saved['pe'], saved['train_length']), ('lm', 'seqpe', 16))
    table = (workdir / 'extrapolation.md').read_text()
    self.assertIn('| seqpe | 10.00 | 12.50 |', table)
    self.assertIn('32 (2x)', table)
    self.assertGreater((workdir / 'extrapolation.png').stat().st_size, 1000)


if __name__ == '__main__':
  absltest.main()
