"""benchmarks/lm_extrapolation.py: the grid the issue asks for, the report, one real shrunk run."""

import json
import pathlib
import subprocess
import sys
import tempfile

from absl.testing import absltest

from tests.testutil import child_env, load_script

REPO = pathlib.Path(__file__).resolve().parents[1]


bench = load_script('benchmarks/lm_extrapolation.py')


def _record(pe, corpus, steps, seed, ppls):
  return {'pe': pe, 'corpus': corpus, 'steps': steps, 'seed': seed, 'train_length': 64,
          'results': [{'length': 64 * 2 ** i, 'split': 'valid', 'ppl': p}
                      for i, p in enumerate(ppls)]}


class GridTest(absltest.TestCase):

  def test_quick_grid_covers_corpora_budgets_seeds_and_ablations(self):
    runs = bench.PROFILES['quick'].runs()
    ids = [r.id for r in runs]
    self.assertLen(set(ids), len(ids))
    for corpus in ('wikitext-2', 'gutenberg'):
      for steps in (400, 800):
        for pe in bench.MAIN_PES:
          seeds = {r.seed for r in runs if (r.corpus, r.steps, r.name) == (corpus, steps, pe)}
          self.assertGreaterEqual(len(seeds), 3, (corpus, steps, pe))
      for pe in ('learned', 'sinusoidal', 'nope', 'fire', 'kerple', 'seqpe-paper',
                 'alibi-official'):
        self.assertTrue(any(r.name == pe and r.corpus == corpus for r in runs), (pe, corpus))
    for name in bench.ABLATIONS:
      self.assertIn(name, {r.name for r in runs})

  def test_paper_variant_restores_the_method_settings(self):
    pe, overrides = bench._variant('seqpe-paper')
    self.assertEqual(pe, 'seqpe')
    self.assertIn('aux.max_position=10000', overrides)
    self.assertIn('aux.shift_rate=0.1', overrides)
    self.assertEqual(bench._variant('rope'), ('rope', ('pe.type=rope',)))
    self.assertEqual(bench._variant('alibi-official'),
                     ('alibi', ('pe.type=alibi', 'pe.alibi.before_scale=True')))

  def test_markdown_mean_min_max(self):
    recs = [_record('seqpe', 'wikitext-2', 400, s, [5.0 + s, 6.0]) for s in range(3)]
    recs.append(_record('alibi', 'wikitext-2', 400, 0, [5.5, 5.4]))
    md = bench.markdown(recs)
    self.assertIn('| seqpe | 3 | 6.00 [5.00–7.00] | 6.00 [6.00–6.00] |', md)
    self.assertIn('| alibi | 1 | 5.50 | 5.40 | – |', md)  # no 4x column: no ratio
    four = [_record('seqpe', 'gutenberg', 800, s, [5.0, 5.0, 5.0 + s]) for s in range(2)]
    self.assertIn('| 5.50 [5.00–6.00] | +20.0% |', bench.markdown(four))  # worst seed
    self.assertIn('**wikitext-2, 400 steps**', md)


class EndToEndTest(absltest.TestCase):

  def test_one_shrunk_run_writes_json_md_png_and_resumes(self):
    with tempfile.TemporaryDirectory() as tmp:
      out = pathlib.Path(tmp) / 'r.json'
      cmd = [sys.executable, 'benchmarks/lm_extrapolation.py', f'--root={tmp}/runs',
             f'--output={out}', '--jobs=1', '--only=^wikitext-2/400/alibi/seed0$',
             *(f'--override={o}' for o in (
                 'train.steps=2', 'model.num_layers=1', 'model.width=32', 'model.num_heads=2',
                 'train.batch_size=4', 'train.seq_len=16', 'eval.lengths=(16,32)',
                 'eval.max_tokens=512', "eval.splits=('valid',)"))]
      done = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                            timeout=600)
      self.assertEqual(done.returncode, 0, done.stdout[-2000:] + done.stderr[-2000:])
      rep = json.loads(out.read_text())
      self.assertLen(rep['runs'], 1)
      run = rep['runs'][0]
      self.assertEqual((run['pe'], run['corpus'], run['steps'], run['seed'], run['train_length']),
                       ('alibi', 'wikitext-2', 2, 0, 16))
      self.assertEqual([r['length'] for r in run['results']], [16, 32])
      self.assertTrue(out.with_suffix('.md').is_file() and out.with_suffix('.png').is_file())
      again = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True,
                             timeout=600)
      self.assertIn('1 already done', again.stdout)


if __name__ == '__main__':
  absltest.main()
