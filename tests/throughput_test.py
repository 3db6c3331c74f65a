"""benchmarks/throughput.py on the smoke config: JSON schema, ratios, --batch keeps shift_sets valid.

No timing assertions: the numbers depend on the machine.
"""

import json
import math
import pathlib
import tempfile

from absl.testing import absltest

from tests.testutil import load_script

REPO = pathlib.Path(__file__).resolve().parents[1]


bench = load_script('benchmarks/throughput.py')

ROW_KEYS = ('variant', 'ms_per_step', 'ms_min', 'ms_max', 'tokens_per_s', 'ratio_rope',
            'ratio_learned', 'compile_s', 'peak_mem_bytes', 'peak_mem_source', 'eval_ms_1x',
            'eval_ms_4x', 'eval_ratio_learned_1x', 'eval_ratio_learned_4x', 'decode_tok_s',
            'decode_ratio_rope', 'shift_sets', 'shifted_frac', 'step_gflop', 'gflop_ratio_rope')
META_KEYS = ('date', 'device_kind', 'jax_version', 'profile', 'batch', 'length', 'steps',
             'repeats', 'command', 'adjusted')


class ThroughputTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.tmp = pathlib.Path(self.enterContext(tempfile.TemporaryDirectory()))

  def run_bench(self, *args: str) -> dict:
    out = self.tmp / 'throughput.json'
    result = bench.main(['throughput.py', '--config=configs/smoke.py', '--repeats=1',
                         '--steps=2', '--warmup=1', '--eval_steps=1',
                         '--override=mesh.num_devices=1', f'--output={out}', *args])
    self.assertEqual(json.loads(out.read_text()), json.loads(json.dumps(result, default=float)))
    self.assertTrue(out.with_suffix('.md').read_text().startswith('Training step'))
    return json.loads(out.read_text())

  def test_schema_ratios_and_batch_6(self):
    res = self.run_bench('--variants=seqpe,rope,learned', '--batch=6')
    for key in META_KEYS:
      self.assertIn(key, res['meta'])
    self.assertEqual(res['meta']['batch'], 6)
    self.assertEqual(res['meta']['adjusted'], [])  # shift_sets 2 divides 6
    rows = {r['variant']: r for r in res['rows']}
    self.assertEqual(list(rows), ['seqpe', 'rope', 'learned'])
    for r in rows.values():
      for key in ROW_KEYS:
        self.assertIn(key, r)
      for key in ('ms_per_step', 'tokens_per_s', 'ratio_rope', 'ratio_learned', 'eval_ms_1x',
                  'eval_ms_4x', 'eval_ratio_learned_1x', 'eval_ratio_learned_4x'):
        self.assertTrue(math.isfinite(r[key]) and r[key] > 0, (r['variant'], key, r[key]))
      self.assertLessEqual(r['ms_min'], r['ms_per_step'])
      self.assertLessEqual(r['ms_per_step'], r['ms_max'])
      self.assertEqual(r['peak_mem_source'], 'memory_analysis')
      self.assertGreater(r['peak_mem_bytes'], 0)
      self.assertGreater(r['step_gflop'], 0)
    self.assertEqual(rows['rope']['ratio_rope'], 1.0)
    self.assertEqual(rows['rope']['gflop_ratio_rope'], 1.0)
    # SeqPE's step adds the encoder and regularisers to the same backbone: more arithmetic.
    self.assertGreater(rows['seqpe']['gflop_ratio_rope'], 1.0)
    self.assertEqual(rows['learned']['ratio_learned'], 1.0)
    self.assertEqual(rows['learned']['eval_ratio_learned_4x'], 1.0)
    self.assertEqual(rows['seqpe']['shift_sets'], 2)
    if not bench.decode_available():
      self.assertIsNone(rows['rope']['decode_tok_s'])
      self.assertTrue(any('generate' in n for n in res['meta']['notes']))
    else:
      self.assertEqual(rows['rope']['decode_ratio_rope'], 1.0)

  def test_subsets_and_trace(self):
    trace = self.tmp / 'trace'
    res = self.run_bench('--variants=seqpe-plain,rope+model.remat=True+aux.window=8',
                         '--eval_variants=seqpe-plain', '--nodecode', f'--trace_dir={trace}',
                         '--trace_variants=seqpe-plain', '--trace_steps=1')
    plain, rope = res['rows']
    self.assertEqual(plain['overrides'], {'pe.seqpe.share_prefixes': False,
                                          'pe.seqpe.scalar_form': 'concat'})
    self.assertGreater(plain['eval_ms_1x'], 0)
    self.assertIsNone(rope['eval_ms_1x'])  # not among --eval_variants
    self.assertEqual(rope['overrides'], {'model.remat': True, 'aux.window': 8})
    self.assertEqual([p.name for p in trace.iterdir()], ['seqpe-plain'])
    self.assertIn('HloModule', (trace / 'seqpe-plain/train_step.hlo.txt').read_text())
    self.assertTrue(list((trace / 'seqpe-plain').glob('**/*.xplane.pb')))
    with self.assertRaisesRegex(ValueError, 'eval_variants'):
      bench.main(['throughput.py', '--config=configs/smoke.py', '--variants=rope',
                  '--eval_variants=seqpe'])

  def test_batch_3_gives_shift_sets_1(self):
    res = self.run_bench('--variants=seqpe-shift1', '--batch=3', '--noeval', '--nodecode')
    (row,) = res['rows']
    self.assertEqual(row['shift_sets'], 1)
    self.assertEqual(row['shifted_frac'], 1.0)  # forced shift: every timed step shifted
    self.assertLen(res['meta']['adjusted'], 1)
    self.assertIn('aux.shift_sets 2 -> 1', res['meta']['adjusted'][0])
    self.assertIsNone(row['ratio_rope'])  # no rope in the run
    self.assertIsNone(row['eval_ms_1x'])

  def test_variant_parsing_and_fit_batch(self):
    self.assertEqual(bench.parse_variant('seqpe-noshift-remat'),
                     ('seqpe', '', {'aux.shift_rate': 0.0, 'aux.encoder_remat': 'full'}))
    self.assertEqual(bench.parse_variant('seqpe-noaux'),
                     ('seqpe', '', {'aux.contrastive_weight': 0.0, 'aux.ood_weight': 0.0,
                                    'aux.shift_rate': 0.0}))
    for spec in ('rope:fused+model.remat=True,aux.window=8',
                 'rope:fused+model.remat=True+aux.window=8'):
      self.assertEqual(bench.parse_variant(spec),
                       ('rope', 'fused', {'model.remat': True, 'aux.window': 8}))
    config = bench.load_config('configs/smoke.py')
    config.aux.update(shift_sets=4, counts_per_device=True)
    self.assertEqual(bench.fit_batch(config, 12, 2), ['aux.shift_sets 4 -> 2 (gcd with the '
                                                      'batch 12 / 2 devices)'])
    self.assertEqual((config.train.batch_size, config.aux.shift_sets), (12, 2))
    with self.assertRaisesRegex(ValueError, 'divisible'):
      bench.fit_batch(config, 7, 2)

  def test_shares_and_the_expected_step_at_the_shift_rate(self):
    t = {'seqpe': 120.0, 'rope': 100.0, 'nope': 90.0, 'seqpe-noaux': 95.0, 'seqpe-noct': 110.0,
         'seqpe-noood': 112.0, 'seqpe-noshift': 118.0, 'seqpe-shift0': 116.0,
         'seqpe-shift1': 140.0}
    rows = [{'variant': v, 'ms_per_step': ms, 'shift_rate': 0.25} for v, ms in t.items()]
    sh = bench.shares(rows)
    self.assertAlmostEqual(sh['encoder']['ms'], 5.0)
    self.assertAlmostEqual(sh['contrastive']['share'], 10.0 / 120.0)
    self.assertAlmostEqual(sh['shift_step_ms'], 24.0)
    self.assertAlmostEqual(sh['cond_overhead_ms'], -2.0)
    self.assertAlmostEqual(sh['expected_seqpe_ms'], 0.75 * 116.0 + 0.25 * 140.0)
    self.assertAlmostEqual(sh['expected_ratio_rope'], 1.22)
    self.assertNotIn('expected_ratio_rope', bench.shares([r for r in rows
                                                          if r['variant'] != 'rope']))


if __name__ == '__main__':
  absltest.main()
