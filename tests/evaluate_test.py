"""Tests for seqpe_jax.evaluate: fail-fast checks of the default evaluations, report files."""

import json
import pathlib
import tempfile

import pytest
from absl.testing import absltest

from configs import smoke
from seqpe_jax import evaluate
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


class ReportTest(absltest.TestCase):

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
